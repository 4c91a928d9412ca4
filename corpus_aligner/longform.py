"""Recordings of any length: overlapping windows anchored on confident words, and collapsed-tail recovery.

The model's classes end at 400 s, the official pipeline cuts audio at 180 s, and ports report trailing
words collapsing onto one time well before that (speech-swift #237: 30 words at 272.64 s of a 306 s
file). So a recording longer than `LongformConfig.threshold_s` is aligned window by window:

1. `plan_window`: `window_s` of audio from the cursor, with the next words expected in its first
   `window_s - tail_s` at the remaining text's mean rate. Fewer words than audio is the safe side: the
   model places a text prefix well and leaves untranscribed audio alone, while surplus words pile up.
2. `commit`: keep the window's words up to its anchor, the last confident word (probability at least
   `low_probability`, positive length, not repeated, inside the window) that lies at least
   `backoff_words` before the window's last word and before any collapsed tail; without a confident
   word the last plausible one anchors; without any, the words stay and the cursor skips `window_s -
   tail_s` (nothing in that audio took a word). The next window starts at the anchor's end, so windows
   overlap by whatever followed the anchor, and those words are aligned again.
3. The last window (the rest of the audio) takes all remaining words; `recover_tail` then re-aligns a
   collapsed tail on the audio after the last good word, for at most `max_recoveries` passes, keeping a
   pass only if it shortens the collapse. Every utterance gets this recovery (its single pass is its
   last window) unless `recover_collapse` is false; an utterance without a collapsed tail is untouched.

Everything here is pure but for `AlignFn`, the one model call per window, so the invariants (every
word exactly one time, times non-decreasing and within [0, duration], termination) are property-tested
with planted aligners.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from corpus_aligner.config import LongformConfig
from corpus_aligner.quality import collapsed_tail
from corpus_aligner.records import AlignedWord, PlacedWord


@dataclass(frozen=True, slots=True)
class Window:
    """One model pass: audio [start_s, end_s] of the utterance and its words [first_word, first_word + n_words).

    `floor_s` is the end of what is already placed (times in this pass never go before it); it equals
    `start_s` except for a last window moved earlier so that it holds enough audio.
    """

    index: int
    start_s: float
    end_s: float
    first_word: int
    n_words: int
    final: bool
    floor_s: float


# Aligns `tokens` (the window's words) on the window's audio; times relative to window.start_s.
AlignFn = Callable[[Window, Sequence[str]], list[AlignedWord]]


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next window starts: the audio time and the first word not yet placed."""

    start_s: float
    next_word: int


@dataclass(frozen=True, slots=True)
class Aligned:
    """Every word of one utterance placed once, in order, and the model passes it took."""

    placed: tuple[PlacedWord, ...]
    windows: int


def is_long(duration_s: float, rules: LongformConfig) -> bool:
    return duration_s > rules.threshold_s


def plan_window(
    index: int, cursor: Cursor, n_words: int, duration_s: float, rules: LongformConfig, tick_s: float
) -> Window:
    """The next window of a long recording (see the module docstring, step 1)."""
    remaining_s = duration_s - cursor.start_s
    remaining_words = n_words - cursor.next_word
    if remaining_s <= rules.window_s:
        # The rest of the audio, but at least one slot per word (and a second) if a window holds that many.
        least_s = max(1.0, min(tick_s * (remaining_words + 1), rules.window_s))
        start = max(0.0, min(cursor.start_s, duration_s - least_s))
        return Window(index, start, duration_s, cursor.next_word, remaining_words, True, cursor.start_s)
    expected = remaining_words * (rules.window_s - rules.tail_s) / remaining_s
    capacity = int(rules.window_s / tick_s)
    n = min(max(math.ceil(expected), rules.backoff_words + 1), remaining_words, capacity)
    end = cursor.start_s + rules.window_s
    return Window(index, cursor.start_s, end, cursor.next_word, n, False, cursor.start_s)


def place(window: Window, aligned: Sequence[AlignedWord]) -> list[PlacedWord]:
    if len(aligned) != window.n_words:
        raise ValueError(f"window {window.index}: {window.n_words} words but {len(aligned)} aligned")
    return [PlacedWord(a, window.index, window.start_s, window.end_s, window.floor_s) for a in aligned]


def choose_anchor(placed: Sequence[PlacedWord], last: int, low_probability: float) -> int:
    """Index of the last confident word in placed[: last + 1], else the last plausible one, else -1."""
    spans = [(p.start_s, p.end_s) for p in placed]

    def plausible(i: int) -> bool:
        repeated = (i > 0 and spans[i - 1] == spans[i]) or (i + 1 < len(spans) and spans[i + 1] == spans[i])
        return spans[i][1] > spans[i][0] and not repeated and not placed[i].beyond_end

    candidates = [i for i in range(min(last, len(placed) - 1), -1, -1) if plausible(i)]
    confident = [i for i in candidates if placed[i].word.probability >= low_probability]
    return confident[0] if confident else candidates[0] if candidates else -1


def commit(
    window: Window, aligned: Sequence[AlignedWord], rules: LongformConfig, low_probability: float
) -> tuple[list[PlacedWord], Cursor]:
    """The window's words to keep and where the next window starts (module docstring, step 2)."""
    placed = place(window, aligned)
    if window.final:
        return placed, Cursor(window.end_s, window.first_word + len(placed))
    spans = [(p.start_s, p.end_s) for p in placed]
    held = max(rules.backoff_words, collapsed_tail(spans, rules.collapse_min_words))
    anchor = choose_anchor(placed, len(placed) - 1 - held, low_probability)
    if anchor < 0:
        return [], Cursor(window.start_s + rules.window_s - rules.tail_s, window.first_word)
    return placed[: anchor + 1], Cursor(placed[anchor].end_s, window.first_word + anchor + 1)


def tail_window(
    placed: Sequence[PlacedWord],
    duration_s: float,
    rules: LongformConfig,
    low_probability: float,
    tick_s: float,
    index: int,
) -> Window | None:
    """The window that re-aligns `placed`'s collapsed tail after its last good word (module docstring, step
    3), or None when there is no collapsed tail, nothing to anchor on, too little audio for the words, or
    more audio than one pass may take (`max(window_s, threshold_s)`: in a long recording the last good word
    can lie many windows back, and the model's classes end at 400 s)."""
    tail = collapsed_tail([(p.start_s, p.end_s) for p in placed], rules.collapse_min_words)
    if tail == 0:
        return None
    anchor = choose_anchor(placed, len(placed) - tail - 1 - rules.backoff_words, low_probability)
    start = placed[anchor].end_s if anchor >= 0 else 0.0
    n = len(placed) - (anchor + 1)
    if (
        anchor < 0
        or int((duration_s - start) / tick_s) < n
        or duration_s - start > max(rules.window_s, rules.threshold_s)
    ):
        return None
    return Window(index, start, duration_s, anchor + 1, n, True, start)


def accept_tail(
    placed: Sequence[PlacedWord], window: Window, aligned: Sequence[AlignedWord], rules: LongformConfig
) -> list[PlacedWord] | None:
    """`placed` with the tail from `window` re-aligned as `aligned`, or None if that collapses no less."""
    candidate = list(placed[: window.first_word]) + place(window, aligned)
    before = collapsed_tail([(p.start_s, p.end_s) for p in placed], rules.collapse_min_words)
    after = collapsed_tail([(p.start_s, p.end_s) for p in candidate], rules.collapse_min_words)
    return candidate if after < before else None


def recover_tail(
    placed: Sequence[PlacedWord],
    align: AlignFn,
    tokens: Sequence[str],
    duration_s: float,
    rules: LongformConfig,
    low_probability: float,
    tick_s: float,
) -> Aligned:
    """Re-align a collapsed tail after the last good word before it (module docstring, step 3), one
    pass at a time (`tail_window`, `align`, `accept_tail`); the pipeline runs the same steps batched.

    `placed` is every word of the utterance; the result counts the extra passes it kept or tried.
    """
    placed, passes = list(placed), 0
    next_index = max((p.window for p in placed), default=-1) + 1
    for _ in range(rules.max_recoveries if rules.recover_collapse else 0):
        window = tail_window(placed, duration_s, rules, low_probability, tick_s, next_index + passes)
        if window is None:
            break
        better = accept_tail(placed, window, align(window, tokens[window.first_word :]), rules)
        passes += 1
        if better is None:
            break  # no better: keep what there is (flagged)
        placed = better
    return Aligned(tuple(placed), passes)


def align_windows(
    align: AlignFn,
    tokens: Sequence[str],
    duration_s: float,
    rules: LongformConfig,
    low_probability: float,
    tick_s: float,
) -> Aligned:
    """All words of one long recording, window by window, then the collapsed-tail recovery."""
    cursor, placed, index = Cursor(0.0, 0), [], 0
    while cursor.next_word < len(tokens):
        window = plan_window(index, cursor, len(tokens), duration_s, rules, tick_s)
        words = tokens[window.first_word : window.first_word + window.n_words]
        committed, cursor = commit(window, align(window, words), rules, low_probability)
        placed.extend(committed)
        index += 1
    recovered = recover_tail(placed, align, tokens, duration_s, rules, low_probability, tick_s)
    return Aligned(recovered.placed, index + recovered.windows)
