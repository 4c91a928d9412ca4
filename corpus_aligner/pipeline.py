"""The corpus runner: read -> probe -> normalize -> pack batches -> load -> align -> write, then merge and report.

The only module that loops over a corpus, and the only place that catches the package's errors per
utterance: every input utterance ends as exactly one row of utterances.parquet, aligned or failed with
its stage, error type and message. Results are committed per batch (outputs.py), so a crash loses at
most the batch in flight and a rerun over the same output folder resumes; Ctrl-C (or SIGTERM) stops
after the batch in flight. Recordings longer than `align.long.threshold_s` are aligned window by
window (longform.py), each in a batch of its own.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from corpus_aligner.api import Aligner
from corpus_aligner.audio import SAMPLE_RATE_HZ
from corpus_aligner.config import AlignConfig, AppConfig, BatchConfig
from corpus_aligner.corpus import Utterance
from corpus_aligner.errors import AlignerError
from corpus_aligner.frontend import log_mel, n_mel_frames
from corpus_aligner.loading import Loaded, Prepared, check, load_batch
from corpus_aligner.longform import Aligned, AlignFn, Window, accept_tail, align_windows, is_long, tail_window
from corpus_aligner.mlx_threads import worker_threads
from corpus_aligner.prefetch import BackgroundWriter, ordered_map, run_ahead, worker_pool
from corpus_aligner.records import AlignedWord, PlacedWord
from corpus_aligner.session import GracefulStop, Session
from corpus_aligner.stages import load_wave
from corpus_aligner.writers.batch import BatchWriter
from corpus_aligner.writers.parquet import utterances_frame, words_frame

log = logging.getLogger(__name__)
LOAD_PIECE = 8  # utterances per loader task
T = TypeVar("T")


@dataclass
class RunResult:
    output_dir: Path
    report: dict[str, Any]
    report_text: str
    n_skipped: int  # already in the output folder (resumed)
    timings_s: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    n_done: int = 0  # utterances in the output folder at the end
    n_total: int = 0  # utterances of this shard


PREPARE_PIECE = 64  # utterances per task when the loader processes check them


def prepare(
    utterances: list[Utterance],
    cfg: AlignConfig,
    tick_s: float,
    aligner: Aligner | None = None,
    pool: Executor | None = None,
) -> tuple[list[Prepared], list[dict[str, Any]]]:
    """Stages read, probe and normalize for every utterance (`loading.check`; in `pool`'s processes when
    given: about 0.4-0.9 ms per utterance, minutes for a large corpus before its first batch); those that fail
    become failed rows. Without an aligner (mode=validate) the packing length is 0."""
    pieces = [utterances[i : i + PREPARE_PIECE] for i in range(0, len(utterances), PREPARE_PIECE)]
    checked = (
        pool.map(partial(check, cfg=cfg, tick_s=tick_s), pieces)
        if pool
        else (check(piece, cfg, tick_s) for piece in pieces)
    )
    prepared: list[Prepared] = []
    failed: list[dict[str, Any]] = []
    for ok, bad in checked:
        failed.extend(bad)
        for utt, probed, words in ok:
            long = is_long(probed.duration_s, cfg.long)
            length = 0
            if aligner is not None and not long:
                n_frames = n_mel_frames(round(probed.duration_s * SAMPLE_RATE_HZ))
                length = aligner.sequence_length(n_frames, [w.token for w in words])
            prepared.append(Prepared(utt, probed, words, length, long))
    return prepared, failed


def align_items(aligner: Aligner, tokens: list[list[str]], features: list) -> list[Any]:
    """Each item's AlignedWords, or the AlignerError that stopped it (a failing batch is retried item by item)."""
    try:
        return list(aligner.align_features(features, tokens))
    except AlignerError:
        if len(tokens) == 1:
            raise
    results: list[Any] = []
    for feats, toks in zip(features, tokens):  # output does not depend on batch composition
        try:
            results.append(aligner.align_features([feats], [toks])[0])
        except AlignerError as exc:
            results.append(exc)
    return results


def window_features(wave: np.ndarray, window: Window) -> np.ndarray:
    """Log-mel of the window's audio in `wave` (the utterance's 16 kHz samples)."""
    a, b = round(window.start_s * SAMPLE_RATE_HZ), round(window.end_s * SAMPLE_RATE_HZ)
    return log_mel(wave[a:b])


def window_aligner(aligner: Aligner, wave: np.ndarray) -> AlignFn:
    """One model pass per window of `wave`."""

    def align(window: Window, tokens: list[str] | Any) -> list[AlignedWord]:
        return aligner.align_features([window_features(wave, window)], [list(tokens)])[0]

    return align


class BatchRunner:
    """Aligns batches of prepared utterances (their rows and TextGrids are BatchWriter's)."""

    def __init__(self, aligner: Aligner, cfg: AlignConfig):
        self.aligner, self.cfg = aligner, cfg
        self.tick_s = aligner.args.timestamp_segment_time_ms / 1000.0
        self.timings: dict[str, float] = defaultdict(float)
        self.lock = threading.Lock()

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.add_time(stage, perf_counter() - start)

    def add_time(self, stage: str, seconds: float) -> None:
        with self.lock:  # loader and writer threads add theirs too
            self.timings[stage] += seconds

    def timed_align(self, loaded: Loaded) -> list[Aligned | AlignerError]:
        with self.timed("align"):  # summed over model workers
            return self.align(loaded.ready, loaded.features)

    def align(
        self, ready: list[tuple[Prepared, np.ndarray | None]], features: list[np.ndarray | None]
    ) -> list[Aligned | AlignerError]:
        """Short utterances in one batched pass, then their collapsed tails re-aligned in batched rounds;
        long recordings window by window.

        features: the log-mel of each short item of `ready` (None for long ones)."""
        rules, low = self.cfg.long, self.cfg.low_probability
        results: list[Aligned | AlignerError | None] = [None] * len(ready)
        short = [k for k, ((p, _), f) in enumerate(zip(ready, features)) if not p.long and f is not None]
        tokens = [[w.token for w in p.words] for p, _ in ready]
        first: list[list[AlignedWord] | AlignerError] = []
        try:
            first = align_items(self.aligner, [tokens[k] for k in short], [features[k] for k in short]) if short else []
        except AlignerError as exc:
            first = [exc] * len(short)
        placed: dict[int, list[PlacedWord]] = {}
        for k, r in zip(short, first):
            if isinstance(r, AlignerError):
                results[k] = r
            else:
                placed[k] = [PlacedWord(a, 0, 0.0, ready[k][0].duration_s) for a in r]
        passes = dict.fromkeys(placed, 1)
        self.recover_tails(ready, tokens, placed, passes, results)
        for k, words in placed.items():
            results[k] = Aligned(tuple(words), passes[k])
        for k, (p, wave) in enumerate(ready):
            if p.long:
                try:
                    aligner = window_aligner(self.aligner, wave if wave is not None else load_wave(p.utt, p.probed))
                    results[k] = align_windows(aligner, tokens[k], p.duration_s, rules, low, self.tick_s)
                except AlignerError as exc:
                    results[k] = exc
        return [r if r is not None else AlignerError("no features") for r in results]

    def recover_tails(
        self,
        ready: list[tuple[Prepared, np.ndarray | None]],
        tokens: list[list[str]],
        placed: dict[int, list[PlacedWord]],
        passes: dict[int, int],
        results: list[Aligned | AlignerError | None],
    ) -> None:
        """longform.recover_tail for every item of `placed` at once: each round aligns the tail windows of all
        items that still have a collapsed tail as one batch (updates `placed` and `passes`; an item whose
        pass fails gets its error in `results` and leaves `placed`)."""
        rules, low = self.cfg.long, self.cfg.low_probability
        active = list(placed)
        for _ in range(rules.max_recoveries if rules.recover_collapse else 0):
            todo, feats = [], []
            for k in active:
                window = tail_window(placed[k], ready[k][0].duration_s, rules, low, self.tick_s, passes[k])
                if window is None:
                    continue
                p, wave = ready[k]
                try:
                    if wave is None:  # dropped by a loader process: decode again (it loaded fine there)
                        wave = load_wave(p.utt, p.probed)
                        ready[k] = (p, wave)
                    feats.append(window_features(wave, window))
                except AlignerError as exc:  # only this utterance fails, as with one pass at a time
                    results[k] = exc
                    del placed[k]
                    continue
                todo.append((k, window))
            if not todo:
                return
            again = align_items(self.aligner, [tokens[k][w.first_word :] for k, w in todo], feats)
            active = []
            for (k, window), aligned in zip(todo, again):
                passes[k] += 1
                if isinstance(aligned, AlignerError):
                    results[k] = aligned
                    del placed[k]
                    continue
                better = accept_tail(placed[k], window, aligned, rules)
                if better is not None:
                    placed[k] = better
                    active.append(k)


def regroup(batch_of_piece: list[int], loads: Iterator[Loaded]) -> Iterator[Loaded]:
    """Merge consecutive pieces of one batch (`batch_of_piece[i]` is piece i's batch) back into its Loaded."""
    parts: list[Loaded] = []
    for i, loaded in enumerate(loads):
        parts.append(loaded)
        if i + 1 == len(batch_of_piece) or batch_of_piece[i + 1] != batch_of_piece[i]:
            yield Loaded(
                [r for p in parts for r in p.ready],
                [f for p in parts for f in p.failed],
                [x for p in parts for x in p.features],
                sum(p.load_s for p in parts),
            )
            parts = []


def done_future(fn: Callable[..., T], *args: Any) -> Future[T]:
    """`fn(*args)` run now, as a completed Future (its exception kept for `.result()`)."""
    future: Future[T] = Future()
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # handed on through the future, like a worker thread's
        future.set_exception(exc)
    return future


def progress_bar(total_s: float, enabled: bool) -> tqdm:
    """A bar in audio hours; quiet when disabled or when stderr is not a terminal."""
    return tqdm(
        total=total_s / 3600,
        unit="h",
        desc="aligning",
        disable=not enabled or not sys.stderr.isatty(),
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} h audio [{elapsed}<{remaining}{postfix}]",
    )


def plan_batches(prepared: list[Prepared], cfg: AppConfig, aligner: Aligner) -> list[list[int]]:
    """Long recordings one per batch (longest first), then the short ones packed by padded cost."""
    long = sorted((i for i, p in enumerate(prepared) if p.long), key=lambda i: -prepared[i].duration_s)
    short = [i for i, p in enumerate(prepared) if not p.long]
    packed = aligner.pack([prepared[i].length for i in short], cfg.batch.budget_positions, cfg.batch.max_utterances)
    return [[i] for i in long] + [[short[k] for k in batch] for batch in packed]


@contextmanager
def worker_pools(batch: BatchConfig) -> Iterator[tuple[Executor | None, Executor]]:
    """(loaders, writers): loader processes (None for threads, which `run_ahead` makes) and the writer
    processes (or one thread), started at once so that their start-up overlaps the model's loading."""
    with ExitStack() as stack:
        loaders = None
        if batch.loader_processes and batch.prefetch_batches > 0:
            loaders = stack.enter_context(worker_pool(batch.loader_threads, preload="corpus_aligner.loading"))
        n = batch.writer_processes
        writers = stack.enter_context(worker_pool(max(n, 1), threads=not n, preload="corpus_aligner.writers.batch"))
        yield loaders, writers


def run(cfg: AppConfig) -> RunResult:
    """Align the configured corpus (or this shard of it) into cfg.output.dir; resumes what is there.

    A first Ctrl-C/SIGTERM stops before the next batch; the result then says `interrupted`."""
    with worker_pools(cfg.batch) as (loaders, writers):
        session = Session.open(cfg)
        with session.aligner:  # stops its model processes, if any
            return run_with(cfg, session, loaders, writers)


def run_with(cfg: AppConfig, session: Session, loaders: Executor | None, writers: Executor) -> RunResult:
    aligner, store = session.aligner, session.store
    runner = BatchRunner(aligner, cfg.align)
    write = BatchWriter(store, cfg.output.textgrid, cfg.align, runner.tick_s)
    # Up to `aligner.workers` batches align at once, each on its own MLX stream (a GPU overlaps one batch's
    # host work with another's kernels; the CPU default is one, in this thread). One lane first builds the GPU
    # kernels while the corpus is prepared (`Aligner.warm_up`: not two lanes at once).
    lanes = worker_threads(aligner.workers) if aligner.workers > 1 else None
    warm = lanes.submit(aligner.warm_up) if lanes and session.todo else None
    with GracefulStop() as stop:
        with runner.timed("prepare"):
            prepared, failed = prepare(session.todo, cfg.align, runner.tick_s, aligner, loaders)
        store.write_batch(words_frame([]), utterances_frame(failed))
        batches = plan_batches(prepared, cfg, aligner)
        audio_s = sum(p.duration_s for p in prepared)
        if warm is not None:
            with runner.timed("warm_up_wait"):
                runner.add_time("warm_up", warm.result())
        loop_start, done_s, n_batches = perf_counter(), 0.0, 0
        item_lists = [[prepared[i] for i in batch] for batch in batches]
        # Loaded in pieces of a few utterances, so that every loader works on the next batches at once.
        pieces = [
            (b, items[i : i + LOAD_PIECE])
            for b, items in enumerate(item_lists)
            for i in range(0, len(items), LOAD_PIECE)
        ]
        # Batches are loaded ahead by `loader_threads` threads (or processes) and written behind by a writer
        # thread (or `writer_processes` processes), so the model rarely waits. On any exit the writers finish
        # what they were given first: a crash loses only the batch being aligned (and, on SIGKILL, those
        # being written). A part's number is its batch's place in the run, whichever writer commits it.
        with (
            progress_bar(audio_s, cfg.output.progress) as bar,
            run_ahead(
                partial(load_batch, keep_waves=not cfg.batch.loader_processes, dtype=aligner.feature_dtype),
                [piece for _, piece in pieces],
                cfg.batch.prefetch_batches * -(-len(pieces) // max(len(item_lists), 1)),
                cfg.batch.loader_threads,
                processes=cfg.batch.loader_processes,
                pool=loaders,
            ) as piece_loads,
            BackgroundWriter(write, max_pending=max(cfg.batch.writer_processes, 1), pool=writers) as writer,
        ):

            def loaded_batches() -> Iterator[tuple[list[Prepared], Loaded]]:
                for items, loaded in zip(item_lists, regroup([b for b, _ in pieces], piece_loads)):
                    if stop.requested:  # the batches in flight are still finished and committed
                        return
                    runner.add_time("load", loaded.load_s)  # summed over loaders
                    yield items, loaded

            def aligned(
                job: tuple[list[Prepared], Loaded],
            ) -> tuple[list[Prepared], Loaded, list[Aligned | AlignerError]]:
                return job[0], job[1], runner.timed_align(job[1])

            for items, loaded, results in ordered_map(
                (lambda job: lanes.submit(aligned, job)) if lanes else (lambda job: done_future(aligned, job)),
                loaded_batches(),
                aligner.workers - 1,
            ):
                with runner.timed("write_wait"):  # re-raises a write error; waits while the writers are all busy
                    writer.submit(store.next_seq(), [p for p, _ in loaded.ready], loaded.failed, results)
                n_batches += 1
                batch_s = sum(p.duration_s for p in items)
                done_s += batch_s
                bar.set_postfix_str(f"RTF {(perf_counter() - loop_start) / max(done_s, 1e-9):.3f}", refresh=False)
                bar.update(batch_s / 3600)
            with runner.timed("write_wait"):
                runner.add_time("write", sum(writer.close()))  # summed over writers
    loop_s = perf_counter() - loop_start
    lengths = [p.length for p in prepared]
    short_batches = [b for b in batches if not prepared[b[0]].long]
    this_run = {
        "utterances_processed": len(failed) + sum(len(b) for b in batches[:n_batches]),
        "audio_s_processed": done_s,
        "batches": n_batches,
        "padding_fraction": aligner.padding_fraction(lengths, short_batches) if short_batches else 0.0,
        "throughput_audio_s_per_s": done_s / loop_s if loop_s > 0 else None,
    }
    timings = {**runner.timings, "batches": loop_s}
    return session.finish(this_run, timings, interrupted=n_batches < len(batches))
