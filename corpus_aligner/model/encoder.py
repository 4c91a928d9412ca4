"""Audio encoder of Qwen3-ForcedAligner (model.md §2; oracle: qwen_asr `Qwen3ASRAudioEncoder.forward`).

The official code encodes one clip at a time. Here every 1-s chunk of a whole batch goes through the
convolutions at once, and the transformer runs over rows of whole attention windows from all clips
(plan.py), so a clip's output does not depend on what else is in the batch (each window only sees its own
tokens). On an NVIDIA GPU each layer is products (biases in their epilogues), the attention core and our
kernels (`FUSED_LAYERS`); on other GPUs its work before and after the attention core is `mx.compile`d, traced
once whatever the batch's shape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from functools import lru_cache, partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from corpus_aligner.model import bf16_matmul, cpu_attention, cuda_kernels, derived, fastmath
from corpus_aligner.model.args import EncoderArgs
from corpus_aligner.model.device_arrays import constant, send
from corpus_aligner.model.plan import (  # noqa: F401  (re-exported: the plan is part of the encoder's API)
    ENCODER_ATTENTION_MODES,
    EncoderPlan,
    audio_token_count,
    conv_output_tokens,
    plan_batch,
)

FP16_CLAMP = 65504.0 - 1000.0
QKV = ("q_proj", "k_proj", "v_proj")

# Whether an NVIDIA GPU runs the first convolution with its GELU as one kernel (`cuda_kernels.conv1_gelu`);
# False keeps the im2col product and MLX ops (the A/B baseline).
FUSED_CONV1 = True
# Whether an NVIDIA GPU adds the bias of the 480-channel convolutions and of each layer's fc1 in one kernel with
# their exact GELU (and the convolutions' mask), `cuda_kernels.bias_gelu`; False keeps MLX's compiled kernels.
FUSED_GELU = True
# Whether a GPU takes each layer's q, k and v from one product of their stacked weights, the biases added in the
# product's epilogue (`mx.addmm`, cuBLASLt's bias epilogue on an NVIDIA GPU); False keeps three products and
# three bias adds (compiled).
STACKED_QKV = True
# Whether an NVIDIA GPU runs each layer without compiled parts: q, k and v from the stacked product (as
# `STACKED_QKV`), the output projection and fc2 with their biases in the products' epilogues (`mx.addmm`), each
# residual add with the LayerNorm after it as one kernel (`cuda_kernels.add_norm`), fc1's bias + GELU as one
# (`bias_gelu`). False keeps `_Compiled`.
FUSED_LAYERS = True


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

    def heads(self, x: mx.array, width: int) -> tuple[mx.array, mx.array, mx.array]:
        """x (R * L, D): R rows of L = `width` slots -> q, k, v (R, H, L, hd). Only -1 and the row length
        are used as shapes, so that one shapeless trace serves any number of rows."""
        dims = x.shape[-1]

        def split(y: mx.array) -> mx.array:
            return y.reshape(-1, width, self.num_heads, dims // self.num_heads).transpose(0, 2, 1, 3)

        return split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))

    def merge(self, o: mx.array) -> mx.array:
        """(R, H, L, hd) attention output -> (R * L, D), projected."""
        return self.out_proj(o.transpose(0, 2, 1, 3).reshape(-1, self.out_proj.weight.shape[1]))

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        """x (R * L, D) -> (R * L, D); bias (R, 1, L, L) additive, 0 within a window."""
        q, k, v = self.heads(x, bias.shape[-1])
        return self.merge(attention(q, k, v, self.scale, bias))


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, bias: mx.array) -> mx.array:
    """Bidirectional attention with an additive mask; on the CPU the numpy core (MLX's CPU SDPA spends most
    of its time in scalar exp), or an explicit product with the cheap-op softmax in half precision.

    The mask is additive on the GPU too: MLX's CUDA SDPA ran 2x faster with a 0/-inf mask than with a
    boolean one (0.30 vs 0.62 ms per layer for 336 windows of 104 tokens on an H100)."""
    if not fastmath.use_fast_math():
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=bias)
    if q.dtype == mx.float32:
        return cpu_attention.window_attention(q, k, v, scale, bias)
    return fastmath.softmax((q * scale) @ k.transpose(0, 1, 3, 2) + bias) @ v


def window_bias(slot_window: mx.array, dtype: mx.Dtype) -> mx.array:
    """(R, L) window of each slot -> (R, 1, L, L) additive mask: 0 where query and key share a window.
    Padding slots (-1) see each other only, so no row of scores is all -inf."""
    same = slot_window[:, None, :, None] == slot_window[:, None, None, :]
    return mx.where(same, constant(0.0, dtype), constant(-mx.inf, dtype))


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
        self.compiled = _Compiled(self)

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        q, k, v = self.qkv(x, bias.shape[-1])
        return self.rest(x, attention(q, k, v, self.self_attn.scale, bias))

    def qkv(self, x: mx.array, width: int) -> tuple[mx.array, mx.array, mx.array]:
        return self.self_attn.heads(self.self_attn_layer_norm(x), width)

    def qkv_stacked(self, normed: mx.array, width: int, weight: mx.array, bias: mx.array) -> tuple[mx.array, ...]:
        """`qkv` of the normed input as one product of the stacked weight (3D, D) with the stacked bias added in
        its epilogue (both from `derived.stacked(self_attn, QKV, biased=True)`). Not for a shapeless trace (an
        addmm in one gave wrong values, `bf16_matmul.Linear`; the slices keep the traced shape). q, k and v are
        views of the product: the attention reads them in place and writes its output in q's layout,
        (rows, L, H, hd), which the output projection takes without a copy."""
        h = mx.addmm(bias, normed, weight.T)
        heads = self.self_attn.num_heads
        h = h.reshape(-1, width, 3, heads, normed.shape[-1] // heads)
        return tuple(h[:, :, i].transpose(0, 2, 1, 3) for i in range(3))

    def fused(
        self, x: mx.array, normed: mx.array, bias: mx.array, following: nn.LayerNorm | None
    ) -> tuple[mx.array, mx.array | None]:
        """The layer as `FUSED_LAYERS` runs it: x (R * L, D) and normed = self_attn_layer_norm(x) -> the layer's
        output and `following`'s norm of it (the next layer's first norm; None after the last layer)."""
        attn = self.self_attn
        stacked = derived.stacked(attn, QKV, biased=True)
        if stacked is None:
            raise ValueError("the encoder's q/k/v projections are quantized or unbiased: no stacked product")
        q, k, v = self.qkv_stacked(normed, bias.shape[-1], *stacked)
        o = attention(q, k, v, attn.scale, bias).transpose(0, 2, 1, 3).reshape(x.shape)
        y = mx.addmm(attn.out_proj.bias, o, attn.out_proj.weight.T)
        x, h = cuda_kernels.residual_norm(x, y, self.final_layer_norm)
        assert h is not None
        if FUSED_GELU and cuda_kernels.bias_gelu_available(h):
            act = cuda_kernels.bias_gelu(h @ self.fc1.weight.T, self.fc1.bias)
        else:
            act = gelu(self.fc1(h))
        limit = FP16_CLAMP if x.dtype == mx.float16 else None  # the official fp16 guard, as `tail`
        return cuda_kernels.residual_norm(x, mx.addmm(self.fc2.bias, act, self.fc2.weight.T), following, limit)

    def rest(self, x: mx.array, o: mx.array) -> mx.array:
        """Everything after the attention core: output projection, residuals, MLP."""
        x = x + self.self_attn.merge(o)
        return self.tail(x, gelu(self.fc1(self.final_layer_norm(x))))

    def mid(self, x: mx.array, o: mx.array) -> tuple[mx.array, mx.array]:
        """`rest` up to fc1's product, without its bias: the residual stream and fc1's product."""
        x = x + self.self_attn.merge(o)
        return x, self.final_layer_norm(x) @ self.fc1.weight.T

    def tail(self, x: mx.array, act: mx.array) -> mx.array:
        """`rest` from the MLP's activation `act` on: fc2 and the residual."""
        x = x + self.fc2(act)
        if x.dtype == mx.float16:  # the official fp16 guard; a no-op in other dtypes
            x = mx.clip(x, -FP16_CLAMP, FP16_CLAMP)
        return x


class _Compiled:
    """A layer's forward with the parts before and after the attention core `mx.compile`d (a plain
    attribute, not a parameter), built lazily per row length; q, k and v from one product of the stacked
    weights instead (`STACKED_QKV`, not traced). On an NVIDIA GPU the part after the attention core
    is cut at fc1's product, whose bias and GELU run as one kernel of ours (`cuda_kernels.bias_gelu`: a custom
    kernel's output shape is fixed where it is called, so it stays out of the shapeless traces).

    Shapeless: one trace serves every row count. The attention core stays outside: MLX's CUDA SDPA with a
    mask does not trace shapelessly (its mask broadcast keeps the traced shape). The layer is the compiled
    functions' captured state, so weights loaded later are used, not the ones of the first trace.

    Tracing swaps placeholder arrays into that state (each thread traces for itself: mlx keeps a compile
    cache per thread), so a lock keeps a second thread from reading them ("eval an array without a
    primitive" with two batches in flight). Calls only build the graph, so the lock is held briefly."""

    def __init__(self, layer: AudioEncoderLayer):
        self.layer = layer
        self.by_width: dict[int, Callable[[mx.array], tuple[mx.array, mx.array, mx.array]]] = {}
        self.rest = mx.compile(layer.rest, inputs=layer, shapeless=True)
        self.mid = mx.compile(layer.mid, inputs=layer, shapeless=True)
        self.tail = mx.compile(layer.tail, inputs=layer, shapeless=True)
        self.lock = threading.Lock()

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        width = bias.shape[-1]
        with self.lock:
            stacked = derived.stacked(self.layer.self_attn, QKV, biased=True) if STACKED_QKV else None
            if stacked is not None:
                q, k, v = self.layer.qkv_stacked(self.layer.self_attn_layer_norm(x), width, *stacked)
            else:
                if width not in self.by_width:
                    qkv = partial(self.layer.qkv, width=width)
                    self.by_width[width] = mx.compile(qkv, inputs=self.layer, shapeless=True)
                q, k, v = self.by_width[width](x)
            o = attention(q, k, v, self.layer.self_attn.scale, bias)
            if FUSED_GELU and cuda_kernels.bias_gelu_available(x):
                x, h = self.mid(x, o)
                return self.tail(x, cuda_kernels.bias_gelu(h, self.layer.fc1.bias))
            return self.rest(x, o)


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


def gelu_masked(x: mx.array, keep: mx.array | None) -> mx.array:
    """GELU(x) * keep (None: no mask); on the GPU one compiled kernel, one pass over x."""
    if fastmath.use_fast_math():
        y = fastmath.gelu(x)
        return y if keep is None else y * keep
    return _gelu_keep(x, mx.array(1.0, x.dtype) if keep is None else keep)


@partial(mx.compile, shapeless=True)
def _gelu_keep(x: mx.array, keep: mx.array) -> mx.array:
    return nn.gelu(x) * keep


def gelu_bias_masked(x: mx.array, bias: mx.array, keep: mx.array | None) -> mx.array:
    """GELU(x + bias) * keep (None: no mask) as one compiled kernel: `nn.Conv2d`'s bias add was a pass of its
    own over the convolution's output."""
    return _gelu_bias_keep(x, bias, mx.array(1.0, x.dtype) if keep is None else keep)


@partial(mx.compile, shapeless=True)
def _gelu_bias_keep(x: mx.array, bias: mx.array, keep: mx.array) -> mx.array:
    return nn.gelu(x + bias) * keep


def _conv_no_bias(conv: nn.Conv2d, x: mx.array) -> mx.array:
    return mx.conv2d(x, conv.weight, conv.stride, conv.padding, conv.dilation, conv.groups)


def taps_by_row(conv: nn.Conv2d) -> tuple[mx.array, mx.array]:
    """A one-channel 3x3 conv's weight as (9, O), tap (i, j) at row 3i + j, and its bias, both float32, for
    `cuda_kernels.conv1_gelu` (cached, `derived.cached`)."""

    def build() -> tuple[mx.array, mx.array]:
        w = mx.contiguous(conv.weight.reshape(conv.weight.shape[0], 9).T.astype(mx.float32))
        b = conv.bias.astype(mx.float32)
        mx.eval(w, b)
        return w, b

    return derived.cached(conv, "taps_by_row", (conv.weight, conv.bias), build)


def conv_gelu(conv: nn.Conv2d, x: mx.array, keep: mx.array | None) -> mx.array:
    """GELU(conv(x)) * keep (None: no mask) for one of the front end's 3x3 stride-2 convolutions (NHWC)."""
    if fastmath.use_fast_math():
        if bf16_matmul.keeps_bf16_weight(conv) and bf16_matmul.applies(x, conv.weight):
            return gelu_masked(bf16_matmul.conv3x3_s2(x, bf16_matmul.bf16_copy(conv), conv.bias), keep)
        return gelu_masked(conv(x), keep)
    # One input channel: as a product with K = 9 the first conv ran 1.5x faster on an H100 than MLX's CUDA
    # convolution (and 4x faster on an H200 than the nine taps as one compiled element-wise kernel, whose
    # float32 sum MLX split into several kernels); the 480-channel ones are faster as convolutions (cuDNN),
    # their bias added in the GELU's pass rather than in one of its own.
    if conv.weight.shape[-1] == 1:
        return gelu_masked(conv3x3_s2(conv, x), keep)
    return gelu_bias_masked(_conv_no_bias(conv, x), conv.bias, keep)


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
                # One piece at a time: in one evaluation MLX would run the pieces side by side (BFS). Scheduled,
                # not waited for: the thread goes on building the layers while the device runs the convs.
                mx.async_eval(part)
                parts.append(part)
            return mx.concatenate(parts, axis=0)
        x = chunks.transpose(0, 2, 1)[..., None]  # (N, mel=H, time=W, 1): NHWC
        lengths = conv_lengths
        for conv in (self.conv2d1, self.conv2d2, self.conv2d3):
            out_lengths = None if lengths is None else (lengths - 1) // 2 + 1
            if conv is self.conv2d1 and FUSED_CONV1 and cuda_kernels.conv1_available(conv):
                x = cuda_kernels.conv1_gelu(chunks, *taps_by_row(conv), out_lengths)
            elif conv is not self.conv2d1 and FUSED_GELU and cuda_kernels.bias_gelu_available(x):
                x = cuda_kernels.bias_gelu(_conv_no_bias(conv, x), conv.bias, out_lengths)
            else:
                keep = None
                if out_lengths is not None:
                    valid = np.arange((x.shape[2] - 1) // 2 + 1)[None, :] < out_lengths[:, None]  # (N, W out)
                    keep = mx.array(valid[:, None, :, None].astype(np.float32)).astype(x.dtype)  # type: ignore[arg-type]
                x = conv_gelu(conv, x, keep)
            lengths = out_lengths
        n, f, t, c = x.shape
        x = x.transpose(0, 2, 3, 1).reshape(n, t, c * f)  # feature index = channel * F + freq
        x = self.conv_out(x)
        return x + sinusoids(self.args.max_source_positions, x.shape[-1])[:t].astype(x.dtype)

    def runs_fused(self, x: mx.array) -> bool:
        """Whether the layers run as `FUSED_LAYERS` says: on an NVIDIA GPU, with float q/k/v weights."""
        return (
            FUSED_LAYERS
            and bool(self.layers)
            and cuda_kernels.add_norm_available(x)
            and derived.stacked(self.layers[0].self_attn, QKV, biased=True) is not None
        )

    def fused_layers(self, x: mx.array, bias: mx.array) -> mx.array:
        """The layers as `AudioEncoderLayer.fused` runs them, each residual add taken with the norm after it."""
        normed: mx.array | None = self.layers[0].self_attn_layer_norm(x)
        for i, layer in enumerate(self.layers):
            following = self.layers[i + 1].self_attn_layer_norm if i + 1 < len(self.layers) else None
            assert normed is not None  # only the last layer leaves None
            x, normed = layer.fused(x, normed, bias, following)
        return x

    def __call__(self, plan: EncoderPlan, arrays: Sequence[mx.array] | None = None) -> mx.array:
        """All valid audio tokens of the batch, clip after clip: (sum(tokens_per_clip), output_dim).

        arrays: the plan's `device_inputs` already on the device (`device_arrays.send`), else sent here."""
        chunks, slot_src, slot_window, token_slot = send(plan.device_inputs()) if arrays is None else arrays
        x = self.downsample(chunks.astype(self.conv2d1.weight.dtype), plan.conv_lengths, plan.conv_piece)
        x = x.reshape(-1, x.shape[-1])[slot_src]  # (rows * width, D): enter the window rows
        bias = window_bias(slot_window, x.dtype)
        if self.runs_fused(x):
            x = self.fused_layers(x, bias)
        else:
            compiled = not fastmath.use_fast_math()  # the CPU's numpy attention core cannot be traced
            for layer in self.layers:
                x = layer.compiled(x, bias) if compiled else layer(x, bias)
        x = x[token_slot]  # (T, D): leave them, clip after clip
        x = self.ln_post(x)
        return self.proj2(gelu(self.proj1(x)))
