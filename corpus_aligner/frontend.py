"""Waveform -> Whisper-style 128-bin log-mel, time-major (model.md §1.2).

Mirrors transformers 4.57.6 `WhisperFeatureExtractor._torch_extract_fbank_features` as qwen_asr's
processor calls it for one clip (padding=True, truncation=False, so no 30 s pad/trim), in numpy
float32. The official output is (128, n); ours is its transpose, (n, 128).

Short clips: n = len // 160 frames, so fewer than 160 samples raise AudioError. The official STFT
(torch reflect padding by 200 samples) also fails for 160..200 samples; here numpy's reflect
padding, which keeps reflecting when the pad is longer than the clip, covers that range and equals
torch's padding whenever torch's is defined (more than 200 samples).
"""

from __future__ import annotations

import functools
from typing import Any, cast

import numpy as np
import scipy.fft

from corpus_aligner.audio import SAMPLE_RATE_HZ
from corpus_aligner.errors import AudioError

N_FFT = 400
HOP_LENGTH = 160
N_MELS = 128
_N_FREQS = N_FFT // 2 + 1
_LOG_FLOOR = 1e-10
_DYNAMIC_RANGE = 8.0


def n_mel_frames(n_samples: int) -> int:
    """Frames of a single clip: 1 + len // 160 STFT frames, minus the dropped last one."""
    return n_samples // HOP_LENGTH


def _hz_to_slaney_mel(hz: float) -> float:
    """Scalar, as transformers evaluates the two band edges (3f/200 below 1 kHz, log above)."""
    if hz < 1000.0:
        return 3.0 * hz / 200.0
    return float(15.0 + np.log(hz / 1000.0) * (27.0 / np.log(6.4)))


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    hz = 200.0 * mel / 3.0
    log_region = mel >= 15.0
    hz[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel[log_region] - 15.0))
    return hz


@functools.cache
def mel_filters() -> np.ndarray:
    """(201, 128) Slaney filterbank, float64, read-only; the same operations as transformers
    `audio_utils.mel_filter_bank(201, 128, 0, 8000, 16000, norm="slaney", mel_scale="slaney")`."""
    mel_edges = np.linspace(_hz_to_slaney_mel(0.0), _hz_to_slaney_mel(8000.0), N_MELS + 2)
    edges_hz = _slaney_mel_to_hz(mel_edges)
    fft_hz = np.linspace(0, SAMPLE_RATE_HZ // 2, _N_FREQS)
    widths = np.diff(edges_hz)
    slopes = edges_hz[None, :] - fft_hz[:, None]  # (201, 130)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(np.zeros(1), np.minimum(down, up))
    filters *= (2.0 / (edges_hz[2 : N_MELS + 2] - edges_hz[:N_MELS]))[None, :]
    filters.setflags(write=False)
    return filters


@functools.cache
def _filters_f32() -> np.ndarray:
    filters = mel_filters().astype(np.float32)
    filters.setflags(write=False)
    return filters


@functools.cache
def _hann_window() -> np.ndarray:
    """Periodic Hann of 400 (torch.hann_window default), float32."""
    window = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
    window.setflags(write=False)
    return window


def power_spectrogram(wave: np.ndarray) -> np.ndarray:
    """(n, 201) float32 |STFT|^2: centred frames (reflect pad 200), periodic Hann, last frame dropped."""
    n = n_mel_frames(wave.shape[0])
    padded = np.pad(wave, N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n]  # (n, 400) view
    # scipy's pocketfft: 5x numpy 2.4's rfft over these many short rows (0.05 vs 0.23 ms per audio second),
    # the loaders' largest cost; both agree to float32 rounding.
    spectrum = scipy.fft.rfft(frames * _hann_window(), axis=-1, overwrite_x=True)  # (n, 201) complex64
    spectrum = cast("np.ndarray[Any, np.dtype[np.complex64]]", spectrum)  # scipy's stubs say a uarray tuple
    return (spectrum.real**2 + spectrum.imag**2).astype(np.float32, copy=False)


def log_mel(wave: np.ndarray, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Mono 16 kHz waveform -> (len // 160, 128) log-mel, clamped to 8 below its own max; computed in float32,
    returned in `dtype` (float16 where the encoder computes in float16: `Aligner.feature_dtype`)."""
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise AudioError(f"log_mel needs a 1-D mono waveform, got shape {wave.shape}")
    if n_mel_frames(wave.shape[0]) < 1:
        raise AudioError(f"audio too short for one feature frame: {wave.shape[0]} samples, need at least {HOP_LENGTH}")
    power = power_spectrogram(wave.astype(np.float32, copy=False))
    mel = power @ _filters_f32()  # (n, 128)
    log_spec = np.log10(np.maximum(mel, np.float32(_LOG_FLOOR)))
    log_spec = np.maximum(log_spec, log_spec.max() - np.float32(_DYNAMIC_RANGE))
    return ((log_spec + np.float32(4.0)) / np.float32(4.0)).astype(dtype, copy=False)
