"""Stage-by-stage parity of the MLX model with the official implementation on the same random weights.

Run: python -m pytest -q tests/test_model.py
Tolerances (float32 on both sides, different BLAS and op order): encoder outputs 1e-4 absolute
(observed ~2e-6), timestamp-slot logits 2e-3 absolute (observed ~2e-4 on logits of magnitude ~35).
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import soundfile as sf
from oracle import official_encoder, run_official

from corpus_aligner.checkpoint import load_model
from corpus_aligner.model.encoder import audio_token_count, plan_batch
from corpus_aligner.prompt import PromptBuilder, SpecialIds, load_tokenizer, pad_prompts
from corpus_aligner.testing.tiny_checkpoint import tiny_checkpoint

LIBRI = Path(__file__).resolve().parents[2] / "shared/testdata/librispeech-mini/LibriSpeech"
LONG_FLAC = LIBRI / "dev-clean-2/1988/24833/1988-24833-0000.flac"
ENCODER_TOL = 1e-4
LOGIT_TOL = 2e-3


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=1)


@pytest.fixture(scope="module")
def model(ckpt):
    return load_model(ckpt)


@pytest.fixture(scope="module")
def speech() -> tuple[np.ndarray, int]:
    """~35 s of real LibriSpeech speech (three utterances joined) at 16 kHz."""
    files = sorted(LIBRI.glob("**/*.flac"))
    parts = [sf.read(f, dtype="float32")[0] for f in files[:6]]
    return np.concatenate(parts), 16000


def prompts_for(model, ckpt):
    a = model.args
    ids = SpecialIds(a.audio_start_token_id, a.audio_token_id, a.audio_end_token_id, a.timestamp_token_id)
    return PromptBuilder(load_tokenizer(ckpt), ids)


def our_slot_logits(model, builder, features: np.ndarray, words: list[str], attention: str) -> np.ndarray:
    plan = plan_batch([features], model.args.encoder, attention)
    prompt = builder.build(plan.tokens_per_clip[0], words)
    ids, src, slots = pad_prompts([prompt], model.args.audio_end_token_id)
    return np.array(model(mx.array(ids), mx.array(src), mx.array(slots), plan))[0]


@pytest.mark.parametrize("n_samples", [16000, 7 * 16000 + 37, 20 * 16000 + 101])
def test_encoder_and_logits_match_official(ckpt, model, speech, n_samples):
    """On the official features, our encoder (full attention) and slot logits equal the official ones."""
    wave = speech[0][:n_samples]
    text = "He hoped there would be stew for dinner, turnips and carrots."
    run = run_official(ckpt, [(wave, 16000)], [text], ["English"])
    features = run.features[0]
    assert features.shape[0] == n_samples // 160
    plan = plan_batch([features], model.args.encoder, "full")
    assert plan.tokens_per_clip[0] == audio_token_count(features.shape[0]) == run.encoder[0].shape[0]
    ours = np.array(model.audio_tower(plan))
    np.testing.assert_allclose(ours, run.encoder[0], atol=ENCODER_TOL, rtol=0)

    builder = prompts_for(model, ckpt)
    words = [w for w, _, _ in run.words[0]]
    prompt = builder.build(plan.tokens_per_clip[0], words)
    np.testing.assert_array_equal(prompt.input_ids, run.input_ids[0])
    logits = our_slot_logits(model, builder, features, words, "full")
    np.testing.assert_allclose(logits, run.slot_logits[0], atol=LOGIT_TOL, rtol=0)
    top2 = np.sort(run.slot_logits[0], axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 10 * LOGIT_TOL
    assert clear.sum() >= len(clear) // 2, "random weights should give mostly clear argmaxes"
    np.testing.assert_array_equal(logits.argmax(-1)[clear], run.slot_logits[0].argmax(-1)[clear])


def test_windowed_equals_full_up_to_8_seconds(model, speech):
    """Up to 8 s (104 tokens) one window covers the clip, so both modes give the same encoder output."""
    features = np.random.default_rng(0).standard_normal((800, 128)).astype(np.float32)
    full = np.array(model.audio_tower(plan_batch([features], model.args.encoder, "full")))
    windowed = np.array(model.audio_tower(plan_batch([features], model.args.encoder, "windowed")))
    np.testing.assert_array_equal(full, windowed)
    longer = np.random.default_rng(0).standard_normal((900, 128)).astype(np.float32)
    full = np.array(model.audio_tower(plan_batch([longer], model.args.encoder, "full")))
    windowed = np.array(model.audio_tower(plan_batch([longer], model.args.encoder, "windowed")))
    assert np.abs(full - windowed).max() > 1e-3, "beyond 8 s the modes must differ"


@pytest.mark.parametrize("n_frames", [2000, 1234])
def test_windowed_matches_official_block_mask(ckpt, model, n_frames):
    """Beyond 8 s, windowed mode equals the official encoder run with its own cu_seqlens windows."""
    features = np.random.default_rng(n_frames).standard_normal((n_frames, 128)).astype(np.float32)
    ours = np.array(model.audio_tower(plan_batch([features], model.args.encoder, "windowed")))
    np.testing.assert_allclose(ours, official_encoder(ckpt, features, windowed=True), atol=ENCODER_TOL, rtol=0)
    np.testing.assert_allclose(
        np.array(model.audio_tower(plan_batch([features], model.args.encoder, "full"))),
        official_encoder(ckpt, features, windowed=False),
        atol=ENCODER_TOL,
        rtol=0,
    )


@pytest.mark.parametrize("attention", ["windowed", "full"])
def test_encoder_batch_equals_single_clips(model, attention):
    """A mixed batch (short single chunk, exact chunks, long with a tail) encodes like single clips."""
    rng = np.random.default_rng(3)
    features = [rng.standard_normal((n, 128)).astype(np.float32) for n in (37, 100, 1311, 250, 8)]
    batch = np.array(model.audio_tower(plan_batch(features, model.args.encoder, attention)))
    singles = np.concatenate(
        [np.array(model.audio_tower(plan_batch([f], model.args.encoder, attention))) for f in features]
    )
    np.testing.assert_allclose(batch, singles, atol=1e-5, rtol=0)


def test_short_single_chunk_matches_official(ckpt, model):
    """A clip under one chunk is not padded by the official code; our masked convs give the same."""
    features = np.random.default_rng(5).standard_normal((45, 128)).astype(np.float32)
    ours = np.array(model.audio_tower(plan_batch([features], model.args.encoder, "full")))
    np.testing.assert_allclose(ours, official_encoder(ckpt, features, windowed=False), atol=ENCODER_TOL, rtol=0)
