"""The corpus runner: read -> probe -> normalize -> pack batches -> align -> write, then merge and report.

The only module that loops over a corpus, and the only place that catches the package's errors per
utterance: every input utterance ends as exactly one row of utterances.parquet, aligned or failed with
its stage, error type and message. Results are committed per batch (outputs.py), so a crash loses at
most the batch in flight and a rerun over the same output folder resumes.
"""

from __future__ import annotations

import logging
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
from tqdm import tqdm

from corpus_aligner.api import Aligner
from corpus_aligner.audio import SAMPLE_RATE_HZ, AudioInfo, load_audio, probe_audio
from corpus_aligner.batching import pack_batches, padding_fraction
from corpus_aligner.config import AppConfig, ModelConfig
from corpus_aligner.corpus import Utterance, corpus_identity, read_corpus, select_shard
from corpus_aligner.errors import AlignerError, AudioError, CorpusReadError, TooLongError, TranscriptError
from corpus_aligner.frontend import log_mel, n_mel_frames
from corpus_aligner.normalize import Word, canonical_language, split_transcript
from corpus_aligner.outputs import OutputStore, run_info, write_json
from corpus_aligner.report import build_report, format_report
from corpus_aligner.writers import atomic_path
from corpus_aligner.writers.parquet import utterance_row, utterances_frame, word_rows, words_frame
from corpus_aligner.writers.textgrid import write_textgrid

log = logging.getLogger(__name__)

MIN_DURATION_S = 0.02  # shorter clips give no usable features (model.md §1.2)
# A manifest `duration` may overshoot the file by rounding; beyond this it is an error.
SEGMENT_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class Prepared:
    """An utterance that passed probe and normalize: ready to be batched."""

    utt: Utterance
    info: AudioInfo
    duration_s: float
    words: list[Word]
    length: int  # decoder positions (the batch-packing length)


@dataclass
class RunResult:
    output_dir: Path
    report: dict[str, Any]
    report_text: str
    n_skipped: int  # already in the output folder (resumed)
    timings_s: dict[str, float] = field(default_factory=dict)


def load_aligner(cfg: ModelConfig) -> Aligner:
    """The configured weights; with `random_tiny`, generate the tiny random checkpoint first."""
    if cfg.random_tiny:
        folder = Path(cfg.path)
        if not (folder / "config.json").is_file():
            from corpus_aligner.testing.tiny_checkpoint import tiny_checkpoint

            tiny_checkpoint(folder, seed=cfg.tiny_seed)
        log.warning("model=tiny: a tiny checkpoint with RANDOM weights (%s); the times are MEANINGLESS", folder)
    return Aligner.from_pretrained(
        cfg.path, encoder_attention=cfg.encoder_attention, dtype=cfg.dtype, revision=cfg.revision
    )


def segment_duration(utt: Utterance, info: AudioInfo) -> float:
    """Seconds of audio the utterance spans; raises when its segment is not inside the file."""
    if info.frames <= 0 or not info.duration_s > 0:
        raise AudioError(f"{utt.audio_path}: the file has no audio frames")
    available = info.duration_s - utt.offset_s
    if available <= 0:
        raise AudioError(f"offset {utt.offset_s} s is beyond the end of {utt.audio_path} ({info.duration_s:.3f} s)")
    duration = available if utt.duration_s is None else utt.duration_s
    if duration > available + SEGMENT_TOLERANCE_S:
        raise AudioError(
            f"segment {utt.offset_s}+{duration} s runs past the end of {utt.audio_path} ({info.duration_s:.3f} s)"
        )
    return min(duration, available)


def check_duration(duration_s: float, max_duration_s: float) -> None:
    if duration_s < MIN_DURATION_S:
        raise AudioError(f"{duration_s * 1000:.0f} ms of audio is too short to align")
    if duration_s > max_duration_s:
        raise TooLongError(
            f"{duration_s:.1f} s of audio is longer than the {max_duration_s:.0f} s the model can time "
            "(5000 classes x 80 ms); split the recording into shorter utterances"
        )


def normalize(utt: Utterance, duration_s: float, tick_s: float) -> list[Word]:
    """The transcript's words as the model sees them, each with the original text it came from."""
    words = split_transcript(utt.text, canonical_language(utt.language))
    if not words:
        if not utt.text.strip():
            raise TranscriptError("transcript is empty")
        raise TranscriptError(f"transcript {utt.text!r} has no alignable words (no letters or digits)")
    slots = int(duration_s / tick_s)
    if len(words) > max(slots, 1):
        raise TranscriptError(
            f"{len(words)} words cannot fit {duration_s:.2f} s of audio ({slots} slots of {tick_s * 1000:.0f} ms): "
            "does the transcript belong to this audio?"
        )
    return words


def load_features(p: Prepared) -> np.ndarray:
    """Log-mel features of the utterance's span of its audio file."""
    wave = load_audio(p.utt.audio_path)
    if p.utt.offset_s or p.utt.duration_s is not None:
        start = round(p.utt.offset_s * SAMPLE_RATE_HZ)
        wave = wave[start : start + round(p.duration_s * SAMPLE_RATE_HZ)]
    return log_mel(wave)


def prepare(utterances: list[Utterance], aligner: Aligner) -> tuple[list[Prepared], list[dict[str, Any]]]:
    """Probe and normalize every utterance; those that fail become failed rows."""
    tick_ms = aligner.args.timestamp_segment_time_ms
    prepared: list[Prepared] = []
    failed: list[dict[str, Any]] = []
    for utt in utterances:
        info, duration, stage = None, None, "read"
        try:
            if utt.read_error:
                raise CorpusReadError(utt.read_error)
            stage = "probe"
            info = probe_audio(utt.audio_path)
            duration = segment_duration(utt, info)
            check_duration(duration, aligner.max_duration_s)
            stage = "normalize"
            words = normalize(utt, duration, tick_ms / 1000.0)
        except AlignerError as exc:
            failed.append(utterance_row(utt, info, duration, failure=(stage, exc)))
            continue
        n_frames = n_mel_frames(round(duration * SAMPLE_RATE_HZ))
        length = aligner.sequence_length(n_frames, [w.token for w in words])
        prepared.append(Prepared(utt, info, duration, words, length))
    return prepared, failed


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


class BatchRunner:
    """Aligns batches of prepared utterances and turns them into rows and TextGrids."""

    def __init__(self, aligner: Aligner, output_dir: Path, textgrids: bool):
        self.aligner, self.output_dir, self.textgrids = aligner, output_dir, textgrids
        self.timings: dict[str, float] = defaultdict(float)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.timings[stage] += perf_counter() - start

    def run(self, items: list[Prepared]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        word_rows_out: list[dict[str, Any]] = []
        utt_rows: list[dict[str, Any]] = []
        ready, features = [], []
        with self.timed("features"):
            for p in items:
                try:
                    features.append(load_features(p))
                    ready.append(p)
                except AlignerError as exc:
                    utt_rows.append(utterance_row(p.utt, p.info, p.duration_s, failure=("load", exc)))
        with self.timed("align"):
            try:
                results = align_items(self.aligner, ready, features) if ready else []
            except AlignerError as exc:
                results = [exc]
        with self.timed("write"):
            for p, result in zip(ready, results):
                if isinstance(result, AlignerError):
                    utt_rows.append(utterance_row(p.utt, p.info, p.duration_s, failure=("align", result)))
                    continue
                rows = word_rows(
                    p.utt.utt_id, p.utt.speaker, p.utt.recording, p.words, result, p.duration_s,
                    self.aligner.args.timestamp_segment_time_ms,
                )  # fmt: skip
                textgrid = self.write_textgrid(p, rows) if self.textgrids else None
                word_rows_out.extend(rows)
                utt_rows.append(utterance_row(p.utt, p.info, p.duration_s, len(rows), textgrid=textgrid))
        return word_rows_out, utt_rows

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


def run(cfg: AppConfig) -> RunResult:
    """Align the configured corpus (or this shard of it) into cfg.output.dir; resumes what is there."""
    started = perf_counter()
    output_dir = Path(cfg.output.dir).expanduser()
    utterances = select_shard(read_corpus(cfg.corpus), cfg.shard.index, cfg.shard.count)
    t_load = perf_counter()
    aligner = load_aligner(cfg.model)
    t_load = perf_counter() - t_load
    store = OutputStore(output_dir, cfg.shard.index, cfg.shard.count)
    store.claim(
        {
            "corpus": corpus_identity(cfg.corpus),
            "model": aligner.checkpoint.fingerprint,
            "dtype": cfg.model.dtype,
            "encoder_attention": cfg.model.encoder_attention,
        }
    )
    done = store.completed_ids()
    todo = [u for u in utterances if u.utt_id not in done]
    info = run_info(cfg, aligner.checkpoint, len(utterances), len(utterances) - len(todo))
    write_json(store.run_json, {**info, "status": "running"})

    runner = BatchRunner(aligner, output_dir, cfg.output.textgrid)
    with runner.timed("prepare"):
        prepared, failed = prepare(todo, aligner)
    store.write_batch(words_frame([]), utterances_frame(failed))
    lengths = [p.length for p in prepared]
    batches = pack_batches(lengths, cfg.batch.budget_positions, cfg.batch.max_utterances)
    audio_s = sum(p.duration_s for p in prepared)
    loop_start, done_s = perf_counter(), 0.0
    with progress_bar(audio_s, cfg.output.progress) as bar:
        for batch in batches:
            items = [prepared[i] for i in batch]
            words, utts = runner.run(items)
            store.write_batch(words_frame(words), utterances_frame(utts))
            batch_s = sum(p.duration_s for p in items)
            done_s += batch_s
            bar.set_postfix_str(f"RTF {(perf_counter() - loop_start) / done_s:.3f}", refresh=False)
            bar.update(batch_s / 3600)
    loop_s = perf_counter() - loop_start

    with store.lock():
        words_df, utts_df = store.merge()
        timings = {"load_model": t_load, **runner.timings, "batches": loop_s}
        timings["total"] = perf_counter() - started
        this_run = {
            "utterances_processed": len(todo),
            "audio_s_processed": audio_s,
            "batches": len(batches),
            "padding_fraction": padding_fraction(lengths, batches) if batches else 0.0,
            "throughput_audio_s_per_s": audio_s / loop_s if loop_s > 0 else None,
            "wall_s": timings["total"],
        }
        report = build_report(words_df, utts_df, this_run)
        text = format_report(report)
        write_json(output_dir / "report.json", report)
        with atomic_path(output_dir / "report.txt") as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    write_json(store.run_json, {**info, "status": "finished", "timings_s": timings, "this_run": this_run})
    return RunResult(output_dir, report, text, len(utterances) - len(todo), timings)
