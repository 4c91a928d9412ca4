"""TextGrid and Parquet writers: round trips, real Praat, flags (pytest tests/test_writers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from corpus_aligner.normalize import Word
from corpus_aligner.quality import word_flags
from corpus_aligner.records import AlignedWord, PlacedWord
from corpus_aligner.writers import atomic_path, stale_temporaries
from corpus_aligner.writers.parquet import (
    UTTERANCES_SCHEMA,
    VALIDATION_SCHEMA,
    WORDS_SCHEMA,
    read_parquet,
    utterances_frame,
    validation_frame,
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


def placed_rows(words: list[Word], results: list[AlignedWord], duration_s: float, **kw) -> list[dict]:
    placed = [PlacedWord(a, 0, 0.0, duration_s) for a in results]
    flags = word_flags(placed, 0.08, kw.get("low", 0.5), kw.get("collapse", 4))
    return word_rows("u1", "spk", "rec", words, placed, flags)


def test_word_rows_flags() -> None:
    """Clamping, repair and identical-time flags, planted: each row's flags are known exactly."""
    words = [Word("Hello", "Hello,", 0), Word("big", "big", 1), Word("world", "world!", 2), Word("x", "x", 3)]
    results = [
        aligned(0.08, 0.24, (1, 3)),  # clean: raw ticks are the times
        aligned(0.24, 0.24, (5, 3), (0.4, 0.7)),  # start repaired 0.4 -> 0.24; zero length; low probability
        aligned(0.24, 0.24, (3, 3)),  # identical to its neighbour, zero length, not repaired
        aligned(1.2, 2.0, (15, 25)),  # past the 1.5 s audio: clamped
    ]
    frame = words_frame(placed_rows(words, results, 1.5))
    assert frame.schema == pl.Schema(WORDS_SCHEMA)
    assert frame["word"].to_list() == ["Hello,", "big", "world!", "x"]
    assert frame["token"].to_list() == ["Hello", "big", "world", "x"]
    assert frame["word_index"].to_list() == [0, 1, 2, 3]
    assert frame["end_s"].to_list() == [0.24, 0.24, 0.24, 1.5]
    assert frame["probability"].to_list() == pytest.approx([0.8, 0.4, 0.8, 0.8])
    assert frame["repaired"].to_list() == [False, True, False, False]
    assert frame["repair_shift_s"].to_list() == pytest.approx([0.0, 0.16, 0.0, 0.0])
    assert frame["zero_length"].to_list() == [False, True, True, False]
    assert frame["identical_run"].to_list() == [False, True, True, False]
    assert frame["beyond_end"].to_list() == [False, False, False, True]
    assert frame["low_probability"].to_list() == [False, True, False, False]
    assert frame["collapsed_tail"].to_list() == [False] * 4
    assert frame["flagged"].to_list() == [False, True, True, True]
    assert frame["window"].to_list() == [0] * 4
    placed = [PlacedWord(a, 0, 0.0, 1.5) for a in results]
    with pytest.raises(ValueError, match="4 words but 3 aligned words and 4 flags"):
        word_rows("u1", None, None, words, placed[:3], word_flags(placed, 0.08, 0.1, 4))


def test_collapsed_tail_flag_and_times_in_a_window() -> None:
    """A run of >= collapse_min_words identical spans at the end is a collapsed tail; a window's times are
    offset by its start, clamped to [floor, limit] and rounded to ms."""
    words = [Word(t, t, i) for i, t in enumerate("abcde")]
    results = [aligned(0.1, 0.2, (1, 2))] + [aligned(0.9, 0.9, (11, 11))] * 4
    frame = words_frame(placed_rows(words, results, 0.9, collapse=4))
    assert frame["collapsed_tail"].to_list() == [False, True, True, True, True]
    assert words_frame(placed_rows(words, results, 0.9, collapse=5))["collapsed_tail"].to_list() == [False] * 5
    word = PlacedWord(aligned(0.0004, 3.0, (0, 40)), window=2, offset_s=10.0004, limit_s=12.5, floor_s=10.5)
    assert (word.start_s, word.end_s, word.beyond_end) == (10.5, 12.5, True)


def test_parquet_round_trip_with_fixed_schemas(tmp_path: Path) -> None:
    words = words_frame(placed_rows([Word("a", "A.", 0)], [aligned(0.0, 0.08, (0, 1))], 1.0))
    utts = utterances_frame(
        [
            {"utt_id": "u1", "audio_path": "/a.flac", "offset_s": 0.0, "duration_s": 1.0, "sample_rate_hz": 16000,
             "channels": 1, "language": "English", "transcript": "A.", "n_words": 1, "status": "aligned",
             "windows": 1, "flagged_share": 0.0, "collapsed_tail_words": 0},
            {"utt_id": "u2", "audio_path": "/b.flac", "offset_s": 0.0, "language": "English", "transcript": "",
             "n_words": 0, "status": "failed", "failure_stage": "normalize", "error_type": "EmptyTranscriptError",
             "error_message": "transcript is empty", "warnings": "w", "windows": 0, "collapsed_tail_words": 0},
        ]
    )  # fmt: skip
    checks = validation_frame([{"utt_id": "u3", "status": "valid", "n_words": 3, "long": True}])
    write_parquet(words, tmp_path / "w.parquet")
    write_parquet(utts, tmp_path / "u.parquet")
    write_parquet(checks, tmp_path / "v.parquet")
    assert_frame_equal(read_parquet([tmp_path / "w.parquet"], WORDS_SCHEMA), words)
    assert_frame_equal(read_parquet([tmp_path / "u.parquet"], UTTERANCES_SCHEMA), utts)
    assert_frame_equal(read_parquet([tmp_path / "v.parquet"], VALIDATION_SCHEMA), checks)
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


def test_stale_temporaries_are_those_of_dead_writers(tmp_path: Path) -> None:
    """A writer killed mid-write leaves `.<name>.<host>-<pid>.tmp`; only dead pids of this host count."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with atomic_path(tmp_path / "sub" / "x.TextGrid") as tmp:
        live = tmp.name  # this process is alive
        host = tmp.name.split(".")[-2].rsplit("-", 1)[0]
        (tmp_path / "sub" / live).write_text("half")
        stale = tmp_path / "sub" / f".y.TextGrid.{host}-{int(dead.stdout)}.tmp"
        stale.write_text("half")
        (tmp_path / f".z.parquet.otherhost-{int(dead.stdout)}.tmp").write_text("?")
        (tmp_path / "words.parquet").write_text("done")
        assert stale_temporaries(tmp_path) == [stale]
    assert sorted(os.listdir(tmp_path / "sub")) == sorted([stale.name, "x.TextGrid"])
