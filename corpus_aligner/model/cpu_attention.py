"""Attention cores on the CPU, in numpy: the decoder's causal one and the encoder's windowed one.

MLX's CPU element-wise and reduction kernels run on one thread at 0.1-0.5 G elements/s, so the softmax
over B x H x S x S scores took ~130 of a decoder layer's 230 ms (docs/performance.md). Here the scores
are made one block of queries at a time, only against the keys the block can see (the causal upper
triangle is never computed), with numpy's vectorized kernels, one (batch row, kv head) group per core.
For 2 x 570 positions: 25 ms instead of 164 ms, equal to float32 rounding. The encoder's windows (7 of 104
tokens, 16 heads) take 5.6 ms instead of 9.8.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import numpy as np

from corpus_aligner import cpu_blas

QUERY_BLOCK = 192  # rows per block: 64-285 measured within 10 %, 192 best (2 x 570 positions)


@lru_cache(maxsize=4)
def _upper(n: int) -> np.ndarray:
    """(n, n) additive mask: -inf strictly above the diagonal, 0 elsewhere."""
    return np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)


def _softmax_(scores: np.ndarray) -> None:
    """Softmax over the last axis, in place (rows may hold -inf, never only -inf)."""
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)


def _group(q: np.ndarray, k: np.ndarray, v: np.ndarray, out: np.ndarray, scale: float) -> None:
    """q (G, S, hd) query heads sharing k, v (S, hd); writes out (S, G, hd)."""
    S = q.shape[1]
    for s0 in range(0, S, QUERY_BLOCK):
        s1 = min(S, s0 + QUERY_BLOCK)
        scores = (q[:, s0:s1] * scale) @ k[:s1].T  # (G, n, s1): only the keys rows s0..s1-1 can see
        scores[:, :, s0:s1] += _upper(QUERY_BLOCK)[: s1 - s0, : s1 - s0]
        _softmax_(scores)
        out[s0:s1] = (scores @ v[:s1]).transpose(1, 0, 2)


def causal_attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """softmax(q k^T * scale + causal mask) v for (B, H, S, hd) queries over (B, KV, S, hd) keys and
    values (query heads g*H/KV .. (g+1)*H/KV - 1 share kv head g). Returns (B, S, H, hd), float32."""
    mx.eval(q, k, v)
    qn, kn, vn = (np.asarray(a, dtype=np.float32) for a in (q, k, v))
    B, H, S, hd = qn.shape
    KV = kn.shape[1]
    reps = H // KV
    out = np.empty((B, S, H, hd), dtype=np.float32)
    jobs = [
        (qn[b, g * reps : (g + 1) * reps], kn[b, g], vn[b, g], out[b, :, g * reps : (g + 1) * reps], scale)
        for b in range(B)
        for g in range(KV)
    ]
    cpu_blas.run_on_cores(_group, jobs)
    return mx.array(out)


def _windows(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray | None, out: np.ndarray, scale: float
) -> None:
    """A run of rows: q, k, v (w, H, L, hd), bias (w, 1, L, L) additive or None; writes out (w, H, L, hd)."""
    scores = (q * scale) @ k.transpose(0, 1, 3, 2)  # (w, H, L, L)
    if bias is not None:
        scores += bias
    _softmax_(scores)
    out[...] = scores @ v


def window_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, bias: mx.array | None) -> mx.array:
    """Bidirectional attention within each row of windows: (W, H, L, hd) queries, keys and values, `bias`
    (W, 1, L, L) or (W, 1, 1, L) additive (0/-inf, no row all -inf). Returns (W, H, L, hd) float32; rows
    split over the cores."""
    arrays = (q, k, v) if bias is None else (q, k, v, bias)
    mx.eval(*arrays)
    qn, kn, vn = (np.asarray(a, dtype=np.float32) for a in (q, k, v))
    bias_n = None if bias is None else np.asarray(bias, dtype=np.float32)
    out = np.empty(qn.shape, dtype=np.float32)
    W = qn.shape[0]
    step = max(1, -(-W // 8))  # a few runs per core, so that uneven runs even out
    jobs = [
        (qn[w : w + step], kn[w : w + step], vn[w : w + step], None if bias_n is None else bias_n[w : w + step],
         out[w : w + step], scale)
        for w in range(0, W, step)
    ]  # fmt: skip
    cpu_blas.run_on_cores(_windows, jobs)
    return mx.array(out)
