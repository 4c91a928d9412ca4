"""Fused CUDA kernels for an NVIDIA GPU (`mx.fast.cuda_kernel`), where separate MLX kernels
spend their time moving activations rather than computing.

`qkv_norm_rope`: after one product for q, k and v, one pass does the per-head RMSNorm of q and k, their
RoPE and the (B, S, heads, hd) -> (B, heads, S, hd) layout SDPA takes. The separate ops (three products, two
norms, two RoPE calls on transposed views, the copies between them) took 1.85 ms of a 4.4-ms decoder layer on
an H100, against ~0.7 ms for the products alone (docs/performance.md).

The arithmetic and roundings follow the MLX ops they replace: the norm in float32 rounded to the model's
dtype (`mx.fast.rms_norm`), then the rotation of those rounded values in float32, rounded again
(`mx.fast.rope`, NeoX rotate-half, position = index in the row).

`conv3x3_s2_gelu`: the encoder's first conv (one input channel, so a product with K = 9 of a 480-channel
output) with its bias and GELU in one pass: its output is the encoder's largest activation (1.5 M values
per 1-s chunk), which the im2col product, the bias and the GELU each wrote and read (1.9 ms per 256 chunks on
an H200).
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


def available() -> bool:
    """The kernels run where MLX computes on an NVIDIA GPU."""
    return mx.default_device() == mx.gpu and mx.cuda.is_available()


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
    if hd % 64 or hd * (heads + 2 * kv_heads) != width:
        raise ValueError(f"head dim {hd} of a {width}-wide q/k/v: the kernel needs a multiple of 64")
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
            grid=(tokens * (heads + 2 * kv_heads) * 32, 1, 1),
            threadgroup=(256, 1, 1),
            output_shapes=[(B, heads, S, hd), (B, kv_heads, S, hd), (B, kv_heads, S, hd)],
            output_dtypes=[qkv.dtype] * 3,
        )
    )


# One thread per two adjacent output channels of one output position of the first conv (one input channel,
# 3x3, stride 2, padding 1), its bias and exact GELU added before the single rounding; a warp's stores are one
# contiguous 128-byte run. The input is read from the (chunks, time, mel) features directly, the conv's H axis
# being mel and W time (the NHWC view `downsample` takes).
_CONV1_GELU = """
    constexpr int HO = (MEL - 1) / 2 + 1;
    constexpr int WO = (TW - 1) / 2 + 1;
    constexpr int GROUPS = C / 2;
    struct alignas(2 * sizeof(T)) Pair { T a, b; };
    auto tid = cooperative_groups::this_grid().thread_rank();
    long long total = static_cast<long long>(dims[0]) * HO * WO * GROUPS;
    if (tid >= total) return;
    int g = tid % GROUPS;
    long long r = tid / GROUPS;
    int j = r % WO;
    r /= WO;
    int i = r % HO;
    long long n = r / HO;
    float acc0 = static_cast<float>(bias[2 * g]), acc1 = static_cast<float>(bias[2 * g + 1]);
    #pragma unroll
    for (int di = 0; di < 3; ++di) {
        #pragma unroll
        for (int dj = 0; dj < 3; ++dj) {
            int h = 2 * i + di - 1, w = 2 * j + dj - 1;
            bool inside = h >= 0 && h < MEL && w >= 0 && w < TW;
            float tap = inside ? static_cast<float>(x[(n * TW + w) * MEL + h]) : 0.0f;
            acc0 += static_cast<float>(weight[(2 * g) * 9 + di * 3 + dj]) * tap;
            acc1 += static_cast<float>(weight[(2 * g + 1) * 9 + di * 3 + dj]) * tap;
        }
    }
    Pair out_pair;
    out_pair.a = static_cast<T>(0.5f * acc0 * (1.0f + erff(acc0 * 0.70710678118654752f)));
    out_pair.b = static_cast<T>(0.5f * acc1 * (1.0f + erff(acc1 * 0.70710678118654752f)));
    reinterpret_cast<Pair*>(out)[((n * HO + i) * WO + j) * GROUPS + g] = out_pair;
"""
_CONV1_MAX_CHUNKS = 1024  # keeps the thread count of one launch within a CUDA grid (int32)


@cache
def _conv1_kernel() -> Any:
    return mx.fast.cuda_kernel(
        name="conv3x3_s2_gelu_one_channel",
        input_names=["x", "weight", "bias", "dims"],
        output_names=["out"],
        source=_CONV1_GELU,
    )


def conv3x3_s2_gelu(chunks: mx.array, weight: mx.array, bias: mx.array) -> mx.array:
    """GELU(conv(x) + bias) for the encoder's first conv over features `chunks` (N, time, mel), x being their
    (N, mel, time, 1) NHWC view; weight (C, 3, 3, 1) in MLX's layout. Returns (N, ceil(mel/2), ceil(time/2), C)
    in the features' dtype: one pass that writes the largest activation of the encoder once, where the
    product, its bias and the GELU each wrote and read it."""
    n, time, mel = chunks.shape
    channels = weight.shape[0]
    if weight.shape[1:] != (3, 3, 1) or channels % 2:
        raise ValueError(f"a one-channel 3x3 conv with an even number of output channels, got weight {weight.shape}")
    if n > _CONV1_MAX_CHUNKS:
        parts = [chunks[i : i + _CONV1_MAX_CHUNKS] for i in range(0, n, _CONV1_MAX_CHUNKS)]
        return mx.concatenate([conv3x3_s2_gelu(p, weight, bias) for p in parts], axis=0)
    ho, wo = (mel - 1) // 2 + 1, (time - 1) // 2 + 1
    return _conv1_kernel()(
        inputs=[chunks, weight.astype(chunks.dtype), bias.astype(chunks.dtype), mx.array([n], mx.int32)],
        template=[("T", chunks.dtype), ("MEL", mel), ("TW", time), ("C", channels)],
        grid=(n * ho * wo * channels // 2, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[(n, ho, wo, channels)],
        output_dtypes=[chunks.dtype],
    )[0]
