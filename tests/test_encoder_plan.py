"""The encoder's batch layout (plan.py): whole windows packed into rows, each token entering and leaving it
once, little padding; and the GPU's compiled layers equal the plain ones whatever the row count."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from corpus_aligner.model import encoder, fastmath
from corpus_aligner.model.args import EncoderArgs
from corpus_aligner.model.encoder import AudioEncoder, AudioEncoderLayer, conv_output_tokens, plan_batch, window_bias

ARGS = EncoderArgs()  # the released model's: 100-frame chunks of 13 tokens, windows of 8 chunks (104 tokens)


def clips(seconds: list[float]) -> list[np.ndarray]:
    return [np.zeros((max(1, round(s * 100)), 8), np.float32) for s in seconds]


def librispeech_like(n: int, seed: int) -> list[float]:
    return list(np.clip(np.random.default_rng(seed).gamma(4.0, 3.0, n), 2.0, 35.0))


def expected_windows(frames: list[int], attention: str) -> list[np.ndarray]:
    """Each window as its conv-grid rows, built clip by clip the slow way."""
    out, chunk0 = [], 0
    for f in frames:
        n_chunks = -(-f // 100)
        lens = [100] * (n_chunks - 1) + [f - 100 * (n_chunks - 1)]
        tokens = [np.arange(conv_output_tokens(np.array(n))) for n in lens]
        rows = np.concatenate([(chunk0 + c) * 13 + t for c, t in enumerate(tokens)])
        size = 104 if attention == "windowed" else len(rows)
        out += [rows[i : i + size] for i in range(0, len(rows), size)]
        chunk0 += n_chunks
    return out


@pytest.mark.parametrize("attention", ["windowed", "full"])
def test_rows_hold_whole_windows_in_order(attention: str) -> None:
    feats = clips([0.05, 1.0, 13.11, 2.5, 0.08, 8.0, 30.0, 16.2, 3.3])
    plan = plan_batch(feats, ARGS, attention, window_multiple=4)
    windows = expected_windows([f.shape[0] for f in feats], attention)
    assert plan.slot_window.shape[0] % 4 == 0
    assert plan.width == max(len(w) for w in windows)
    assert len(np.unique(plan.token_slot)) == len(plan.token_slot) == sum(len(w) for w in windows)
    # Leaving the layout gives the tokens clip after clip, from the conv grid rows they came from.
    np.testing.assert_array_equal(plan.slot_src[plan.token_slot], np.concatenate(windows))
    # Every window sits in one row, on consecutive slots, alone under its id; all other slots are padding.
    grid = plan.slot_window
    for i, w in enumerate(windows):
        r, c = np.nonzero(grid == i)
        assert len(set(r)) == 1 and np.array_equal(c, np.arange(c[0], c[0] + len(w)))
    assert (grid >= 0).sum() == len(plan.token_slot)
    assert plan.tokens_per_clip == tuple(
        int(sum(len(w) for w in expected_windows([f.shape[0]], attention))) for f in feats
    )


def test_short_windows_share_rows() -> None:
    """LibriSpeech-like lengths: each clip's last window is partial; packed, padding stays under 5%, where a
    row per window would pad a quarter of the slots."""
    feats = clips(librispeech_like(200, seed=1))
    plan = plan_batch(feats, ARGS, "windowed")
    per_window = sum(-(-n // 104) for n in plan.tokens_per_clip) * 104
    assert plan.padding_fraction() < 0.05
    assert 1 - len(plan.token_slot) / per_window > 0.2


def test_window_bias_keeps_windows_apart() -> None:
    window = mx.array([[0, 0, 1, -1], [2, 2, 2, 2]])
    bias = np.array(window_bias(window, mx.float32))[:, 0]
    visible = bias == 0
    assert visible[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert visible[1].all() and np.isneginf(bias[~visible]).all()


@pytest.mark.parametrize("stacked_qkv", [True, False])
def test_compiled_layer_equals_plain_for_any_row_count_and_new_weights(
    monkeypatch: pytest.MonkeyPatch, stacked_qkv: bool
) -> None:
    """One shapeless trace serves every row count, and it reads the layer's current weights; q, k and v from
    the stacked product (`STACKED_QKV`) or from a compiled trace per row length."""
    monkeypatch.setattr(fastmath, "use_fast_math", lambda: False)  # the GPU's path, run on the CPU
    monkeypatch.setattr(encoder, "STACKED_QKV", stacked_qkv)
    args = EncoderArgs(d_model=32, encoder_attention_heads=4, encoder_ffn_dim=64)
    layer = AudioEncoderLayer(args)
    rng = np.random.default_rng(0)
    with mx.stream(mx.cpu):
        for rows in (3, 5, 2):
            window = mx.array(np.repeat(np.arange(rows * 2), 4).reshape(rows, 8))
            x = mx.array(rng.standard_normal((rows * 8, 32)).astype(np.float32))
            bias = window_bias(window, mx.float32)
            np.testing.assert_allclose(np.array(layer.compiled(x, bias)), np.array(layer(x, bias)), atol=1e-5)
        layer.update({"fc2": {"bias": mx.full((32,), 3.0)}})
        np.testing.assert_allclose(np.array(layer.compiled(x, bias)), np.array(layer(x, bias)), atol=1e-5)
        layer.self_attn.update({"k_proj": {"bias": mx.full((32,), -2.0)}, "v_proj": {"bias": mx.full((32,), 1.5)}})
        np.testing.assert_allclose(np.array(layer.compiled(x, bias)), np.array(layer(x, bias)), atol=1e-5)
        assert list(layer.compiled.by_width) == ([] if stacked_qkv else [8])
        assert (getattr(layer.self_attn, "stacked_q_proj_k_proj_v_proj", None) is not None) == stacked_qkv


def test_fused_layers_compute_what_the_compiled_ones_do(monkeypatch: pytest.MonkeyPatch) -> None:
    """`FUSED_LAYERS`' order (each norm taken with the residual add before it, the next layer's first norm with
    the last add, biases in the products' epilogues), here with MLX's ops where a GPU runs our kernels."""
    monkeypatch.setattr(fastmath, "use_fast_math", lambda: False)
    args = EncoderArgs(d_model=32, encoder_attention_heads=4, encoder_ffn_dim=64, encoder_layers=3)
    mx.random.seed(2)
    enc = AudioEncoder(args)
    for layer in enc.layers:  # norms with weights and biases that matter
        for norm in (layer.self_attn_layer_norm, layer.final_layer_norm):
            norm.weight = 1.0 + 0.5 * mx.random.normal((32,))
            norm.bias = mx.random.normal((32,))
    rows = 3
    window = mx.array(np.repeat(np.arange(rows * 2), 4).reshape(rows, 8))
    x = mx.random.normal((rows * 8, 32))
    bias = window_bias(window, mx.float32)
    with mx.stream(mx.cpu):
        want = x
        for layer in enc.layers:
            want = layer.compiled(want, bias)
        got = enc.fused_layers(x, bias)
        np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-4)


def test_compiled_layers_serve_two_threads_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two batches in flight (the GPU's default): tracing swaps placeholders into a layer's weights, which a
    second thread must never read ("eval an array without a primitive" before the lock)."""
    import sys

    from corpus_aligner.mlx_threads import worker_threads

    monkeypatch.setattr(fastmath, "use_fast_math", lambda: False)
    args = EncoderArgs(d_model=32, encoder_attention_heads=4, encoder_ffn_dim=64)
    layers = [AudioEncoderLayer(args) for _ in range(6)]
    mx.eval([layer.parameters() for layer in layers])

    def inputs(rows: int) -> mx.array:
        # varied rows: constant ones left the LayerNorms almost nothing to normalise, so that they magnified
        # rounding differences (1e-7) between the two paths to 4e-4 on a GPU machine's CPU
        return mx.array(np.random.default_rng(rows).standard_normal((rows * 8, 32)).astype(np.float32))

    def run(rows: int) -> np.ndarray:
        with mx.stream(mx.new_stream(mx.cpu)):
            window = mx.array(np.repeat(np.arange(rows * 2), 4).reshape(rows, 8))
            x, bias = inputs(rows), window_bias(window, mx.float32)
            for layer in layers:
                x = layer.compiled(x, bias)
            return np.array(x)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads between almost every bytecode, as a busy host would
    try:
        pool = worker_threads(4)
        results = [f.result() for f in [pool.submit(run, rows) for rows in (2, 3, 4, 5) * 3]]
    finally:
        sys.setswitchinterval(interval)
    with mx.stream(mx.cpu):
        for rows, got in zip((2, 3, 4, 5) * 3, results):
            x = inputs(rows)
            bias = window_bias(mx.array(np.repeat(np.arange(rows * 2), 4).reshape(rows, 8)), mx.float32)
            for layer in layers:
                x = layer(x, bias)
            # q/k/v biases added in the stacked product's epilogue there, after it here: float32 roundings apart
            np.testing.assert_allclose(got, np.array(x), atol=1e-4)
