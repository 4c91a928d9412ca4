"""corpus_aligner.audio against the official qwen_asr loader (model.md §1.1).

Run: pytest tests/test_audio.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from qwen_asr.inference.utils import normalize_audio_input
from qwen_asr.inference.utils import to_mono as official_to_mono

from corpus_aligner.audio import (
    SAMPLE_RATE_HZ,
    AudioInfo,
    load_audio,
    prepare_waveform,
    probe_audio,
    resample,
    to_mono,
)
from corpus_aligner.errors import AudioError

TESTDATA = Path("/work/shared/testdata")
SPEECH_16K = TESTDATA / "librispeech-mini/LibriSpeech/dev-clean-2/1988/24833/1988-24833-0000.flac"
STEREO_44K = TESTDATA / "awkward/sample_rates/LDC93S1_44k1_stereo.wav"


def _inventory() -> list[dict[str, str]]:
    with open(TESTDATA / "INVENTORY.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    data, sr = sf.read(SPEECH_16K, dtype="float32")
    assert sr == SAMPLE_RATE_HZ
    return data


@pytest.fixture(scope="module")
def made_files(tmp_path_factory: pytest.TempPathFactory, speech: np.ndarray) -> dict[str, Path]:
    """Real speech rewritten at 24 kHz mono and 44.1 kHz stereo (the second channel quieter)."""
    out = tmp_path_factory.mktemp("audio")
    at24 = soxr.resample(speech, SAMPLE_RATE_HZ, 24000)
    at44 = soxr.resample(speech, SAMPLE_RATE_HZ, 44100)
    files = {"24k": out / "speech_24k.wav", "44k_stereo": out / "speech_44k_stereo.flac"}
    sf.write(files["24k"], at24, 24000, subtype="PCM_16")
    sf.write(files["44k_stereo"], np.stack([at44, 0.3 * at44[::-1]], axis=1), 44100, subtype="PCM_24")
    return files


@pytest.mark.oracle
@pytest.mark.parametrize(
    "path",
    [
        SPEECH_16K,
        STEREO_44K,
        TESTDATA / "awkward/encodings/audio-stereo-16-bit-44100Hz.flac",
        TESTDATA / "awkward/sample_rates/bobby_16bit_48khz.wav",
        TESTDATA / "awkward/encodings/audio-mono-8-bit-44100Hz.wav",
        TESTDATA / "multilingual/zh/chinese.flac",
    ],
    ids=lambda p: p.name,
)
def test_load_audio_equals_official_on_real_files(path: Path) -> None:
    """Loading a real file gives exactly the official normalize_audio_input samples."""
    expected = normalize_audio_input(str(path))
    got = load_audio(path)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


@pytest.mark.oracle
@pytest.mark.parametrize("kind", ["24k", "44k_stereo"])
def test_load_audio_equals_official_on_made_files(made_files: dict[str, Path], kind: str) -> None:
    """24 kHz mono and 44.1 kHz stereo copies of real speech load exactly as the official code loads them."""
    path = made_files[kind]
    expected = normalize_audio_input(str(path))
    got = load_audio(str(path))
    np.testing.assert_array_equal(got, expected)
    assert abs(got.shape[0] - sf.info(str(path)).duration * SAMPLE_RATE_HZ) <= 1


@pytest.mark.oracle
@pytest.mark.parametrize(
    ("shape", "sr", "dtype", "scale"),
    [
        ((30001,), 16000, np.float32, 0.5),
        ((30001,), 24000, np.float64, 3.0),
        ((2, 30001), 44100, np.float32, 2.0),
        ((30001, 2), 22050, np.float64, 0.9),
        ((30001,), 16000, np.int16, 1000.0),
        ((3, 2), 8000, np.float32, 5.0),
    ],
)
def test_prepare_waveform_equals_official_on_arrays(shape: tuple[int, ...], sr: int, dtype: type, scale: float) -> None:
    """(array, sr) tuples of any layout, rate and dtype give the official samples bit for bit."""
    x = (np.random.default_rng(0).standard_normal(shape) * scale).astype(dtype)
    expected = normalize_audio_input((x, sr))
    np.testing.assert_array_equal(prepare_waveform(x, sr), expected)
    np.testing.assert_array_equal(load_audio((x, sr)), expected)


@pytest.mark.oracle
@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 12), st.integers(1, 12)),
        # allow_subnormal=False: importing qwen_asr imports nagisa -> dynet, which turns on flush-to-zero.
        elements=st.floats(-4, 4, width=32, allow_subnormal=False),
    )
)
def test_to_mono_orientation_matches_official(x: np.ndarray) -> None:
    """Any small 2-D array is oriented and averaged exactly as the official to_mono does."""
    np.testing.assert_array_equal(to_mono(x), official_to_mono(x))


def test_to_mono_channel_picks_one_channel() -> None:
    """`channel=k` returns channel k of a (C, T) or (T, C) array instead of the mean; bad k raises."""
    left, right = np.linspace(-1, 1, 100), np.linspace(1, 0, 100)
    channels_first = np.stack([left, right])
    np.testing.assert_array_equal(to_mono(channels_first, channel=1), right.astype(np.float32))
    np.testing.assert_array_equal(to_mono(channels_first.T, channel=0), left.astype(np.float32))
    np.testing.assert_allclose(to_mono(channels_first), (left + right) / 2, rtol=1e-6)
    with pytest.raises(AudioError, match="channel 2"):
        to_mono(channels_first, channel=2)
    with pytest.raises(AudioError, match="mono"):
        to_mono(left, channel=1)


def test_to_mono_rejects_3d() -> None:
    """3-D audio is an AudioError, not a silent reshape."""
    with pytest.raises(AudioError, match="shape"):
        to_mono(np.zeros((2, 3, 100)))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5000),
    sr=st.sampled_from([8000, 11025, 22050, 24000, 32000, 44100, 48000, 96000]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_resample_equals_librosa_soxr_hq(n: int, sr: int, dtype: type) -> None:
    """resample() equals librosa 0.11 resample(res_type="soxr_hq"), length fix included."""
    x = np.random.default_rng(n).standard_normal(n).astype(dtype)
    expected = librosa.resample(x, orig_sr=sr, target_sr=SAMPLE_RATE_HZ, res_type="soxr_hq").astype(np.float32)
    got = resample(x, sr)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_prepare_waveform_peak_rule() -> None:
    """Audio within [-1, 1] is untouched; louder audio is divided by its peak; quiet audio is not boosted."""
    quiet = np.array([0.1, -0.2, 0.05] * 100, dtype=np.float32)
    np.testing.assert_array_equal(prepare_waveform(quiet, SAMPLE_RATE_HZ), quiet)
    loud = quiet * 20
    out = prepare_waveform(loud, SAMPLE_RATE_HZ)
    assert np.max(np.abs(out)) == 1.0
    np.testing.assert_allclose(out, quiet / 0.2, rtol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("sr", [16000, 44100])
def test_prepare_waveform_rejects_non_finite(bad: float, sr: int) -> None:
    """A NaN or inf sample raises AudioError (the official code passes NaN through at 16 kHz)."""
    x = np.zeros(1000, dtype=np.float32)
    x[500] = bad
    with pytest.raises(AudioError, match="non-finite"):
        prepare_waveform(x, sr)
    with pytest.raises(AudioError, match="non-finite"):
        prepare_waveform(np.stack([np.zeros(1000), x]), sr)


def test_prepare_waveform_rejects_empty_and_non_numeric() -> None:
    """Zero samples or non-real dtypes raise AudioError."""
    with pytest.raises(AudioError, match="no samples"):
        prepare_waveform(np.zeros(0, dtype=np.float32), SAMPLE_RATE_HZ)
    with pytest.raises(AudioError, match="real numbers"):
        prepare_waveform(np.zeros(10, dtype=np.complex64), SAMPLE_RATE_HZ)


def test_load_audio_channel_from_file() -> None:
    """`channel=k` on a stereo file gives the official mono load of that channel alone."""
    data, sr = sf.read(STEREO_44K, dtype="float32", always_2d=True)
    for k in range(2):
        expected = normalize_audio_input((np.ascontiguousarray(data[:, k]), sr))
        np.testing.assert_array_equal(load_audio(STEREO_44K, channel=k), expected)


def test_load_audio_non_ascii_path(tmp_path: Path, speech: np.ndarray) -> None:
    """A file whose name is not ASCII loads like any other."""
    path = tmp_path / "ñandú_音声.wav"
    sf.write(path, speech, SAMPLE_RATE_HZ, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(path), speech)


@pytest.mark.parametrize(
    ("relpath", "reason"),
    [
        ("does/not/exist.wav", "file not found"),
        ("awkward/corrupt/pocketsphinx_bad.wav", "cannot read audio"),
        ("awkward/containers/ej-fra.m4a", "cannot read audio"),
        ("awkward/corrupt/truncated_2412-153948-0000.flac", "cannot read audio"),
        ("awkward/corrupt/aeneas_mono.zero.wav", "0 audio frames"),
    ],
)
def test_load_audio_errors_name_path_and_reason(relpath: str, reason: str) -> None:
    """Missing, unreadable and empty files raise AudioError naming the file and why."""
    path = TESTDATA / relpath
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert str(path) in str(info.value)
    assert reason in str(info.value)


def test_probe_audio_matches_inventory() -> None:
    """probe_audio reports what INVENTORY.tsv measured for every readable file, and raises for the rest."""
    rows = _inventory()
    assert len(rows) > 100
    for row in rows:
        path = TESTDATA / row["path"]
        if row["status"] == "open_error":
            with pytest.raises(AudioError, match="cannot read audio header"):
                probe_audio(path)
            continue
        info = probe_audio(path)
        assert isinstance(info, AudioInfo)
        assert (info.sample_rate_hz, info.channels) == (int(row["sample_rate"]), int(row["channels"]))
        assert (info.format, info.subtype) == (row["format"], row["subtype"])
        decoded = int(row["frames"])
        if info.format == "MP3":
            # An MP3 header may count the encoder delay/padding too: up to two MPEG frames more than decoding.
            assert 0 <= info.frames - decoded <= 2 * 1152, row["path"]
            continue
        assert info.frames == decoded, row["path"]
        assert info.duration_s == pytest.approx(float(row["duration_s"]), abs=1e-3)


def test_probe_audio_missing_file() -> None:
    """A missing path is an AudioError that names it."""
    with pytest.raises(AudioError, match=r"nope\.flac: file not found"):
        probe_audio("nope.flac")
