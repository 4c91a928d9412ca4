"""Fused CUDA kernels for the decoder on an NVIDIA GPU (`mx.fast.cuda_kernel`), where separate MLX kernels
spend their time moving activations rather than computing.

`qkv_norm_rope`: after one product for q, k and v, one pass does the per-head RMSNorm of q and k, their
RoPE and the (B, S, heads, hd) -> (B, heads, S, hd) layout SDPA takes. The separate ops (three products, two
norms, two RoPE calls on transposed views, the copies between them) took 1.85 ms of a 4.4-ms decoder layer on
an H100, against ~0.7 ms for the products alone (docs/performance.md).

The arithmetic and roundings follow the MLX ops they replace: the norm in float32 rounded to the model's
dtype (`mx.fast.rms_norm`), then the rotation of those rounded values in float32, rounded again
(`mx.fast.rope`, NeoX rotate-half, position = index in the row).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import mlx.core as mx
import numpy as np

# HD / 8 threads per (token, head), eight neighbouring elements each, read and written as 16 bytes (0.35 ms
# at the bench's largest batch on an H200, 2.0 TB/s, where a warp per (token, head) reading 2 bytes a lane
# took 0.37). The rotate-half partner of a thread's elements sits in the thread HD / 16 lanes away, and
# the sum of squares is a shuffle reduction over the head's threads. Every thread runs the same shuffles (v's
# heads too, which then skip the norm and rotation), so a warp holding heads of both kinds stays converged.
_QKV_NORM_ROPE = """
    constexpr int NH = H + 2 * KV;
    constexpr int TPH = HD / 8;
    constexpr int HALFT = TPH / 2;
    auto tid = cooperative_groups::this_grid().thread_rank();
    int t = tid % TPH;
    long long unit = tid / TPH;
    long long token = unit / NH;
    int head = unit % NH;
    int seq = dims[0];
    if (token >= dims[1]) return;
    long long b = token / seq;
    int s = token % seq;
    alignas(16) T in[8];
    *reinterpret_cast<uint4*>(in) = *reinterpret_cast<const uint4*>(qkv + token * (NH * HD) + head * HD + 8 * t);
    float x[8];
    float ss = 0.0f;
    #pragma unroll
    for (int j = 0; j < 8; ++j) {
        x[j] = static_cast<float>(in[j]);
        ss += x[j] * x[j];
    }
    #pragma unroll
    for (int o = TPH / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
    bool normed = head < H + KV;
    if (normed) {
        float r = rsqrtf(ss / HD + eps[0]);
        const T* w = head < H ? q_weight : k_weight;
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
            x[j] = static_cast<float>(static_cast<T>(x[j] * r * static_cast<float>(w[8 * t + j])));
        }
    }
    float p[8];
    #pragma unroll
    for (int j = 0; j < 8; ++j) p[j] = __shfl_xor_sync(0xffffffff, x[j], HALFT);
    if (normed) {
        bool first = t < HALFT;
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
            float sn, cs;
            sincosf(s * inv_freq[8 * (t % HALFT) + j], &sn, &cs);
            x[j] = first ? x[j] * cs - p[j] * sn : x[j] * cs + p[j] * sn;
        }
    }
    T* dst;
    if (head < H) dst = q + ((b * H + head) * seq + s) * HD;
    else if (head < H + KV) dst = k + ((b * KV + head - H) * seq + s) * HD;
    else dst = v + ((b * KV + head - H - KV) * seq + s) * HD;
    alignas(16) T out[8];
    #pragma unroll
    for (int j = 0; j < 8; ++j) out[j] = static_cast<T>(x[j]);
    *reinterpret_cast<uint4*>(dst + 8 * t) = *reinterpret_cast<const uint4*>(out);
"""

HEAD_DIMS = (64, 128, 256)  # what `qkv_norm_rope` takes: HD / 8 threads per head, a power of two up to a warp


def available(head_dim: int) -> bool:
    """The q/k/v kernel runs where MLX computes on an NVIDIA GPU, for the head sizes it takes."""
    return head_dim in HEAD_DIMS and mx.default_device() == mx.gpu and mx.cuda.is_available()


@cache
def _qkv_kernel() -> Any:
    return mx.fast.cuda_kernel(
        name="qkv_norm_rope",
        input_names=["qkv", "q_weight", "k_weight", "inv_freq", "eps", "dims"],
        output_names=["q", "k", "v"],
        source=_QKV_NORM_ROPE,
    )


@cache
def rope_inv_freq(head_dim: int, base: float) -> mx.array:
    """base^(-2i/hd) for i < hd/2, float32 (as the official `Qwen3RotaryEmbedding` computes it)."""
    return mx.array((1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)).astype(np.float32))


def qkv_norm_rope(
    qkv: mx.array,
    q_weight: mx.array,
    k_weight: mx.array,
    heads: int,
    kv_heads: int,
    base: float,
    eps: float,
) -> tuple[mx.array, mx.array, mx.array]:
    """qkv (B, S, (heads + 2 kv_heads) * hd), q's heads then k's then v's -> q (B, heads, S, hd) and k, v
    (B, kv_heads, S, hd): q and k RMS-normed per head with their weights (hd,) and rotated (RoPE at position
    = index in the row), v as it is."""
    B, S, width = qkv.shape
    hd = width // (heads + 2 * kv_heads)
    if hd not in HEAD_DIMS or hd * (heads + 2 * kv_heads) != width:
        raise ValueError(f"head dim {hd} of a {width}-wide q/k/v: the kernel needs 64, 128 or 256")
    tokens = B * S
    return tuple(  # type: ignore[return-value]
        _qkv_kernel()(
            inputs=[
                qkv,
                q_weight,
                k_weight,
                rope_inv_freq(hd, base),
                mx.array([eps], mx.float32),
                mx.array([S, tokens], mx.int32),
            ],
            template=[("T", qkv.dtype), ("H", heads), ("KV", kv_heads), ("HD", hd)],
            grid=(tokens * (heads + 2 * kv_heads) * (hd // 8), 1, 1),
            threadgroup=(256, 1, 1),
            output_shapes=[(B, heads, S, hd), (B, kv_heads, S, hd), (B, kv_heads, S, hd)],
            output_dtypes=[qkv.dtype] * 3,
        )
    )
