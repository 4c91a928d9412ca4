"""Linear layers whose float32 matmuls run in bfloat16 on CPUs with bf16 instructions (`cpu_blas.gemm_bf16`).

oneMKL's `cblas_gemm_bf16bf16f32` on AMX (Intel Sapphire Rapids: a decoder layer's matrices at ~1.6 TFLOP/s on
2 cores, float32 OpenBLAS ~0.34) and oneDNN's matmul on AVX512-BF16 (AMD Zen 4: 380-420 GFLOP/s on 2 cores,
float32 OpenBLAS 170); MLX's own bf16 CPU matmul runs at 7 GFLOP/s. Both take bf16 inputs and accumulate and
return float32. Only the products change: inputs are rounded to bf16 (the released weights are bf16 already;
activations round as in the model's GPU precision), everything else stays float32, like torch's
`set_float32_matmul_precision("medium")`.

Precision "float32" keeps exact float32 products (what the official code computes on the CPU), "bfloat16"
asks for this path, "auto" takes it where the CPU has AMX-BF16 or AVX512-BF16 and a library for it is
installed. The environment variable CORPUS_ALIGNER_CPU_MATMUL overrides "auto" (the test suite pins float32
with it).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from corpus_aligner import cpu_blas
from corpus_aligner.model import derived

set_precision = cpu_blas.set_matmul_precision
resolved_precision = cpu_blas.matmul_precision


def _bf16_bits(x: mx.array) -> tuple[mx.array, np.ndarray]:
    """x rounded to bfloat16 (MLX: round to nearest even), as uint16: the evaluated array and its numpy view."""
    bits = mx.view(x.astype(mx.bfloat16), mx.uint16)
    mx.eval(bits)
    return bits, np.asarray(bits)


class Bf16Copy:
    """A weight's bf16 bits: the evaluated MLX array and its numpy view (`bf16_copy` caches one per module)."""

    def __init__(self, weight: mx.array):
        self.array, self.view = _bf16_bits(weight)


def _product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (M, K) @ b (N, K).T of bf16 bits (uint16, C-contiguous), float32 accumulation: (M, N) float32."""
    gemm = cpu_blas.gemm_bf16()
    assert gemm is not None
    if not a.shape[0]:
        return np.empty((0, b.shape[0]), dtype=np.float32)
    return gemm(a, b)


def _bf16_rows(x: mx.array) -> tuple[list[int], np.ndarray]:
    """x (..., K) -> its leading shape and its bf16 bits as (M, K) C-contiguous rows, the products' input."""
    *lead, K = x.shape
    return lead, np.ascontiguousarray(_bf16_bits(x)[1].reshape(-1, K))


def matmul_t(x: mx.array, weight: Bf16Copy) -> mx.array:
    """x (..., K) @ weight.T for a weight (N, K), bf16 products accumulated in float32: (..., N) float32."""
    lead, a = _bf16_rows(x)
    c = _product(a, weight.view)
    return mx.array(c).reshape(*lead, c.shape[1])


def silu_gate_up(x: mx.array, gate: nn.Linear, up: nn.Linear) -> mx.array:
    """silu(x @ gate.T) * (x @ up.T), both products on the bf16 path from one rounding of x, the SiLU in numpy
    in place on their float32 outputs: numpy's vectorized exp took 12 ms for 1,575 x 3,072 values where MLX's
    single-threaded CPU kernel took 25, and one array crosses back to MLX instead of two."""
    lead, a = _bf16_rows(x)
    g, u = _product(a, bf16_copy(gate).view), _product(a, bf16_copy(up).view)
    u *= g  # silu(g) * u = g * u / (1 + exp(-g)); exp overflows to inf for g < -88, giving the limit 0
    np.negative(g, out=g)
    with np.errstate(over="ignore"):
        np.exp(g, out=g)
    g += np.float32(1.0)
    u /= g
    return mx.array(u).reshape(*lead, u.shape[1])


def conv3x3_s2(x: mx.array, weight: Bf16Copy, bias: mx.array) -> mx.array:
    """A 3x3 convolution, stride 2, padding 1, over NHWC `x` with an MLX-layout weight (O, 3, 3, I): the
    columns (im2col) gathered from the bf16 bits in numpy, three taps rows per core, then one product.
    MLX's CPU convolution ran the encoder's 480-channel convs at ~160 GFLOP/s."""
    n, h, w, c = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    padded = np.zeros((n, h + 2, w + 2, c), dtype=np.uint16)
    padded[:, 1 : h + 1, 1 : w + 1] = _bf16_bits(x)[1]
    cols = np.empty((n, ho, wo, 3, 3, c), dtype=np.uint16)  # (i, j, c) order, as the weight flattens

    def taps(i: int) -> None:
        for j in range(3):
            cols[:, :, :, i, j] = padded[:, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2]

    cpu_blas.run_on_cores(taps, [(i,) for i in range(3)])
    out = _product(cols.reshape(n * ho * wo, 9 * c), weight.view.reshape(weight.view.shape[0], -1))
    return mx.array(out).reshape(n, ho, wo, -1) + bias


def applies(x: mx.array, weight: mx.array) -> bool:
    """A float32 product on the CPU with bf16 products asked for; the weight float32, or bf16 as loaded
    (`keeps_bf16_weight`)."""
    return (
        x.dtype == mx.float32
        and weight.dtype in (mx.float32, mx.bfloat16)
        and mx.default_device() == mx.cpu
        and resolved_precision() == "bfloat16"
    )


def keeps_bf16_weight(module: nn.Module) -> bool:
    """Whether `module`'s weight feeds nothing but products that take the bf16 path: our Linear layers and the
    multi-channel 3x3 convolutions (the encoder's one-channel first conv stays an MLX convolution). Loaded for
    bf16 products on the CPU, such a weight stays in the checkpoint's bf16 (`checkpoint.load_model`): its
    bf16 copy is then the checkpoint's own bits, with no float32 copy beside it."""
    return isinstance(module, Linear) or (isinstance(module, nn.Conv2d) and module.weight.shape[-1] > 1)


def bf16_copy(module: nn.Linear | nn.Conv2d) -> Bf16Copy:
    """The module's weight in bf16, cached on the module until its weight array changes (`derived.cached`)."""
    weight: mx.array = module.weight
    return derived.cached(module, "bf16_copy", (weight,), lambda: Bf16Copy(weight))


class Linear(nn.Linear):
    """`nn.Linear` whose float32 product takes the bf16 path above when it applies.

    The bias is a separate add, never `mx.addmm`: in mlx 0.32.4 an addmm inside a shapeless `mx.compile`
    (the GPU's encoder layers) gives wrong values, and corrupts the heap, once the row count differs from
    the traced one. Compiled, the add fuses into the next element-wise kernel."""

    def __call__(self, x: mx.array) -> mx.array:
        y = matmul_t(x, bf16_copy(self)) if applies(x, self.weight) else x @ self.weight.T
        return y + self.bias if "bias" in self else y
