"""Error types. Each carries a message a user can act on; pipeline code records them per utterance."""

from __future__ import annotations


class AlignerError(Exception):
    """Base class of every error this package raises on purpose."""


class CheckpointError(AlignerError):
    """A checkpoint cannot be found, downloaded or read."""


class AudioError(AlignerError):
    """Audio cannot be read or is unusable (empty, corrupt, too short, non-finite)."""


class TranscriptError(AlignerError):
    """A transcript cannot be used (empty, nothing alignable, undecodable)."""


class TooLongError(AlignerError):
    """An utterance is longer than the model can time (5000 classes x 80 ms = 400 s)."""


class CorpusReadError(AlignerError):
    """The corpus layout or a manifest cannot be read."""
