"""End-to-end parity of `Aligner.align` with the official `Qwen3ForcedAligner.align` (single calls), and
batch invariance of our own batching.

Run: python -m pytest -q tests/test_api.py
Tolerances: log-mel features 1e-4 absolute; slot logits 2e-3 absolute (both float32). Final word times
must be identical whenever every slot's top-1/top-2 margin in the oracle exceeds 10x the logit tolerance.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from oracle import run_official

from corpus_aligner import Aligner
from corpus_aligner.api import DEFAULT_SHAPES, Shapes
from corpus_aligner.audio import load_audio
from corpus_aligner.decode import decode_words
from corpus_aligner.errors import AudioError, TooLongError
from corpus_aligner.frontend import log_mel
from corpus_aligner.normalize import split_words
from corpus_aligner.testing.tiny_checkpoint import tiny_checkpoint

DATA = Path(__file__).resolve().parents[2] / "shared/testdata"
LOGIT_TOL = 2e-3
FEATURE_TOL = 1e-4

CASES = {
    # name: (audio file, seconds to keep or None, transcript, language)
    "en_1s": ("awkward/sample_rates/bobby_16bit_16khz.wav", None, "Bobby, it's three o'clock.", "English"),
    "en_7s_not_160": (
        "librispeech-mini/LibriSpeech/dev-clean-2/1988/24833/1988-24833-0000.flac",
        None,
        "THE TWO STRAY KITTENS GRADUALLY MAKE THEMSELVES AT HOME",
        "English",
    ),
    "zh_1s_48k": ("multilingual/zh/chinese.flac", None, "砸自己的脚", "Chinese"),
    "ja_7s": (
        "multilingual/ja/japanese_slow.wav",
        None,
        "アカギツネさんは本を読んだことがたくさんありますけれども、読むべき本はまだまだいっぱい残っています。",
        "Japanese",
    ),
    "ko_3s_44k_stereo": (
        "awkward/sample_rates/LDC93S1_44k1_stereo.wav",
        None,
        "가마솥에 밥을 지었습니다. 안녕하세요.",
        "Korean",
    ),
    "en_20s_full": (
        "awkward/stereo/michaelandsickmichael.wav",
        20.3,
        "Michael and sick Michael talked for a long while about the weather and the well-known 3.5 tests",
        "English",
    ),
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.fixture(scope="module")
def aligner(ckpt) -> Aligner:
    return Aligner.from_pretrained(ckpt, encoder_attention="full")


def case_audio(name: str, tmp_path: Path) -> Path:
    rel, seconds, _, _ = CASES[name]
    path = DATA / rel
    if seconds is None:
        return path
    x, sr = sf.read(path, dtype="float32", always_2d=True)
    out = tmp_path / f"{name}.wav"
    sf.write(out, x[: int(seconds * sr) + 37], sr)
    return out


def assert_same_alignment(ours, oracle_words, oracle_logits):
    """Same words; same raw classes wherever the oracle's top-1/top-2 margin is clear; our decoding of the
    oracle's classes gives its exact times; and our times are its times when every margin is clear."""
    words = [w for w, _, _ in oracle_words]
    assert [w.text for w in ours] == words
    top2 = np.sort(oracle_logits, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 10 * LOGIT_TOL
    classes = oracle_logits.argmax(-1)
    raw = np.array([t for w in ours for t in (w.start_tick_raw, w.end_tick_raw)])
    np.testing.assert_array_equal(raw[clear], classes[clear])
    replay = decode_words(words, classes, np.ones(len(classes)), 80.0)
    assert [(w.start_s, w.end_s) for w in replay] == [(s, e) for _, s, e in oracle_words]
    if clear.all():
        assert [(w.start_s, w.end_s) for w in ours] == [(s, e) for _, s, e in oracle_words]


@pytest.mark.parametrize("name", sorted(CASES))
def test_single_call_matches_official(ckpt, aligner, tmp_path, name):
    """Features, slot logits and final times of one utterance equal the official single call."""
    _, _, text, language = CASES[name]
    path = case_audio(name, tmp_path)
    run = run_official(ckpt, [str(path)], [text], [language])
    features = log_mel(load_audio(path))
    assert features.shape == run.features[0].shape
    np.testing.assert_allclose(features, run.features[0], atol=FEATURE_TOL, rtol=0)
    words = split_words(text, language)
    assert words == [w for w, _, _ in run.words[0]]
    result = aligner.align(audio=str(path), text=text, language=language)
    assert len(result) == 1
    assert_same_alignment(result[0], run.words[0], run.slot_logits[0])
    assert all(isinstance(w.start_s, float) and isinstance(w.end_s, float) for w in result[0])


def test_array_input_at_24k_matches_official(ckpt, aligner):
    """An (array, 24000) tuple is resampled like the official code and aligns the same."""
    x, sr = sf.read(DATA / "librispeech-mini/LibriSpeech/dev-clean-2/1988/24833/1988-24833-0000.flac", dtype="float32")
    x24 = soxr.resample(x, sr, 24000).astype(np.float32)
    text = "the two stray kittens gradually make themselves at home"
    run = run_official(ckpt, [(x24, 24000)], [text], ["English"])
    np.testing.assert_allclose(log_mel(load_audio((x24, 24000))), run.features[0], atol=FEATURE_TOL, rtol=0)
    ours = aligner.align(audio=(x24, 24000), text=text, language="English")[0]
    assert_same_alignment(ours, run.words[0], run.slot_logits[0])


@pytest.mark.parametrize("attention", ["windowed", "full"])
def test_batch_equals_single_calls(ckpt, tmp_path, attention):
    """A mixed-length batch gives exactly the words and times of single calls (unlike the official batch)."""
    aligner = Aligner.from_pretrained(ckpt, encoder_attention=attention)
    names = sorted(CASES)
    audio = [str(case_audio(n, tmp_path)) for n in names]
    texts = [CASES[n][2] for n in names]
    langs = [CASES[n][3] for n in names]
    batched = aligner.align(audio=audio, text=texts, language=langs)
    singles = [aligner.align(audio=a, text=t, language=lang)[0] for a, t, lang in zip(audio, texts, langs)]
    assert timing(batched) == timing(singles)
    small = Aligner.from_pretrained(ckpt, encoder_attention=attention, batch_positions=400)
    assert timing(small.align(audio=audio, text=texts, language=langs)) == timing(singles)
    # The GPU's shape rounding (padding rows, positions, chunks and windows; convs in pieces) and any number
    # of batches in flight change nothing either.
    rounded = Aligner.from_pretrained(
        ckpt, encoder_attention=attention, batch_positions=600, workers=3, shapes=DEFAULT_SHAPES["gpu"]
    )
    assert timing(rounded.align(audio=audio, text=texts, language=langs)) == timing(singles)
    one = Aligner.from_pretrained(ckpt, encoder_attention=attention, workers=1, shapes=Shapes(conv_piece=1))
    assert timing(one.align(audio=audio, text=texts, language=langs)) == timing(singles)
    probs = np.array([[w.start_prob, w.end_prob] for r in batched for w in r])
    single_probs = np.array([[w.start_prob, w.end_prob] for r in singles for w in r])
    np.testing.assert_allclose(probs, single_probs, atol=1e-4)


def timing(results):
    return [[(w.text, w.start_s, w.end_s, w.start_tick_raw, w.end_tick_raw) for w in r] for r in results]


def test_empty_word_list_aligns_to_nothing(aligner, tmp_path):
    """A transcript with nothing alignable gives an empty result, like the official code."""
    path = case_audio("en_1s", tmp_path)
    assert aligner.align(audio=str(path), text="... !!! —", language="English") == [[]]


def test_align_batches_keeps_each_batch_error_in_its_place(ckpt, tmp_path):
    """With batches in flight (inputs built in a thread of their own, passes in the workers, decoding in the
    caller), a batch that cannot be aligned yields its error where it stands and the others their words."""
    aligner = Aligner.from_pretrained(ckpt, workers=2)
    names = sorted(CASES)[:3]
    feats = [log_mel(load_audio(str(case_audio(n, tmp_path)))) for n in names]
    words = [split_words(CASES[n][2], CASES[n][3]) for n in names]
    too_long = np.zeros((round(aligner.max_duration_s * 100) + 1, feats[0].shape[1]), np.float32)
    empty = np.zeros((0, feats[0].shape[1]), np.float32)
    batches = [(feats[:2], words[:2]), ([too_long], words[:1]), (feats[2:], words[2:]), ([empty], words[:1])]
    out = list(aligner.align_batches(batches))
    assert isinstance(out[1], TooLongError) and isinstance(out[3], AudioError)
    assert timing(out[0]) == timing(aligner.align_features(feats[:2], words[:2]))
    assert timing(out[2]) == timing(aligner.align_features(feats[2:], words[2:]))
    assert list(aligner.align_batches([([feats[0]], [[]])])) == [[[]]]  # no word: no pass, nothing to decode


def test_model_processes_give_this_process_words_and_keep_each_batch_error_in_its_place(ckpt, tmp_path, monkeypatch):
    """With the passes in two spawned processes (features through shared memory, each batch to whichever
    process is free) every batch gives exactly this process's words, in order, and a failing batch its error;
    no shared-memory block is left behind and `close` stops the processes."""
    here = Aligner.from_pretrained(ckpt, workers=1)
    names = sorted(CASES)
    feats = [log_mel(load_audio(str(case_audio(n, tmp_path)))) for n in names]
    words = [split_words(CASES[n][2], CASES[n][3]) for n in names]
    too_long = np.zeros((round(here.max_duration_s * 100) + 1, feats[0].shape[1]), np.float32)
    empty = np.zeros((0, feats[0].shape[1]), np.float32)
    batches = [(feats[:2], words[:2]), ([too_long], words[:1]), (feats[2:4], words[2:4]), ([empty], words[:1])]
    batches += [(feats[4:], words[4:]), (feats[:1], [[]])]
    expected = list(here.align_batches(batches))
    three = here.align_features(feats[:3], words[:3])
    shm = Path("/dev/shm")
    before = set(shm.glob("psm_*"))

    def no_pass_here(*_):
        raise RuntimeError("a pass ran in the parent process")

    monkeypatch.setattr(Aligner, "run_batch", no_pass_here)  # the spawned processes import a clean copy
    with Aligner.from_pretrained(ckpt, processes=2) as there:
        assert there.processes is not None and there.workers == 3
        started = list(there.processes.pool._processes.values())
        out = list(there.align_batches(batches))
        with pytest.raises(TooLongError):
            there.align_features([too_long], words[:1])
        assert timing(there.align_features(feats[:3], words[:3])) == timing(three)
    assert isinstance(out[1], TooLongError) and isinstance(out[3], AudioError)
    for k in (0, 2, 4, 5):
        assert timing(out[k]) == timing(expected[k])
    probs = [[w.start_prob for w in r] for r in out[0]]
    assert probs == [[w.start_prob for w in r] for r in expected[0]]
    assert set(shm.glob("psm_*")) <= before
    assert len(started) == 2 and not any(p.is_alive() for p in started) and there.processes is None


def test_warm_up_builds_a_gpu_pass_once_in_a_lane_before_any_batch(ckpt, tmp_path, monkeypatch):
    """On a GPU, `align_batches` first runs `warm_up` in one batch thread, alone: a pass on a clip shorter than
    a 1-s chunk (the length-masked conv kernels) and one on a clip of two chunks, once per aligner; on the CPU
    nothing."""
    aligner = Aligner.from_pretrained(ckpt, workers=2)
    assert aligner.warm_up() == 0.0  # the CPU: nothing to build
    aligner.device = "gpu"  # what it does on a GPU, run on this CPU
    passes: list[tuple[str, bool, list[list[str]]]] = []
    run = Aligner.run_batch

    def record(self, inputs):
        passes.append((threading.current_thread().name, inputs.model.plan.conv_lengths is None, inputs.words))
        return run(self, inputs)

    monkeypatch.setattr(Aligner, "run_batch", record)
    names = sorted(CASES)[:2]
    feats = [log_mel(load_audio(str(case_audio(n, tmp_path)))) for n in names]
    words = [split_words(CASES[n][2], CASES[n][3]) for n in names]
    out = list(aligner.align_batches([(feats, words)] * 3))
    assert [(whole, w) for _, whole, w in passes[:2]] == [(False, [["warm", "up"]]), (True, [["warm", "up"]])]
    assert len(passes) == 5 and all(w == words for _, _, w in passes[2:])
    assert all(name.startswith("mlx-worker") for name, _, _ in passes)
    assert timing(out[0]) == timing(aligner.align_features(feats, words))
    list(aligner.align_batches([(feats, words)]))
    assert len(passes) == 7 and aligner.warm_up() == 0.0  # built once


def test_align_batches_reads_ahead_a_bounded_number_of_batches(ckpt, tmp_path):
    """Batches are taken from the input lazily: when the first result comes, at most 2 * workers + 1 more have
    been read, so memory stays bounded whatever the corpus size."""
    aligner = Aligner.from_pretrained(ckpt, workers=2)
    feats = [log_mel(load_audio(str(case_audio("en_1s", tmp_path))))]
    words = [split_words(CASES["en_1s"][2], "English")]
    taken = []

    def batches():
        for i in range(40):
            taken.append(i)
            yield feats, words

    results = aligner.align_batches(batches())
    first = next(results)
    assert timing(first) == timing(aligner.align_features(feats, words))
    assert 2 <= len(taken) <= 1 + 2 * aligner.workers + 1
    results.close()  # cancels what has not started, without waiting for it


def test_float16_features_change_nothing_for_a_float16_encoder(ckpt, tmp_path):
    """Loaders hand a float16 encoder its features in float16 (half the bytes): its first step rounds them
    the same way, so the logits are identical. A float32 encoder asks for float32."""
    assert Aligner.from_pretrained(ckpt).feature_dtype == np.float32
    aligner = Aligner.from_pretrained(ckpt, dtype="float16")
    assert aligner.feature_dtype == np.float16
    names = sorted(CASES)[:3]
    waves = [load_audio(str(case_audio(n, tmp_path))) for n in names]
    words = [split_words(CASES[n][2], CASES[n][3]) for n in names]
    full = [log_mel(w) for w in waves]
    half = [log_mel(w, aligner.feature_dtype) for w in waves]
    assert all(h.dtype == np.float16 for h in half)
    assert any((f != h.astype(np.float32)).any() for f, h in zip(full, half))  # they were really rounded
    got, want = aligner.align_features(half, words), aligner.align_features(full, words)
    assert timing(got) == timing(want)
    np.testing.assert_array_equal([w.start_prob for r in got for w in r], [w.start_prob for r in want for w in r])


def test_gpu_memory_limit_is_lowered_never_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the Aligner caps MLX's memory limit below the device (two lanes overshot the default 80 % of an
    H100 and ran out); a lower limit set before is kept, and the CPU (no device memory reported) is left alone."""
    import mlx.core as mx

    from corpus_aligner.api import limit_gpu_memory

    gib = 1 << 30
    previous = mx.set_memory_limit(64 * gib)
    try:
        monkeypatch.setattr(mx, "device_info", lambda: {"device_name": "H100", "total_memory": 80 * gib})
        assert limit_gpu_memory() == 40 * gib  # the headroom: half an H100
        assert mx.set_memory_limit(10 * gib) == 40 * gib
        assert limit_gpu_memory(0.5) == 10 * gib
        assert mx.set_memory_limit(10 * gib) == 10 * gib
        monkeypatch.setattr(mx, "device_info", lambda: {"architecture": "x86_64"})
        assert limit_gpu_memory(0.5) is None
        assert mx.set_memory_limit(10 * gib) == 10 * gib
    finally:
        mx.set_memory_limit(previous)


def test_gpu_memory_target_keeps_the_headroom_within_bounds() -> None:
    from corpus_aligner.api import gpu_memory_target

    gib = 1 << 30
    assert gpu_memory_target(80 * gib) == 40 * gib  # H100: half
    assert gpu_memory_target(141 * gib) == 101 * gib  # H200: all but 40 GiB
    assert gpu_memory_target(400 * gib) == 320 * gib  # at most MLX's own 80 %
    assert gpu_memory_target(24 * gib) == 12 * gib  # at least half
