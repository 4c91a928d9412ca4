"""The fused CUDA kernels against the MLX ops they replace. They only run on an NVIDIA GPU (MLX's CUDA build):
on the device machine, `python -m pytest -q tests/test_cuda_kernels.py`; elsewhere these tests are skipped."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from corpus_aligner.model import cuda_kernels, decoder, encoder
from corpus_aligner.model.args import DecoderArgs, EncoderArgs

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


def first_conv(seed: int = 0) -> nn.Conv2d:
    mx.random.seed(seed)
    conv = nn.Conv2d(1, 480, 3, stride=2, padding=1)
    conv.set_dtype(mx.float16)
    conv.bias = (0.5 * mx.random.normal((480,))).astype(mx.float16)  # non-zero, so that dropping it shows
    mx.eval(conv.parameters())
    return conv


@pytest.mark.parametrize("frames", [100, 7])  # a full 1-s chunk, and an odd short one
def test_conv1_gelu_matches_mlx_ops(frames: int) -> None:
    conv = first_conv()
    n = 5
    chunks = mx.random.normal((n, frames, 128)).astype(mx.float16)
    out_frames = (frames - 1) // 2 + 1
    lengths = np.array([out_frames, 1, out_frames // 2, 0, out_frames - 1], np.int64)
    got = cuda_kernels.conv1_gelu(chunks, *encoder.taps_by_row(conv), lengths)
    keep = mx.array((np.arange(out_frames)[None, :] < lengths[:, None])[:, None, :, None].astype(np.float16))
    want = encoder.gelu_masked(encoder.conv3x3_s2(conv, chunks.transpose(0, 2, 1)[..., None]), keep)
    assert got.shape == want.shape == (n, 64, out_frames, 480) and got.dtype == mx.float16
    a, b = np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32))
    assert np.all(a[~np.array(keep.astype(mx.bool_)).repeat(64, 1).repeat(480, 3)] == 0)  # masked frames zeroed
    # fp16 roundings apart at most: the taps summed in another order, GELU in float32 instead of float16
    np.testing.assert_allclose(a, b, atol=2e-3 + 2e-3 * np.abs(b).max())
    assert np.abs(a - b).mean() < 1e-3 * np.abs(b).mean()


def full_size_encoder(seed: int) -> tuple[encoder.AudioEncoder, mx.array, np.ndarray]:
    """A float16 encoder of the real dimensions, six 1-s chunks of features and their valid frames."""
    mx.random.seed(seed)
    enc = encoder.AudioEncoder(EncoderArgs())
    enc.set_dtype(mx.float16)
    mx.eval(enc.parameters())
    chunks = mx.random.normal((6, 100, 128)).astype(mx.float16)
    return enc, chunks, np.array([100, 100, 37, 100, 1, 64])


def test_encoder_front_end_does_not_depend_on_the_conv1_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    enc, chunks, lengths = full_size_encoder(3)
    monkeypatch.setattr(encoder, "FUSED_CONV1", True)
    fused = np.array(enc.downsample(chunks, lengths).astype(mx.float32))
    monkeypatch.setattr(encoder, "FUSED_CONV1", False)
    plain = np.array(enc.downsample(chunks, lengths).astype(mx.float32))
    np.testing.assert_allclose(fused, plain, atol=0.02 * np.abs(plain).max())
    assert np.abs(fused - plain).mean() < 2e-3 * np.abs(plain).mean()


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_bias_gelu_matches_mlx_ops(dtype: mx.Dtype) -> None:
    mx.random.seed(4)
    x = (3 * mx.random.normal((37, 4096))).astype(dtype)  # values on both sides of erf's |x| = 1 and beyond
    bias = mx.random.normal((4096,)).astype(dtype)
    got = cuda_kernels.bias_gelu(x, bias)
    want = nn.gelu((x + bias).astype(mx.float32)).astype(dtype)
    assert got.shape == want.shape and got.dtype == dtype
    a, b = np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32))
    # x + bias rounded to the dtype first, as MLX's ops in that dtype; erfc taken directly where 1 + erf cancels
    # (tiny negative outputs where float32's 1 + erf gives 0)
    np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-2)
    assert np.abs(a - b).mean() < 2e-3 * np.abs(b).mean()


def test_bias_gelu_masks_frames_past_each_chunk_end() -> None:
    mx.random.seed(5)
    n, h, w, c = 4, 3, 9, 480
    x = mx.random.normal((n, h, w, c)).astype(mx.float16)
    bias = mx.random.normal((c,)).astype(mx.float16)
    lengths = np.array([9, 0, 4, 1])
    got = np.array(cuda_kernels.bias_gelu(x, bias, lengths).astype(mx.float32))
    keep = np.arange(w)[None, :] < lengths[:, None]  # (n, w)
    want = np.array(nn.gelu((x + bias).astype(mx.float32)).astype(mx.float16).astype(mx.float32))
    want = want * keep[:, None, :, None]
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-2)
    assert np.all(got[~np.broadcast_to(keep[:, None, :, None], got.shape)] == 0)


def test_encoder_does_not_depend_on_the_bias_gelu_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The front end's convolutions and a layer's MLP through `bias_gelu` against MLX's compiled kernels."""
    enc, chunks, lengths = full_size_encoder(6)
    layer = enc.layers[0]
    x = mx.random.normal((3 * 104, 1024)).astype(mx.float16)
    window = mx.array(np.tile(np.arange(104) // 52, (3, 1)))  # two windows per row
    bias = encoder.window_bias(window, mx.float16)
    outs = {}
    for fused in (True, False):
        monkeypatch.setattr(encoder, "FUSED_GELU", fused)
        front = enc.downsample(chunks, lengths)
        layer.compiled = encoder._Compiled(layer)  # fresh traces for each switch
        outs[fused] = [np.array(y.astype(mx.float32)) for y in (front, layer.compiled(x, bias))]
    for got, want in zip(outs[True], outs[False]):
        np.testing.assert_allclose(got, want, atol=0.02 * np.abs(want).max())
        assert np.abs(got - want).mean() < 2e-3 * np.abs(want).mean()


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
@pytest.mark.parametrize("shape", [(3, 37, 1024), (5, 256)])
@pytest.mark.parametrize("kind", ["rms", "layer", "layer_clamped"])
def test_add_norm_matches_mlx_ops(dtype: mx.Dtype, shape: tuple[int, ...], kind: str) -> None:
    mx.random.seed(7)
    x = (4 * mx.random.normal(shape)).astype(dtype)
    y = mx.random.normal(shape).astype(dtype)
    if kind == "layer_clamped":  # values past the limit on both sides
        x = x + mx.array(np.where(np.arange(shape[-1]) % 3 == 0, 70.0, -70.0), dtype)
    weight = (1.0 + 0.5 * mx.random.normal(shape[-1:])).astype(dtype)  # away from 1: a skipped weight shows
    bias = None if kind == "rms" else (2.0 * mx.random.normal(shape[-1:])).astype(dtype)
    limit = 60.0 if kind == "layer_clamped" else None
    s, normed = cuda_kernels.add_norm(x, y, weight, 1e-5, bias, limit)
    want_s = x + y
    if limit is not None:
        want_s = mx.clip(want_s, -limit, limit)
    want = mx.fast.rms_norm(want_s, weight, 1e-5) if bias is None else mx.fast.layer_norm(want_s, weight, bias, 1e-5)
    assert s.shape == normed.shape == tuple(shape) and s.dtype == normed.dtype == dtype
    assert mx.array_equal(s, want_s).item()  # the residual stream: the same bits as MLX's ops
    a, b = np.array(normed.astype(mx.float32)), np.array(want.astype(mx.float32))
    # the same roundings as MLX's norm; only the sums are taken in another order (clamped rows repeat one value,
    # so one flipped rounding there flips a third of the row: about one bfloat16 step on average)
    np.testing.assert_allclose(a, b, atol=1e-2 * np.abs(b).max())
    assert np.abs(a - b).mean() < 2e-3 * np.abs(b).mean()


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_silu_gate_matches_mlx_ops(dtype: mx.Dtype) -> None:
    mx.random.seed(11)
    h = (3 * mx.random.normal((2, 29, 2 * 3072))).astype(dtype)
    got = cuda_kernels.silu_gate(h)
    gate, up = h[..., :3072], h[..., 3072:]
    want = nn.silu(gate) * up
    assert got.shape == want.shape == (2, 29, 3072) and got.dtype == dtype
    a, b = np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32))
    np.testing.assert_allclose(a, b, atol=1e-2 * np.abs(b).max())
    assert np.abs(a - b).mean() < 1e-3 * np.abs(b).mean()


def decoder_model(seed: int) -> decoder.TextModel:
    mx.random.seed(seed)
    args = DecoderArgs(hidden_size=256, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=128)
    model = decoder.TextModel(args)
    model.set_dtype(mx.bfloat16)
    for layer in model.layers:  # norm weights away from 1, so that a norm with the wrong weight shows
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            norm.weight = (1.0 + 0.5 * mx.random.normal((args.hidden_size,))).astype(mx.bfloat16)
    mx.eval(model.parameters())
    return model


@pytest.mark.parametrize("switch", ["FUSED_ADD_NORM", "STACKED_GATE_UP"])
def test_decoder_does_not_depend_on_the_add_norm_or_gate_up_switch(
    monkeypatch: pytest.MonkeyPatch, switch: str
) -> None:
    """The whole decoder, and its last layer at the timestamp rows only, with and without the kernel."""
    model = decoder_model(8)
    x = mx.random.normal((2, 45, 256)).astype(mx.bfloat16)
    rows = mx.array([[3, 10, 44], [0, 20, 21]])
    outs = {}
    for on in (True, False):
        monkeypatch.setattr(decoder, switch, on)
        outs[on] = [np.array(y.astype(mx.float32)) for y in (model(x), model(x, rows=rows))]
    for got, want in zip(outs[True], outs[False]):
        np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want).max())
        assert np.abs(got - want).mean() < 3e-3 * np.abs(want).mean()


def test_encoder_layer_does_not_depend_on_the_stacked_qkv_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """q, k and v from one product with the biases in its epilogue, against three compiled products + adds."""
    enc, _, _ = full_size_encoder(9)
    layer = enc.layers[0]
    for name in ("q_proj", "k_proj", "v_proj"):  # biases that matter, and differ between q, k and v
        layer.self_attn[name].bias = (0.5 * mx.random.normal((1024,))).astype(mx.float16)
    x = mx.random.normal((3 * 104, 1024)).astype(mx.float16)
    window = mx.array(np.tile(np.arange(104) // 52, (3, 1)))
    bias = encoder.window_bias(window, mx.float16)
    outs = {}
    for on in (True, False):
        monkeypatch.setattr(encoder, "STACKED_QKV", on)
        layer.compiled = encoder._Compiled(layer)
        outs[on] = np.array(layer.compiled(x, bias).astype(mx.float32))
    np.testing.assert_allclose(outs[True], outs[False], atol=0.02 * np.abs(outs[False]).max())
    assert np.abs(outs[True] - outs[False]).mean() < 2e-3 * np.abs(outs[False]).mean()


def test_encoder_layers_do_not_depend_on_the_fused_layers_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three full-size float16 layers: products with epilogue biases and `add_norm` against the compiled parts."""
    enc, _, _ = full_size_encoder(10)
    enc.layers = enc.layers[:3]
    for layer in enc.layers:
        for norm in (layer.self_attn_layer_norm, layer.final_layer_norm):
            norm.weight = (1.0 + 0.5 * mx.random.normal((1024,))).astype(mx.float16)
            norm.bias = (0.5 * mx.random.normal((1024,))).astype(mx.float16)
    x = mx.random.normal((3 * 104, 1024)).astype(mx.float16)
    window = mx.array(np.tile(np.arange(104) // 52, (3, 1)))
    bias = encoder.window_bias(window, mx.float16)
    assert enc.runs_fused(x)
    fused = np.array(enc.fused_layers(x, bias).astype(mx.float32))
    plain = x
    for layer in enc.layers:
        plain = layer.compiled(plain, bias)
    want = np.array(plain.astype(mx.float32))
    np.testing.assert_allclose(fused, want, atol=0.02 * np.abs(want).max())
    assert np.abs(fused - want).mean() < 2e-3 * np.abs(want).mean()


def test_batch_sent_in_one_copy_gives_the_same_outputs(
    tiny_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`run_batch` with the batch's host arrays sent through page-locked memory in one copy (`device_arrays.send`)
    against each array made on its own: the same values reach the same kernels."""
    from corpus_aligner import Aligner, api
    from corpus_aligner.model import device_arrays

    aligner = Aligner.from_pretrained(tiny_checkpoint_dir)
    rng = np.random.default_rng(4)
    feats = [rng.standard_normal((n, 128)).astype(aligner.feature_dtype) for n in (260, 90, 1234)]
    inputs = aligner.prepare_batch(feats, [["a", "b"], ["c", "d", "e"], ["f"]])
    sent = aligner.run_batch(inputs)
    monkeypatch.setattr(api, "send", lambda arrays: [device_arrays.device_array(a) for a in arrays])
    alone = aligner.run_batch(inputs)
    np.testing.assert_array_equal(sent[0], alone[0])
    np.testing.assert_array_equal(sent[1], alone[1])
