"""Arrays the GPU reads from its own memory.

MLX's CUDA build puts an array made from host data in CUDA managed memory, and one of at most 8 bytes (every
Python scalar in an op, too) in a 64-KB managed pool that all of them share. A kernel that reads such an array
while a batch thread makes its next arrays on the host waits for the pages to migrate back and forth: our
custom kernels ran up to 3x slower inside a pass than alone (`scripts/bench_gpu_ops.py hostwrites`), and with
their arguments copied into device memory the model-only pass ran faster (docs/performance.md, ninth session).
Elsewhere (the CPU, Apple silicon) these are plain `mx.array`s.
"""

from __future__ import annotations

import ctypes
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache, lru_cache
from typing import Any

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


# ----- a batch's host arrays in one copy ------------------------------------------------------------------
# Each `device_array` of host data is a fresh managed allocation that MLX's buffer cache later hands to device
# outputs of the same size (and a device buffer to host data, which it then moves with a synchronous copy), and
# the copy kernel waits for the pages to migrate (3.9 ms per batch for the features, docs/performance.md).
# `send` writes a batch's arrays into page-locked host memory the GPU reads directly over the bus, and one
# kernel copies all of them into one device array; each array is a view of it.
_CU_MEMHOSTALLOC_PORTABLE = 0x01
_CU_MEMHOSTALLOC_DEVICEMAP = 0x02
ALIGN = 256  # each array's offset in the staged bytes: what cuBLAS, cuDNN and 16-byte loads want
_COPY_BLOCK = 256  # threads per block, 16 bytes each: the staged size is a multiple of their 4 KB

_COPY = """
    auto i = cooperative_groups::this_grid().thread_rank();
    const uint4* src = reinterpret_cast<const uint4*>(static_cast<uintptr_t>(address[0]));
    reinterpret_cast<uint4*>(out)[i] = src[i];
"""


@cache
def _copy_kernel() -> Any:
    return mx.fast.cuda_kernel(name="host_copy", input_names=["address"], output_names=["out"], source=_COPY)


@cache
def _driver() -> ctypes.CDLL:
    cuda = ctypes.CDLL("libcuda.so.1")
    _check(cuda.cuInit(0), "cuInit")
    return cuda


def _check(status: int, call: str) -> None:
    if status != 0:
        raise OSError(f"{call} failed with CUDA driver error {status}")


@contextmanager
def _primary_context() -> Iterator[ctypes.CDLL]:
    """The CUDA driver with GPU 0's primary context (the one MLX's runtime uses) current in this thread."""
    cuda = _driver()
    device, context = ctypes.c_int(), ctypes.c_void_p()
    _check(cuda.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
    _check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), "cuDevicePrimaryCtxRetain")
    _check(cuda.cuCtxPushCurrent_v2(context), "cuCtxPushCurrent")
    try:
        yield cuda
    finally:
        cuda.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
        cuda.cuDevicePrimaryCtxRelease_v2(device)


class _Pinned:
    """`nbytes` of page-locked host memory mapped into the GPU's address space, through the CUDA driver API
    (MLX's CUDA build links its runtime statically and exposes none of this)."""

    def __init__(self, nbytes: int):
        ptr, address = ctypes.c_void_p(), ctypes.c_uint64()
        flags = ctypes.c_uint(_CU_MEMHOSTALLOC_PORTABLE | _CU_MEMHOSTALLOC_DEVICEMAP)
        with _primary_context() as cuda:
            _check(cuda.cuMemHostAlloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes), flags), "cuMemHostAlloc")
            status = cuda.cuMemHostGetDevicePointer_v2(ctypes.byref(address), ptr, ctypes.c_uint(0))
            if status != 0:
                cuda.cuMemFreeHost(ptr)
                _check(status, "cuMemHostGetDevicePointer")
        assert ptr.value is not None
        self.ptr = ptr
        self.host = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr.value))
        self.address = address.value

    def free(self) -> None:
        """Give the memory back: only once no kernel can read it any more."""
        with _primary_context() as cuda:
            _check(cuda.cuMemFreeHost(self.ptr), "cuMemFreeHost")


class _Staging(threading.local):
    pinned: _Pinned | None = None
    last: mx.array | None = None  # the previous copy out of `pinned`: the only kernel that reads it
    failed: bool = False


_staging = _Staging()


def layout(arrays: Sequence[np.ndarray]) -> tuple[list[int], int]:
    """Where each array starts in the staged bytes (aligned to `ALIGN`) and their total, a multiple of the
    copy kernel's 4-KB blocks."""
    offsets, end = [], 0
    for a in arrays:
        offsets.append(end)
        end += -(-a.nbytes // ALIGN) * ALIGN
    block = _COPY_BLOCK * 16
    return offsets, max(block, -(-end // block) * block)


_MX_DTYPES = {
    np.dtype(np.float16): mx.float16,
    np.dtype(np.float32): mx.float32,
    np.dtype(np.int32): mx.int32,
    np.dtype(np.int64): mx.int64,
    np.dtype(np.uint32): mx.uint32,
    np.dtype(np.uint8): mx.uint8,
    np.dtype(np.bool_): mx.bool_,
}


def send(arrays: Sequence[np.ndarray]) -> list[mx.array]:
    """`device_array` of each of `arrays`, in one copy on an NVIDIA GPU through this thread's page-locked
    buffer (the next `send` in the thread first waits for that copy). Elsewhere, or where the driver refuses
    page-locked memory, `device_array` of each."""
    arrays = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]
    if not on_cuda() or _staging.failed or any(a.dtype not in _MX_DTYPES for a in arrays):
        return [device_array(a) for a in arrays]
    offsets, total = layout(arrays)
    if _staging.last is not None:  # done already unless the previous batch stopped before its evaluation
        mx.eval(_staging.last)
        _staging.last = None
    pinned = _staging.pinned
    if pinned is None or pinned.host.size < total:
        if pinned is not None:
            pinned.free()
            _staging.pinned = None
        try:
            pinned = _Pinned(max(total + total // 4, 32 << 20))
        except OSError as exc:
            warnings.warn(f"page-locked host memory unavailable ({exc}); host arrays copied one by one", stacklevel=2)
            _staging.failed = True
            return [device_array(a) for a in arrays]
        _staging.pinned = pinned
    for a, at in zip(arrays, offsets):
        pinned.host[at : at + a.nbytes] = a.reshape(-1).view(np.uint8)
    staged = _copy_kernel()(
        inputs=[constant((pinned.address,), mx.int64)],
        grid=(total // 16, 1, 1),
        threadgroup=(_COPY_BLOCK, 1, 1),
        output_shapes=[(total,)],
        output_dtypes=[mx.uint8],
    )[0]
    _staging.last = staged
    return [staged[at : at + a.nbytes].view(_MX_DTYPES[a.dtype]).reshape(a.shape) for a, at in zip(arrays, offsets)]
