"""Fused CUDA kernels on an NVIDIA GPU (`mx.fast.cuda_kernel`), where separate MLX kernels spend their time
moving activations rather than computing: the decoder's q/k/v norm and RoPE (`qkv_norm_rope`), the encoder's
first convolution with its GELU (`conv1_gelu`), and bias + GELU after its other convolutions and each layer's
fc1 (`bias_gelu`).

`qkv_norm_rope`: after one product for q, k and v, one pass does the per-head RMSNorm of q and k, their
RoPE and the (B, S, heads, hd) -> (B, heads, S, hd) layout SDPA takes. The separate ops (three products, two
norms, two RoPE calls on transposed views, the copies between them) took 1.85 ms of a 4.4-ms decoder layer on
an H100, against ~0.7 ms for the products alone (docs/performance.md).

The arithmetic and roundings follow the MLX ops they replace: the norm in float32 rounded to the model's
dtype (`mx.fast.rms_norm`), then the rotation of those rounded values in float32, rounded again
(`mx.fast.rope`, NeoX rotate-half, position = index in the row).
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from corpus_aligner.model.device_arrays import constant, device_array, on_cuda

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
        const float* cs = cos_sin + (long long)s * HD + 8 * (t % HALFT);
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
            x[j] = first ? x[j] * cs[j] - p[j] * cs[HD / 2 + j] : x[j] * cs[j] + p[j] * cs[HD / 2 + j];
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
    return head_dim in HEAD_DIMS and on_cuda()


@cache
def _qkv_kernel() -> Any:
    return mx.fast.cuda_kernel(
        name="qkv_norm_rope",
        input_names=["qkv", "q_weight", "k_weight", "cos_sin", "eps", "dims"],
        output_names=["q", "k", "v"],
        source=_QKV_NORM_ROPE,
    )


@cache
def rope_inv_freq(head_dim: int, base: float) -> np.ndarray:
    """base^(-2i/hd) for i < hd/2, float32 (as the official `Qwen3RotaryEmbedding` computes it)."""
    return (1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)).astype(np.float32)


@lru_cache(maxsize=64)
def rope_table(length: int, head_dim: int, base: float) -> mx.array:
    """(length, hd) float32: cos(s * inv_freq) then sin(s * inv_freq) for each position s < length, the angle
    rounded to float32 as `mx.fast.rope` rounds it. A table read is 1.5-2x faster in the kernel than sincosf
    (0.27 against 0.39-0.55 ms at 43,008 tokens on an H200, the same output bits)."""
    theta = mx.arange(length, dtype=mx.float32)[:, None] * mx.array(rope_inv_freq(head_dim, base))[None, :]
    table = mx.concatenate([mx.cos(theta), mx.sin(theta)], axis=1)
    mx.eval(table)  # built once, then read by every thread's stream
    return table


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
                rope_table(S, hd, base),
                constant((eps,), mx.float32),
                constant((S, tokens), mx.int32),
            ],
            template=[("T", qkv.dtype), ("H", heads), ("KV", kv_heads), ("HD", hd)],
            grid=(tokens * (heads + 2 * kv_heads) * (hd // 8), 1, 1),
            threadgroup=(256, 1, 1),
            output_shapes=[(B, heads, S, hd), (B, kv_heads, S, hd), (B, kv_heads, S, hd)],
            output_dtypes=[qkv.dtype] * 3,
        )
    )


# The encoder's first convolution (one input channel, 3x3, stride 2, padding 1) with its bias, exact GELU and
# the mask of frames past a chunk's end. As MLX ops it was nine strided tap copies, a K = 9 product (a `cutlass
# ... align1` kernel) and a GELU pass over its 1.5 M values per chunk (2.2 ms per 256 chunks alone on an H200).
# A first fused kernel, one thread per (output position, 8 channels), loaded 72 weights and 9 input values
# for every 8 outputs, and erff's two paths both ran wherever a warp's values fell on both sides of |x| = 1:
# 1.4-1.8 ms alone. Here a block takes one output mel row of one chunk: its three input rows are staged in
# shared memory, each thread keeps its 8 channels' weights and bias in registers for all the row's frames,
# and GELU's erf is branch-free (`gelu_erf`): 0.9 ms alone. Inside a pass both ran at 2.5 and 2.2 ms per call:
# they read the features and lengths from managed memory the host was writing beside them; from device memory
# (`device_arrays`) 0.63 ms (docs/performance.md, ninth session). Roundings as the ops: the product summed in float32
# and rounded to T with its bias, then GELU in float32 rounded to T.
CONV1_THREADS = 240  # per block at most: 480 channels give 60 groups of 8 x 4 frames at a time

_GELU_ERF = """
// Exact GELU, 0.5 y (1 + erf(y / sqrt 2)), without erff's branch (lanes on both sides of |x| = 1 ran both of
// its paths): erfc(|x|) by Abramowitz & Stegun 7.1.26 (|error in erf| < 1.5e-7, far below a float16 rounding
// of the result), and 1 + erf(x) taken as erfc(-x) on the negative side so that nothing cancels.
__device__ __forceinline__ float gelu_erf(float y) {
    float x = fabsf(y) * 0.7071067811865476f;
    float t = __fdividef(1.0f, fmaf(0.3275911f, x, 1.0f));  // >= 1: the fast division is exact enough
    float poly = fmaf(t, fmaf(t, 1.061405429f, -1.453152027f), 1.421413741f);
    poly = t * fmaf(t, fmaf(t, poly, -0.284496736f), 0.254829592f);
    float e = poly * __expf(-x * x);  // erfc(|x|)
    return y >= 0.0f ? y * (1.0f - 0.5f * e) : 0.5f * y * e;
}
"""

_CONV1_GELU = """
    // One block per (chunk n, output mel row ho): its three input mel rows over all frames (zero-padded at
    // the edges) are staged in shared memory as float; each thread keeps the weights and bias of its 8
    // channels in registers and walks the row's output frames SUB apart.
    constexpr int G = O / 8;
    constexpr int HO = (MEL - 1) / 2 + 1;
    constexpr int WO = (FRAMES - 1) / 2 + 1;
    constexpr int TW = FRAMES + 2;
    constexpr int SUB = THREADS / G;
    __shared__ float tile[3 * TW];
    int row = blockIdx.x;
    int ho = row % HO;
    int n = row / HO;
    for (int idx = threadIdx.x; idx < 3 * TW; idx += THREADS) {
        int i = idx / TW;
        int f = idx - i * TW - 1;
        int m = 2 * ho + i - 1;
        bool inside = m >= 0 && m < MEL && f >= 0 && f < FRAMES;
        tile[idx] = inside ? static_cast<float>(chunks[(static_cast<long long>(n) * FRAMES + f) * MEL + m]) : 0.0f;
    }
    __syncthreads();
    int g = threadIdx.x % G;
    int sub = threadIdx.x / G;
    if (sub >= SUB) return;
    float w[9][8];
    #pragma unroll
    for (int k = 0; k < 9; ++k) {
        const float4* wk = reinterpret_cast<const float4*>(weight + k * O + 8 * g);
        float4 lo = wk[0], hi = wk[1];
        w[k][0] = lo.x; w[k][1] = lo.y; w[k][2] = lo.z; w[k][3] = lo.w;
        w[k][4] = hi.x; w[k][5] = hi.y; w[k][6] = hi.z; w[k][7] = hi.w;
    }
    const float4* bp = reinterpret_cast<const float4*>(bias + 8 * g);
    float4 blo = bp[0], bhi = bp[1];
    float bs[8] = {blo.x, blo.y, blo.z, blo.w, bhi.x, bhi.y, bhi.z, bhi.w};
    int kept = lengths[n];
    T* out_row = act + (static_cast<long long>(row) * WO) * O + 8 * g;
    for (int wo = sub; wo < WO; wo += SUB) {
        alignas(16) T out[8];
        if (wo < kept) {
            float p[9];
            #pragma unroll
            for (int i = 0; i < 3; ++i) {
                #pragma unroll
                for (int j = 0; j < 3; ++j) p[3 * i + j] = tile[i * TW + 2 * wo + j];
            }
            #pragma unroll
            for (int c = 0; c < 8; ++c) {
                float acc = 0.0f;
                #pragma unroll
                for (int k = 0; k < 9; ++k) acc += p[k] * w[k][c];
                out[c] = static_cast<T>(gelu_erf(static_cast<float>(static_cast<T>(acc + bs[c]))));
            }
        } else {
            #pragma unroll
            for (int c = 0; c < 8; ++c) out[c] = static_cast<T>(0.0f);
        }
        *reinterpret_cast<uint4*>(out_row + static_cast<long long>(wo) * O) = *reinterpret_cast<const uint4*>(out);
    }
"""


@cache
def _conv1_kernel() -> Any:
    return mx.fast.cuda_kernel(
        name="conv1_gelu",
        input_names=["chunks", "weight", "bias", "lengths"],
        output_names=["act"],
        source=_CONV1_GELU,
        header=_GELU_ERF,
    )


def conv1_available(conv: nn.Conv2d) -> bool:
    """`conv1_gelu` takes a one-channel 3x3 convolution, stride 2, padding 1, with a multiple of 8 output
    channels (at most 8,192), on an NVIDIA GPU."""
    out_channels, kh, kw, in_channels = conv.weight.shape  # MLX keeps [O, kH, kW, I]
    return (
        on_cuda()
        and (in_channels, kh, kw) == (1, 3, 3)
        and out_channels % 8 == 0
        and out_channels // 8 <= 1024  # a block's threads
        and tuple(conv.stride) == (2, 2)
        and tuple(conv.padding) == (1, 1)
    )


def conv1_gelu(chunks: mx.array, weight: mx.array, bias: mx.array, lengths: np.ndarray | None) -> mx.array:
    """GELU(conv(x) + bias) of the one-channel 3x3 stride-2 convolution over x = `chunks` (N, frames, mel)
    as the image (N, H = mel, W = frames, 1), with output frames at or past `lengths` (N,) zeroed (None: none):
    (N, ceil(mel / 2), ceil(frames / 2), O). `weight` is (9, O) and `bias` (O,), both float32: tap (i over mel,
    j over frames) at row 3i + j."""
    n, frames, mel = chunks.shape
    out = weight.shape[1]
    ho, wo = (mel - 1) // 2 + 1, (frames - 1) // 2 + 1
    kept = np.full(n, wo, np.int32) if lengths is None else np.asarray(lengths, np.int32)
    threads = out // 8 * max(1, CONV1_THREADS // (out // 8))  # whole groups of 8 channels per frame
    return _conv1_kernel()(
        inputs=[chunks, weight, bias, device_array(kept)],
        template=[("T", chunks.dtype), ("O", out), ("MEL", mel), ("FRAMES", frames), ("THREADS", threads)],
        grid=(n * ho * threads, 1, 1),  # a block per (chunk, output mel row)
        threadgroup=(threads, 1, 1),
        output_shapes=[(n, ho, wo, out)],
        output_dtypes=[chunks.dtype],
    )[0]


# Bias, exact GELU and (for the front end's convolutions) the mask of frames past a chunk's end, as one pass
# over a product's or convolution's output, eight values (16 bytes) per thread. MLX's compiled kernels for the
# same (the encoder's fc1: 44 ms of a 1,123-ms pass with one batch thread; the 480-channel convolutions: 17 ms)
# ran erff, whose two paths both run wherever a warp's values fall on both sides of |x| = 1. Roundings as the
# ops: x + bias rounded to T, then GELU in float32 rounded to T.
_BIAS_GELU = """
    constexpr int V = C / 8;
    auto v = cooperative_groups::this_grid().thread_rank();
    if (v >= static_cast<unsigned long long>(dims[0])) return;
    int c = static_cast<int>(v % V) * 8;
    bool keep = true;
    if constexpr (MASKED) {
        unsigned long long at = v / V;  // (n, h, w) of the value's position, NHWC
        keep = static_cast<int>(at % W) < lengths[at / (static_cast<unsigned long long>(W) * H)];
    }
    alignas(16) T out[8];
    if (keep) {
        alignas(16) T in[8];
        alignas(16) T b[8];
        *reinterpret_cast<uint4*>(in) = *reinterpret_cast<const uint4*>(x + v * 8);
        *reinterpret_cast<uint4*>(b) = *reinterpret_cast<const uint4*>(bias + c);
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
            float y = static_cast<float>(static_cast<T>(static_cast<float>(in[j]) + static_cast<float>(b[j])));
            out[j] = static_cast<T>(gelu_erf(y));
        }
    } else {
        #pragma unroll
        for (int j = 0; j < 8; ++j) out[j] = static_cast<T>(0.0f);
    }
    *reinterpret_cast<uint4*>(act + v * 8) = *reinterpret_cast<const uint4*>(out);
"""


@cache
def _bias_gelu_kernel() -> Any:
    return mx.fast.cuda_kernel(
        name="bias_gelu",
        input_names=["x", "bias", "lengths", "dims"],
        output_names=["act"],
        source=_BIAS_GELU,
        header=_GELU_ERF,
    )


def bias_gelu_available(x: mx.array) -> bool:
    """`bias_gelu` takes half-precision values whose last axis is a multiple of 8, on an NVIDIA GPU."""
    return on_cuda() and x.dtype in (mx.float16, mx.bfloat16) and x.shape[-1] % 8 == 0


def bias_gelu(x: mx.array, bias: mx.array, lengths: np.ndarray | None = None) -> mx.array:
    """GELU(x + bias) for x (..., C) and bias (C,); with `lengths` (N,), x is NHWC (N, H, W, C) and values at
    frames w >= lengths[n] are zeroed (the convolutions' mask of a chunk's padding)."""
    channels = x.shape[-1]
    masked = lengths is not None
    h, w = x.shape[1:3] if masked else (1, 1)
    kept = device_array(np.asarray(lengths, np.int32)) if masked else constant((0,), mx.int32)
    vectors = x.size // 8
    return _bias_gelu_kernel()(
        inputs=[x, bias.astype(x.dtype), kept, constant((vectors,), mx.int32)],
        template=[("T", x.dtype), ("C", channels), ("MASKED", masked), ("H", h), ("W", w)],
        grid=(vectors, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[x.shape],
        output_dtypes=[x.dtype],
    )[0]
