"""Load Debian's OpenBLAS before MLX on the CPU: MLX's bundled reference BLAS runs float32 matmuls at
~2-6 GFLOP/s, OpenBLAS at ~190 (DEVELOPERS.md, shared/docs/cpu-performance.md). It only takes effect
when loaded before `mlx.core` is first imported, so `corpus_aligner/__init__.py` calls it first.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
)
_state: dict[str, str | None] = {"loaded": None}
_lib: list[ctypes.CDLL] = []
_threads: dict[str, int] = {}  # what set_threads asked for


def ensure_fast_blas() -> str | None:
    """Load OpenBLAS globally if MLX is not imported yet; warn once when that is impossible.

    Returns the library path loaded, or None. Skipped on macOS (Accelerate is used there) and when
    CORPUS_ALIGNER_NO_OPENBLAS is set.
    """
    if _state["loaded"] is not None or sys.platform == "darwin" or os.environ.get("CORPUS_ALIGNER_NO_OPENBLAS"):
        return _state["loaded"]
    path = os.environ.get("CORPUS_ALIGNER_OPENBLAS") or next(
        (p for p in OPENBLAS_CANDIDATES if os.path.exists(p)), None
    )
    if path is None:
        _state["loaded"] = ""
        warnings.warn(
            "OpenBLAS not found (apt-get install libopenblas0-pthread): MLX falls back to its slow "
            "reference BLAS on the CPU, alignment will be ~30x slower",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    if "mlx.core" in sys.modules and _state["loaded"] is None:
        warnings.warn(
            "mlx.core was imported before corpus_aligner: MLX is already bound to its bundled reference BLAS "
            "and CPU alignment will be ~30x slower; import corpus_aligner before mlx",
            RuntimeWarning,
            stacklevel=2,
        )
    _lib.append(ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL))
    _state["loaded"] = path
    return path


def set_threads(n: int) -> bool:
    """Threads each OpenBLAS and oneMKL call may use (process-wide): the cores shared among the model's
    workers. Returns False when OpenBLAS is not the loaded BLAS."""
    _threads["n"] = max(1, int(n))
    mkl = _mkl.get("lib")
    if mkl is not None:
        mkl.MKL_Set_Num_Threads(_threads["n"])
    if not _lib or not hasattr(_lib[0], "openblas_set_num_threads"):
        return False
    _lib[0].openblas_set_num_threads(_threads["n"])
    return True


MKL_NAMES = ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so")
MKL_THREADING_GNU = 3  # mkl_service.h: MKL_THREADING_INTEL 0, SEQUENTIAL 1, PGI 2, GNU 3, TBB 4
_mkl: dict[str, ctypes.CDLL | None] = {}


def load_mkl() -> ctypes.CDLL | None:
    """oneMKL's single dynamic library (the `mkl` wheel puts it in `sys.prefix/lib`), loaded locally so
    MLX keeps OpenBLAS for its own matmuls; None where it is not installed. CORPUS_ALIGNER_MKL names a
    path. It uses one thread per core, as OpenBLAS does."""
    if "lib" in _mkl:
        return _mkl["lib"]
    # Idle OpenMP threads sleep instead of spinning on cores that MLX's and numpy's threads need next.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    lib = None
    names = [os.environ["CORPUS_ALIGNER_MKL"]] if os.environ.get("CORPUS_ALIGNER_MKL") else []
    names += [os.path.join(sys.prefix, "lib", n) for n in MKL_NAMES] + list(MKL_NAMES)
    for name in names:
        try:
            lib = ctypes.CDLL(name, mode=ctypes.RTLD_LOCAL)
            break
        except OSError:
            continue
    if lib is not None:
        try:  # GNU OpenMP when the system has it, else oneMKL's default (Intel OpenMP, the wheel's dependency)
            ctypes.CDLL("libgomp.so.1")
            lib.MKL_Set_Threading_Layer(MKL_THREADING_GNU)
        except OSError:
            os.environ.setdefault("KMP_BLOCKTIME", "0")
        lib.MKL_Set_Num_Threads(_threads.get("n") or max(1, os.cpu_count() or 1))
        log.debug("loaded oneMKL: %s", lib._name)
    _mkl["lib"] = lib
    return lib


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in AMX tiles (Intel Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions: AMX tiles, or AVX512-BF16 (AMD Zen 4 and later,
    Intel Cooper Lake)."""
    return cpu_has_amx_bf16() or "avx512_bf16" in cpu_flags()


# ----- CPU matmul precision (model/bf16_matmul.py) ---------------------------------------------------
MATMUL_PRECISIONS = ("auto", "float32", "bfloat16")
_precision: dict[str, str] = {"value": "auto"}


def set_matmul_precision(precision: str) -> None:
    """Process-wide, as the BLAS it selects: "float32", "bfloat16" or "auto"."""
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"cpu matmul precision must be one of {MATMUL_PRECISIONS}, got {precision!r}")
    _precision["value"] = precision


def matmul_precision() -> str:
    """ "float32" or "bfloat16": what float32 matrix products on the CPU compute in now. "auto" is bfloat16
    where the CPU has bf16 instructions and a library to use them; CORPUS_ALIGNER_CPU_MATMUL overrides "auto"."""
    p = _precision["value"]
    if p == "auto":
        p = os.environ.get("CORPUS_ALIGNER_CPU_MATMUL") or "auto"
    if p == "auto":
        return "bfloat16" if cpu_has_native_bf16() and gemm_bf16() is not None else "float32"
    if p == "bfloat16" and gemm_bf16() is None:
        raise RuntimeError("cpu matmul precision bfloat16 needs oneDNN or oneMKL (pip install onednn-cpu-gomp mkl)")
    return p


# ----- bf16 products: a (M, K) @ b (N, K).T of bf16 bits, float32 accumulation -------------------------
BF16_BACKENDS = ("mkl", "onednn")
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # cblas enums


class MklGemm:
    """oneMKL's `cblas_gemm_bf16bf16f32`: AMX tiles on Intel CPUs that have them (~1.6 TFLOP/s on 2 Sapphire
    Rapids cores). On AMD Zen 4 it does not use AVX512-BF16 (130 GFLOP/s on 2 cores, float32 OpenBLAS 170)."""

    name = "mkl"

    def __init__(self, lib: ctypes.CDLL):
        f = lib.cblas_gemm_bf16bf16f32
        i, p = ctypes.c_int, ctypes.c_void_p
        f.argtypes = [i, i, i, i, i, i, ctypes.c_float, p, i, p, i, ctypes.c_float, p, i]
        f.restype = None
        self._gemm = f

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        (M, K), N = a.shape, b.shape[0]
        c = np.empty((M, N), dtype=np.float32)
        self._gemm(
            _ROW_MAJOR, _NO_TRANS, _TRANS, M, N, K, 1.0, a.ctypes.data, K, b.ctypes.data, K, 0.0, c.ctypes.data, N
        )
        return c


class _DnnlArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


class DnnlGemm:
    """oneDNN's matmul primitive (the `onednn-cpu-gomp` wheel, GNU OpenMP), which uses AVX512-BF16 and AMX
    wherever the CPU has them: 380-420 GFLOP/s on 2 AMD Zen 4 cores (200-220 on one), against 170 for
    float32 OpenBLAS. One primitive per weight shape with the row count given at run time (as fast as a
    primitive per shape here), built once; each call wraps the arrays in memory objects. Each calling
    thread has its own stream and runs on `set_threads` OpenMP threads."""

    name = "onednn"
    _CPU, _IN_ORDER, _BF16, _F32 = 1, 1, 2, 3  # dnnl_cpu, dnnl_stream_in_order, dnnl_bf16, dnnl_f32
    _SRC, _DST, _WEIGHTS = 1, 17, 33  # DNNL_ARG_*
    _RUNTIME = -(2**63)  # DNNL_RUNTIME_DIM_VAL

    def __init__(self, lib: ctypes.CDLL, gomp: ctypes.CDLL):
        p = ctypes.c_void_p
        lib.dnnl_memory_create.argtypes = [ctypes.POINTER(p), p, p, p]
        lib.dnnl_primitive_execute.argtypes = [p, p, ctypes.c_int, ctypes.POINTER(_DnnlArg)]
        self._lib, self._gomp = lib, gomp
        self._engine = p()
        self._check(lib.dnnl_engine_create(ctypes.byref(self._engine), self._CPU, 0))
        self._primitives: dict[tuple[int, int], tuple[ctypes.c_void_p, ctypes.c_void_p]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    @staticmethod
    def _check(status: int) -> None:
        if status != 0:
            raise RuntimeError(f"oneDNN call failed with status {status}")

    def _desc(self, dims: tuple[int, int], dtype: int, strides: tuple[int, int]) -> ctypes.c_void_p:
        md, dims_t = ctypes.c_void_p(), ctypes.c_int64 * 12
        self._check(
            self._lib.dnnl_memory_desc_create_with_strides(ctypes.byref(md), 2, dims_t(*dims), dtype, dims_t(*strides))
        )
        return md

    def _primitive(self, K: int, N: int) -> tuple[ctypes.c_void_p, ctypes.c_void_p]:
        """(primitive, weights descriptor) for b (N, K) read as a (K, N) matrix, any row count."""
        with self._lock:
            if (K, N) not in self._primitives:
                rt = self._RUNTIME
                src, dst = self._desc((rt, K), self._BF16, (K, 1)), self._desc((rt, N), self._F32, (N, 1))
                weights = self._desc((K, N), self._BF16, (1, K))
                pd, prim = ctypes.c_void_p(), ctypes.c_void_p()
                self._check(
                    self._lib.dnnl_matmul_primitive_desc_create(
                        ctypes.byref(pd), self._engine, src, weights, None, dst, None
                    )
                )
                self._check(self._lib.dnnl_primitive_create(ctypes.byref(prim), pd))
                for md in (src, dst):
                    self._lib.dnnl_memory_desc_destroy(md)
                self._lib.dnnl_primitive_desc_destroy(pd)
                self._primitives[K, N] = (prim, weights)
            return self._primitives[K, N]

    def _stream(self) -> ctypes.c_void_p:
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = ctypes.c_void_p()
            self._check(self._lib.dnnl_stream_create(ctypes.byref(stream), self._engine, self._IN_ORDER))
        return stream

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        (M, K), N = a.shape, b.shape[0]
        c = np.empty((M, N), dtype=np.float32)
        prim, weights = self._primitive(K, N)
        src, dst = self._desc((M, K), self._BF16, (K, 1)), self._desc((M, N), self._F32, (N, 1))
        mems = [ctypes.c_void_p() for _ in range(3)]
        try:
            for mem, md, arr in zip(mems, (src, weights, dst), (a, b, c)):
                self._check(self._lib.dnnl_memory_create(ctypes.byref(mem), md, self._engine, arr.ctypes.data))
            args = (_DnnlArg * 3)(
                _DnnlArg(self._SRC, mems[0]), _DnnlArg(self._WEIGHTS, mems[1]), _DnnlArg(self._DST, mems[2])
            )
            self._gomp.omp_set_num_threads(_threads.get("n") or max(1, os.cpu_count() or 1))  # this thread's team
            stream = self._stream()
            self._check(self._lib.dnnl_primitive_execute(prim, stream, 3, args))
            self._check(self._lib.dnnl_stream_wait(stream))
        finally:
            for mem in mems:
                if mem.value:
                    self._lib.dnnl_memory_destroy(mem)
            for md in (src, dst):
                self._lib.dnnl_memory_desc_destroy(md)
        return c


Bf16Gemm = MklGemm | DnnlGemm  # called as gemm(a, b) -> a @ b.T in float32; `name` says which library
DNNL_NAMES = ("libdnnl.so.3", "libdnnl.so")
_gemm: dict[str, Bf16Gemm | None] = {}


def load_onednn() -> DnnlGemm | None:
    """oneDNN from the `onednn-cpu-gomp` wheel (`sys.prefix/lib`), or None where it is missing.
    CORPUS_ALIGNER_ONEDNN names a path."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep (read when libgomp loads)
    names = [os.environ["CORPUS_ALIGNER_ONEDNN"]] if os.environ.get("CORPUS_ALIGNER_ONEDNN") else []
    names += [os.path.join(sys.prefix, "lib", n) for n in DNNL_NAMES] + list(DNNL_NAMES)
    for name in names:
        try:
            lib = ctypes.CDLL(name, mode=ctypes.RTLD_LOCAL)
            return DnnlGemm(lib, ctypes.CDLL("libgomp.so.1"))
        except OSError:
            continue
    return None


def gemm_bf16() -> Bf16Gemm | None:
    """The bf16 product for this CPU, or None where no library for it is installed: oneMKL where the CPU
    has AMX (measured there), oneDNN elsewhere (it uses AVX512-BF16, which oneMKL leaves unused on AMD).
    CORPUS_ALIGNER_BF16_GEMM=mkl|onednn picks one."""
    if "gemm" not in _gemm:
        order = ["mkl", "onednn"] if cpu_has_amx_bf16() else ["onednn", "mkl"]
        forced = os.environ.get("CORPUS_ALIGNER_BF16_GEMM")
        if forced:
            if forced not in BF16_BACKENDS:
                raise ValueError(f"CORPUS_ALIGNER_BF16_GEMM must be one of {BF16_BACKENDS}, got {forced!r}")
            order = [forced]
        gemm: Bf16Gemm | None = None
        for name in order:
            if name == "mkl":
                mkl = load_mkl()
                gemm = MklGemm(mkl) if mkl is not None else None
            else:
                gemm = load_onednn()
            if gemm is not None:
                break
        _gemm["gemm"] = gemm
        log.debug("bf16 products: %s", gemm.name if gemm else None)
    return _gemm["gemm"]


def matmul_info() -> dict[str, str]:
    """What the CPU's float32 matrix products compute in now and which library multiplies them (run.json)."""
    precision = matmul_precision()
    gemm = gemm_bf16() if precision == "bfloat16" else None  # never None for bfloat16: matmul_precision checks
    library = gemm.name if gemm else ("openblas" if _state["loaded"] else "mlx")
    return {"precision": precision, "library": library}


# ----- numpy kernels on every core ------------------------------------------------------------------
@lru_cache(maxsize=1)
def _core_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="cpu-kernel")


def run_on_cores(fn: Callable[..., None], jobs: Iterable[tuple[Any, ...]]) -> None:
    """fn(*job) for every job, one thread per core, each BLAS call inside on one thread (the jobs already
    use every core: numpy's BLAS oversubscribed ran the decoder's attention 2.3x slower)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        for f in [_core_pool().submit(fn, *job) for job in jobs]:
            f.result()
