"""Model passes in spawned processes, each with its own copy of the weights, its own MLX and its own GIL.

Why: on a GPU, the batch threads of one process share one GIL and MLX's per-process encoding, and their
kernels run side by side, each slower next to the other's; separate processes encode in parallel and the GPU
time-slices their contexts. One H200, the bench's 1x corpus, model-only: three processes that each hold
their share of the batches (`scripts/bench_procs.py`) ran 9,280-9,370 audio-s/s against 7,565-8,178 for one
process of two threads, but through this pool (batches to whichever process is free, features through
shared memory) 8,401 on average against 8,131, within the noise; since the kernels read their inputs from
device memory (`model.device_arrays`) 9,163 against 9,585, slower. So `batch.model_processes` stays 1
(docs/performance.md, seventh and ninth sessions).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import TYPE_CHECKING, Any

import numpy as np

from corpus_aligner.errors import AlignerError

if TYPE_CHECKING:
    from corpus_aligner.api import Aligner, Shapes
    from corpus_aligner.records import AlignedWord


@dataclass(frozen=True)
class ProcessSpec:
    """What every model process loads: `Aligner.from_pretrained`'s arguments, resolved by the parent (a local
    checkpoint folder, so no process downloads), and its share of the device."""

    path: str
    encoder_attention: str
    dtype: str | None
    quantized: bool | None
    pretokenizer: str
    shapes: Shapes
    cpu_matmul: str | None
    device: str  # "gpu" or "cpu", the parent's default device
    memory_fraction: float | None  # MLX memory limit of each process, a share of the GPU (None: the CPU)
    cpu_threads: int  # BLAS threads of each process on the CPU


_aligner: Aligner | None = None


def _start(spec: ProcessSpec) -> None:
    """Load the model in this process. Ctrl-C is left to the parent (it stops after the batches in flight)."""
    global _aligner
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import mlx.core as mx

    from corpus_aligner import cpu_blas
    from corpus_aligner.api import Aligner, limit_gpu_memory

    if spec.device == "cpu":
        mx.set_default_device(mx.cpu)
    aligner = Aligner.from_pretrained(
        spec.path,
        encoder_attention=spec.encoder_attention,
        dtype=spec.dtype,
        quantized=spec.quantized,
        pretokenizer=spec.pretokenizer,
        workers=1,
        shapes=spec.shapes,
        cpu_matmul=spec.cpu_matmul,
    )
    if spec.memory_fraction is not None:
        aligner.memory_limit = limit_gpu_memory(spec.memory_fraction)
    if spec.device == "cpu":
        cpu_blas.set_threads(spec.cpu_threads)
    _aligner = aligner


@dataclass(frozen=True)
class SharedFeatures:
    """A batch's log-mel arrays laid end to end in one shared-memory block: only this small record crosses
    the pipe that all processes share (25 MB of features per 1,000 audio seconds would, one batch at a time)."""

    name: str
    dtype: str
    shapes: tuple[tuple[int, int], ...]

    @classmethod
    def put(cls, features: Sequence[np.ndarray]) -> tuple[SharedFeatures, SharedMemory]:
        arrays = [np.ascontiguousarray(f) for f in features]
        dtype = np.result_type(*arrays) if arrays else np.dtype(np.float32)
        block = SharedMemory(create=True, size=max(1, sum(a.size for a in arrays) * dtype.itemsize))
        offset = 0
        for a in arrays:
            np.ndarray(a.shape, dtype, block.buf, offset)[...] = a
            offset += a.size * dtype.itemsize
        return cls(block.name, dtype.str, tuple((a.shape[0], a.shape[1]) for a in arrays)), block

    def take(self) -> list[np.ndarray]:
        """Copies of the arrays (the block is closed before returning; the parent unlinks it)."""
        block = SharedMemory(name=self.name)
        try:
            dtype, offset, out = np.dtype(self.dtype), 0, []
            for shape in self.shapes:
                view = np.ndarray(shape, dtype, block.buf, offset)
                out.append(view.copy())
                offset += view.nbytes
                del view
            return out
        finally:
            block.close()


def _align(features: SharedFeatures, words: Sequence[Sequence[str]]) -> list[list[AlignedWord]] | AlignerError:
    assert _aligner is not None, "model process not started"
    return _aligner._align_or_error(features.take(), words)  # one batch fails alone, as in-process


def _peak_memory(reset: bool) -> tuple[int, int]:
    """(pid, MLX peak memory in bytes since the last reset); held a moment so that each idle process takes one."""
    import mlx.core as mx

    time.sleep(0.05)
    peak = mx.get_peak_memory()
    if reset:
        mx.reset_peak_memory()
    return os.getpid(), peak


class ModelProcesses:
    """`count` spawned processes running `Aligner.align_features`; a batch goes to whichever is free."""

    def __init__(self, spec: ProcessSpec, count: int):
        self.count = count
        context = multiprocessing.get_context("spawn")  # never forked: the parent holds MLX and BLAS threads
        self.pool = ProcessPoolExecutor(count, mp_context=context, initializer=_start, initargs=(spec,))
        for _ in range(count):  # a spawn pool starts a process per task until it has them all: load now
            self.pool.submit(int)

    def submit(self, features: Sequence[np.ndarray], words: Sequence[Sequence[str]]) -> Future[Any]:
        """A future of the batch's aligned words, or of the AlignerError that failed it."""
        shared, block = SharedFeatures.put(features)
        try:
            future = self.pool.submit(_align, shared, [list(w) for w in words])
        except BrokenProcessPool as exc:
            _free(block)
            raise RuntimeError(BROKEN) from exc
        future.add_done_callback(lambda _: _free(block))
        return future

    def align(self, features: Sequence[np.ndarray], words: Sequence[Sequence[str]]) -> list[list[AlignedWord]]:
        """`Aligner.align_features` in a model process; raises the AlignerError that failed the batch."""
        try:
            out = self.submit(features, words).result()
        except BrokenProcessPool as exc:
            raise RuntimeError(BROKEN) from exc
        if isinstance(out, AlignerError):
            raise out
        return out

    def peak_memory(self, reset: bool = False) -> list[int]:
        """Each process's MLX peak memory in bytes (for the benchmarks: the parent's own says nothing)."""
        seen: dict[int, int] = {}
        for _ in range(100):
            for future in [self.pool.submit(_peak_memory, reset) for _ in range(self.count)]:
                pid, peak = future.result()
                seen[pid] = peak
            if len(seen) >= self.count:
                break
        return sorted(seen.values())

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _free(block: SharedMemory) -> None:
    block.close()
    block.unlink()


BROKEN = (
    "a model process failed to start or died (its error is printed above; out of GPU memory: fewer "
    "batch.model_processes or a smaller batch.budget_positions)"
)
