"""Audio encoder of Qwen3-ForcedAligner (model.md §2; oracle: qwen_asr `Qwen3ASRAudioEncoder.forward`).

The official code encodes one clip at a time. Here every 1-s chunk of a whole batch goes through the
convolutions at once, and the transformer runs over attention windows gathered from all clips, so a
clip's output does not depend on what else is in the batch (each window only sees its own tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from corpus_aligner.model.args import EncoderArgs

ENCODER_ATTENTION_MODES = ("windowed", "full")
FP16_CLAMP = 65504.0 - 1000.0


def conv_output_tokens(chunk_frames: np.ndarray) -> np.ndarray:
    """Tokens three stride-2 convs leave of chunks of `l` frames: ceil(l/8), the official formula."""
    f = (chunk_frames - 1) // 2 + 1
    return ((f - 1) // 2 + 1 - 1) // 2 + 1


def audio_token_count(n_frames: int, chunk_frames: int = 100) -> int:
    """N_a for a clip of `n_frames` mel frames (model.md §2.4): 13 per full chunk plus ceil(rest/8)."""
    full, rest = divmod(n_frames, chunk_frames)
    per_chunk = int(conv_output_tokens(np.array(chunk_frames)))
    return full * per_chunk + (int(conv_output_tokens(np.array(rest))) if rest else 0)


@lru_cache(maxsize=8)
def sinusoids(length: int, channels: int) -> mx.array:
    """Whisper-style table (model.md §2.3): sin block then cos block, float32."""
    inc = np.log(10000.0) / (channels // 2 - 1)
    inv = np.exp(-inc * np.arange(channels // 2, dtype=np.float32)).astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return mx.array(np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32))


@dataclass(frozen=True)
class EncoderPlan:
    """Host-side index arrays that lay a batch of clips out as chunks and attention windows."""

    chunks: np.ndarray  # (n_chunks, chunk_frames, mel) zero-padded features
    conv_lengths: np.ndarray | None  # (n_chunks,) frames to keep valid through the convs, None if all full
    token_src: np.ndarray  # (n_tokens,) row of each valid token in the (n_chunks * tokens_per_chunk) grid
    window_src: np.ndarray  # (n_windows, window_len) index of each window slot in the token list
    window_mask: np.ndarray | None  # (n_windows, window_len) True on real slots, None if none padded
    window_out: np.ndarray  # (n_tokens,) row of each token in the (n_windows * window_len) grid
    tokens_per_clip: tuple[int, ...]


def plan_batch(features: list[np.ndarray], args: EncoderArgs, attention: str) -> EncoderPlan:
    """Chunk every clip (model.md §2.1) and tile its tokens with attention windows (§2.5).

    A clip with several chunks has its tail chunk zero-padded to the full chunk length, exactly as the
    official `pad_sequence` does. A clip of one short chunk is not padded by the official code; here it is
    padded but its activations past the valid length are zeroed after every conv, which is the same
    computation (`conv_lengths`).
    """
    if attention not in ENCODER_ATTENTION_MODES:
        raise ValueError(f"encoder attention must be one of {ENCODER_ATTENTION_MODES}, got {attention!r}")
    cf = args.chunk_frames
    per_chunk = int(conv_output_tokens(np.array(cf)))
    window = per_chunk * (args.n_window_infer // cf)
    chunk_list, lengths, masked, token_src, counts = [], [], [], [], []
    n_chunks = 0
    for feat in features:
        n = feat.shape[0]
        if n < 1:
            raise ValueError("a clip needs at least one mel frame")
        c = math.ceil(n / cf)
        padded = np.zeros((c * cf, feat.shape[1]), dtype=np.float32)
        padded[:n] = feat
        chunk_list.append(padded.reshape(c, cf, feat.shape[1]))
        chunk_len = np.full(c, cf, dtype=np.int64)
        if n % cf:
            chunk_len[-1] = n % cf
        valid = conv_output_tokens(chunk_len)
        for i in range(c):
            token_src.append(np.arange(valid[i]) + (n_chunks + i) * per_chunk)
        lengths.extend(chunk_len.tolist() if c == 1 else [cf] * c)
        masked.append(c == 1 and n < cf)
        counts.append(int(valid.sum()))
        n_chunks += c
    spans = []
    offset = 0
    for count in counts:
        size = window if attention == "windowed" else count
        spans.extend((offset + s, min(size, count - s)) for s in range(0, count, size))
        offset += count
    width = max(length for _, length in spans)
    window_src = np.zeros((len(spans), width), dtype=np.int32)
    window_mask = np.zeros((len(spans), width), dtype=bool)
    window_out = []
    for w, (start, length) in enumerate(spans):
        window_src[w, :length] = np.arange(start, start + length)
        window_mask[w, :length] = True
        window_out.append(np.arange(length) + w * width)
    return EncoderPlan(
        chunks=np.concatenate(chunk_list, axis=0),
        conv_lengths=np.asarray(lengths) if any(masked) else None,
        token_src=np.concatenate(token_src).astype(np.int32),
        window_src=window_src,
        window_mask=None if window_mask.all() else window_mask,
        window_out=np.concatenate(window_out).astype(np.int32),
        tokens_per_clip=tuple(counts),
    )


class AudioAttention(nn.Module):
    def __init__(self, dims: int, heads: int):
        super().__init__()
        self.num_heads = heads
        self.scale = (dims // heads) ** -0.5
        self.q_proj = nn.Linear(dims, dims)
        self.k_proj = nn.Linear(dims, dims)
        self.v_proj = nn.Linear(dims, dims)
        self.out_proj = nn.Linear(dims, dims)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        W, L, D = x.shape
        q = self.q_proj(x).reshape(W, L, self.num_heads, -1).transpose(0, 2, 1, 3)  # (W, H, L, hd)
        k = self.k_proj(x).reshape(W, L, self.num_heads, -1).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(W, L, self.num_heads, -1).transpose(0, 2, 1, 3)
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.out_proj(o.transpose(0, 2, 1, 3).reshape(W, L, D))


class AudioEncoderLayer(nn.Module):
    """Pre-LN block (model.md §2.6): LayerNorm eps 1e-5, biased projections, exact GELU."""

    def __init__(self, args: EncoderArgs):
        super().__init__()
        d = args.d_model
        self.self_attn = AudioAttention(d, args.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d, eps=1e-5)
        self.fc1 = nn.Linear(d, args.encoder_ffn_dim)
        self.fc2 = nn.Linear(args.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d, eps=1e-5)

    def __call__(self, x: mx.array, mask: mx.array | None) -> mx.array:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)
        x = x + self.fc2(nn.gelu(self.fc1(self.final_layer_norm(x))))
        if x.dtype == mx.float16:  # the official fp16 guard; a no-op in other dtypes
            x = mx.clip(x, -FP16_CLAMP, FP16_CLAMP)
        return x


class AudioEncoder(nn.Module):
    def __init__(self, args: EncoderArgs):
        super().__init__()
        self.args = args
        h = args.downsample_hidden_size
        self.conv2d1 = nn.Conv2d(1, h, 3, stride=2, padding=1)
        self.conv2d2 = nn.Conv2d(h, h, 3, stride=2, padding=1)
        self.conv2d3 = nn.Conv2d(h, h, 3, stride=2, padding=1)
        self.conv_out = nn.Linear(h * args.freq_after_conv, args.d_model, bias=False)
        self.layers = [AudioEncoderLayer(args) for _ in range(args.encoder_layers)]
        self.ln_post = nn.LayerNorm(args.d_model, eps=1e-5)
        self.proj1 = nn.Linear(args.d_model, args.d_model)
        self.proj2 = nn.Linear(args.d_model, args.output_dim)

    def downsample(self, chunks: mx.array, conv_lengths: np.ndarray | None) -> mx.array:
        """(n_chunks, chunk_frames, mel) -> (n_chunks, tokens_per_chunk, d_model), positions added."""
        x = chunks.transpose(0, 2, 1)[..., None]  # (N, mel=H, time=W, 1): NHWC
        lengths = conv_lengths
        for conv in (self.conv2d1, self.conv2d2, self.conv2d3):
            x = nn.gelu(conv(x))
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
        x = self.downsample(mx.array(plan.chunks).astype(dtype), plan.conv_lengths)
        x = x.reshape(-1, x.shape[-1])[mx.array(plan.token_src)]  # (T, D)
        x = x[mx.array(plan.window_src)]  # (W, L, D)
        mask = None
        if plan.window_mask is not None:
            mask = mx.array(plan.window_mask)[:, None, None, :]  # (W, 1, 1, L) keys
        for layer in self.layers:
            x = layer(x, mask)
        x = x.reshape(-1, x.shape[-1])[mx.array(plan.window_out)]  # (T, D)
        x = self.ln_post(x)
        return self.proj2(nn.gelu(self.proj1(x)))
