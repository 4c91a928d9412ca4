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
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
from tqdm import tqdm

from corpus_aligner.api import Aligner
from corpus_aligner.audio import SAMPLE_RATE_HZ, probe_audio
from corpus_aligner.batching import pack_batches, padding_fraction
from corpus_aligner.config import AlignConfig, AppConfig
from corpus_aligner.corpus import Utterance
from corpus_aligner.errors import AlignerError
from corpus_aligner.frontend import log_mel, n_mel_frames
from corpus_aligner.longform import Aligned, AlignFn, Window, align_windows, is_long, recover_tail
from corpus_aligner.normalize import Word
from corpus_aligner.prefetch import run_ahead
from corpus_aligner.quality import collapsed_tail, flagged_share, word_flags
from corpus_aligner.records import AlignedWord, PlacedWord
from corpus_aligner.session import GracefulStop, Session
from corpus_aligner.stages import Probed, known_duration, load_wave, normalize, probe
from corpus_aligner.writers.parquet import Outcome, utterance_row, utterances_frame, word_rows, words_frame
from corpus_aligner.writers.textgrid import write_textgrid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """An utterance that passed probe and normalize: ready to be batched."""

    utt: Utterance
    probed: Probed
    words: list[Word]
    length: int  # decoder positions (the batch-packing length)
    long: bool  # aligned window by window

    @property
    def duration_s(self) -> float:
        return self.probed.duration_s

    def failed(self, stage: str, error: AlignerError) -> dict[str, Any]:
        probed = self.probed
        return utterance_row(self.utt, probed.info, probed.duration_s, failure=(stage, error), warnings=probed.warnings)


@dataclass(frozen=True)
class Loaded:
    """A batch after the load stage: (item, samples) of those that loaded, failed rows of the others,
    and the log-mel of each loaded short item (None for long recordings, aligned window by window)."""

    ready: list[tuple[Prepared, np.ndarray]]
    failed: list[dict[str, Any]]
    features: list[np.ndarray | None]


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


def prepare(
    utterances: list[Utterance], cfg: AlignConfig, tick_s: float, aligner: Aligner | None = None
) -> tuple[list[Prepared], list[dict[str, Any]]]:
    """Stages read, probe and normalize for every utterance; those that fail become failed rows.

    Without an aligner (mode=validate) the packing length is 0.
    """
    prepared: list[Prepared] = []
    failed: list[dict[str, Any]] = []
    for utt in utterances:
        info, probed, stage = None, None, "read"
        try:
            if utt.read_error:
                raise utt.read_error
            stage = "probe"
            info = probe_audio(utt.audio_path)
            probed = probe(utt, info, cfg, tick_s)
            stage = "normalize"
            words = normalize(utt, probed.duration_s, tick_s)
        except AlignerError as exc:
            duration = probed.duration_s if probed else known_duration(utt, info)
            warnings = probed.warnings if probed else ()
            failed.append(utterance_row(utt, info, duration, failure=(stage, exc), warnings=warnings))
            continue
        long = is_long(probed.duration_s, cfg.long)
        length = 0
        if aligner is not None and not long:
            n_frames = n_mel_frames(round(probed.duration_s * SAMPLE_RATE_HZ))
            length = aligner.sequence_length(n_frames, [w.token for w in words])
        prepared.append(Prepared(utt, probed, words, length, long))
    return prepared, failed


def load_waves(items: list[Prepared]) -> tuple[list[tuple[Prepared, np.ndarray]], list[dict[str, Any]]]:
    """Stage load: each item's samples, or its failed row."""
    ready, failed = [], []
    for p in items:
        try:
            ready.append((p, load_wave(p.utt, p.probed)))
        except AlignerError as exc:
            failed.append(p.failed("load", exc))
    return ready, failed


def align_items(aligner: Aligner, items: list[Prepared], features: list) -> list[Any]:
    """Each item's AlignedWords, or the AlignerError that stopped it (a failing batch is retried item by item)."""
    tokens = [[w.token for w in p.words] for p in items]
    try:
        return list(aligner.align_features(features, tokens))
    except AlignerError:
        if len(items) == 1:
            raise
    results: list[Any] = []
    for feats, toks in zip(features, tokens):  # output does not depend on batch composition
        try:
            results.append(aligner.align_features([feats], [toks])[0])
        except AlignerError as exc:
            results.append(exc)
    return results


def window_aligner(aligner: Aligner, wave: np.ndarray) -> AlignFn:
    """One model pass per window of `wave` (the utterance's 16 kHz samples)."""

    def align(window: Window, tokens: list[str] | Any) -> list[AlignedWord]:
        a, b = round(window.start_s * SAMPLE_RATE_HZ), round(window.end_s * SAMPLE_RATE_HZ)
        return aligner.align_features([log_mel(wave[a:b])], [list(tokens)])[0]

    return align


class BatchRunner:
    """Aligns batches of prepared utterances and turns them into rows and TextGrids."""

    def __init__(self, aligner: Aligner, output_dir: Path, textgrids: bool, cfg: AlignConfig):
        self.aligner, self.output_dir, self.textgrids, self.cfg = aligner, output_dir, textgrids, cfg
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

    def load(self, items: list[Prepared]) -> Loaded:
        """Stage load (runs in loader threads, ahead of the model): samples, and log-mel of the short ones."""
        start = perf_counter()
        ready, failed = load_waves(items)
        features = [None if p.long else log_mel(w) for p, w in ready]
        self.add_time("load", perf_counter() - start)  # summed over loader threads
        return Loaded(ready, failed, features)

    def run(
        self, items: list[Prepared], loaded: Loaded | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Load (unless `loaded` already holds it), align and write one batch: its word and utterance rows."""
        loaded = loaded if loaded is not None else self.load(items)
        with self.timed("align"):
            results = self.align(loaded.ready, loaded.features)
        return self.write(loaded, results)

    def write(
        self, loaded: Loaded, results: list[Aligned | AlignerError]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Rows and TextGrids of an aligned batch (runs in the writer thread, behind the model)."""
        start = perf_counter()
        word_rows_out: list[dict[str, Any]] = []
        utt_rows: list[dict[str, Any]] = list(loaded.failed)
        for (p, _), result in zip(loaded.ready, results):
            if isinstance(result, AlignerError):
                utt_rows.append(p.failed("align", result))
                continue
            words, row = self.rows(p, result)
            word_rows_out.extend(words)
            utt_rows.append(row)
        self.add_time("write", perf_counter() - start)
        return word_rows_out, utt_rows

    def align(
        self, ready: list[tuple[Prepared, np.ndarray]], features: list[np.ndarray | None]
    ) -> list[Aligned | AlignerError]:
        """Short utterances in one batched pass (then tail recovery one by one), long ones window by window.

        features: the log-mel of each short item of `ready` (None for long ones)."""
        rules, low = self.cfg.long, self.cfg.low_probability
        results: list[Aligned | AlignerError] = []
        short = [(p, f) for (p, _), f in zip(ready, features) if not p.long and f is not None]
        single: list[list[AlignedWord] | AlignerError]
        try:
            single = align_items(self.aligner, [p for p, _ in short], [f for _, f in short]) if short else []
        except AlignerError as exc:
            single = [exc] * len(short)
        by_id = {p.utt.utt_id: r for (p, _), r in zip(short, single)}
        for p, wave in ready:
            tokens = [w.token for w in p.words]
            try:
                if p.long:
                    aligner = window_aligner(self.aligner, wave)
                    results.append(align_windows(aligner, tokens, p.duration_s, rules, low, self.tick_s))
                    continue
                first = by_id[p.utt.utt_id]
                if isinstance(first, AlignerError):
                    raise first
                placed = [PlacedWord(a, 0, 0.0, p.duration_s) for a in first]
                again = recover_tail(
                    placed, window_aligner(self.aligner, wave), tokens, p.duration_s, rules, low, self.tick_s
                )
                results.append(Aligned(again.placed, 1 + again.windows))
            except AlignerError as exc:
                results.append(exc)
        return results

    def rows(self, p: Prepared, result: Aligned) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        flags = word_flags(result.placed, self.tick_s, self.cfg.low_probability, self.cfg.long.collapse_min_words)
        rows = word_rows(p.utt.utt_id, p.utt.speaker, p.utt.recording, p.words, result.placed, flags)
        textgrid = self.write_textgrid(p, rows) if self.textgrids else None
        spans = [(r["start_s"], r["end_s"]) for r in rows]
        outcome = Outcome(
            n_words=len(rows),
            windows=result.windows,
            flagged_share=flagged_share(flags),
            collapsed_tail_words=collapsed_tail(spans, self.cfg.long.collapse_min_words),
            textgrid=textgrid,
        )
        return rows, utterance_row(p.utt, p.probed.info, p.duration_s, outcome, warnings=p.probed.warnings)

    def write_textgrid(self, p: Prepared, rows: list[dict[str, Any]]) -> str:
        name = p.utt.utt_id.replace("/", "_").replace("\\", "_") + ".TextGrid"
        rel = Path("textgrids", *p.utt.rel_dir.split("/"), name) if p.utt.rel_dir else Path("textgrids", name)
        spans = [(r["start_s"], r["end_s"], r["word"]) for r in rows]
        write_textgrid(self.output_dir / rel, spans, p.utt.text, p.duration_s)
        return rel.as_posix()


def progress_bar(total_s: float, enabled: bool) -> tqdm:
    """A bar in audio hours; quiet when disabled or when stderr is not a terminal."""
    return tqdm(
        total=total_s / 3600,
        unit="h",
        desc="aligning",
        disable=not enabled or not sys.stderr.isatty(),
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} h audio [{elapsed}<{remaining}{postfix}]",
    )


def plan_batches(prepared: list[Prepared], cfg: AppConfig) -> list[list[int]]:
    """Long recordings one per batch (longest first), then the short ones packed by padded cost."""
    long = sorted((i for i, p in enumerate(prepared) if p.long), key=lambda i: -prepared[i].duration_s)
    short = [i for i, p in enumerate(prepared) if not p.long]
    packed = pack_batches([prepared[i].length for i in short], cfg.batch.budget_positions, cfg.batch.max_utterances)
    return [[i] for i in long] + [[short[k] for k in batch] for batch in packed]


def run(cfg: AppConfig) -> RunResult:
    """Align the configured corpus (or this shard of it) into cfg.output.dir; resumes what is there.

    A first Ctrl-C/SIGTERM stops before the next batch; the result then says `interrupted`."""
    session = Session.open(cfg)
    aligner, store = session.aligner, session.store
    runner = BatchRunner(aligner, session.output_dir, cfg.output.textgrid, cfg.align)
    with GracefulStop() as stop:
        with runner.timed("prepare"):
            prepared, failed = prepare(session.todo, cfg.align, runner.tick_s, aligner)
        store.write_batch(words_frame([]), utterances_frame(failed))
        batches = plan_batches(prepared, cfg)
        audio_s = sum(p.duration_s for p in prepared)
        loop_start, done_s, n_batches = perf_counter(), 0.0, 0
        item_lists = [[prepared[i] for i in batch] for batch in batches]

        def commit(loaded: Loaded, results: list[Aligned | AlignerError]) -> None:
            words, utts = runner.write(loaded, results)
            store.write_batch(words_frame(words), utterances_frame(utts))

        # Batches are loaded ahead by `loader_threads` threads and written behind by one writer thread (commits
        # stay in order), so the model rarely waits. On any exit the writer finishes what it was given first:
        # a crash loses only the batch being aligned (and, on SIGKILL, the one being written).
        with (
            progress_bar(audio_s, cfg.output.progress) as bar,
            run_ahead(runner.load, item_lists, cfg.batch.prefetch_batches, cfg.batch.loader_threads) as loads,
            ThreadPoolExecutor(1, thread_name_prefix="writer") as writer,
        ):
            written: Future[None] | None = None
            for items, loaded in zip(item_lists, loads):
                if stop.requested:
                    break
                with runner.timed("align"):
                    results = runner.align(loaded.ready, loaded.features)
                if written is not None:
                    with runner.timed("write_wait"):
                        written.result()  # re-raises a write error; at most one batch waits to be written
                written = writer.submit(commit, loaded, results)
                n_batches += 1
                batch_s = sum(p.duration_s for p in items)
                done_s += batch_s
                bar.set_postfix_str(f"RTF {(perf_counter() - loop_start) / max(done_s, 1e-9):.3f}", refresh=False)
                bar.update(batch_s / 3600)
            if written is not None:
                written.result()
    loop_s = perf_counter() - loop_start
    lengths = [p.length for p in prepared]
    short_batches = [b for b in batches if not prepared[b[0]].long]
    this_run = {
        "utterances_processed": len(failed) + sum(len(b) for b in batches[:n_batches]),
        "audio_s_processed": done_s,
        "batches": n_batches,
        "padding_fraction": padding_fraction(lengths, short_batches) if short_batches else 0.0,
        "throughput_audio_s_per_s": done_s / loop_s if loop_s > 0 else None,
    }
    timings = {**runner.timings, "batches": loop_s}
    return session.finish(this_run, timings, interrupted=n_batches < len(batches))
