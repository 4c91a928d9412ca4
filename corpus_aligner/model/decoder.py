"""Qwen3 text decoder (model.md §3; oracle: qwen_asr `Qwen3ASRThinkerTextModel`).

Sequences are right-padded: with causal attention a real token never sees a pad after it, so no
key-padding mask is needed, and positions are 0..S-1 for every row (the official M-RoPE reduces to
plain 1-D RoPE, model.md §3). Only the `<timestamp>` slots are read out, so the last layer computes
queries, attention output and MLP at those rows alone (its keys and values still cover every position).
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn

from corpus_aligner.model import bf16_matmul, cpu_attention, cuda_kernels, derived, fastmath
from corpus_aligner.model.args import DecoderArgs

# Whether an NVIDIA GPU takes q, k and v from one product and one fused norm + RoPE kernel
# (`cuda_kernels.qkv_norm_rope`); False keeps the separate products and MLX ops (the A/B baseline).
FUSED_QKV = True
# Whether an NVIDIA GPU adds each residual and takes the RMSNorm after it in one kernel
# (`cuda_kernels.add_norm`); False keeps the add and MLX's norm.
FUSED_ADD_NORM = True
# Whether a GPU runs the MLP's gate and up projections as one product of their stacked weights (one launch of
# twice the width instead of two), on an NVIDIA GPU with the activation as one kernel of ours
# (`cuda_kernels.silu_gate`); False keeps two products and MLX's compiled SiLU-gate.
STACKED_GATE_UP = True


class Attention(nn.Module):
    def __init__(self, args: DecoderArgs):
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.head_dim = args.head_dim
        self.scale = args.head_dim**-0.5
        self.rope_theta = args.rope_theta
        self.eps = args.rms_norm_eps
        d = args.hidden_size
        self.q_proj = bf16_matmul.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = bf16_matmul.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = bf16_matmul.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = bf16_matmul.Linear(self.n_heads * self.head_dim, d, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=args.rms_norm_eps)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=args.rms_norm_eps)

    def rope(self, x: mx.array) -> mx.array:
        # NeoX-style rotate-half RoPE after the q/k norms, as the official code.
        return mx.fast.rope(x, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0, offset=0)

    def keys_values(self, x: mx.array) -> tuple[mx.array, mx.array]:
        B, S, _ = x.shape
        k = self.k_norm(self.k_proj(x).reshape(B, S, self.n_kv_heads, -1)).transpose(0, 2, 1, 3)  # (B, KV, S, hd)
        v = self.v_proj(x).reshape(B, S, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        return self.rope(k), v

    def __call__(self, x: mx.array) -> mx.array:
        B, S, _ = x.shape
        fused = FUSED_QKV and cuda_kernels.available(self.head_dim)
        qkv = stacked(self, ("q_proj", "k_proj", "v_proj")) if fused else None
        if qkv is not None:
            q, k, v = cuda_kernels.qkv_norm_rope(
                x @ qkv.T,
                self.q_norm.weight,
                self.k_norm.weight,
                self.n_heads,
                self.n_kv_heads,
                self.rope_theta,
                self.eps,
            )
        else:
            q = self.rope(self.q_norm(self.q_proj(x).reshape(B, S, self.n_heads, -1)).transpose(0, 2, 1, 3))
            k, v = self.keys_values(x)
        o = causal_attention(q, k, v, self.scale)  # (B, S, H, hd)
        return self.o_proj(o.reshape(B, S, -1))

    def at_rows(self, x: mx.array, rows: mx.array) -> mx.array:
        """Attention output of the rows `rows` (B, K) only, each attending to positions <= its own."""
        B, S, _ = x.shape
        K = rows.shape[1]
        xq = mx.take_along_axis(x, rows[..., None], axis=1)  # (B, K, D)
        q = self.q_norm(self.q_proj(xq).reshape(B * K, 1, self.n_heads, -1)).transpose(0, 2, 1, 3)  # (BK, H, 1, hd)
        q = mx.fast.rope(
            q, self.head_dim, traditional=False, base=self.rope_theta, scale=1.0, offset=rows.reshape(-1)
        )  # one position per row: the same rotation as `rope` gives at that position
        q = q.reshape(B, K, self.n_heads, -1).transpose(0, 2, 1, 3)  # (B, H, K, hd)
        k, v = self.keys_values(x)
        visible = mx.arange(S)[None, None, None, :] <= rows[:, None, :, None]  # (B, 1, K, S)
        o = grouped_attention(q, k, v, self.scale, visible)
        return self.o_proj(o.transpose(0, 2, 1, 3).reshape(B, K, -1))


def stacked(module: nn.Module, names: tuple[str, ...]) -> mx.array | None:
    """`module`'s unbiased projection weights `names` stacked along the output axis in that order, for one product
    (cached, `derived.stacked`); None where they are quantized (their weights are packed codes) or biased."""
    parts = derived.stacked(module, names)
    return None if parts is None else parts[0]


def causal_attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """(B, H, S, hd) queries over (B, KV, S, hd) keys/values, causal -> (B, S, H, hd)."""
    if not fastmath.use_fast_math():
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
    elif q.dtype == mx.float32:
        return cpu_attention.causal_attention(q, k, v, scale)
    else:
        S = q.shape[2]
        o = grouped_attention(q, k, v, scale, mx.arange(S)[:, None] >= mx.arange(S)[None, :])
    return o.transpose(0, 2, 1, 3)


def grouped_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, visible: mx.array) -> mx.array:
    """Explicit GQA attention (query heads 2g, 2g+1 share kv head g) with a boolean visibility mask."""
    if not fastmath.use_fast_math():
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=visible)
    B, H, Q, hd = q.shape
    KV = k.shape[1]
    reps = H // KV
    g = q.reshape(B, KV, reps * Q, hd)  # the heads of a group stacked along rows: (B, KV, G*Q, hd)
    scores = (g * scale) @ k.transpose(0, 1, 3, 2)  # (B, KV, G*Q, S)
    mask = mx.tile(visible, (reps, 1)) if visible.ndim == 2 else mx.tile(visible, (1, 1, reps, 1))
    return (fastmath.softmax(mx.where(mask, scores, -mx.inf)) @ v).reshape(B, H, Q, hd)


class MLP(nn.Module):
    def __init__(self, args: DecoderArgs):
        super().__init__()
        self.gate_proj = bf16_matmul.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = bf16_matmul.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = bf16_matmul.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        if bf16_matmul.applies(x, self.gate_proj.weight):
            return self.down_proj(bf16_matmul.silu_gate_up(x, self.gate_proj, self.up_proj))
        if fastmath.use_fast_math():
            return self.down_proj(fastmath.silu_mul(self.gate_proj(x), self.up_proj(x)))
        gate_up = stacked(self, ("gate_proj", "up_proj")) if STACKED_GATE_UP else None
        if gate_up is not None:
            h = x @ gate_up.T
            if cuda_kernels.silu_gate_available(h):
                return self.down_proj(cuda_kernels.silu_gate(h))
            width = self.gate_proj.weight.shape[0]
            return self.down_proj(_silu_mul(h[..., :width], h[..., width:]))
        return self.down_proj(_silu_mul(self.gate_proj(x), self.up_proj(x)))


@partial(mx.compile, shapeless=True)
def _silu_mul(gate: mx.array, up: mx.array) -> mx.array:
    """SiLU(gate) * up as one kernel: one pass over the (B, S, 3072) activations instead of two."""
    return nn.silu(gate) * up


class DecoderLayer(nn.Module):
    def __init__(self, args: DecoderArgs):
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, x: mx.array) -> mx.array:
        x, h = self.attend(x, self.input_layernorm(x))
        return x + self.mlp(h)

    def attend(self, x: mx.array, normed: mx.array) -> tuple[mx.array, mx.array]:
        """The residual stream after attention, x + attn(normed) with normed = input_layernorm(x), and its
        post-attention norm (what the MLP takes)."""
        return add_norm(x, self.self_attn(normed), self.post_attention_layernorm)

    def at_rows(self, x: mx.array, rows: mx.array, normed: mx.array | None = None) -> mx.array:
        """The layer's output at `rows` (B, K) only: (B, K, D). `normed`: input_layernorm(x), when at hand."""
        normed = self.input_layernorm(x) if normed is None else normed
        out = mx.take_along_axis(x, rows[..., None], axis=1)
        out, h = add_norm(out, self.self_attn.at_rows(normed, rows), self.post_attention_layernorm)
        return out + self.mlp(h)


def add_norm(x: mx.array, y: mx.array, norm: nn.RMSNorm) -> tuple[mx.array, mx.array]:
    """(x + y, norm(x + y)): one kernel on an NVIDIA GPU (`cuda_kernels.add_norm`)."""
    s, normed = cuda_kernels.residual_norm(x, y, norm, fused=FUSED_ADD_NORM)
    assert normed is not None
    return s, normed


class TextModel(nn.Module):
    def __init__(self, args: DecoderArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [DecoderLayer(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, embeds: mx.array, rows: mx.array | None = None) -> mx.array:
        """(B, S, hidden) input embeddings -> final hidden states before `norm`: (B, S, hidden), or
        (B, K, hidden) at `rows` (B, K) when given (the last layer then runs at those rows only)."""
        x = embeds
        n = len(self.layers) if rows is None else len(self.layers) - 1
        if n <= 0:
            return x if rows is None else self.layers[-1].at_rows(x, rows)
        # Layer by layer, each residual add taken with the norm that follows it (`add_norm`): the next layer's
        # input norm is computed with the MLP's residual add.
        normed = self.layers[0].input_layernorm(x)
        for i in range(n):
            x, h = self.layers[i].attend(x, normed)
            y = self.layers[i].mlp(h)
            if i + 1 == len(self.layers):
                return x + y
            x, normed = add_norm(x, y, self.layers[i + 1].input_layernorm)
        return self.layers[-1].at_rows(x, rows, normed)  # type: ignore[arg-type]  (rows is not None here)
