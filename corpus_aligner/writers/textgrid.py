"""One utterance -> a long-format Praat TextGrid via praatio (MFA's `export_textgrid`, without mutation).

Two interval tiers over [0, audio duration]: `words` (gaps as empty intervals) and `utterance`
(the original transcript). Praat silently drops intervals of zero length when it reads a file, so a
zero-length word is never written as its own interval: it joins the word that starts (or else ends)
at the same instant, as "a b", or, alone in a gap, is drawn `POINT_WIDTH_S` wide. The Parquet keeps
the exact times.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from praatio import textgrid
from praatio.utilities.constants import Interval as PraatInterval

from corpus_aligner.writers import atomic_path

WORDS_TIER = "words"
UTTERANCE_TIER = "utterance"
# Width of a zero-length word that shares no boundary with a neighbour: the 1 ms time resolution.
POINT_WIDTH_S = 0.001

Interval = tuple[float, float, str]


def word_intervals(words: Sequence[Interval], duration_s: float) -> list[Interval]:
    """(start_s, end_s, label) words, in order -> positive-length, non-overlapping labelled intervals.

    Times are clamped to [0, duration_s] and made non-decreasing first; every label appears exactly
    once, in order (joined with a space where zero-length words share an interval).
    """
    out: list[list] = []  # [start, end, labels]
    pending: list[str] = []  # zero-length words at time `pending_t`, waiting for a neighbour
    pending_t = 0.0
    floor = 0.0  # times never go back

    def flush(next_start: float) -> None:
        if not pending:
            return
        if out and out[-1][1] == pending_t:
            out[-1][2].extend(pending)
        else:
            prev_end = out[-1][1] if out else 0.0
            if next_start > pending_t:
                start, end = pending_t, min(pending_t + POINT_WIDTH_S, next_start)
            else:
                start, end = max(pending_t - POINT_WIDTH_S, prev_end), pending_t
            out.append([start, end, list(pending)])
        pending.clear()

    for start, end, label in words:
        start = min(max(float(start), floor), duration_s)
        end = min(max(float(end), start), duration_s)
        floor = end
        if end > start:
            if pending and pending_t == start:
                labels = [*pending, label]
                pending.clear()
            else:
                flush(start)
                labels = [label]
            out.append([start, end, labels])
        else:
            if pending and pending_t != start:
                flush(start)
            pending_t = start
            pending.append(label)
    flush(duration_s)
    return [(s, e, " ".join(labels)) for s, e, labels in out]


def write_textgrid(path: Path, words: Sequence[Interval], transcript: str, duration_s: float) -> None:
    """Write the TextGrid of one utterance atomically (long format, blank gaps included)."""
    if not duration_s > 0:
        raise ValueError(f"a TextGrid needs a positive duration, got {duration_s}")
    tg = textgrid.Textgrid(0.0, duration_s)
    entries = [PraatInterval(s, e, label) for s, e, label in word_intervals(words, duration_s)]
    tg.addTier(textgrid.IntervalTier(WORDS_TIER, entries, 0.0, duration_s))
    tg.addTier(textgrid.IntervalTier(UTTERANCE_TIER, [PraatInterval(0.0, duration_s, transcript)], 0.0, duration_s))
    with atomic_path(path) as tmp:
        # minimumIntervalLength=None (praatio supports it; its annotation says float): praatio would
        # otherwise merge away labelled intervals shorter than 1e-8 s.
        tg.save(
            str(tmp),
            format="long_textgrid",
            includeBlankSpaces=True,
            minimumIntervalLength=None,  # pyright: ignore[reportArgumentType]
        )


def read_words(path: Path) -> list[Interval]:
    """The labelled intervals of the `words` tier (for tests and for checking a written file)."""
    tg = textgrid.openTextgrid(str(path), includeEmptyIntervals=False)
    tier = tg.getTier(WORDS_TIER)
    if not isinstance(tier, textgrid.IntervalTier):
        raise ValueError(f"{path}: tier {WORDS_TIER!r} is not an interval tier")
    return [(float(e[0]), float(e[1]), str(e[-1])) for e in tier.entries]  # Interval(start, end, label)
