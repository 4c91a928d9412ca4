"""Load Debian's OpenBLAS before MLX on the CPU: MLX's bundled reference BLAS runs float32 matmuls at
~2-6 GFLOP/s, OpenBLAS at ~190 (DEVELOPERS.md, shared/docs/cpu-performance.md). It only takes effect
when loaded before `mlx.core` is first imported, so `corpus_aligner/__init__.py` calls it first.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

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
def cpu_has_amx_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in AMX tiles (Intel Sapphire Rapids and later)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_bf16" in line for line in f)
    except OSError:
        return False


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
    where the CPU has AMX-BF16 and oneMKL is installed; CORPUS_ALIGNER_CPU_MATMUL overrides "auto"."""
    p = _precision["value"]
    if p == "auto":
        p = os.environ.get("CORPUS_ALIGNER_CPU_MATMUL") or "auto"
    if p == "auto":
        return "bfloat16" if cpu_has_amx_bf16() and gemm_bf16() is not None else "float32"
    if p == "bfloat16" and gemm_bf16() is None:
        raise RuntimeError("cpu matmul precision bfloat16 needs oneMKL (pip install mkl)")
    return p


def gemm_bf16() -> Any:
    """oneMKL's `cblas_gemm_bf16bf16f32` with its C signature, or None without oneMKL."""
    lib = load_mkl()
    if lib is None:
        return None
    f = lib.cblas_gemm_bf16bf16f32
    if f.argtypes is None:
        i, p = ctypes.c_int, ctypes.c_void_p
        f.argtypes = [i, i, i, i, i, i, ctypes.c_float, p, i, p, i, ctypes.c_float, p, i]
        f.restype = None
    return f


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
