"""corpus-aligner: word-level forced alignment of speech corpora with Qwen3-ForcedAligner-0.6B in MLX."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from corpus_aligner.cpu_blas import ensure_fast_blas

ensure_fast_blas()  # before anything imports mlx.core
# MLX's CUDA backend records kernels into CUDA graphs by default. Every batch here has new shapes, so it
# re-instantiates graphs all the time: on an H100 the first pass over a corpus ran at 325 audio-s/s with
# graphs and 2,558 without, and a run with graphs died in cudaStreamEndCapture (illegal memory access).
# Our kernels are large, so graphs save nothing. Read once, when MLX first touches the GPU.
os.environ.setdefault("MLX_USE_CUDA_GRAPHS", "0")

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
