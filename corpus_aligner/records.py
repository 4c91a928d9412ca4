"""Records shared by the stages: frozen, typed, with units in their names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AlignedWord:
    """One aligned word of one utterance.

    `text` is the cleaned word the model saw (what the official `ForcedAlignItem.text` holds).
    `start_s`/`end_s` are the repaired, monotone times in seconds (rounded to ms, as the official
    code does). The raw ticks are the argmax classes before the monotonic repair, and the
    probabilities are the softmax probabilities of those argmax classes: both feed quality flags.
    """

    text: str
    start_s: float
    end_s: float
    start_prob: float = 1.0
    end_prob: float = 1.0
    start_tick_raw: int = -1
    end_tick_raw: int = -1

    # Names of the official `ForcedAlignItem`, so code written for qwen-asr keeps working.
    @property
    def start_time(self) -> float:
        return self.start_s

    @property
    def end_time(self) -> float:
        return self.end_s

    @property
    def probability(self) -> float:
        """Confidence of the word: the smaller of its two slot probabilities."""
        return min(self.start_prob, self.end_prob)


@dataclass(frozen=True, slots=True)
class PlacedWord:
    """An AlignedWord from one model pass over [offset_s, limit_s] of an utterance (seconds from its start).

    The pass is a window of a long recording (longform.py), or the whole utterance (window 0, offset 0,
    limit = duration). `word` keeps the pass's own times; `start_s`/`end_s` are utterance times (rounded
    to ms, as the official `_offset_align_result` does, then clamped to [floor_s, limit_s]): `floor_s` is the
    end of the words already placed before this pass (at least `offset_s`), so times never go back.
    """

    word: AlignedWord
    window: int
    offset_s: float
    limit_s: float
    floor_s: float = 0.0

    def _clamp(self, t: float) -> float:
        return min(max(round(self.offset_s + t, 3), self.offset_s, self.floor_s), self.limit_s)

    @property
    def start_s(self) -> float:
        return self._clamp(self.word.start_s)

    @property
    def end_s(self) -> float:
        return self._clamp(self.word.end_s)

    @property
    def beyond_end(self) -> bool:
        """The model put a time after the end of the audio it was given (then clamped)."""
        return max(self.word.start_s, self.word.end_s) > round(self.limit_s - self.offset_s, 3)
