"""Long recordings: window planning, anchoring, stitching and tail recovery (pytest tests/test_longform.py).

The model call is the only impure part of longform.py, so these tests plant it: `planted.PlantedAligner`
answers with known times (the real 5.8-min LibriSpeech chapter's utterance boundaries), and hypothesis
draws arbitrary answers for the invariants. test_pipeline_long.py runs the real (tiny) model.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from planted import LONG_DURATION_S, TICK_S, PlantedAligner, Truth, chapter_truth

from corpus_aligner.config import LongformConfig
from corpus_aligner.decode import decode_words
from corpus_aligner.longform import (
    Cursor,
    Window,
    align_windows,
    choose_anchor,
    commit,
    plan_window,
    recover_tail,
)
from corpus_aligner.records import AlignedWord, PlacedWord

RULES = LongformConfig()  # threshold 120 s, windows of 60 s, words for 45 s, back off 4 words


def word(start: float, end: float, prob: float = 0.9) -> AlignedWord:
    return AlignedWord("w", start, end, prob, prob, round(start / TICK_S), round(end / TICK_S))


def check_stitched(placed: Sequence[PlacedWord], tokens: Sequence[str], duration_s: float) -> None:
    """The invariants: every word exactly once and in order, times non-decreasing and within [0, duration]."""
    assert [p.word.text for p in placed] == list(tokens)
    times = [t for p in placed for t in (p.start_s, p.end_s)]
    assert times == sorted(times)
    assert all(0.0 <= t <= duration_s for t in times)


def test_plan_window_gives_a_prefix_of_the_words_expected_before_the_tail() -> None:
    """600 words over 300 s (2 words/s): a 60 s window gets the 90 words of its first 45 s."""
    w = plan_window(0, Cursor(0.0, 0), 600, 300.0, RULES, TICK_S)
    assert (w.start_s, w.end_s, w.first_word, w.n_words, w.final, w.floor_s) == (0.0, 60.0, 0, 90, False, 0.0)
    # Later: the rate of what remains (300 words over 150 s), from the cursor.
    w = plan_window(3, Cursor(150.0, 300), 600, 300.0, RULES, TICK_S)
    assert (w.index, w.start_s, w.end_s, w.first_word, w.n_words) == (3, 150.0, 210.0, 300, 90)
    # Never more than the window's 750 slots, never fewer than backoff + 1, never more than remain.
    assert plan_window(0, Cursor(0.0, 0), 5000, 200.0, RULES, TICK_S).n_words == 750
    assert plan_window(0, Cursor(0.0, 0), 3, 200.0, RULES, TICK_S).n_words == 3
    assert plan_window(0, Cursor(0.0, 0), 20, 2000.0, RULES, TICK_S).n_words == RULES.backoff_words + 1


def test_last_window_takes_every_remaining_word_and_enough_audio() -> None:
    w = plan_window(5, Cursor(250.0, 580), 600, 300.0, RULES, TICK_S)
    assert (w.start_s, w.end_s, w.n_words, w.final, w.floor_s) == (250.0, 300.0, 20, True, 250.0)
    # An anchor 0.3 s before the end: the window starts 1 s before the end, times never before the anchor.
    w = plan_window(5, Cursor(299.7, 598), 600, 300.0, RULES, TICK_S)
    assert (w.start_s, w.end_s, w.floor_s, w.n_words) == (299.0, 300.0, 299.7, 2)
    # 100 words left: one slot each (8.08 s), capped at window_s.
    w = plan_window(5, Cursor(299.0, 500), 600, 300.0, RULES, TICK_S)
    assert w.start_s == pytest.approx(300.0 - 8.08)
    w = plan_window(5, Cursor(299.0, 0), 5000, 300.0, RULES, TICK_S)
    assert w.start_s == pytest.approx(240.0)


WINDOW = Window(1, 10.0, 70.0, 100, 8, False, 10.0)


def test_commit_keeps_the_words_up_to_the_last_confident_anchor() -> None:
    """Back off 4 words; word 3 is zero-length, word 2 low-probability: word 1 anchors."""
    aligned = [word(0.0, 1.0), word(1.0, 2.0), word(2.0, 3.0, 0.05), word(3.0, 3.0),
               word(4.0, 5.0), word(5.0, 6.0), word(6.0, 7.0), word(7.0, 8.0)]  # fmt: skip
    kept, cursor = commit(WINDOW, aligned, RULES, low_probability=0.1)
    assert [p.end_s for p in kept] == [11.0, 12.0]
    assert cursor == Cursor(12.0, 102)
    assert all(p.window == 1 and p.offset_s == 10.0 for p in kept)


def test_commit_falls_back_to_a_plausible_word_then_skips_ahead() -> None:
    """No confident word: the last plausible one anchors; no plausible one either: skip window_s - tail_s."""
    unsure = [word(float(i), i + 1.0, 0.01) for i in range(8)]
    kept, cursor = commit(WINDOW, unsure, RULES, low_probability=0.1)
    assert (len(kept), cursor) == (4, Cursor(14.0, 104))
    dumped = [word(60.0, 60.0, 0.9)] * 8  # every word piled on the window's end
    kept, cursor = commit(WINDOW, dumped, RULES, low_probability=0.1)
    assert (kept, cursor) == ([], Cursor(55.0, 100))
    final = Window(1, 10.0, 70.0, 100, 8, True, 10.0)
    kept, cursor = commit(final, dumped, RULES, low_probability=0.1)
    assert len(kept) == 8 and cursor == Cursor(70.0, 108)


def test_commit_never_anchors_inside_a_collapsed_tail() -> None:
    """A collapse longer than the backoff pushes the anchor before it."""
    rules = LongformConfig(backoff_words=1, collapse_min_words=3)
    aligned = [word(0.0, 1.0), word(1.0, 2.0)] + [word(2.0, 2.5)] * 6
    kept, cursor = commit(Window(0, 0.0, 60.0, 0, 8, False, 0.0), aligned, rules, 0.1)
    assert (len(kept), cursor) == (2, Cursor(2.0, 2))


def test_choose_anchor_prefers_confident_then_plausible() -> None:
    placed = [PlacedWord(w, 0, 0.0, 10.0) for w in [word(0, 1), word(1, 2, 0.01), word(2, 2), word(9, 12)]]
    assert choose_anchor(placed, last=3, low_probability=0.1) == 0  # 3 is beyond the end, 2 zero-length
    assert choose_anchor(placed, last=3, low_probability=0.0) == 1
    assert choose_anchor(placed, last=-1, low_probability=0.1) == -1


def test_long_chapter_aligns_to_the_planted_times() -> None:
    """The real chapter (345.9 s, 781 words): windows anchored on confident words recover every planted time
    to within one 80 ms class, each word inside its reference utterance."""
    truth = chapter_truth()
    planted = PlantedAligner(truth)
    result = align_windows(planted, truth.words, LONG_DURATION_S, RULES, 0.1, TICK_S)
    check_stitched(result.placed, truth.words, LONG_DURATION_S)
    errors = [abs(p.start_s - s) for p, (s, _) in zip(result.placed, truth.times)]
    assert max(errors) <= TICK_S / 2 + 1e-3
    for _, start, end, first, last in truth.utterances:
        assert all(start <= p.start_s and p.end_s <= end + TICK_S for p in result.placed[first:last])
    windows = planted.windows
    assert result.windows == len(windows) == 8
    assert all(w.end_s - w.start_s <= RULES.window_s for w in windows)
    assert all(b.start_s < a.end_s for a, b in itertools.pairwise(windows))  # overlapping windows
    assert [p.window for p in result.placed] == sorted(p.window for p in result.placed)


def test_long_chapter_with_a_model_that_collapses_early() -> None:
    """A model that piles every word after 40 s of a window onto one time: the anchors stay before the pile,
    so the planted times still come back, with more windows."""
    truth = chapter_truth()
    planted = PlantedAligner(truth, collapse_after_s=40.0)
    result = align_windows(planted, truth.words, LONG_DURATION_S, RULES, 0.1, TICK_S)
    check_stitched(result.placed, truth.words, LONG_DURATION_S)
    assert max(abs(p.start_s - s) for p, (s, _) in zip(result.placed, truth.times)) <= TICK_S / 2 + 1e-3
    assert result.windows > 8


def test_an_hour_of_speech() -> None:
    """3600 s and 9720 words (2.7 words/s, pauses every 12 s): about 85 windows, every word in place."""
    rng = np.random.default_rng(0)
    times, t = [], 0.5
    while len(times) < 9720:
        for _ in range(30):
            d = float(rng.uniform(0.2, 0.5))
            times.append((round(t, 3), round(t + d - 0.03, 3)))
            t += d
        t += float(rng.uniform(0.5, 2.0))
    truth = Truth([f"w{i}" for i in range(len(times))], times, [])
    duration = round(t + 1.0, 3)
    planted = PlantedAligner(truth)
    result = align_windows(planted, truth.words, duration, RULES, 0.1, TICK_S)
    check_stitched(result.placed, truth.words, duration)
    assert max(abs(p.start_s - s) for p, (s, _) in zip(result.placed, truth.times)) <= TICK_S / 2 + 1e-3
    assert 60 < result.windows < 120 and duration > 3600


def test_recover_tail_realigns_a_collapse_after_the_last_good_word() -> None:
    """A single pass over 100 s that collapses after 70 s: one more pass from the last good word fixes it."""
    truth = chapter_truth()
    n = next(last for _, _, end, _, last in truth.utterances if end > 100.0)
    duration = truth.times[n - 1][1] + 0.5
    first = PlantedAligner(truth, collapse_after_s=70.0)
    whole = Window(0, 0.0, duration, 0, n, True, 0.0)
    placed = [PlacedWord(a, 0, 0.0, duration) for a in first(whole, truth.words[:n])]
    planted = PlantedAligner(truth)
    result = recover_tail(placed, planted, truth.words[:n], duration, RULES, 0.1, TICK_S)
    check_stitched(result.placed, truth.words[:n], duration)
    assert result.windows == 1 and len(planted.windows) == 1
    assert max(abs(p.start_s - s) for p, (s, _) in zip(result.placed, truth.times)) <= TICK_S / 2 + 1e-3
    recovered = planted.windows[0]
    assert 60.0 < recovered.start_s < 70.0 and recovered.end_s == duration


def test_recover_tail_leaves_good_and_hopeless_results_alone() -> None:
    """No collapse: no model call (normal utterances are never changed). A collapse the next pass does not
    shorten, or that starts at the first word, stays (and is flagged downstream)."""
    truth = chapter_truth()
    n, duration = 40, truth.times[39][1] + 0.2
    good = [
        PlacedWord(a, 0, 0.0, duration)
        for a in PlantedAligner(truth)(Window(0, 0, duration, 0, n, True, 0), truth.words[:n])
    ]
    planted = PlantedAligner(truth)
    assert recover_tail(good, planted, truth.words[:n], duration, RULES, 0.1, TICK_S).placed == tuple(good)
    assert planted.windows == []
    stuck = PlantedAligner(truth, collapse_after_s=5.0)
    bad = [PlacedWord(a, 0, 0.0, duration) for a in stuck(Window(0, 0, duration, 0, n, True, 0), truth.words[:n])]
    again = recover_tail(bad, PlantedAligner(truth, collapse_after_s=0.0), truth.words[:n], duration, RULES, 0.1,
                         TICK_S)  # fmt: skip
    assert again.placed == tuple(bad) and again.windows == 1  # tried once, kept the original
    off = recover_tail(bad, planted, truth.words[:n], duration, LongformConfig(recover_collapse=False), 0.1, TICK_S)
    assert off.placed == tuple(bad) and off.windows == 0
    everything = [PlacedWord(word(duration, duration), 0, 0.0, duration)] * n
    assert recover_tail(everything, planted, truth.words[:n], duration, RULES, 0.1, TICK_S).windows == 0


class RandomAligner:
    """Arbitrary model answers: per window one of several behaviours, classes through the real repair."""

    def __init__(self, rng: random.Random):
        self.rng, self.calls = rng, 0

    def __call__(self, window: Window, tokens: Sequence[str]) -> list[AlignedWord]:
        self.calls += 1
        assert len(tokens) == window.n_words and window.end_s - window.start_s <= 400.0
        ticks = int((window.end_s - window.start_s) / TICK_S)
        mode = self.rng.choice(["uniform", "sorted", "collapse", "zeros", "beyond"])
        n = 2 * len(tokens)
        if mode == "uniform":
            classes = [self.rng.randrange(0, ticks + 1) for _ in range(n)]
        elif mode == "sorted":
            classes = sorted(self.rng.randrange(0, ticks + 1) for _ in range(n))
        elif mode == "collapse":
            cut = self.rng.randrange(0, n + 1)
            classes = sorted(self.rng.randrange(0, ticks + 1) for _ in range(cut)) + [ticks] * (n - cut)
        elif mode == "zeros":
            classes = [0] * n
        else:
            classes = [self.rng.randrange(0, 5000) for _ in range(n)]
        probs = [self.rng.random() for _ in range(n)]
        return decode_words(list(tokens), np.array(classes), np.array(probs), TICK_S * 1000)


@settings(max_examples=60, deadline=None)
@given(
    duration=st.floats(121.0, 1500.0),
    rate=st.floats(0.05, 5.0),
    rules=st.builds(
        LongformConfig,
        window_s=st.sampled_from([20.0, 45.0, 60.0]),
        tail_s=st.sampled_from([0.0, 5.0, 15.0]),
        backoff_words=st.integers(0, 6),
        collapse_min_words=st.integers(2, 6),
        max_recoveries=st.integers(0, 3),
    ),
    seed=st.integers(0, 2**32 - 1),
)
# Found by hypothesis: a recovery anchored 11 windows back asked for one pass over 475 s of audio.
@example(
    duration=786.0,
    rate=0.05078125,
    rules=LongformConfig(window_s=45.0, tail_s=0.0, backoff_words=5, collapse_min_words=2, max_recoveries=1),
    seed=2,
)
def test_any_model_answers_stitch_into_one_time_per_word(duration, rate, rules, seed) -> None:
    """Whatever the model answers, every word gets exactly one time, times never decrease and stay within
    [0, duration], and the number of passes is bounded (the loop always ends)."""
    n = max(1, min(int(duration * rate), int(duration / TICK_S)))
    tokens = [f"w{i}" for i in range(n)]
    model = RandomAligner(random.Random(seed))
    result = align_windows(model, tokens, duration, rules, 0.1, TICK_S)
    check_stitched(result.placed, tokens, duration)
    assert result.windows == model.calls
    assert model.calls <= n + duration / (rules.window_s - rules.tail_s) + 1 + rules.max_recoveries
