"""TextGrid and Parquet writers: round trips, real Praat, flags (pytest tests/test_writers.py)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from corpus_aligner.normalize import Word
from corpus_aligner.records import AlignedWord
from corpus_aligner.writers import atomic_path
from corpus_aligner.writers.parquet import (
    UTTERANCES_SCHEMA,
    WORDS_SCHEMA,
    read_parquet,
    utterances_frame,
    word_rows,
    words_frame,
    write_parquet,
)
from corpus_aligner.writers.textgrid import POINT_WIDTH_S, read_words, word_intervals, write_textgrid


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        # plain words with a gap: unchanged
        ([(0.1, 0.4, "a"), (0.5, 0.9, "b")], [(0.1, 0.4, "a"), (0.5, 0.9, "b")]),
        # a zero-length word joins the word that starts where it is
        ([(0.1, 0.4, "a"), (0.4, 0.4, "b"), (0.4, 0.7, "c")], [(0.1, 0.4, "a"), (0.4, 0.7, "b c")]),
        # a run of identical zero-length times joins the next word
        ([(0.2, 0.2, "a"), (0.2, 0.2, "b"), (0.2, 0.5, "c")], [(0.2, 0.5, "a b c")]),
        # at the end, with nothing after: joins the word that ends there
        ([(0.1, 0.5, "a"), (0.5, 0.5, "b")], [(0.1, 0.5, "a b")]),
        # alone in a gap: drawn POINT_WIDTH_S wide, forward (or backward at the audio end)
        ([(0.1, 0.2, "a"), (0.5, 0.5, "b")], [(0.1, 0.2, "a"), (0.5, 0.5 + POINT_WIDTH_S, "b")]),
        ([(1.0, 1.0, "a")], [(1.0 - POINT_WIDTH_S, 1.0, "a")]),
        # times past the audio end are clamped to it; times that go back are held
        ([(0.2, 0.6, "a"), (0.5, 3.0, "b")], [(0.2, 0.6, "a"), (0.6, 1.0, "b")]),
        ([(4.0, 5.0, "a"), (6.0, 7.0, "b")], [(1.0 - POINT_WIDTH_S, 1.0, "a b")]),
    ],
)
def test_word_intervals(words: list, expected: list) -> None:
    assert_intervals(word_intervals(words, duration_s=1.0), expected)


def assert_intervals(got: list, expected: list) -> None:
    """(start, end, label) lists equal: labels exactly, times to pytest.approx (which takes no nesting)."""
    assert [label for _, _, label in got] == [label for _, _, label in expected]
    assert [t for s, e, _ in got for t in (s, e)] == pytest.approx([t for s, e, _ in expected for t in (s, e)])


times = st.lists(st.integers(0, 1200), min_size=2, max_size=30).map(sorted)


@given(times)
def test_word_intervals_are_drawable_and_keep_every_word(ticks: list[int]) -> None:
    """Any monotone times -> positive, non-overlapping intervals in [0, duration] carrying all labels in order."""
    duration = 1.0
    ms = [t / 1000 for t in ticks[: len(ticks) // 2 * 2]]
    words = [(ms[i], ms[i + 1], f"w{i // 2}") for i in range(0, len(ms), 2)]
    intervals = word_intervals(words, duration)
    assert " ".join(label for _, _, label in intervals).split() == [w for _, _, w in words]
    for (s, e, _), nxt in zip(intervals, [*intervals[1:], None]):
        assert 0 <= s < e <= duration
        if nxt is not None:
            assert e <= nxt[0]


def test_textgrid_round_trip_and_real_praat(tmp_path: Path, read_with_praat) -> None:
    """praatio reads back the words; real Praat opens the file and sees both tiers over [0, duration]."""
    words = [(0.12, 0.48, "Hello,"), (0.48, 0.48, '"big"'), (0.48, 0.9, "world!"), (1.3, 2.2, "Über")]
    path = tmp_path / "a" / "utt.TextGrid"
    write_textgrid(path, words, 'Hello, "big" world! Über', 2.5)
    expected = [(0.12, 0.48, "Hello,"), (0.48, 0.9, '"big" world!'), (1.3, 2.2, "Über")]
    assert_intervals(read_words(path), expected)
    seen = read_with_praat([path])[str(path)]
    assert (seen["xmin"], seen["xmax"]) == (0.0, 2.5)
    assert seen["tiers"] == {"words": 6, "utterance": 1}  # 3 words + 3 gaps (start, middle, end)
    labelled = [iv for iv in seen["intervals"]["words"] if iv[2]]
    assert_intervals(labelled, expected)
    assert seen["intervals"]["utterance"] == [(0.0, 2.5, 'Hello, "big" world! Über')]
    assert not list(tmp_path.rglob("*.tmp"))


def test_textgrid_needs_a_positive_duration(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive duration"):
        write_textgrid(tmp_path / "x.TextGrid", [], "", 0.0)


def aligned(start: float, end: float, ticks: tuple[int, int], probs=(0.9, 0.8)) -> AlignedWord:
    return AlignedWord("w", start, end, probs[0], probs[1], ticks[0], ticks[1])


def test_word_rows_flags() -> None:
    """Clamping, repair and identical-time flags, planted: each row's flags are known exactly."""
    words = [Word("Hello", "Hello,", 0), Word("big", "big", 1), Word("world", "world!", 2), Word("x", "x", 3)]
    results = [
        aligned(0.08, 0.24, (1, 3)),  # clean: raw ticks are the times
        aligned(0.24, 0.24, (5, 3), (0.4, 0.7)),  # start repaired 0.4 -> 0.24; zero length
        aligned(0.24, 0.24, (3, 3)),  # identical to its neighbour, zero length, not repaired
        aligned(1.2, 2.0, (15, 25)),  # past the 1.5 s audio: clamped
    ]
    rows = word_rows("u1", "spk", "rec", words, results, duration_s=1.5, tick_ms=80)
    frame = words_frame(rows)
    assert frame.schema == pl.Schema(WORDS_SCHEMA)
    assert frame["word"].to_list() == ["Hello,", "big", "world!", "x"]
    assert frame["token"].to_list() == ["Hello", "big", "world", "x"]
    assert frame["word_index"].to_list() == [0, 1, 2, 3]
    assert frame["end_s"].to_list() == [0.24, 0.24, 0.24, 1.5]
    assert frame["probability"].to_list() == pytest.approx([0.8, 0.4, 0.8, 0.8])
    assert frame["repaired"].to_list() == [False, True, False, False]
    assert frame["zero_length"].to_list() == [False, True, True, False]
    assert frame["identical_run"].to_list() == [False, True, True, False]
    assert frame["beyond_end"].to_list() == [False, False, False, True]
    with pytest.raises(ValueError, match="4 words but 3"):
        word_rows("u1", None, None, words, results[:3], 1.5, 80)


def test_parquet_round_trip_with_fixed_schemas(tmp_path: Path) -> None:
    words = words_frame(word_rows("u1", "s", "r", [Word("a", "A.", 0)], [aligned(0.0, 0.08, (0, 1))], 1.0, 80))
    utts = utterances_frame(
        [
            {"utt_id": "u1", "audio_path": "/a.flac", "offset_s": 0.0, "duration_s": 1.0, "sample_rate_hz": 16000,
             "channels": 1, "language": "English", "transcript": "A.", "n_words": 1, "status": "aligned"},
            {"utt_id": "u2", "audio_path": "/b.flac", "offset_s": 0.0, "language": "English", "transcript": "",
             "n_words": 0, "status": "failed", "failure_stage": "normalize", "error_type": "TranscriptError",
             "error_message": "transcript is empty"},
        ]
    )  # fmt: skip
    write_parquet(words, tmp_path / "w.parquet")
    write_parquet(utts, tmp_path / "u.parquet")
    assert_frame_equal(read_parquet([tmp_path / "w.parquet"], WORDS_SCHEMA), words)
    assert_frame_equal(read_parquet([tmp_path / "u.parquet"], UTTERANCES_SCHEMA), utts)
    assert read_parquet([], WORDS_SCHEMA).schema == pl.Schema(WORDS_SCHEMA)
    with pytest.raises(ValueError, match="expected schema"):
        read_parquet([tmp_path / "w.parquet"], UTTERANCES_SCHEMA)


def test_atomic_path_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_path(target, fsync=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
