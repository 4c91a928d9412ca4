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
