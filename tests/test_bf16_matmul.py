"""The CPU's bf16 matmul path (`cpu_blas.gemm_bf16`: oneMKL's `cblas_gemm_bf16bf16f32` or oneDNN's matmul):
what it computes, when it applies, and the whole model on it. Both libraries run these products on any
x86-64 CPU (with AMX or AVX512-BF16 where there is one), so each backend is checked here whatever the CPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from corpus_aligner import cpu_blas
from corpus_aligner.model import bf16_matmul


@pytest.fixture
def bf16() -> Iterator[None]:
    bf16_matmul.set_precision("bfloat16")
    try:
        yield
    finally:
        bf16_matmul.set_precision("auto")


def to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), returned as float64."""
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32).astype(np.float64)


def test_products_are_of_bf16_rounded_inputs_accumulated_in_float32(bf16: None) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 96)).astype(np.float32)
    w = rng.standard_normal((40, 96)).astype(np.float32)
    with mx.stream(mx.cpu):
        got = np.array(bf16_matmul.matmul_t(mx.array(x), bf16_matmul.Bf16Copy(mx.array(w))))
    assert got.shape == (3, 5, 40) and got.dtype == np.float32
    want = to_bf16(x) @ to_bf16(w).T
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)  # float32 accumulation of 96 terms
    assert np.abs(got - exact).max() > 1e-3  # and really not a float32 product


def test_linear_takes_the_path_only_when_it_applies(bf16: None) -> None:
    layer = bf16_matmul.Linear(64, 32)
    x = mx.array(np.random.default_rng(1).standard_normal((7, 64)).astype(np.float32))
    with mx.stream(mx.cpu):
        fast = layer(x)
        bf16_matmul.set_precision("float32")
        exact = layer(x)
    np.testing.assert_allclose(np.array(exact), np.array(x @ layer.weight.T + layer.bias), atol=1e-5)
    diff = np.abs(np.array(fast) - np.array(exact))
    assert 0 < diff.max() < 0.05
    bf16_matmul.set_precision("bfloat16")
    assert not bf16_matmul.applies(x.astype(mx.bfloat16), layer.weight)  # only float32 products change


def test_a_new_weight_array_gets_a_new_bf16_copy(bf16: None) -> None:
    layer = bf16_matmul.Linear(8, 4, bias=False)
    x = mx.ones((2, 8))
    first = np.array(layer(x))
    layer.weight = layer.weight * 2  # e.g. weights loaded again
    np.testing.assert_allclose(np.array(layer(x)), 2 * first, rtol=1e-6)


def test_empty_batches_pass(bf16: None) -> None:
    layer = bf16_matmul.Linear(8, 4, bias=False)
    assert layer(mx.zeros((0, 8))).shape == (0, 4)


def test_precision_settings() -> None:
    with pytest.raises(ValueError, match="float32"):
        bf16_matmul.set_precision("half")
    bf16_matmul.set_precision("auto")
    assert bf16_matmul.resolved_precision() == "float32"  # conftest pins "auto" to float32
    bf16_matmul.set_precision("bfloat16")
    assert bf16_matmul.resolved_precision() == "bfloat16"
    bf16_matmul.set_precision("auto")


def test_the_model_aligns_on_the_bf16_path_close_to_float32(tiny_checkpoint_dir: Path, bf16: None) -> None:
    from corpus_aligner import Aligner
    from corpus_aligner.model.encoder import plan_batch
    from corpus_aligner.prompt import pad_prompts

    aligner = Aligner.from_pretrained(tiny_checkpoint_dir)
    rng = np.random.default_rng(2)
    feats = [rng.standard_normal((n, 128)).astype(np.float32) for n in (230, 170)]
    words = [["a", "b", "c"], ["d", "e"]]
    plan = plan_batch(feats, aligner.args.encoder, "windowed")
    prompts = [aligner.prompts.build(n, w) for n, w in zip(plan.tokens_per_clip, words)]
    ids, src, slots = pad_prompts(prompts, aligner.args.audio_end_token_id)

    def logits() -> np.ndarray:
        with mx.stream(mx.cpu):
            return np.array(aligner.model(mx.array(ids), mx.array(src), mx.array(slots), plan))

    calls = []
    real = bf16_matmul._product

    def counting(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        calls.append(b.shape)
        return real(a, b)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bf16_matmul, "_product", counting)
        fast = logits()
    bf16_matmul.set_precision("float32")
    exact = logits()
    n_linear = sum(1 for _, m in aligner.model.named_modules() if isinstance(m, bf16_matmul.Linear))
    assert len(calls) == n_linear + 2  # every linear layer and the two 480-channel convs on the bf16 path, once
    scale = np.abs(exact).max()
    assert 0 < np.abs(fast - exact).max() < 0.05 * scale
    assert aligner.align_features(feats, words)  # and the public path runs through


def test_silu_gate_up_is_silu_of_bf16_products(bf16: None) -> None:
    import mlx.nn as nn

    rng = np.random.default_rng(4)
    gate, up = bf16_matmul.Linear(16, 24, bias=False), bf16_matmul.Linear(16, 24, bias=False)
    gate.weight, up.weight = (mx.array(rng.standard_normal((24, 16)).astype(np.float32) / 4) for _ in range(2))
    x = (4 * rng.standard_normal((2, 3, 16))).astype(np.float32)
    x[0, 0] = 100.0  # gate values far below -88 too: exp overflows, silu -> 0
    with mx.stream(mx.cpu):
        got = np.array(bf16_matmul.silu_gate_up(mx.array(x), gate, up))
    xr = to_bf16(x).astype(np.float64)
    g = xr @ to_bf16(np.array(gate.weight)).astype(np.float64).T
    u = xr @ to_bf16(np.array(up.weight)).astype(np.float64).T
    assert g.min() < -88 and np.isfinite(got).all()
    want = g / (1 + np.exp(-g)) * u
    assert not np.allclose(got, np.array(nn.silu(mx.array(x) @ gate.weight.T) * (mx.array(x) @ up.weight.T)), atol=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize(("h", "w"), [(8, 6), (7, 5), (1, 1)])
def test_conv_is_the_stride_2_convolution_of_bf16_rounded_inputs(bf16: None, h: int, w: int) -> None:
    import mlx.nn as nn

    rng = np.random.default_rng(h * w)
    conv = nn.Conv2d(6, 5, 3, stride=2, padding=1)
    x = rng.standard_normal((2, h, w, 6)).astype(np.float32)
    with mx.stream(mx.cpu):
        got = np.array(bf16_matmul.conv3x3_s2(mx.array(x), bf16_matmul.bf16_copy(conv), conv.bias))
        rounded = nn.Conv2d(6, 5, 3, stride=2, padding=1)
        rounded.weight = mx.array(to_bf16(np.array(conv.weight)).astype(np.float32))
        rounded.bias = conv.bias
        want = np.array(rounded(mx.array(to_bf16(x).astype(np.float32))))
    assert got.shape == want.shape == (2, (h - 1) // 2 + 1, (w - 1) // 2 + 1, 5)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)


def backends() -> list[cpu_blas.Bf16Gemm]:
    mkl, onednn = cpu_blas.load_mkl(), cpu_blas.load_onednn()
    return [g for g in (cpu_blas.MklGemm(mkl) if mkl else None, onednn) if g is not None]


def test_both_libraries_are_installed() -> None:
    """pyproject.toml installs both on Linux x86-64, as CI does: neither backend below may go unchecked."""
    import platform
    import sys

    linux_x86 = sys.platform == "linux" and platform.machine() == "x86_64"
    assert sorted(g.name for g in backends()) == (["mkl", "onednn"] if linux_x86 else [])


def bf16_bits(a: np.ndarray) -> np.ndarray:
    return (to_bf16(a).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


@pytest.mark.parametrize("backend", backends(), ids=lambda g: g.name)
@pytest.mark.parametrize(("m", "k", "n"), [(1, 1024, 5000), (37, 96, 40), (300, 200, 33)])
def test_each_backend_multiplies_bf16_bits_into_float32(backend: cpu_blas.Bf16Gemm, m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(m + k + n)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((n, k)).astype(np.float32)
    got = backend(bf16_bits(a), bf16_bits(b))
    assert got.shape == (m, n) and got.dtype == np.float32
    want = to_bf16(a) @ to_bf16(b).T
    np.testing.assert_allclose(got, want, atol=2e-5 * np.sqrt(k) * max(np.abs(want).max(initial=1), 1), rtol=1e-5)


@pytest.mark.parametrize("backend", backends(), ids=lambda g: g.name)
def test_each_backend_from_several_threads_at_once(backend: cpu_blas.Bf16Gemm) -> None:
    """The model's two CPU workers multiply at the same time, with the same weights and different row counts."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    w = bf16_bits(rng.standard_normal((48, 64)).astype(np.float32))
    xs = [bf16_bits(rng.standard_normal((rows, 64)).astype(np.float32)) for rows in (5, 17, 130, 17) * 4]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: backend(x, w), xs))
    for x, c in zip(xs, got):
        np.testing.assert_array_equal(c, backend(x, w))
        np.testing.assert_allclose(c, to_bf16_bits_product(x, w), rtol=1e-5, atol=1e-4)


def to_bf16_bits_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    def f64(bits: np.ndarray) -> np.ndarray:
        return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)

    return f64(a) @ f64(b).T


@pytest.mark.parametrize("name", ["mkl", "onednn"])
def test_the_backend_can_be_chosen(name: str) -> None:
    import os
    import subprocess
    import sys

    code = "import corpus_aligner\nfrom corpus_aligner import cpu_blas\nprint(cpu_blas.gemm_bf16().name)"
    env = {**os.environ, "CORPUS_ALIGNER_BF16_GEMM": name}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == name


def test_loaded_for_bf16_products_the_product_weights_stay_the_checkpoints_bf16(
    tiny_checkpoint_dir: Path, bf16: None
) -> None:
    """On the bf16 path the weights that only feed products keep the checkpoint's bf16 (no float32 copy to
    make at load, none to round back at the first batch); everything else is float32, as with float32
    products, where nothing stays bf16."""
    from mlx.utils import tree_flatten

    from corpus_aligner.checkpoint import load_model, read_weights
    from corpus_aligner.model import ForcedAligner

    stored = ForcedAligner.sanitize(read_weights(tiny_checkpoint_dir))
    model = load_model(tiny_checkpoint_dir)
    kept = {f"{name}.weight" for name, m in model.named_modules() if bf16_matmul.keeps_bf16_weight(m)}
    dtypes = {k: v.dtype for k, v in tree_flatten(model.parameters())}
    assert kept and "model.layers.0.self_attn.q_proj.weight" in kept and "lm_head.weight" in kept
    assert "audio_tower.conv2d1.weight" not in kept  # the one-channel conv is an MLX convolution
    assert {dtypes[k] for k in kept} == {mx.bfloat16}
    assert {d for k, d in dtypes.items() if k not in kept} == {mx.float32}
    layer = model.model.layers[0].mlp.down_proj
    copy = bf16_matmul.bf16_copy(layer)
    assert np.array_equal(copy.view, np.asarray(stored["model.layers.0.mlp.down_proj.weight"].view(mx.uint16)))
    bf16_matmul.set_precision("float32")
    assert {v.dtype for _, v in tree_flatten(load_model(tiny_checkpoint_dir).parameters())} == {mx.float32}


def test_a_4bit_checkpoints_product_weights_are_dequantized_to_the_bf16_their_products_take(
    tiny_checkpoint_dir: Path, tmp_path: Path, bf16: None
) -> None:
    """Dequantized for bf16 products, a 4-bit layer's weight comes out as the bf16 rounding of its float32
    dequantization (what its bf16 copy was before); all else is what float32 products load."""
    from mlx.utils import tree_flatten

    from corpus_aligner.checkpoint import convert, load_model

    q4 = convert(tiny_checkpoint_dir, tmp_path / "q4", bits=4)
    fast = dict(tree_flatten(load_model(q4).parameters()))
    bf16_matmul.set_precision("float32")
    exact = dict(tree_flatten(load_model(q4).parameters()))
    assert fast.keys() == exact.keys() and {v.dtype for v in exact.values()} == {mx.float32}
    rounded = {k for k, v in fast.items() if v.dtype == mx.bfloat16}
    assert "model.layers.0.mlp.down_proj.weight" in rounded  # a 4-bit layer
    assert "audio_tower.layers.0.fc1.weight" not in rounded  # float16 in the file: float32, not bf16
    for k, v in fast.items():
        want = exact[k].astype(mx.bfloat16) if k in rounded else exact[k]
        assert v.dtype == want.dtype and mx.array_equal(v, want).item(), k
