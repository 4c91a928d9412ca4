"""Prefetching gives exactly the features of the plain path, in order, with per-file errors in place."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from corpus_aligner.audio import load_audio
from corpus_aligner.errors import AudioError
from corpus_aligner.frontend import log_mel
from corpus_aligner.prefetch import AudioSpan, BackgroundWriter, FeaturePrefetcher, run_ahead


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("prefetch")
    rng = np.random.default_rng(0)
    paths = []
    for i, (seconds, rate) in enumerate([(1.3, 16000), (2.0, 24000), (0.7, 44100), (3.1, 16000)]):
        path = root / f"clip{i}.flac"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32), rate)
        paths.append(path)
    return paths


@pytest.mark.parametrize("threads", [True, False])
def test_batches_in_order_with_errors_in_place(files: list[Path], tmp_path: Path, threads: bool) -> None:
    spans = [AudioSpan(str(p)) for p in files] + [AudioSpan(str(tmp_path / "missing.flac"))]
    spans.append(AudioSpan(str(files[3]), offset_s=1.0, duration_s=1.5))
    batches = [spans[:2], spans[2:3], spans[3:]]
    with FeaturePrefetcher(processes=2, ahead=1, threads=threads) as prefetch:
        got = [f for batch in prefetch.batches(batches) for f in batch]
    expected = [log_mel(load_audio(str(p))) for p in files]
    expected.append(log_mel(load_audio(str(files[3]))[16000 : 16000 + 24000]))
    assert len(got) == len(spans)
    for i, features in enumerate(got):
        if i == 4:
            assert isinstance(features, AudioError) and "missing.flac" in str(features)
            continue
        ref = expected[i if i < 4 else 4]
        assert isinstance(features, np.ndarray) and features.shape == ref.shape
        np.testing.assert_array_equal(features, ref)


def test_features_in_the_asked_dtype(files: list[Path]) -> None:
    with FeaturePrefetcher(processes=1, threads=True, dtype=np.float16) as prefetch:
        (got,) = prefetch.batches([[AudioSpan(str(files[0]))]])
    assert isinstance(got[0], np.ndarray) and got[0].dtype == np.float16
    np.testing.assert_array_equal(got[0], log_mel(load_audio(str(files[0]))).astype(np.float16))


def _square(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative {x}")
    return x * x


def test_background_writer_keeps_order_and_reraises() -> None:
    with BackgroundWriter(_square, processes=2, max_pending=2, threads=True) as writer:
        for x in range(10):
            writer.submit(x)
    assert writer.results == [x * x for x in range(10)]
    writer = BackgroundWriter(_square, processes=2, threads=True)
    writer.submit(3)
    writer.submit(-1)
    with pytest.raises(ValueError, match="negative -1"):
        writer.close()


@pytest.mark.parametrize(("ahead", "threads"), [(0, 2), (1, 1), (3, 2)])
def test_run_ahead_in_order_bounded_and_errors_at_their_turn(ahead: int, threads: int) -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(x: int) -> int:
        with lock:
            started.append(x)
        time.sleep(0.01 * (x % 3))  # finish out of order
        if x == 7:
            raise ValueError("bad input 7")
        return x * 10

    got = []
    with run_ahead(work, list(range(10)), ahead, threads) as results, pytest.raises(ValueError, match="bad input 7"):
        for i, r in enumerate(results):
            got.append(r)
            time.sleep(0.03)  # let the loader run as far ahead as it may
            assert len(started) <= i + 1 + max(ahead, 0) + (1 if ahead else 0)
    assert got == [x * 10 for x in range(7)]


def test_run_ahead_stops_loading_when_the_caller_stops() -> None:
    started: list[int] = []
    with run_ahead(started.append, list(range(100)), 2, 1) as results:
        next(results)
    time.sleep(0.05)
    assert len(started) <= 4
