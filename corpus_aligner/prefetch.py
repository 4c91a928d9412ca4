"""Keep the model busy: features of the next batches are computed in worker processes while the current
batch runs, and outputs are written by other worker processes (or threads) after it.

Decoding, resampling and the log-mel cost about 1-2 ms per audio second on one core (shared/docs/
cpu-performance.md); a GPU aligns 5,000+ audio seconds per second, so the input needs several cores and
must run ahead of the device. Worker processes (spawned, numpy BLAS limited to one thread each) get
around the GIL; the arrays they return are small (about 0.5 MB per 10 s).

    with FeaturePrefetcher(processes=8) as prefetch:
        for spans, features in zip(batches, prefetch.batches(batches)):
            ...  # features[i] is an (n, 128) array, or the AudioError of spans[i]
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from corpus_aligner.audio import SAMPLE_RATE_HZ, load_audio
from corpus_aligner.errors import AudioError
from corpus_aligner.frontend import log_mel

T = TypeVar("T")
R = TypeVar("R")

# Utterances per task: amortizes the inter-process round trip (~0.1 ms) over a few files.
TASK_SIZE = 4


@dataclass(frozen=True, slots=True)
class AudioSpan:
    """What to read: a whole file, or `duration_s` seconds from `offset_s` (None: to the end)."""

    path: str
    offset_s: float = 0.0
    duration_s: float | None = None


def span_features(span: AudioSpan, dtype: np.dtype | type = np.float32) -> np.ndarray | AudioError:
    """Log-mel (n, 128) of the span, in `dtype`; an unreadable or too short span gives its AudioError
    (returned, so that one bad file fails only its own utterance)."""
    try:
        wave = load_audio(span.path)
        if span.offset_s or span.duration_s is not None:
            start = round(span.offset_s * SAMPLE_RATE_HZ)
            stop = None if span.duration_s is None else start + round(span.duration_s * SAMPLE_RATE_HZ)
            wave = wave[start:stop]
        return log_mel(wave, dtype)
    except AudioError as exc:
        return exc


def _features_task(spans: Sequence[AudioSpan], dtype: np.dtype | type) -> list[np.ndarray | AudioError]:
    return [span_features(s, dtype) for s in spans]


def worker_pool(processes: int, threads: bool = False, preload: str | None = None) -> Executor:
    """A pool of spawned processes (never forked: the parent holds MLX and BLAS threads), or threads.

    Sets OPENBLAS_NUM_THREADS=1 in this process's environment unless it is set, so the workers' numpy
    (spawned on demand, reading it at import) does not start a BLAS thread per core for the small mel
    matmul; the parent's BLAS has read it long before and is unaffected. `preload`: a module every
    process imports as it starts, and all of them are started now, so that their start-up (about half a
    second of imports each) overlaps the caller's next work, such as loading the model.
    """
    if threads:
        return ThreadPoolExecutor(processes, thread_name_prefix="prefetch")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(processes, mp_context=context, initializer=_start_worker, initargs=(preload,))
    if preload:
        for _ in range(processes):  # a spawn pool starts a process per task until it has them all
            pool.submit(int)
    return pool


def _start_worker(preload: str | None) -> None:
    """Workers leave Ctrl-C to the parent, which stops after the batch in flight (session.GracefulStop)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if preload:
        importlib.import_module(preload)


class FeaturePrefetcher:
    """Features of batches of spans, in order, computed up to `ahead` utterances in advance, in `dtype`
    (`Aligner.feature_dtype`: float16 halves what crosses from the worker processes and to a GPU)."""

    def __init__(
        self,
        processes: int,
        ahead: int | None = None,
        threads: bool = False,
        dtype: np.dtype | type = np.float32,
        preload: str | None = None,
    ):
        """preload: a module for every process to import at once (`worker_pool`)."""
        self.pool = worker_pool(processes, threads, preload)
        self.ahead = ahead if ahead is not None else 16 * processes * TASK_SIZE
        self.dtype = dtype

    def batches(self, batches: Iterable[Sequence[AudioSpan]]) -> Iterator[list[np.ndarray | AudioError]]:
        """One list of features (or AudioErrors) per input batch, same order; memory stays bounded by
        `ahead` utterances in flight plus the batch being returned."""
        pending: deque[list[Future[list[np.ndarray | AudioError]]]] = deque()
        in_flight = 0
        for spans in batches:
            tasks = [
                self.pool.submit(_features_task, spans[i : i + TASK_SIZE], self.dtype)
                for i in range(0, len(spans), TASK_SIZE)
            ]
            pending.append(tasks)
            in_flight += len(spans)
            while len(pending) > 1 and in_flight > self.ahead:
                done = _gather(pending.popleft())
                in_flight -= len(done)
                yield done
        while pending:
            yield _gather(pending.popleft())

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> FeaturePrefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _gather(tasks: list[Future[list[np.ndarray | AudioError]]]) -> list[np.ndarray | AudioError]:
    return [features for task in tasks for features in task.result()]


class BackgroundWriter:
    """Runs write jobs off the main thread, at most `max_pending` queued; the first error is re-raised
    by `submit` or `close`. Jobs must not depend on each other's order."""

    def __init__(
        self,
        fn: Callable[..., Any],
        processes: int = 2,
        max_pending: int = 8,
        threads: bool = False,
        pool: Executor | None = None,
    ):
        """pool: run the jobs there (the caller shuts it down) instead of in a pool of `processes` of its own."""
        self.fn = fn
        self.own_pool = pool is None
        self.pool = pool or worker_pool(processes, threads)
        self.max_pending = max_pending
        self.pending: deque[Future[Any]] = deque()
        self.results: list[Any] = []

    def submit(self, *args: Any) -> None:
        self.pending.append(self.pool.submit(self.fn, *args))
        while self.pending and (self.pending[0].done() or len(self.pending) > self.max_pending):
            self.results.append(self.pending.popleft().result())

    def close(self) -> list[Any]:
        """Wait for every job; their return values in submission order."""
        try:
            while self.pending:
                self.results.append(self.pending.popleft().result())
        finally:
            if self.own_pool:
                self.pool.shutdown(wait=True, cancel_futures=True)
        return self.results

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def run_ahead(
    fn: Callable[[T], R],
    inputs: Sequence[T],
    ahead: int,
    workers: int,
    processes: bool = False,
    pool: Executor | None = None,
) -> Iterator[Iterator[R]]:
    """`fn(x)` for each input, in order, computed up to `ahead` inputs in advance by `workers` threads
    (or spawned processes: `fn` and its inputs must then pickle), or in `pool` (the caller's, started
    early and shut down by the caller).

    The corpus runner's loader. Threads overlap decoding and the mel with the model, but the GIL caps
    them near 1,100 audio-s/s (an H100 run of the main job: 8 or 14 threads, the same); processes
    scale with the cores, at the price of sending the features back. ahead=0 computes each result when
    it is asked for, in the caller's thread. Leaving the block cancels what has not started and waits
    for the rest; an exception raised by `fn` comes out of the iterator at its input's turn.
    """
    if ahead <= 0 or workers <= 0:
        yield (fn(x) for x in inputs)
        return
    own = pool is None
    if pool is None:
        pool = worker_pool(workers) if processes else ThreadPoolExecutor(workers, thread_name_prefix="loader")
    executor = pool
    # `ahead` in flight beyond the one being returned, counting the one submitted when it is taken
    results = ordered_map(lambda x: executor.submit(fn, x), inputs, ahead + 1)
    try:
        yield results
    finally:
        results.close()  # cancels what has not started
        if own:
            executor.shutdown(wait=True, cancel_futures=True)


def ordered_map(submit: Callable[[T], Future[R]], inputs: Iterable[T], ahead: int) -> Generator[R, None, None]:
    """The results of `submit(x)` for each input, in input order, with at most `ahead` inputs submitted
    beyond the one whose result is being returned (`inputs` is read lazily, so memory stays bounded).
    If the caller stops early, what has not started is cancelled."""
    pending: deque[Future[R]] = deque()
    try:
        for x in inputs:
            pending.append(submit(x))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
