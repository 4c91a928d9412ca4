"""OpenBLAS is loaded before MLX by importing the package; importing MLX first is reported, not silent."""

from __future__ import annotations

import subprocess
import sys

OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_package_import_loads_openblas_first() -> None:
    """`.ci/run` installs libopenblas0-pthread, so the package finds it and maps it before MLX's own BLAS."""
    code = (
        "import corpus_aligner, mlx.core as mx\n"
        "from corpus_aligner import cpu_blas\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(cpu_blas.ensure_fast_blas(), 'openblas-pthread/libopenblas' in maps)\n"
        "print(cpu_blas.set_threads(1))"
    )
    done = run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [OPENBLAS, "True", "True"]
    assert "RuntimeWarning" not in done.stderr


def test_mlx_imported_first_is_warned() -> None:
    done = run("import mlx.core\nimport corpus_aligner")
    assert done.returncode == 0, done.stderr
    assert "mlx.core was imported before corpus_aligner" in done.stderr
