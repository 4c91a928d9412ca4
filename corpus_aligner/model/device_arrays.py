"""Arrays the GPU reads from its own memory.

MLX's CUDA build puts an array made from host data in CUDA managed memory, and one of at most 8 bytes (every
Python scalar in an op, too) in a 64-KB managed pool that all of them share. A kernel that reads such an array
while a batch thread makes its next arrays on the host waits for the pages to migrate back and forth: our
custom kernels ran up to 3x slower inside a pass than alone (`scripts/bench_gpu_ops.py hostwrites`), and with
their arguments copied into device memory the model-only pass ran faster (docs/performance.md, ninth session).
Elsewhere (the CPU, Apple silicon) these are plain `mx.array`s.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import numpy as np


def on_cuda() -> bool:
    return mx.default_device() == mx.gpu and mx.cuda.is_available()


def device_array(values: np.ndarray | mx.array) -> mx.array:
    """`values` in device memory on an NVIDIA GPU: copied by an MLX kernel into memory from the device's pool
    (`+ 0`; at most 8 bytes: into a zero-padded 16-byte array, out of the small pool). Elsewhere
    `mx.array(values)`."""
    host = values if isinstance(values, mx.array) else mx.array(values)
    if not on_cuda():
        return host
    if host.nbytes > 8:
        return host + 0
    flat = host.reshape(-1)
    padded = mx.concatenate([flat, mx.zeros((16 // host.itemsize,), host.dtype)])
    return padded[: flat.size].reshape(host.shape)


@lru_cache(maxsize=256)
def constant(values: tuple[float | int, ...] | float | int, dtype: mx.Dtype) -> mx.array:
    """A small read-only argument (a tuple: 1-D; a number: a scalar), made once, in device memory
    (`device_array`)."""
    a = device_array(mx.array(values, dtype))
    mx.eval(a)
    return a
