"""The checks every test run of the corpus job must pass, shared by test_pipeline.py and test_cli.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
from praatio import textgrid

from corpus_aligner.normalize import split_transcript
from corpus_aligner.writers.parquet import UTTERANCES_SCHEMA, WORDS_SCHEMA


def check_outputs(
    run_dir: Path, expected: dict[str, str], read_with_praat: Callable
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The issue's proof, for one output folder:

    - both tables have the documented schemas; every input utterance appears exactly once, aligned or
      failed at its expected stage (`expected`: utt_id -> "aligned" | stage), failures with type and message;
    - word rows are the transcript's words in order (original text and model token), times
      non-decreasing and within [0, duration];
    - every TextGrid opens in real Praat and in praatio: tiers `words` and `utterance`, xmax = duration,
      the same interval count, the words in order as labels, the transcript on the utterance tier.
    """
    words = pl.read_parquet(run_dir / "words.parquet")
    utts = pl.read_parquet(run_dir / "utterances.parquet")
    assert dict(words.schema) == WORDS_SCHEMA and dict(utts.schema) == UTTERANCES_SCHEMA
    assert sorted(utts["utt_id"].to_list()) == sorted(expected)
    assert words.select("utt_id", "word_index").is_duplicated().sum() == 0
    aligned = utts.filter(pl.col("status") == "aligned")
    grids = [run_dir / p for p in aligned["textgrid"].to_list()]
    seen_by_praat = read_with_praat(grids)
    for row in utts.iter_rows(named=True):
        assert (row["failure_stage"] or "aligned") == expected[row["utt_id"]], row
        mine = words.filter(pl.col("utt_id") == row["utt_id"]).sort("word_index")
        assert mine.height == row["n_words"]
        if row["status"] == "failed":
            assert row["error_type"] and row["error_message"] and mine.height == 0 and row["textgrid"] is None
            continue
        original = split_transcript(row["transcript"], row["language"])
        assert mine["word"].to_list() == [w.original for w in original]
        assert mine["token"].to_list() == [w.token for w in original]
        assert mine["word_index"].to_list() == list(range(mine.height))
        times = [t for pair in zip(mine["start_s"], mine["end_s"]) for t in pair]
        assert times == sorted(times) and times[0] >= 0 and times[-1] <= row["duration_s"]
        grid = run_dir / row["textgrid"]
        praat = seen_by_praat[str(grid)]
        tg = textgrid.openTextgrid(str(grid), includeEmptyIntervals=True)
        assert list(praat["tiers"]) == list(tg.tierNames) == ["words", "utterance"]
        assert praat["xmax"] == round(row["duration_s"], 6) and tg.maxTimestamp == row["duration_s"]
        assert praat["tiers"]["words"] == len(tg.getTier("words").entries)
        labels = " ".join(iv[2] for iv in praat["intervals"]["words"] if iv[2])
        assert labels.split() == " ".join(mine["word"]).split()
        assert praat["intervals"]["utterance"] == [(0.0, round(row["duration_s"], 6), row["transcript"])]
    return words, utts
