"""`device_arrays`: what the GPU reads from its own memory keeps the values, shape and dtype it was made from.
The padded path for arrays of at most 8 bytes runs here too, with `on_cuda` forced (MLX's ops behave the same
on the CPU); where it lands in memory only the device machine can show (`scripts/bench_gpu_ops.py hostwrites`)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from corpus_aligner.model import device_arrays


@pytest.fixture(params=[False, True], ids=["here", "as-on-cuda"])
def cuda_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param:
        monkeypatch.setattr(device_arrays, "on_cuda", lambda: True)
    device_arrays.constant.cache_clear()
    return request.param


@pytest.mark.parametrize(
    "values",
    [
        np.array(7, np.int32),  # a scalar: 4 bytes
        np.array([-3], np.int32),
        np.array([5, 9], np.int32),  # 8 bytes: still the small pool's
        np.array([2.5], np.float16),
        np.array([1, 2, 3], np.int32),  # past 8 bytes: copied as it is
        np.arange(24, dtype=np.int64).reshape(2, 3, 4),
    ],
    ids=["scalar", "one", "two", "half", "three", "3d"],
)
def test_device_array_keeps_values_shape_dtype(cuda_path: bool, values: np.ndarray) -> None:
    a = device_arrays.device_array(values)
    host = mx.array(values)
    assert a.shape == host.shape and a.dtype == host.dtype
    np.testing.assert_array_equal(np.array(a), values)
    assert mx.array_equal(a + a, host + host)  # usable as an operand, broadcasting as the original would


def test_constant_is_made_once(cuda_path: bool) -> None:
    eps = device_arrays.constant((1e-6,), mx.float32)
    assert device_arrays.constant((1e-6,), mx.float32) is eps
    assert eps.shape == (1,) and eps.item() == pytest.approx(1e-6)
    neg = device_arrays.constant(-float("inf"), mx.float16)
    assert neg.shape == () and neg.dtype == mx.float16 and neg.item() == -float("inf")
    dims = device_arrays.constant((500, 1500), mx.int32)
    assert dims.tolist() == [500, 1500]
