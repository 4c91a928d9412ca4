"""The per-utterance checks before the model: probe (header), normalize (transcript), load (samples).

Each function raises the package's error for what is wrong with one utterance and returns values
otherwise; pipeline.py catches and records. Both the main job and `mode=validate` run exactly these,
so validation finds every problem the run would meet before the model (read, probe, normalize, load).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from corpus_aligner.audio import SAMPLE_RATE_HZ, AudioInfo, check_header, check_signal, load_audio
from corpus_aligner.config import AlignConfig
from corpus_aligner.containers import extension_mismatch
from corpus_aligner.corpus import Utterance
from corpus_aligner.errors import (
    ChannelError,
    EmptyAudioError,
    EmptyTranscriptError,
    NoAlignableWordsError,
    TooLongError,
    TooManyWordsError,
    TooShortError,
)
from corpus_aligner.normalize import Word, canonical_language, split_transcript

log = logging.getLogger(__name__)

# A manifest `duration` may overshoot the file by rounding; beyond this it is an error.
SEGMENT_TOLERANCE_S = 0.05


@dataclass(frozen=True, slots=True)
class Probed:
    """What the header says about an utterance's audio, and the seconds of it that are aligned."""

    info: AudioInfo
    duration_s: float
    channel: int | None  # the channel taken, None for the mean of all
    warnings: tuple[str, ...] = ()


def channel_of(utt: Utterance, cfg: AlignConfig) -> int | None:
    """The channel to align: the corpus entry's own (manifest `channel`), else `align.channel`, else the mean."""
    return utt.channel if utt.channel is not None else cfg.channel


def segment_duration(utt: Utterance, info: AudioInfo) -> float:
    """Seconds of audio the utterance spans; raises when its segment is not inside the file."""
    available = info.duration_s - utt.offset_s
    if available <= 0:
        raise EmptyAudioError(
            f"offset {utt.offset_s} s is beyond the end of {utt.audio_path} ({info.duration_s:.3f} s)"
        )
    duration = available if utt.duration_s is None else utt.duration_s
    if duration > available + SEGMENT_TOLERANCE_S:
        raise EmptyAudioError(
            f"segment {utt.offset_s}+{duration} s runs past the end of {utt.audio_path} ({info.duration_s:.3f} s)"
        )
    return min(duration, available)


def known_duration(utt: Utterance, info: AudioInfo | None) -> float | None:
    """The utterance's seconds as far as the header tells, for the row of one that failed at probe."""
    if info is None or not info.duration_s > utt.offset_s:
        return None
    return min(utt.duration_s or math.inf, info.duration_s - utt.offset_s)


def probe(utt: Utterance, info: AudioInfo, cfg: AlignConfig, tick_s: float) -> Probed:
    """Header checks (audio.check_header) of `info` (audio.probe_audio), the channel, a usable duration."""
    check_header(info)
    channel = channel_of(utt, cfg)
    if channel is not None and channel >= info.channels:
        raise ChannelError(f"{utt.audio_path}: channel {channel} requested but the file has {info.channels} channel(s)")
    duration = segment_duration(utt, info)
    if duration == 0.0:
        raise EmptyAudioError(f"{utt.audio_path}: the segment is empty (duration 0)")
    if duration < tick_s:
        raise TooShortError(
            f"{duration * 1000:.0f} ms of audio is shorter than one encoder step ({tick_s * 1000:.0f} ms)"
        )
    if duration > cfg.max_duration_s:
        raise TooLongError(
            f"{duration / 3600:.2f} h of audio is longer than align.max_duration_s={cfg.max_duration_s:.0f} s "
            "(the whole recording is decoded in memory); raise it or split the recording"
        )
    warning = extension_mismatch(utt.audio_path)
    if warning:
        log.warning("%s: %s (it is decoded by its content)", utt.audio_path, warning)
    return Probed(info, duration, channel, (warning,) if warning else ())


def normalize(utt: Utterance, duration_s: float, tick_s: float) -> list[Word]:
    """The transcript's words as the model sees them, each with the original text it came from."""
    words = split_transcript(utt.text, canonical_language(utt.language))
    if not words:
        if not utt.text.strip():
            raise EmptyTranscriptError("transcript is empty")
        raise NoAlignableWordsError(
            f"transcript {utt.text!r} has no alignable words (only punctuation or symbols, no letters or digits)"
        )
    slots = int(duration_s / tick_s)
    if len(words) > max(slots, 1):
        raise TooManyWordsError(
            f"{len(words)} words cannot fit {duration_s:.2f} s of audio ({slots} slots of {tick_s * 1000:.0f} ms): "
            "does the transcript belong to this audio?"
        )
    return words


def load_wave(utt: Utterance, probed: Probed) -> np.ndarray:
    """The utterance's samples: mono (or its channel) 16 kHz float32, its segment only, not silent."""
    wave = load_audio(utt.audio_path, channel=probed.channel)
    if utt.offset_s or utt.duration_s is not None:
        start = round(utt.offset_s * SAMPLE_RATE_HZ)
        wave = wave[start : start + round(probed.duration_s * SAMPLE_RATE_HZ)]
    what = utt.audio_path if not utt.offset_s and utt.duration_s is None else f"{utt.audio_path} [segment]"
    check_signal(wave, what)
    return wave
