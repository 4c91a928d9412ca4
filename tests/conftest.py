"""Shared fixtures: one tiny random checkpoint per test session, and reading TextGrids with real Praat."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import corpus_aligner  # noqa: F401  (loads OpenBLAS before any test module imports mlx)

# Exact float32 products wherever a test leaves the CPU matmul precision at "auto" (oracle parity, batch
# invariance); tests/test_bf16_matmul.py asks for the bf16 path explicitly. Inherited by CLI subprocesses.
os.environ["CORPUS_ALIGNER_CPU_MATMUL"] = "float32"
# checkpoint fingerprints are remembered here, not in the user's ~/.cache
# (one folder per test process, removed when that process exits)
os.environ["CORPUS_ALIGNER_CACHE"] = tempfile.mkdtemp(prefix="corpus-aligner-cache-")
atexit.register(shutil.rmtree, os.environ["CORPUS_ALIGNER_CACHE"], ignore_errors=True)

PRAAT_SCRIPT = Path(__file__).parent / "praat" / "check_textgrids.praat"


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint in the official layout (generated once per session and worker)."""
    from corpus_aligner.testing.tiny_checkpoint import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"), seed=0)


def praat_read(paths: Sequence[Path], workdir: Path) -> dict[str, dict]:
    """Open each TextGrid with real Praat; per path: xmin, xmax, {tier: n intervals}, {tier: intervals}.

    Fails the test if Praat cannot read a file (Praat exits non-zero and names it).
    """
    listing = workdir / "praat-files.txt"
    listing.write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
    done = subprocess.run(
        ["praat", "--run", str(PRAAT_SCRIPT), str(listing)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"Praat could not read the TextGrids:\n{done.stdout}\n{done.stderr}"
    files: dict[str, dict] = {}
    current: dict = {}
    for line in done.stdout.splitlines():
        kind, *fields = line.split("\t")
        if kind == "file":
            current = {"xmin": float(fields[1]), "xmax": float(fields[2]), "tiers": {}, "intervals": {}}
            files[fields[0]] = current
        elif kind == "tier":
            current["tiers"][fields[0]] = int(fields[2])
            current["intervals"][fields[0]] = []
        elif kind == "interval":
            current["intervals"][fields[0]].append((float(fields[1]), float(fields[2]), fields[3]))
    return files


@pytest.fixture
def read_with_praat(tmp_path: Path) -> Callable[[Sequence[Path]], dict[str, dict]]:
    return lambda paths: praat_read(paths, tmp_path)
