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

# One warp per (token, head): lane l holds elements l + 32 j of the head vector, so the rotate-half partner
# of element i (i + hd/2) sits in the same lane; the norm's sum of squares is a warp shuffle reduction.
_QKV_NORM_ROPE = """
    constexpr int NH = H + 2 * KV;
    constexpr int PER_LANE = HD / 32;
    constexpr int HALF = PER_LANE / 2;
    auto tid = cooperative_groups::this_grid().thread_rank();
    int lane = tid & 31;
    long long warp = tid >> 5;
    long long token = warp / NH;
    int head = warp % NH;
    int seq = dims[0];
    if (token >= dims[1]) return;
    long long b = token / seq;
    int s = token % seq;
    const T* src = qkv + token * (NH * HD) + head * HD;
    float x[PER_LANE];
    #pragma unroll
    for (int j = 0; j < PER_LANE; ++j) x[j] = static_cast<float>(src[lane + 32 * j]);
    T* dst;
    if (head < H) dst = q + ((b * H + head) * seq + s) * HD;
    else if (head < H + KV) dst = k + ((b * KV + head - H) * seq + s) * HD;
    else dst = v + ((b * KV + head - H - KV) * seq + s) * HD;
    if (head < H + KV) {
        float ss = 0.0f;
        #pragma unroll
        for (int j = 0; j < PER_LANE; ++j) ss += x[j] * x[j];
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
        float r = rsqrtf(ss / HD + eps[0]);
        const T* w = head < H ? q_weight : k_weight;
        #pragma unroll
        for (int j = 0; j < PER_LANE; ++j) {
            x[j] = static_cast<float>(static_cast<T>(x[j] * r * static_cast<float>(w[lane + 32 * j])));
        }
        #pragma unroll
        for (int j = 0; j < HALF; ++j) {
            float sn, cs;
            sincosf(s * inv_freq[lane + 32 * j], &sn, &cs);
            float a = x[j], c = x[j + HALF];
            x[j] = a * cs - c * sn;
            x[j + HALF] = c * cs + a * sn;
        }
    }
    #pragma unroll
    for (int j = 0; j < PER_LANE; ++j) dst[lane + 32 * j] = static_cast<T>(x[j]);
"""


# The same arithmetic with 16-byte loads and stores: HD / 8 threads per (token, head), eight neighbouring
# elements each. The rotate-half partner of a thread's elements sits in the thread HD / 16 lanes away, and
# the sum of squares is a shuffle reduction over the head's threads. Every thread runs the same shuffles (v's
# heads too, which then skip the norm and rotation), so a warp holding heads of both kinds stays converged.
_QKV_NORM_ROPE_VEC = """
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

# Which of the two kernels `qkv_norm_rope` runs: the 16-byte one (True) or a warp per (token, head) (False).
VECTOR_LOADS = True


def available() -> bool:
    """The kernels run where MLX computes on an NVIDIA GPU."""
    return mx.default_device() == mx.gpu and mx.cuda.is_available()


@cache
def _qkv_kernel(vector: bool) -> Any:
    return mx.fast.cuda_kernel(
        name="qkv_norm_rope_vec" if vector else "qkv_norm_rope",
        input_names=["qkv", "q_weight", "k_weight", "inv_freq", "eps", "dims"],
        output_names=["q", "k", "v"],
        source=_QKV_NORM_ROPE_VEC if vector else _QKV_NORM_ROPE,
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
    vector: bool | None = None,
) -> tuple[mx.array, mx.array, mx.array]:
    """qkv (B, S, (heads + 2 kv_heads) * hd), q's heads then k's then v's -> q (B, heads, S, hd) and k, v
    (B, kv_heads, S, hd): q and k RMS-normed per head with their weights (hd,) and rotated (RoPE at position
    = index in the row), v as it is. vector: which kernel (None: `VECTOR_LOADS`)."""
    B, S, width = qkv.shape
    hd = width // (heads + 2 * kv_heads)
    if hd % 64 or hd * (heads + 2 * kv_heads) != width:
        raise ValueError(f"head dim {hd} of a {width}-wide q/k/v: the kernel needs a multiple of 64")
    tokens = B * S
    vector = VECTOR_LOADS if vector is None else vector
    return tuple(  # type: ignore[return-value]
        _qkv_kernel(vector)(
            inputs=[
                qkv,
                q_weight,
                k_weight,
                rope_inv_freq(hd, base),
                mx.array([eps], mx.float32),
                mx.array([S, tokens], mx.int32),
            ],
            template=[("T", qkv.dtype), ("H", heads), ("KV", kv_heads), ("HD", hd)],
            grid=(tokens * (heads + 2 * kv_heads) * (hd // 8 if vector else 32), 1, 1),
            threadgroup=(256, 1, 1),
            output_shapes=[(B, heads, S, hd), (B, kv_heads, S, hd), (B, kv_heads, S, hd)],
            output_dtypes=[qkv.dtype] * 3,
        )
    )
