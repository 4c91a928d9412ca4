"""The numpy causal attention core against a float64 reference with the full masked score matrix."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from corpus_aligner.model import cpu_attention


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """(B, S, H, hd) in float64: every query head h uses kv head h // (H / KV); row i sees keys 0..i."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    reps = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, reps, axis=1), np.repeat(v, reps, axis=1)
    S = q.shape[2]
    scores = q @ k.transpose(0, 1, 3, 2) * scale
    scores[..., np.triu(np.ones((S, S), dtype=bool), 1)] = -np.inf
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    return (scores / scores.sum(-1, keepdims=True) @ v).transpose(0, 2, 1, 3)


@pytest.mark.parametrize(
    ("B", "H", "KV", "S"),
    [(1, 2, 1, 1), (2, 4, 2, 7), (1, 4, 4, cpu_attention.QUERY_BLOCK), (2, 4, 2, 2 * cpu_attention.QUERY_BLOCK + 5)],
)
def test_causal_attention_matches_the_masked_reference(B: int, H: int, KV: int, S: int) -> None:
    rng = np.random.default_rng(S)
    q = rng.standard_normal((B, H, S, 16)).astype(np.float32) * 2
    k = rng.standard_normal((B, KV, S, 16)).astype(np.float32) * 2
    v = rng.standard_normal((B, KV, S, 16)).astype(np.float32)
    with mx.stream(mx.cpu):
        got = np.array(cpu_attention.causal_attention(mx.array(q), mx.array(k), mx.array(v), 0.25))
    assert got.shape == (B, S, H, 16)
    np.testing.assert_allclose(got, reference(q, k, v, 0.25), atol=2e-5, rtol=1e-4)


def test_strided_inputs_are_read_in_their_logical_order() -> None:
    """v arrives as a transposed view in the decoder; numpy must see its logical layout."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((1, 2, 9, 8)).astype(np.float32)
    k = rng.standard_normal((1, 1, 9, 8)).astype(np.float32)
    v = rng.standard_normal((1, 9, 1, 8)).astype(np.float32)  # (B, S, KV, hd), transposed below
    with mx.stream(mx.cpu):
        got = np.array(cpu_attention.causal_attention(mx.array(q), mx.array(k), mx.array(v).transpose(0, 2, 1, 3), 0.3))
    np.testing.assert_allclose(got, reference(q, k, v.transpose(0, 2, 1, 3), 0.3), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(("W", "masked"), [(1, False), (7, True), (13, True)])
def test_window_attention_matches_the_masked_reference(W: int, masked: bool) -> None:
    """Rows of several windows and trailing padding, as plan.py packs them: block-diagonal masks."""
    from corpus_aligner.model.encoder import window_bias

    rng = np.random.default_rng(W)
    L = 9
    q, k, v = (rng.standard_normal((W, 4, L, 8)).astype(np.float32) for _ in range(3))
    cuts = np.sort(rng.integers(0, L + 1, (W, 3)), axis=1)  # window boundaries, then padding after the last
    slots = np.arange(L)[None, :]
    window = (slots >= cuts[:, :1]).astype(np.int32) + (slots >= cuts[:, 1:2]) + 10 * np.arange(W)[:, None]
    window = np.where(slots >= cuts[:, 2:], -1, window) if masked else np.zeros((W, L), np.int32)
    same = window[:, None, :, None] == window[:, None, None, :]  # (W, 1, L, L)
    with mx.stream(mx.cpu):
        bias = window_bias(mx.array(window), mx.float32) if masked else None
        got = np.array(cpu_attention.window_attention(mx.array(q), mx.array(k), mx.array(v), 0.3, bias))
    scores = q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2) * 0.3
    scores = np.where(same, scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    want = (p / p.sum(-1, keepdims=True)) @ v
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
