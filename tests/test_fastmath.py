"""The CPU's cheap-op kernels against float64 references, at the errors fastmath.py states."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from corpus_aligner.model import fastmath

RNG = np.random.default_rng(0)


def erf64(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x.astype(np.float64))


def test_gelu_within_2e_6_of_exact() -> None:
    x = np.concatenate([np.linspace(-12, 12, 20001), RNG.normal(0, 3, 20000)]).astype(np.float32)
    exact = 0.5 * x.astype(np.float64) * (1 + erf64(x / math.sqrt(2)))
    ours = np.array(fastmath.gelu(mx.array(x)))
    assert np.abs(ours - exact).max() < 2e-6 * np.maximum(1, np.abs(exact)).max()
    half = np.array(fastmath.gelu(mx.array(x).astype(mx.float16)).astype(mx.float32))
    assert np.isfinite(half).all()  # computed in float32: x^8 of a float16 input must not overflow


def test_exp_nonpositive_relative_error() -> None:
    x = np.linspace(-20, 0, 40001).astype(np.float32)
    ours = np.array(fastmath.exp_nonpositive(mx.array(x))).astype(np.float64)
    assert np.abs(ours / np.exp(x.astype(np.float64)) - 1).max() < 3e-5
    assert float(np.array(fastmath.exp_nonpositive(mx.array([-np.inf], dtype=mx.float32)))[0]) < 1e-30


def test_softmax_with_masked_keys() -> None:
    scores = RNG.normal(0, 8, (4, 3, 7, 33)).astype(np.float32)
    scores[..., 20:] = -np.inf
    ours = np.array(fastmath.softmax(mx.array(scores)))
    s = scores.astype(np.float64)
    ref = np.exp(s - s.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)  # exp's 3e-5 relative error, on values <= 1
    assert (ours[..., 20:] < 1e-30).all()  # masked keys: exp of the -80 floor


def test_silu_mul_both_signs() -> None:
    gate = RNG.normal(0, 6, 50000).astype(np.float32)
    up = RNG.normal(0, 2, 50000).astype(np.float32)
    g = gate.astype(np.float64)
    ref = g / (1 + np.exp(-g)) * up
    ours = np.array(fastmath.silu_mul(mx.array(gate), mx.array(up)))
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-4)
