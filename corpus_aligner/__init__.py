"""corpus-aligner: word-level forced alignment of speech corpora with Qwen3-ForcedAligner-0.6B in MLX."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corpus_aligner.cpu_blas import ensure_fast_blas

ensure_fast_blas()  # before anything imports mlx.core

if TYPE_CHECKING:
    from corpus_aligner.api import Aligner
    from corpus_aligner.records import AlignedWord

__all__ = ["AlignedWord", "Aligner"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy, so `import corpus_aligner.audio` does not pull in the model stack.
    if name == "Aligner":
        from corpus_aligner.api import Aligner

        return Aligner
    if name == "AlignedWord":
        from corpus_aligner.records import AlignedWord

        return AlignedWord
    raise AttributeError(name)
