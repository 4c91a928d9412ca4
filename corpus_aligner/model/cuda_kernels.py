"""Fused CUDA kernels on an NVIDIA GPU (`mx.fast.cuda_kernel`), where separate MLX kernels spend their time
moving activations rather than computing: the decoder's q/k/v norm and RoPE (`qkv_norm_rope`), residual adds
with the norm after them (`add_norm`), the decoder MLP's SiLU gate (`silu_gate`), the encoder's first
convolution with its GELU (`conv1_gelu`), and bias + GELU after its other convolutions and each layer's fc1
(`bias_gelu`).

`qkv_norm_rope`: after one product for q, k and v, one pass does the per-head RMSNorm of q and k, their
RoPE and the (B, S, heads, hd) -> (B, heads, S, hd) layout SDPA takes. The separate ops (three products, two
norms, two RoPE calls on transposed views, the copies between them) took 1.85 ms of a 4.4-ms decoder layer on
an H100, against ~0.7 ms for the products alone (docs/performance.md).

`add_norm`: a residual add and the norm that follows it (the decoder's RMSNorms, the encoder's LayerNorms) in
one pass.

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
    if (head < H) dst = q + (token * H + head) * HD;
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
    = index in the row), v as it is.

    q is written as (B, S, heads, hd) and returned as its transposed view: MLX's cuDNN attention allocates its
    output in q's layout, so the attention output is already (B, S, heads * hd) for the output projection,
    where a contiguous q left a transpose copy of every layer's output (23 ms of a pass's kernels)."""
    B, S, width = qkv.shape
    hd = width // (heads + 2 * kv_heads)
    if hd not in HEAD_DIMS or hd * (heads + 2 * kv_heads) != width:
        raise ValueError(f"head dim {hd} of a {width}-wide q/k/v: the kernel needs 64, 128 or 256")
    tokens = B * S
    q, k, v = _qkv_kernel()(
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
        output_shapes=[(B, S, heads, hd), (B, kv_heads, S, hd), (B, kv_heads, S, hd)],
        output_dtypes=[qkv.dtype] * 3,
    )
    return q.transpose(0, 2, 1, 3), k, v


# A residual add and the norm after it as one pass: s = x + y (rounded to T: the residual stream; with LIMIT,
# clamped to +-limit as the encoder's float16 guard) and the norm of s, rounded as MLX's kernels round:
# RMSNorm (`mx.fast.rms_norm`): s * rsqrt(mean(s^2) + eps) in float32 rounded to T, times the weight in T;
# LayerNorm (`mx.fast.layer_norm`): (s - mean) * rsqrt(var + eps) rounded to T, times the weight, plus the bias,
# each in T. As MLX ops the add wrote s and the norm read it back: two kernels per norm, in the decoder 56 per
# pass of 28 layers (the adds 23 ms and the norms 19 ms of a pass's kernels, ninth session), in the encoder 48.
# A warp per row, eight neighbouring values (16 bytes) per lane and load, the row kept in registers.
_ADD_NORM = """
    constexpr int PER = D / 256;  // 16-byte vectors per lane
    auto tid = cooperative_groups::this_grid().thread_rank();
    long long row = tid / 32;
    int lane = tid % 32;
    if (row >= dims[0]) return;  // row is the same for a whole warp: the shuffles below stay converged
    float v[PER][8];
    float total = 0.0f;
    #pragma unroll
    for (int p = 0; p < PER; ++p) {
        long long at = row * D + (p * 32 + lane) * 8;
        alignas(16) T a[8];
        alignas(16) T b[8];
        *reinterpret_cast<uint4*>(a) = *reinterpret_cast<const uint4*>(x + at);
        *reinterpret_cast<uint4*>(b) = *reinterpret_cast<const uint4*>(y + at);
        alignas(16) T sum[8];
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
            sum[j] = static_cast<T>(static_cast<float>(a[j]) + static_cast<float>(b[j]));
            if constexpr (LIMIT) {
                sum[j] = static_cast<T>(fminf(fmaxf(static_cast<float>(sum[j]), -limit[0]), limit[0]));
            }
            v[p][j] = static_cast<float>(sum[j]);
            total += v[p][j];
        }
        *reinterpret_cast<uint4*>(s + at) = *reinterpret_cast<const uint4*>(sum);
    }
    float mean = 0.0f;
    if constexpr (LAYER) {
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffff, total, o);
        mean = total / D;
    }
    float ss = 0.0f;
    #pragma unroll
    for (int p = 0; p < PER; ++p) {
        #pragma unroll
        for (int j = 0; j < 8; ++j) ss += (v[p][j] - mean) * (v[p][j] - mean);
    }
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
    float r = rsqrtf(ss / D + eps[0]);
    #pragma unroll
    for (int p = 0; p < PER; ++p) {
        int c = (p * 32 + lane) * 8;
        alignas(16) T w[8];
        alignas(16) T b[8];
        *reinterpret_cast<uint4*>(w) = *reinterpret_cast<const uint4*>(weight + c);
        if constexpr (LAYER) *reinterpret_cast<uint4*>(b) = *reinterpret_cast<const uint4*>(bias + c);
        alignas(16) T out[8];
        #pragma unroll
        for (int j = 0; j < 8; ++j) {
            float scaled = static_cast<float>(w[j]) * static_cast<float>(static_cast<T>((v[p][j] - mean) * r));
            if constexpr (LAYER) {
                out[j] = static_cast<T>(static_cast<float>(static_cast<T>(scaled)) + static_cast<float>(b[j]));
            } else {
                out[j] = static_cast<T>(scaled);
            }
        }
        *reinterpret_cast<uint4*>(normed + row * D + c) = *reinterpret_cast<const uint4*>(out);
    }
"""


@cache
def _add_norm_kernel() -> Any:
    return mx.fast.cuda_kernel(
        name="add_norm",
        input_names=["x", "y", "weight", "bias", "eps", "limit", "dims"],
        output_names=["s", "normed"],
        source=_ADD_NORM,
    )


def add_norm_available(x: mx.array) -> bool:
    """`add_norm` takes half-precision rows whose length is a multiple of 256, on an NVIDIA GPU."""
    return on_cuda() and x.dtype in (mx.float16, mx.bfloat16) and x.shape[-1] % 256 == 0


def add_norm(
    x: mx.array,
    y: mx.array,
    weight: mx.array,
    eps: float,
    bias: mx.array | None = None,
    limit: float | None = None,
) -> tuple[mx.array, mx.array]:
    """(s, norm(s)) for s = x + y, x and y (..., D) of one shape and dtype, clamped to +-`limit` when given:
    RMSNorm(s) * weight, or with `bias` LayerNorm(s) * weight + bias (weight and bias (D,))."""
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(f"add_norm takes two arrays of one shape and dtype, got {x.shape}, {y.shape}")
    d = x.shape[-1]
    rows = x.size // d
    layer = bias is not None
    s, normed = _add_norm_kernel()(
        inputs=[
            x,
            y,
            weight.astype(x.dtype),
            bias.astype(x.dtype) if layer else constant((0,), x.dtype),
            constant((eps,), mx.float32),
            constant((0.0 if limit is None else limit,), mx.float32),
            constant((rows,), mx.int32),
        ],
        template=[("T", x.dtype), ("D", d), ("LAYER", layer), ("LIMIT", limit is not None)],
        grid=(rows * 32, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[x.shape, x.shape],
        output_dtypes=[x.dtype, x.dtype],
    )
    return s, normed


# The decoder MLP's activation from its stacked gate/up product: silu(gate) * up for h = (..., 2I), gate the first
# I columns and up the last I, eight values (16 bytes) of each half per thread. MLX's compiled kernel for the same
# on the two halves as strided views took 58.5 ms of a pass's kernels (174 us per call; on two separate products
# 50 ms). Roundings as MLX's ops in T: sigmoid in float32 rounded, gate * sigmoid rounded, times up rounded.
_SILU_GATE = """
    constexpr int V = I / 8;
    auto v = cooperative_groups::this_grid().thread_rank();
    if (v >= static_cast<unsigned long long>(dims[0])) return;
    unsigned long long row = v / V;
    int c = static_cast<int>(v % V) * 8;
    alignas(16) T g[8];
    alignas(16) T u[8];
    *reinterpret_cast<uint4*>(g) = *reinterpret_cast<const uint4*>(h + row * (2 * I) + c);
    *reinterpret_cast<uint4*>(u) = *reinterpret_cast<const uint4*>(h + row * (2 * I) + I + c);
    alignas(16) T out[8];
    #pragma unroll
    for (int j = 0; j < 8; ++j) {
        float x = static_cast<float>(g[j]);
        float sig = static_cast<float>(static_cast<T>(1.0f / (1.0f + expf(-x))));
        out[j] = static_cast<T>(static_cast<float>(static_cast<T>(x * sig)) * static_cast<float>(u[j]));
    }
    *reinterpret_cast<uint4*>(act + row * I + c) = *reinterpret_cast<const uint4*>(out);
"""


@cache
def _silu_gate_kernel() -> Any:
    return mx.fast.cuda_kernel(
        name="silu_gate",
        input_names=["h", "dims"],
        output_names=["act"],
        source=_SILU_GATE,
    )


def silu_gate_available(h: mx.array) -> bool:
    """`silu_gate` takes half-precision values whose last axis is a multiple of 16, on an NVIDIA GPU."""
    return on_cuda() and h.dtype in (mx.float16, mx.bfloat16) and h.shape[-1] % 16 == 0


def silu_gate(h: mx.array) -> mx.array:
    """silu(h[..., :I]) * h[..., I:] for h (..., 2I): (..., I)."""
    width = h.shape[-1] // 2
    vectors = h.size // 16
    return _silu_gate_kernel()(
        inputs=[h, constant((vectors,), mx.int32)],
        template=[("T", h.dtype), ("I", width)],
        grid=(vectors, 1, 1),
        threadgroup=(256, 1, 1),
        output_shapes=[(*h.shape[:-1], width)],
        output_dtypes=[h.dtype],
    )[0]


def residual_norm(
    x: mx.array, y: mx.array, norm: nn.RMSNorm | nn.LayerNorm | None, limit: float | None = None, fused: bool = True
) -> tuple[mx.array, mx.array | None]:
    """(s, norm(s)) for s = x + y, clamped to +-`limit` when given; norm None: (s, None). One `add_norm` kernel
    where it takes x (and `fused`), MLX's ops elsewhere."""
    layer = isinstance(norm, nn.LayerNorm)
    if fused and norm is not None and x.shape == y.shape and x.dtype == y.dtype and add_norm_available(x):
        return add_norm(x, y, norm.weight, norm.eps, norm.bias if layer else None, limit)
    s = x + y
    if limit is not None:
        s = mx.clip(s, -limit, limit)
    return s, None if norm is None else norm(s)


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
