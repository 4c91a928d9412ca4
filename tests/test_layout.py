"""House rules that keep the data flow readable (style.md Part 2)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "corpus_aligner"
MODEL_ALLOWED = {
    *("mlx", "numpy", "corpus_aligner", "__future__", "collections", "dataclasses", "functools", "math"),
    *("threading", "typing", "contextlib", "warnings"),
    "ctypes",  # the CUDA driver's page-locked host memory (`device_arrays.send`): device memory, not file I/O
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_model_code_does_no_io():
    """corpus_aligner/model/ imports only mlx, numpy, its own args and pure stdlib helpers: no file I/O."""
    for path in sorted((PACKAGE / "model").glob("*.py")):
        extra = imported_roots(path) - MODEL_ALLOWED
        assert not extra, f"{path.name} imports {sorted(extra)}"
        assert "open(" not in path.read_text(encoding="utf-8"), path.name


def test_library_never_imports_hydra():
    """Only cli.py and config.py know about Hydra/OmegaConf; library code takes typed dataclasses."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in {"cli.py", "config.py"}:
            continue
        assert not imported_roots(path) & {"hydra", "omegaconf"}, path.relative_to(PACKAGE)


def test_loader_and_writer_processes_never_import_mlx():
    """A spawned loader (writer) process imports `corpus_aligner.__main__` (as `__mp_main__`) and `loading`
    (`writers.batch`) to unpickle its work. None may pull in MLX: on a GPU it would set up the device in every
    worker (out of memory)."""
    code = "import sys, runpy, corpus_aligner.loading, corpus_aligner.writers.batch\n"
    code += "runpy.run_module('corpus_aligner.__main__', run_name='__mp_main__')\n"
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlx'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
