"""Waveform input: any file or array -> mono 16 kHz float32 in [-1, 1] (model.md §1.1).

Mirrors qwen_asr/inference/utils.py (`load_audio_any`, `to_mono`, `float_range_normalize`,
`normalize_audio_input`) sample for sample, with two deliberate differences: files are read with
soundfile only (the official librosa.load falls back to audioread/ffmpeg for formats libsndfile
cannot read; here those raise AudioError), and a file's channel layout is known from the reader,
so the (C, T)-vs-(T, C) guess is applied to bare arrays only.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from corpus_aligner.containers import check_complete, describe_unreadable
from corpus_aligner.errors import (
    AudioError,
    CorruptAudioError,
    EmptyAudioError,
    MissingAudioError,
    NonFiniteAudioError,
    SilentAudioError,
    TruncatedAudioError,
    UnsupportedAudioError,
)

SAMPLE_RATE_HZ = 16000
# Header rates outside this range are corrupt headers, not recordings (pocketsphinx's awful.wav: 1,092,676 Hz).
MIN_RATE_HZ, MAX_RATE_HZ = 4000, 768000
# A peak at or below one 16-bit step (-90 dBFS) is digital silence: nothing to align to.
SILENCE_PEAK = 2.0**-15
# librosa 0.11 `resample(res_type="soxr_hq")` calls `soxr.resample(y, orig_sr, target_sr, quality="soxr_hq")`.
_SOXR_QUALITY = "soxr_hq"
# The official orientation rule: a 2-D array with at most this many rows (and more columns) is (C, T).
_MAX_CHANNELS_FIRST = 8


@dataclass(frozen=True, slots=True)
class AudioInfo:
    """What a file's header says, read without decoding samples (cheap enough to size a corpus)."""

    path: str
    sample_rate_hz: int
    channels: int
    frames: int
    duration_s: float
    format: str
    subtype: str


def _downmix_time_major(x: np.ndarray, channel: int | None) -> np.ndarray:
    """(T, C) -> (T,): the channel mean as float32 (the official `np.mean(axis=-1)`), or one channel."""
    n_channels = x.shape[1]
    if channel is None:
        return np.mean(x, axis=-1).astype(np.float32)
    if not 0 <= channel < n_channels:
        raise AudioError(f"channel {channel} requested but the audio has {n_channels} channel(s)")
    return np.ascontiguousarray(x[:, channel], dtype=np.float32)


def to_mono(x: np.ndarray, channel: int | None = None) -> np.ndarray:
    """One channel of a 1-D or 2-D array; a 2-D array is (C, T) iff shape[0] <= 8 and shape[1] > shape[0].

    1-D input comes back unchanged (dtype kept, as the official code does); `channel=k` picks
    channel k instead of averaging (only k = 0 for 1-D input).
    """
    x = np.asarray(x)
    if x.ndim == 1:
        if channel not in (None, 0):
            raise AudioError(f"channel {channel} requested but the audio is mono")
        return x
    if x.ndim != 2:
        raise AudioError(f"audio must be 1-D (T,) or 2-D (T, C)/(C, T), got shape {x.shape}")
    if x.shape[0] <= _MAX_CHANNELS_FIRST and x.shape[1] > x.shape[0]:
        x = x.T
    return _downmix_time_major(x, channel)


def resample(x: np.ndarray, sr: int) -> np.ndarray:
    """`x` at `sr` Hz -> 16 kHz float32, equal to librosa 0.11 `resample(res_type="soxr_hq")`.

    Like librosa, the soxr output is zero-padded or cut to ceil(len * 16000 / sr) samples, and the
    resampling runs in the input's float precision (float64 stays float64 until the final cast).
    """
    if sr == SAMPLE_RATE_HZ:
        return np.asarray(x, dtype=np.float32)
    if sr <= 0:
        raise AudioError(f"sample rate must be positive, got {sr}")
    if x.dtype != np.float64:
        x = x.astype(np.float32)
    n_out = int(np.ceil(x.shape[-1] * (float(SAMPLE_RATE_HZ) / sr)))
    y = soxr.resample(np.ascontiguousarray(x), sr, SAMPLE_RATE_HZ, quality=_SOXR_QUALITY)
    if y.shape[0] < n_out:
        y = np.pad(y, (0, n_out - y.shape[0]))
    return np.asarray(y[:n_out], dtype=np.float32)


def _peak_limit(x: np.ndarray) -> np.ndarray:
    """The official `float_range_normalize`: divide by the peak only if it exceeds 1, then clip."""
    x = x.astype(np.float32)
    peak = float(np.max(np.abs(x)))
    if peak > 1.0:
        x = x / peak
    return np.clip(x, -1.0, 1.0)


def prepare_waveform(x: np.ndarray, sr: int, channel: int | None = None) -> np.ndarray:
    """Any 1-D/2-D array at `sr` Hz -> mono 16 kHz float32 in [-1, 1] (official `normalize_audio_input`).

    Integer arrays are treated as the official code treats them: cast to float, then scaled by
    their peak (not by the integer range). Empty input and NaN/inf samples raise AudioError.
    """
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise AudioError(f"audio samples must be real numbers, got dtype {x.dtype}")
    if x.size == 0:
        raise AudioError(f"audio has no samples (shape {x.shape})")
    mono = to_mono(x, channel)
    if mono.dtype not in (np.float32, np.float64):
        mono = mono.astype(np.float32)
    bad = int(mono.size - np.count_nonzero(np.isfinite(mono)))
    if bad:
        raise NonFiniteAudioError(f"audio contains {bad} non-finite sample(s) (NaN or inf) after downmixing")
    return _peak_limit(resample(mono, int(sr)))


def _read_file(path: str) -> tuple[np.ndarray, int]:
    """Samples as float32 (T, C) and the rate; every failure becomes AudioError naming the path.

    Decoding fewer frames than the header states is an error (except MP3, whose header frame count is an
    estimate; containers.check_complete judges MP3s by their frames).
    """
    if not os.path.exists(path):
        raise MissingAudioError(f"{path}: file not found")
    try:
        with sf.SoundFile(path) as f:
            expected, fmt, sr = f.frames, f.format, int(f.samplerate)
            data = f.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        raise _decode_error(path, exc) from exc
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CorruptAudioError(f"{path}: cannot read audio ({exc})") from exc
    if data.shape[0] == 0:
        raise EmptyAudioError(f"{path}: the file has 0 audio frames")
    if fmt != "MP3" and data.shape[0] < expected:
        raise TruncatedAudioError(
            f"{path}: truncated: decoding gives {data.shape[0]} of the {expected} frames the header states"
        )
    return data, sr


def _decode_error(path: str, exc: sf.LibsndfileError) -> AudioError:
    """What went wrong, and where: open failures name the content; decode failures the time they stop at."""
    try:
        f = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return UnsupportedAudioError(f"{path}: cannot read audio: {describe_unreadable(path)} ({exc})")
    with f:
        done = 0
        try:
            while f.read(f.samplerate, dtype="float32").shape[0]:
                done = f.tell()
        except sf.LibsndfileError:
            pass
        return CorruptAudioError(
            f"{path}: cannot read audio ({exc}): decoding stops at {done / f.samplerate:.2f} s of the "
            f"{f.frames / f.samplerate:.2f} s the header states: the file is truncated or corrupt"
        )


def load_audio(source: str | os.PathLike[str] | tuple[np.ndarray, int], channel: int | None = None) -> np.ndarray:
    """A path (read with soundfile) or an (array, sample_rate) tuple -> the prepared waveform."""
    if isinstance(source, tuple):
        if len(source) != 2:
            raise AudioError(f"audio tuple must be (array, sample_rate), got {len(source)} items")
        array, sr = source
        return prepare_waveform(np.asarray(array), int(sr), channel)
    path = os.fspath(source)
    data, sr = _read_file(path)
    try:
        mono = _downmix_time_major(data, channel)
        return prepare_waveform(mono, sr)
    except AudioError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def probe_audio(path: str | os.PathLike[str]) -> AudioInfo:
    """Rate, channels, frames and duration from the header only (soundfile.info)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingAudioError(f"{path}: file not found")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise UnsupportedAudioError(f"{path}: cannot read audio header: {describe_unreadable(path)} ({exc})") from exc
    frames, rate = int(info.frames), int(info.samplerate)
    return AudioInfo(
        path=path,
        sample_rate_hz=rate,
        channels=int(info.channels),
        frames=frames,
        duration_s=frames / rate if rate > 0 else math.nan,
        format=str(info.format),
        subtype=str(info.subtype),
    )


def inspect_audio(path: str | os.PathLike[str]) -> AudioInfo:
    """`probe_audio` and `check_header`: everything that needs no full decode."""
    info = probe_audio(path)
    check_header(info)
    return info


def check_header(info: AudioInfo) -> None:
    """Raise unless the header is usable: a plausible rate, some frames, and a file as long as its header
    says (RIFF/AIFF sizes, MPEG frames, a FLAC that can seek to its last frame)."""
    if not MIN_RATE_HZ <= info.sample_rate_hz <= MAX_RATE_HZ:
        raise CorruptAudioError(
            f"{info.path}: the header's sample rate of {info.sample_rate_hz} Hz is implausible (expected "
            f"{MIN_RATE_HZ}-{MAX_RATE_HZ} Hz): the header is corrupt"
        )
    if info.frames <= 0:
        raise EmptyAudioError(f"{info.path}: the file has no audio frames (a header only)")
    check_complete(info.path, info.format)
    if info.format == "FLAC":  # seeking uses the FLAC frame index: a cut file fails at once, without decoding
        try:
            with sf.SoundFile(info.path) as f:
                f.seek(info.frames - 1)
                f.read(1, dtype="float32")
        except sf.LibsndfileError as exc:
            raise TruncatedAudioError(
                f"{info.path}: truncated: the header states {info.duration_s:.2f} s but the last frame cannot be "
                f"decoded ({exc or 'seek failed'}): the file is cut short or corrupt"
            ) from exc


def check_signal(wave: np.ndarray, what: str) -> None:
    """Raise SilentAudioError when the prepared waveform is digital silence (`what` names it in the message)."""
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak <= SILENCE_PEAK:
        raise SilentAudioError(
            f"{what}: the audio is digital silence (peak {peak:.2g}, at most one 16-bit step): nothing to align"
        )
