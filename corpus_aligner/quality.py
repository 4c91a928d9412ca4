"""Quality flags of aligned words and utterances (pure; docs/main-job.md lists them).

Per word: zero length, part of a run of identical times, moved by the monotonic repair (and by how
much), put beyond the end of the audio, low probability, part of a collapsed tail. Per utterance: the
share of flagged words and the length of its collapsed tail: a run of at least `min_words` words with
identical times at the end, the failure ports of this model report on long inputs (speech-swift #237).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corpus_aligner.records import PlacedWord


@dataclass(frozen=True, slots=True)
class WordFlags:
    zero_length: bool  # start_s == end_s
    identical_run: bool  # same (start_s, end_s) as a neighbouring word
    repaired: bool  # the monotonic repair moved a raw time
    repair_shift_s: float  # how far it moved it (the larger of start and end), seconds
    beyond_end: bool  # the model put a time after the end of the audio it was given (clamped)
    low_probability: bool  # min(start_prob, end_prob) below the threshold
    collapsed_tail: bool  # part of the utterance's collapsed tail

    @property
    def flagged(self) -> bool:
        return (
            self.zero_length
            or self.identical_run
            or self.repaired
            or self.beyond_end
            or self.low_probability
            or self.collapsed_tail
        )


def collapsed_tail(spans: Sequence[tuple[float, float]], min_words: int) -> int:
    """Length of the run of identical (start, end) spans that ends the list, if it has >= min_words; else 0."""
    if not spans:
        return 0
    run = 1
    while run < len(spans) and spans[-run - 1] == spans[-1]:
        run += 1
    return run if run >= min_words else 0


def word_flags(
    placed: Sequence[PlacedWord], tick_s: float, low_probability: float, collapse_min_words: int
) -> list[WordFlags]:
    """The flags of each word of one utterance (its words in order, times already stitched)."""
    spans = [(p.start_s, p.end_s) for p in placed]
    tail_start = len(spans) - collapsed_tail(spans, collapse_min_words)
    flags = []
    for i, (p, span) in enumerate(zip(placed, spans)):
        w = p.word
        raw = (round(w.start_tick_raw * tick_s, 3), round(w.end_tick_raw * tick_s, 3))
        known = w.start_tick_raw >= 0 and w.end_tick_raw >= 0
        shift = max(abs(raw[0] - w.start_s), abs(raw[1] - w.end_s)) if known else 0.0
        flags.append(
            WordFlags(
                zero_length=span[0] == span[1],
                identical_run=(i > 0 and spans[i - 1] == span) or (i + 1 < len(spans) and spans[i + 1] == span),
                repaired=known and raw != (w.start_s, w.end_s),
                repair_shift_s=round(shift, 3),
                beyond_end=p.beyond_end,
                low_probability=w.probability < low_probability,
                collapsed_tail=i >= tail_start,
            )
        )
    return flags


def flagged_share(flags: Sequence[WordFlags]) -> float:
    """Share of the utterance's words with any flag (0.0 for no words)."""
    return sum(f.flagged for f in flags) / len(flags) if flags else 0.0
