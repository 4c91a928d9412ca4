"""Stages before the model that run in loader threads or spawned processes: the checks of `prepare` (read,
probe, normalize) and, ahead of the model, load (samples and log-mel).

Kept free of MLX (a spawned loader process imports this module to unpickle its work, and MLX would set
up the GPU there too); `tests/test_layout.py` checks that.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import Any

import numpy as np

from corpus_aligner.audio import probe_audio
from corpus_aligner.config import AlignConfig
from corpus_aligner.corpus import Utterance
from corpus_aligner.errors import AlignerError
from corpus_aligner.frontend import log_mel
from corpus_aligner.normalize import Word
from corpus_aligner.stages import Probed, known_duration, load_wave, normalize, probe
from corpus_aligner.writers.parquet import utterance_row


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
    and the log-mel of each loaded short item (None for long recordings, aligned window by window).
    Samples of short items are None when a loader process dropped them (`load_batch`)."""

    ready: list[tuple[Prepared, np.ndarray | None]]
    failed: list[dict[str, Any]]
    features: list[np.ndarray | None]
    load_s: float = 0.0  # seconds the load took (in its thread or process)


def check(
    utterances: list[Utterance], cfg: AlignConfig, tick_s: float
) -> tuple[list[tuple[Utterance, Probed, list[Word]]], list[dict[str, Any]]]:
    """Stages read, probe and normalize (no samples decoded): (utterance, probe, words) of those that pass,
    and the failed row of each that does not, with the stage it failed at."""
    ok: list[tuple[Utterance, Probed, list[Word]]] = []
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
            ok.append((utt, probed, normalize(utt, probed.duration_s, tick_s)))
        except AlignerError as exc:
            duration = probed.duration_s if probed else known_duration(utt, info)
            warnings = probed.warnings if probed else ()
            failed.append(utterance_row(utt, info, duration, failure=(stage, exc), warnings=warnings))
    return ok, failed


def load_batch(items: list[Prepared], keep_waves: bool = True, dtype: np.dtype | type = np.float32) -> Loaded:
    """Stage load, ahead of the model (in loader threads or processes): samples, and log-mel of the short
    items in `dtype` (`Aligner.feature_dtype`). keep_waves=False drops the samples of short items (a loader
    process would otherwise send them back; the rare tail recovery that needs them decodes the file again)."""
    start = perf_counter()
    ready, failed = load_waves(items)
    features = [None if p.long else log_mel(w, dtype) for p, w in ready]
    kept: list[tuple[Prepared, np.ndarray | None]] = [(p, w if keep_waves or p.long else None) for p, w in ready]
    return Loaded(kept, failed, features, perf_counter() - start)


def load_waves(items: list[Prepared]) -> tuple[list[tuple[Prepared, np.ndarray]], list[dict[str, Any]]]:
    """Stage load: each item's samples, or its failed row."""
    ready, failed = [], []
    for p in items:
        try:
            ready.append((p, load_wave(p.utt, p.probed)))
        except AlignerError as exc:
            failed.append(p.failed("load", exc))
    return ready, failed
