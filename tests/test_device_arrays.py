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


ARRAYS = [
    np.arange(3 * 100 * 128, dtype=np.float16).reshape(3, 100, 128) / 7,  # features: (chunks, frames, mel)
    np.array([5, -1, 2], np.int32),  # 12 bytes: the next array starts 256 bytes on, not 16
    np.arange(6, dtype=np.int64).reshape(2, 3),
    np.array([[True, False, True]]),
    np.zeros((0, 4), np.int32),  # nothing to copy
    np.array(9, np.int32),  # a scalar
    np.arange(10, dtype=np.float32)[::2],  # not contiguous
]


def test_layout_aligns_every_array_and_rounds_the_total_to_whole_copy_blocks() -> None:
    offsets, total = device_arrays.layout(ARRAYS)
    assert all(o % device_arrays.ALIGN == 0 for o in offsets)
    ends = [o + a.nbytes for o, a in zip(offsets, ARRAYS)]
    assert all(e <= nxt for e, nxt in zip(ends, offsets[1:]))  # no overlap, in order
    assert total % 4096 == 0 and ends[-1] <= total < ends[-1] + 4096 + len(ARRAYS) * device_arrays.ALIGN


def test_send_keeps_values_shapes_dtypes(cuda_path: bool) -> None:
    sent = device_arrays.send(ARRAYS)
    for a, s in zip(ARRAYS, sent):
        host = mx.array(a)
        assert s.shape == host.shape and s.dtype == host.dtype
        np.testing.assert_array_equal(np.array(s), a)


@pytest.mark.skipif(not mx.cuda.is_available(), reason="needs MLX's CUDA build and an NVIDIA GPU")
def test_send_through_page_locked_memory_survives_reuse_and_growth() -> None:
    """Three sends before anything is evaluated: each waits for the copy before it, the third outgrows the
    buffer (past 32 MB) and gets a new one."""
    first = device_arrays.send(ARRAYS)
    second = device_arrays.send([a * 2 if a.dtype != np.bool_ else ~a for a in ARRAYS])
    big = np.random.default_rng(0).standard_normal((700, 100, 128)).astype(np.float32)  # 35.8 MB
    third = device_arrays.send([big, ARRAYS[1]])
    for a, one, two in zip(ARRAYS, first, second):
        np.testing.assert_array_equal(np.array(one), a)
        np.testing.assert_array_equal(np.array(two), a * 2 if a.dtype != np.bool_ else ~a)
    np.testing.assert_array_equal(np.array(third[0]), big)
    np.testing.assert_array_equal(np.array(third[1]), ARRAYS[1])
    assert mx.array_equal(third[0] * 2, mx.array(big) * 2)  # an operand like any array
