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

log = logging.getLogger(__name__)

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
)
_state: dict[str, str | None] = {"loaded": None}
_lib: list[ctypes.CDLL] = []


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
    """Threads each OpenBLAS call may use (process-wide): the cores shared among the model's workers.
    Returns False when OpenBLAS is not the loaded BLAS."""
    if not _lib or not hasattr(_lib[0], "openblas_set_num_threads"):
        return False
    _lib[0].openblas_set_num_threads(max(1, int(n)))
    return True
