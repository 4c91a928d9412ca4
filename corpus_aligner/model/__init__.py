"""MLX modules of Qwen3-ForcedAligner-0.6B. No file I/O here: loading lives in `checkpoint.py`."""

from corpus_aligner.model.aligner import ForcedAligner
from corpus_aligner.model.args import AlignerArgs, DecoderArgs, EncoderArgs

__all__ = ["AlignerArgs", "DecoderArgs", "EncoderArgs", "ForcedAligner"]
