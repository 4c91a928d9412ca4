"""The fused CUDA kernels against the MLX ops they replace. They only run on an NVIDIA GPU (MLX's CUDA build):
on the device machine, `python -m pytest -q tests/test_cuda_kernels.py`; elsewhere these tests are skipped."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from corpus_aligner.model import cuda_kernels, decoder
from corpus_aligner.model.args import DecoderArgs

pytestmark = pytest.mark.skipif(not mx.cuda.is_available(), reason="needs MLX's CUDA build and an NVIDIA GPU")

QKV = ("q_proj", "k_proj", "v_proj")
ARGS = DecoderArgs(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=128)


def attention(dtype: mx.Dtype, seed: int = 0) -> decoder.Attention:
    mx.random.seed(seed)
    attn = decoder.Attention(ARGS)
    attn.set_dtype(dtype)
    # norm weights away from 1, so that mixing up q's and k's (or skipping them) shows
    attn.q_norm.weight = (1.0 + 0.5 * mx.random.normal((ARGS.head_dim,))).astype(dtype)
    attn.k_norm.weight = (1.0 - 0.5 * mx.random.normal((ARGS.head_dim,))).astype(dtype)
    mx.eval(attn.parameters())
    return attn


def reference(attn: decoder.Attention, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    """q, k, v as MLX's ops compute them: (B, heads, S, hd)."""
    B, S, _ = x.shape
    q = attn.rope(attn.q_norm(attn.q_proj(x).reshape(B, S, attn.n_heads, -1)).transpose(0, 2, 1, 3))
    k, v = attn.keys_values(x)
    return q, k, v


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
@pytest.mark.parametrize("shape", [(3, 37), (1, 500)])
def test_qkv_norm_rope_matches_mlx_ops(dtype: mx.Dtype, shape: tuple[int, int]) -> None:
    attn = attention(dtype)
    x = mx.random.normal((*shape, ARGS.hidden_size)).astype(dtype)
    fused = decoder.stacked(attn, QKV)
    assert fused is not None
    got = cuda_kernels.qkv_norm_rope(
        x @ fused.T,
        attn.q_norm.weight,
        attn.k_norm.weight,
        attn.n_heads,
        attn.n_kv_heads,
        ARGS.rope_theta,
        ARGS.rms_norm_eps,
    )
    for name, a, b in zip("qkv", got, reference(attn, x)):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        a32, b32 = np.array(a.astype(mx.float32)), np.array(b.astype(mx.float32))
        # one or two roundings of the dtype apart at most (products summed in another order, sin/cos)
        np.testing.assert_allclose(a32, b32, atol=0.02 * np.abs(b32).max(), err_msg=name)
        assert np.abs(a32 - b32).mean() < 2e-3 * np.abs(b32).mean(), name


def test_attention_output_does_not_depend_on_the_kernel_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    attn = attention(mx.bfloat16, seed=1)
    x = mx.random.normal((2, 64, ARGS.hidden_size)).astype(mx.bfloat16)
    monkeypatch.setattr(decoder, "FUSED_QKV", True)
    fused = np.array(attn(x).astype(mx.float32))
    assert getattr(attn, "stacked_q_proj_k_proj_v_proj", None) is not None  # the kernel path ran
    monkeypatch.setattr(decoder, "FUSED_QKV", False)
    plain = np.array(attn(x).astype(mx.float32))
    np.testing.assert_allclose(fused, plain, atol=0.03 * np.abs(plain).max())
