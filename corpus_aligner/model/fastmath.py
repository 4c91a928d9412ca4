"""Element-wise kernels for the CPU, built from multiply/add/divide only and fused by `mx.compile`.

MLX's CPU `erf`/`exp` are scalar code (about 40 and 85 M elements/s on one core, shared/docs/
cpu-performance.md) and were a third of the model's time; the same expressions from cheap ops compile
into one or two vectorisable loops (300-600 M elements/s). Errors, measured against float64:
- `gelu`: erf as Eigen's rational approximation (`generic_fast_erf_float`), |error| < 2e-6 (MLX's own
  `nn.gelu` is within 5e-7);
- `exp_nonpositive`: exp(x/256)^256 with a 4th-degree Taylor polynomial, relative error < 3e-5 for
  x in [-20, 0] (what softmax and sigmoid need; tiny values lose relative accuracy, not absolute);
- `softmax`, `silu_mul` built on it. All compute in float32 and return the input dtype.
On the GPU the model uses MLX's own kernels instead (`use_fast_math`).
"""

from __future__ import annotations

import mlx.core as mx

# Eigen's generic_fast_erf_float: erf(x) = x * P(x^2) / Q(x^2) on [-4, 4] (|erf| = 1 to float precision
# beyond); coefficients highest power first.
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)
_SQRT_HALF = 0.7071067811865476
_EXP_FLOOR = -80.0  # exp(-80) ~ 2e-35: below it every use here treats the value as 0


def use_fast_math() -> bool:
    """The cheap-op kernels pay on the CPU only; the GPU has fast transcendental kernels."""
    return mx.default_device() == mx.cpu


def _erf(x: mx.array) -> mx.array:
    # Estrin's scheme rather than Horner's: half the dependency depth, so `mx.compile` fuses the whole
    # GELU into one loop (its fusion stops at a fixed depth), twice as fast.
    x = mx.clip(x, -4.0, 4.0)
    u = x * x
    u2 = u * u
    u4 = u2 * u2
    p, q = _ERF_P, _ERF_Q
    num = ((p[6] + p[5] * u) + u2 * (p[4] + p[3] * u)) + u4 * ((p[2] + p[1] * u) + u2 * p[0])
    den = ((q[4] + q[3] * u) + u2 * (q[2] + q[1] * u)) + u4 * q[0]
    return x * num / den


@mx.compile
def gelu(x: mx.array) -> mx.array:
    """Exact (erf) GELU, as torch's `F.gelu` default; computed in float32 (x^8 overflows float16)."""
    y = x.astype(mx.float32)
    return (y * (0.5 + 0.5 * _erf(y * _SQRT_HALF))).astype(x.dtype)


def exp_nonpositive(x: mx.array) -> mx.array:
    """exp(x) for x <= 0: (Taylor_4(x/256))^256, eight squarings."""
    y = mx.maximum(x, _EXP_FLOOR) * (1.0 / 256.0)
    p = y * (1.0 / 24.0) + (1.0 / 6.0)
    p = p * y + 0.5
    p = p * y + 1.0
    p = p * y + 1.0
    for _ in range(8):
        p = p * p
    return p


@mx.compile
def _shifted_exp(x: mx.array, top: mx.array) -> mx.array:
    return exp_nonpositive((x - top).astype(mx.float32))


def softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis; rows may hold -inf (masked) but not only -inf."""
    e = _shifted_exp(x, mx.max(x, axis=-1, keepdims=True))
    return (e * mx.reciprocal(mx.sum(e, axis=-1, keepdims=True))).astype(x.dtype)


@mx.compile
def silu_mul(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) * up = gate * up / (1 + exp(-gate)); exp of a positive argument via 1/exp(-|g|)."""
    g = gate.astype(mx.float32)
    e = exp_nonpositive(-mx.abs(g))  # exp(-|g|) in (0, 1]
    # sigmoid(g) = 1 / (1 + exp(-g)): for g >= 0 that is 1 / (1 + e), for g < 0 it is e / (1 + e).
    sig = mx.where(g >= 0, 1.0, e) / (1.0 + e)
    return (g * sig * up.astype(mx.float32)).astype(gate.dtype)
