"""corpus_aligner.decode against the official fix_timestamp / parse_timestamp (model.md §5).

Run: pytest tests/test_decode.py
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor

from corpus_aligner.decode import TICK_MS, decode_words, fix_timestamp
from corpus_aligner.records import AlignedWord

_PROCESSOR = Qwen3ForceAlignProcessor()

# Worked examples from model.md §5, computed with the official code.
WORKED = [
    ([80, 4000, 160, 240], [80, 80, 160, 240]),
    ([500, 80, 160], [80, 80, 160]),
    ([80, 160, 0, 400], [80, 160, 160, 400]),
    ([80, 160, 240, 320, 0, 0, 0, 800, 880, 960, 1040], [80, 160, 240, 320, 440, 560, 680, 800, 880, 960, 1040]),
    ([80, 160, 1200, 1200, 1200, 240, 320], [80, 160, 1200, 1200, 1200, 1200, 1200]),
]


def _official_fix(values: list[float]) -> list[int]:
    return _PROCESSOR.fix_timestamp(np.asarray(values, dtype=np.float32))


@pytest.mark.parametrize(("values", "expected"), WORKED)
def test_fix_timestamp_worked_examples(values: list[int], expected: list[int]) -> None:
    """model.md's worked examples repair to exactly the documented values."""
    assert fix_timestamp(values) == expected
    assert _official_fix(values) == expected


def test_fix_timestamp_tie_rules() -> None:
    """Ties follow the official rules: earliest end of a longest chain, smallest parent, nearer side (left on ties)."""
    # [160, 240] and [80, 240] both have length 2: the parent of 240 is the smallest index, 160.
    assert fix_timestamp([160, 80, 240]) == [160, 160, 240]
    # Chains 0-400-480 and 0-80-160 both have length 3: the one ending first (at 480) wins.
    assert fix_timestamp([0, 400, 80, 480, 160]) == [0, 400, 400, 480, 480]
    # A leading outlier has no left neighbour and copies the right one.
    assert fix_timestamp([80, 0, 0, 160]) == [0, 0, 0, 160]
    # A run of two between 5 and 10: the first is nearer the left, the second nearer the right.
    assert fix_timestamp([5, 4, 3, 10]) == [5, 5, 10, 10]
    assert fix_timestamp([240, 80, 160, 0]) == [80, 80, 160, 160]


def test_fix_timestamp_long_run_interpolates_and_truncates() -> None:
    """A run of 3+ outliers is interpolated between its kept neighbours, then truncated with int()."""
    assert fix_timestamp([0, 50, 9, 8, 7, 100]) == [0, 50, 62, 75, 87, 100]
    assert fix_timestamp([0, 90, 80, 70, 60, 100]) == [0, 90, 92, 95, 97, 100]
    assert fix_timestamp([10, 5, 4, 3]) == [10, 10, 10, 10]  # no right neighbour: copy the left one


def test_fix_timestamp_empty() -> None:
    """No timestamps repair to no timestamps (the official code raises on an empty list)."""
    assert fix_timestamp([]) == []


_TICKS = st.lists(st.integers(0, 12).map(lambda c: float(c * TICK_MS)), min_size=1, max_size=40)


@pytest.mark.oracle
@settings(max_examples=3000, deadline=None)
@given(_TICKS)
def test_fix_timestamp_equals_official(values: list[float]) -> None:
    """For random tick sequences full of ties, the O(n log n) repair equals the official O(n^2) one."""
    assert fix_timestamp(values) == _official_fix(values)


@pytest.mark.oracle
@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 1000, allow_nan=False, allow_subnormal=False), min_size=1, max_size=25))
def test_fix_timestamp_equals_official_on_arbitrary_floats(values: list[float]) -> None:
    """Non-tick floats (interpolation and truncation paths) also match the official repair exactly."""
    as_f32 = np.asarray(values, dtype=np.float32).tolist()
    assert fix_timestamp(as_f32) == _official_fix(as_f32)


@pytest.mark.oracle
def test_fix_timestamp_equals_official_on_long_sequences() -> None:
    """Long realistic sequences (a rising line with noise and outlier bursts) match the official repair."""
    rng = np.random.default_rng(7)
    for n in (200, 1000):
        classes = np.sort(rng.integers(0, 4000, n)) + rng.integers(-3, 4, n)
        bursts = rng.choice(n, n // 20, replace=False)
        classes[bursts] = rng.integers(0, 5000, bursts.size)
        values = (np.clip(classes, 0, 4999) * 80.0).astype(np.float32).tolist()
        assert fix_timestamp(values) == _official_fix(values)


@settings(max_examples=300, deadline=None)
@given(_TICKS)
def test_fix_timestamp_properties(values: list[float]) -> None:
    """Output has the input's length, never decreases, and leaves a monotone input unchanged."""
    fixed = fix_timestamp(values)
    assert len(fixed) == len(values)
    assert all(a <= b for a, b in itertools.pairwise(fixed))
    monotone = sorted(values)
    assert fix_timestamp(monotone) == [int(v) for v in monotone]


def test_decode_words_planted_answer() -> None:
    """Known classes decode to exactly their times; one planted outlier is repaired, raw ticks are kept."""
    words = ["the", "cat", "sat"]
    classes = np.array([3, 7, 9, 4000, 12, 15])  # the 4000 (320 s) end of "cat" is the outlier
    probs = np.array([0.9, 0.8, 0.7, 0.1, 0.6, 0.5], dtype=np.float32)
    result = decode_words(words, classes, probs)
    assert result == [
        AlignedWord("the", 0.24, 0.56, float(np.float32(0.9)), float(np.float32(0.8)), 3, 7),
        AlignedWord("cat", 0.72, 0.72, float(np.float32(0.7)), float(np.float32(0.1)), 9, 4000),
        AlignedWord("sat", 0.96, 1.2, float(np.float32(0.6)), float(np.float32(0.5)), 12, 15),
    ]
    assert result[1].probability == pytest.approx(0.1)


def test_decode_words_top_class_and_custom_segment() -> None:
    """The last class (4999) is 399.92 s; a custom segment length scales every time."""
    result = decode_words(["a"], np.array([0, 4999]), np.array([1.0, 1.0]))
    assert (result[0].start_s, result[0].end_s) == (0.0, 399.92)
    result = decode_words(["a"], np.array([3, 5]), np.array([1.0, 1.0]), segment_ms=40.0)
    assert (result[0].start_s, result[0].end_s) == (0.12, 0.2)


def test_decode_words_rejects_wrong_slot_count() -> None:
    """Every word needs exactly two classes and two probabilities."""
    with pytest.raises(ValueError, match="2 timestamp slots per word"):
        decode_words(["a", "b"], np.array([1, 2, 3]), np.array([1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="2 timestamp slots per word"):
        decode_words(["a"], np.array([1, 2]), np.array([1.0]))


def test_decode_words_empty() -> None:
    """No words decode to no AlignedWords."""
    assert decode_words([], np.zeros(0, dtype=np.int64), np.zeros(0)) == []


@pytest.mark.oracle
@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 4999), min_size=2, max_size=40).filter(lambda c: len(c) % 2 == 0))
def test_decode_words_equals_official_readout(classes: list[int]) -> None:
    """Times equal the official align() readout: torch int64 * 80.0, parse_timestamp, round(ms / 1000, 3)."""
    words = [f"w{i}" for i in range(len(classes) // 2)]
    timestamp_ms = (torch.tensor(classes, dtype=torch.int64) * float(TICK_MS)).numpy()
    expected = _PROCESSOR.parse_timestamp(words, timestamp_ms)
    got = decode_words(words, np.asarray(classes), np.ones(len(classes)))
    assert [(w.text, w.start_s, w.end_s) for w in got] == [
        (it["text"], round(it["start_time"] / 1000.0, 3), round(it["end_time"] / 1000.0, 3)) for it in expected
    ]
    assert [(w.start_tick_raw, w.end_tick_raw) for w in got] == list(zip(classes[::2], classes[1::2]))
