"""Error types. Each carries a message a user can act on; pipeline code records them per utterance.

The class name is the `error_type` of a failed row in utterances.parquet and groups the failures in
the report, so the subclasses below name the reason; all audio ones are AudioError, all transcript
ones TranscriptError, all corpus-entry ones CorpusReadError.
"""

from __future__ import annotations


class AlignerError(Exception):
    """Base class of every error this package raises on purpose."""


class CheckpointError(AlignerError):
    """A checkpoint cannot be found, downloaded or read."""


class AudioError(AlignerError):
    """Audio cannot be read or is unusable (empty, corrupt, too short, non-finite)."""


class MissingAudioError(AudioError):
    """The audio file does not exist."""


class UnsupportedAudioError(AudioError):
    """The file is not audio that soundfile (libsndfile) can open: empty, unknown or unsupported container."""


class CorruptAudioError(AudioError):
    """The header is malformed or implausible (e.g. a sample rate of 1 MHz), or decoding fails."""


class TruncatedAudioError(CorruptAudioError):
    """The file ends before its header says it does (a cut download or copy)."""


class EmptyAudioError(AudioError):
    """The file (or the segment) holds no audio frames."""


class TooShortError(AudioError):
    """Shorter than one encoder step (80 ms): the model has nothing to place a word in."""


class NonFiniteAudioError(AudioError):
    """Samples are NaN or infinite."""


class SilentAudioError(AudioError):
    """Digital silence: every sample is (nearly) zero, so there is nothing to align to."""


class ChannelError(AudioError):
    """The configured channel does not exist in the file."""


class TranscriptError(AlignerError):
    """A transcript cannot be used (empty, nothing alignable, undecodable)."""


class EmptyTranscriptError(TranscriptError):
    """The transcript is empty or only whitespace."""


class NoAlignableWordsError(TranscriptError):
    """The transcript has only punctuation or symbols: no letters or digits for the model to place."""


class TooManyWordsError(TranscriptError):
    """More words than 80 ms slots in the audio: the transcript cannot belong to it."""


class TooLongError(AlignerError):
    """Longer than the configured maximum (`align.max_duration_s`); longer than 400 s alone is fine."""


class CorpusReadError(AlignerError):
    """The corpus layout or a manifest cannot be read."""


class DuplicateIdError(CorpusReadError):
    """A second utterance with an id already used."""


class MissingTranscriptError(CorpusReadError):
    """Audio without a transcript line (or a chapter without a transcript file)."""


class TranscriptEncodingError(CorpusReadError):
    """The transcript line or manifest row is not valid UTF-8."""


class ManifestRowError(CorpusReadError):
    """A manifest row that cannot be used (bad JSON, no audio path, bad number)."""
