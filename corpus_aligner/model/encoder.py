"""Audio encoder of Qwen3-ForcedAligner (model.md §2; oracle: qwen_asr `Qwen3ASRAudioEncoder.forward`).

The official code encodes one clip at a time. Here every 1-s chunk of a whole batch goes through the
convolutions at once, and the transformer runs over attention windows gathered from all clips, so a
clip's output does not depend on what else is in the batch (each window only sees its own tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from corpus_aligner.model import bf16_matmul, cpu_attention, fastmath
from corpus_aligner.model.args import EncoderArgs
from corpus_aligner.model.plan import (  # noqa: F401  (re-exported: the plan is part of the encoder's API)
    ENCODER_ATTENTION_MODES,
    EncoderPlan,
    audio_token_count,
    conv_output_tokens,
    plan_batch,
)

FP16_CLAMP = 65504.0 - 1000.0


@lru_cache(maxsize=8)
def sinusoids(length: int, channels: int) -> mx.array:
    """Whisper-style table (model.md §2.3): sin block then cos block, float32."""
    inc = np.log(10000.0) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32)).astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return mx.array(np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32))


class AudioAttention(nn.Module):
    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.scale = (dims // heads) ** -0.5
        self.q_proj = bf16_matmul.Linear(dims, dims)
        self.k_proj = bf16_matmul.Linear(dims, dims)
        self.v_proj = bf16_matmul.Linear(dims, dims)
        self.out_proj = bf16_matmul.Linear(dims, dims)

    def __call__(self, x: mx.array, windows: Windows) -> mx.array:
        """x (T, D) flat tokens -> (T, D). Projections run on the T real tokens only; attention runs
        per window, gathered to (W, L) and scattered back."""
        _, D = x.shape
        W, L = windows.src.shape

        def heads(y: mx.array) -> mx.array:
            return y[windows.src].reshape(W, L, self.num_heads, -1).transpose(0, 2, 1, 3)  # (W, H, L, hd)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        o = attention(q, k, v, self.scale, windows.mask)  # (W, H, L, hd)
        o = o.transpose(0, 2, 1, 3).reshape(W * L, D)[windows.out]  # (T, D)
        return self.out_proj(o)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: mx.array | None) -> mx.array:
    """Bidirectional attention; `mask` (W, 1, 1, L) True on real keys. On the CPU an explicit product
    with the cheap-op softmax (MLX's CPU SDPA spends most of its time in scalar exp)."""
    if not fastmath.use_fast_math():
        # As an additive 0/-inf mask: MLX's CUDA SDPA ran 2x faster with it than with the boolean one
        # (0.30 vs 0.62 ms per layer for 336 windows of 104 tokens on an H100).
        bias = None if mask is None else mx.where(mask, 0.0, -mx.inf).astype(q.dtype)
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=bias)
    if q.dtype == mx.float32:
        return cpu_attention.window_attention(q, k, v, scale, mask)
    scores = (q * scale) @ k.transpose(0, 1, 3, 2)  # (W, H, L, L)
    if mask is not None:
        scores = mx.where(mask, scores, -mx.inf)
    return fastmath.softmax(scores) @ v


@dataclass(frozen=True)
class Windows:
    """Device-side window indices of one batch (see EncoderPlan)."""

    src: mx.array  # (W, L) token index of each window slot
    out: mx.array  # (T,) slot of each token in the flattened (W * L) grid
    mask: mx.array | None  # (W, 1, 1, L) True on real slots


class AudioEncoderLayer(nn.Module):
    """Pre-LN block (model.md §2.6): LayerNorm eps 1e-5, biased projections, exact GELU."""

    def __init__(self, args: EncoderArgs):
        super().__init__()
        d = args.d_model
        self.self_attn = AudioAttention(d, args.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=1e-5)
        self.fc1 = bf16_matmul.Linear(d, args.encoder_ffn_dim)
        self.fc2 = bf16_matmul.Linear(args.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=1e-5)

    def __call__(self, x: mx.array, windows: Windows) -> mx.array:
        x = x + self.self_attn(self.self_attn_layer_norm(x), windows)
        x = x + self.fc2(gelu(self.fc1(self.final_layer_norm(x))))
        if x.dtype == mx.float16:  # the official fp16 guard; a no-op in other dtypes
            x = mx.clip(x, -FP16_CLAMP, FP16_CLAMP)
        return x


def conv3x3_s2(conv: nn.Conv2d, x: mx.array) -> mx.array:
    """`conv(x)` for its 3x3 kernel, stride 2, padding 1, as one explicit im2col matrix product (NHWC).

    Used on the GPU for the first conv (one input channel), where it beat MLX's CUDA convolution.
    """
    n, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = mx.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    taps = [xp[:, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2, :] for i in range(3) for j in range(3)]
    cols = mx.concatenate(taps, axis=-1).reshape(n * ho * wo, 9 * c)  # (positions, kH*kW*C), (i, j, c) order
    weight = conv.weight.reshape(conv.weight.shape[0], -1)  # (O, kH*kW*C): MLX keeps [O, kH, kW, I]
    return mx.addmm(conv.bias, cols, weight.T).reshape(n, ho, wo, -1)


def gelu(x: mx.array) -> mx.array:
    """Exact GELU: the cheap-op kernel on the CPU, MLX's own elsewhere."""
    return fastmath.gelu(x) if fastmath.use_fast_math() else nn.gelu(x)


class AudioEncoder(nn.Module):
    def __init__(self, args: EncoderArgs):
        super().__init__()
        self.args = args
        h = args.downsample_hidden_size
        self.conv2d1 = nn.Conv2d(1, h, 3, stride=2, padding=1)
        self.conv2d2 = nn.Conv2d(h, h, 3, stride=2, padding=1)
        self.conv2d3 = nn.Conv2d(h, h, 3, stride=2, padding=1)
        self.conv_out = bf16_matmul.Linear(h * args.freq_after_conv, args.d_model, bias=False)
        self.layers = [AudioEncoderLayer(args) for _ in range(args.encoder_layers)]
        self.ln_post = nn.LayerNorm(args.d_model, eps=1e-5)
        self.proj1 = bf16_matmul.Linear(args.d_model, args.d_model)
        self.proj2 = bf16_matmul.Linear(args.d_model, args.output_dim)

    def downsample(self, chunks: mx.array, conv_lengths: np.ndarray | None, piece: int = 0) -> mx.array:
        """(n_chunks, chunk_frames, mel) -> (n_chunks, tokens_per_chunk, d_model), positions added.

        piece > 0 runs the convolutions over at most that many chunks at a time: it bounds the memory of
        the first conv's output (1.5 M values per chunk) and, with chunk counts rounded to a divisor of
        it, keeps the convolution shapes (and a GPU's conv plans) few.
        """
        n = chunks.shape[0]
        if 0 < piece < n:
            parts = []
            for i in range(0, n, piece):
                part = self.downsample(
                    chunks[i : i + piece], None if conv_lengths is None else conv_lengths[i : i + piece]
                )
                mx.eval(part)  # one piece at a time: MLX would otherwise run the pieces side by side (BFS)
                parts.append(part)
            return mx.concatenate(parts, axis=0)
        x = chunks.transpose(0, 2, 1)[..., None]  # (N, mel=H, time=W, 1): NHWC
        lengths = conv_lengths
        for conv in (self.conv2d1, self.conv2d2, self.conv2d3):
            # One input channel: as a product with K = 9 the first conv ran 1.5x faster on an H100 than
            # MLX's CUDA convolution; the 480-channel ones are faster as convolutions (cuDNN).
            one_channel = conv.weight.shape[-1] == 1 and not fastmath.use_fast_math()
            if one_channel:
                x = conv3x3_s2(conv, x)
            elif conv.weight.shape[-1] > 1 and bf16_matmul.applies(x, conv.weight):
                x = bf16_matmul.conv3x3_s2(x, bf16_matmul.bf16_copy(conv), conv.bias)
            else:
                x = conv(x)
            x = gelu(x)
            if lengths is not None:
                lengths = (lengths - 1) // 2 + 1
                keep = np.arange(x.shape[2])[None, :] < lengths[:, None]  # (N, W)
                x = x * mx.array(keep[:, None, :, None].astype(np.float32)).astype(x.dtype)  # type: ignore[arg-type]
        n, f, t, c = x.shape
        x = x.transpose(0, 2, 3, 1).reshape(n, t, c * f)  # feature index = channel * F + freq
        x = self.conv_out(x)
        return x + sinusoids(self.args.max_source_positions, x.shape[-1])[:t].astype(x.dtype)

    def __call__(self, plan: EncoderPlan) -> mx.array:
        """All valid audio tokens of the batch, clip after clip: (sum(tokens_per_clip), output_dim)."""
        dtype = self.conv2d1.weight.dtype
        x = self.downsample(mx.array(plan.chunks).astype(dtype), plan.conv_lengths, plan.conv_piece)
        x = x.reshape(-1, x.shape[-1])[mx.array(plan.token_src)]  # (T, D)
        mask = None
        if plan.window_mask is not None:
            mask = mx.array(plan.window_mask)[:, None, None, :]  # (W, 1, 1, L) keys
        windows = Windows(mx.array(plan.window_src), mx.array(plan.window_out), mask)
        for layer in self.layers:
            x = layer(x, windows)
        x = self.ln_post(x)
        return self.proj2(gelu(self.proj1(x)))
