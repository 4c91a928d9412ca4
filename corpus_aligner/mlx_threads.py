"""Worker threads for MLX work that live as long as the process.

MLX gives every thread its own default stream, so batches evaluated in separate threads run at once
(one per core on the CPU, overlapping host work and kernels on a GPU). The threads never exit: in mlx
0.32.4 each thread's `mx.compile` cache is thread-local, and a worker thread that exits while the
interpreter finalizes destroys it from a TLS destructor that takes the GIL, which aborts the process
("terminate called without an active exception"; seen with ThreadPoolExecutor at exit). Daemon threads
blocked on their queue are never woken at exit, so that destructor never runs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_pools: dict[int, WorkerThreads] = {}
_lock = threading.Lock()


class WorkerThreads:
    """`size` daemon threads taking (function, arguments) jobs from one queue."""

    def __init__(self, size: int):
        self.size = size
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]] = queue.SimpleQueue()
        for i in range(size):
            threading.Thread(target=self._run, name=f"mlx-worker-{size}-{i}", daemon=True).start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((fn, args, future))
        return future

    def _run(self) -> None:
        while True:
            fn, args, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)


def worker_threads(size: int) -> WorkerThreads:
    """The process's pool of `size` threads (created on first use, shared by every caller)."""
    with _lock:
        if size not in _pools:
            _pools[size] = WorkerThreads(size)
        return _pools[size]
