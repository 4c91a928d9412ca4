"""Long recordings through the corpus job (pytest tests/test_pipeline_long.py).

With the tiny random model the times mean nothing: these tests check the mechanics (windows, every word
once, monotone times in [0, duration], valid TextGrids, flags) on the real 5.8-min chapter and on a
recording over the model's 400 s; a planted model checks that the pipeline stitches the right times.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from planted import LONG_DURATION_S, LONG_FLAC, TICK_S, PlantedAligner, chapter_truth
from run_checks import check_outputs

from corpus_aligner import pipeline
from corpus_aligner.api import Aligner
from corpus_aligner.audio import load_audio
from corpus_aligner.config import (
    AlignConfig,
    AppConfig,
    BatchConfig,
    LibriSpeechConfig,
    LongformConfig,
    ManifestConfig,
    ModelConfig,
    OutputConfig,
)
from corpus_aligner.errors import AudioError
from corpus_aligner.frontend import log_mel
from corpus_aligner.longform import align_windows, recover_tail
from corpus_aligner.normalize import split_transcript
from corpus_aligner.quality import collapsed_tail
from corpus_aligner.records import PlacedWord
from corpus_aligner.testing import tiny_librispeech

CHAPTER_TEXT = (LONG_FLAC.parent / "26-496_chapter_concat.txt").read_text(encoding="utf-8").strip()


def manifest(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config(corpus, out: Path, checkpoint: Path, **align) -> AppConfig:
    return AppConfig(
        corpus=corpus,
        model=ModelConfig(path=str(checkpoint), dtype="float32"),
        batch=BatchConfig(budget_positions=4096, max_utterances=4),
        output=OutputConfig(dir=str(out), progress=False),
        align=AlignConfig(**align),
    )


def test_a_recording_over_400_s_with_the_tiny_model(tmp_path: Path, tiny_checkpoint_dir: Path, read_with_praat) -> None:
    """403 s of real speech (the chapter, then its first 57.5 s again), beyond the model's 400 s of classes
    (it used to fail with TooLongError), aligns window by window next to a short utterance, in one run."""
    truth = chapter_truth()
    wave, rate = sf.read(LONG_FLAC, dtype="int16")
    _, _, cut_s, _, cut_word = truth.utterances[3]
    longer = tmp_path / "data" / "longer.flac"
    longer.parent.mkdir(parents=True)
    sf.write(longer, np.concatenate([wave, wave[: round(cut_s * rate)]]), rate)
    text = " ".join(truth.words + truth.words[:cut_word])
    rows = [
        {"audio_filepath": str(longer), "text": text, "utt_id": "longer"},
        {"audio_filepath": str(LONG_FLAC), "text": "IT WAS NOW MID JULY", "duration": 2.5, "utt_id": "short"},
    ]
    corpus = ManifestConfig(path=str(manifest(tmp_path / "data", rows)))
    result = pipeline.run(config(corpus, tmp_path / "out", tiny_checkpoint_dir))
    words, utts = check_outputs(tmp_path / "out", {"longer": "aligned", "short": "aligned"}, read_with_praat)
    by_id = {r["utt_id"]: r for r in utts.iter_rows(named=True)}
    assert by_id["longer"]["duration_s"] == pytest.approx(LONG_DURATION_S + cut_s) and LONG_DURATION_S + cut_s > 400
    assert by_id["longer"]["n_words"] == len(truth.words) + cut_word
    # Windows of at most 60 s, advancing at most 45 s each: at least 9 passes for 403 s.
    assert by_id["longer"]["windows"] >= 9
    assert by_id["short"]["windows"] in (1, 2, 3)
    assert (words["window_start_s"] <= words["start_s"]).all()
    assert result.report["quality"]["utterances_with_several_passes"] >= 1


def test_long_recording_stitches_the_planted_times(
    tmp_path: Path, tiny_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch, read_with_praat
) -> None:
    """With a model that answers the chapter's true times, words.parquet holds them (within one 80 ms class)
    and each word lies inside its reference utterance; the TextGrid opens in Praat."""
    truth = chapter_truth()
    planted = PlantedAligner(truth)
    monkeypatch.setattr(pipeline, "window_aligner", lambda aligner, wave: planted)
    rows = [{"audio_filepath": str(LONG_FLAC), "text": CHAPTER_TEXT, "utt_id": "chapter"}]
    corpus = ManifestConfig(path=str(manifest(tmp_path / "data", rows)))
    pipeline.run(config(corpus, tmp_path / "out", tiny_checkpoint_dir))
    words, utts = check_outputs(tmp_path / "out", {"chapter": "aligned"}, read_with_praat)
    assert words["word"].to_list() == truth.words
    starts = np.array(words["start_s"].to_list())
    assert np.abs(starts - np.array([s for s, _ in truth.times])).max() <= TICK_S / 2 + 1e-3
    assert utts["windows"].to_list() == [8] and utts["collapsed_tail_words"].to_list() == [0]
    assert words["collapsed_tail"].sum() == 0 and words["beyond_end"].sum() == 0
    assert words["window"].n_unique() == 8


def test_threshold_and_window_come_from_the_config(
    tmp_path: Path, tiny_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """align.long.* reach the windowing: the pipeline makes exactly the passes longform.align_windows plans
    with those rules; above align.long.threshold_s=400 the chapter is one pass."""
    truth = chapter_truth()
    rules = LongformConfig(window_s=30.0, tail_s=8.0, backoff_words=2)
    expected = align_windows(PlantedAligner(truth), truth.words, LONG_DURATION_S, rules, 0.1, TICK_S)
    monkeypatch.setattr(pipeline, "window_aligner", lambda aligner, wave: PlantedAligner(truth))
    rows = [{"audio_filepath": str(LONG_FLAC), "text": CHAPTER_TEXT, "utt_id": "chapter"}]
    corpus = ManifestConfig(path=str(manifest(tmp_path / "data", rows)))
    pipeline.run(config(corpus, tmp_path / "a", tiny_checkpoint_dir, long=rules))
    utts = pl.read_parquet(tmp_path / "a" / "utterances.parquet")
    assert utts["windows"].to_list() == [expected.windows] and expected.windows > 8
    words = pl.read_parquet(tmp_path / "a" / "words.parquet")
    assert words["start_s"].to_list() == [p.start_s for p in expected.placed]
    # 130 s: windowed by default (threshold 120 s), one pass with threshold 400 s (the tiny model this time).
    rows = [{"audio_filepath": str(LONG_FLAC), "text": CHAPTER_TEXT[:1500], "duration": 130.0, "utt_id": "part"}]
    corpus = ManifestConfig(path=str(manifest(tmp_path / "data2", rows)))
    single = LongformConfig(threshold_s=400.0, recover_collapse=False)
    monkeypatch.undo()
    pipeline.run(config(corpus, tmp_path / "b", tiny_checkpoint_dir, long=single))
    assert pl.read_parquet(tmp_path / "b" / "utterances.parquet")["windows"].to_list() == [1]
    pipeline.run(config(corpus, tmp_path / "c", tiny_checkpoint_dir, long=LongformConfig(recover_collapse=False)))
    assert pl.read_parquet(tmp_path / "c" / "utterances.parquet")["windows"].to_list()[0] >= 2


def test_windowing_never_changes_a_normal_utterance(tmp_path: Path, tiny_checkpoint_dir: Path) -> None:
    """An utterance below the threshold is one batched pass; its words equal a direct Aligner.align_features
    call, unless that call left a collapsed tail which a recovery pass shortened (then windows > 1)."""
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=3, utterances=4, seed=3)
    pipeline.run(config(LibriSpeechConfig(root=str(corpus.root)), tmp_path / "out", tiny_checkpoint_dir))
    words = pl.read_parquet(tmp_path / "out" / "words.parquet")
    utts = pl.read_parquet(tmp_path / "out" / "utterances.parquet")
    aligner = Aligner.from_pretrained(tiny_checkpoint_dir, dtype="float32")
    for row in utts.iter_rows(named=True):
        tokens = [w.token for w in split_transcript(row["transcript"], "English")]
        direct = aligner.align_features([log_mel(load_audio(row["audio_path"]))], [tokens])[0]
        duration = row["duration_s"]
        spans = [(min(a.start_s, duration), min(a.end_s, duration)) for a in direct]
        mine = words.filter(pl.col("utt_id") == row["utt_id"]).sort("word_index")
        if row["windows"] == 1:
            assert list(zip(mine["start_s"], mine["end_s"])) == spans, row["utt_id"]
            assert mine["probability"].to_list() == pytest.approx([a.probability for a in direct], rel=1e-3)
        else:
            assert collapsed_tail(spans, 4) > row["collapsed_tail_words"]
    assert utts["windows"].to_list().count(1) >= 1


def collapsing(real):
    """The tiny model's times mostly lie beyond the audio, so this planted pass spreads the words evenly over
    its audio and, on passes over 1.1 s, collapses the last two onto one time (probabilities stay the model's)."""

    def align_features(self, features, words):
        out = real(self, features, words)
        for f, r in zip(features, out):
            step = f.shape[0] / 100 / (len(r) + 1)
            r[:] = [replace(a, start_s=round(i * step, 3), end_s=round((i + 1) * step, 3)) for i, a in enumerate(r)]
            if f.shape[0] >= 110 and len(r) >= 3:
                r[-2:] = [replace(a, start_s=r[-2].start_s, end_s=r[-2].end_s) for a in r[-2:]]
        return out

    return align_features


@pytest.mark.parametrize("processes", [False, True])
def test_batched_tail_recovery_equals_one_utterance_at_a_time(
    tmp_path: Path, tiny_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch, processes: bool
) -> None:
    """The pipeline re-aligns collapsed tails of a whole batch together, round by round; every utterance
    ends with exactly the words, times and pass count of longform.recover_tail run on it alone."""
    monkeypatch.setattr(Aligner, "align_features", collapsing(Aligner.align_features))
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=3, utterances=4, seed=3)
    rules = LongformConfig(collapse_min_words=2, backoff_words=0)
    cfg = config(LibriSpeechConfig(root=str(corpus.root)), tmp_path / "out", tiny_checkpoint_dir, long=rules)
    # Loader processes send no samples back: recovery decodes the file again.
    pipeline.run(replace(cfg, batch=replace(cfg.batch, loader_processes=processes)))
    words = pl.read_parquet(tmp_path / "out" / "words.parquet")
    utts = pl.read_parquet(tmp_path / "out" / "utterances.parquet")
    aligner = Aligner.from_pretrained(tiny_checkpoint_dir, dtype="float32")
    for row in utts.iter_rows(named=True):
        tokens = [w.token for w in split_transcript(row["transcript"], "English")]
        wave = load_audio(row["audio_path"])
        first = aligner.align_features([log_mel(wave)], [tokens])[0]
        placed = [PlacedWord(a, 0, 0.0, row["duration_s"]) for a in first]
        alone = recover_tail(
            placed, pipeline.window_aligner(aligner, wave), tokens, row["duration_s"], rules, 0.1, TICK_S
        )
        mine = words.filter(pl.col("utt_id") == row["utt_id"]).sort("word_index")
        assert list(zip(mine["start_s"], mine["end_s"])) == [(p.start_s, p.end_s) for p in alone.placed]
        assert row["windows"] == 1 + alone.windows
    assert (utts["windows"] > 1).sum() >= 2 and (utts["collapsed_tail_words"] == 0).sum() >= 1


def test_a_file_gone_before_its_recovery_fails_only_that_utterance(
    tmp_path: Path, tiny_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loader processes send no samples back, so a recovery pass decodes its file again; if that fails, the
    utterance fails at stage align with the reason, and the rest of the batch and the run go on."""
    monkeypatch.setattr(Aligner, "align_features", collapsing(Aligner.align_features))

    def gone(utt, probed):
        raise AudioError(f"{utt.audio_path}: vanished")

    monkeypatch.setattr(pipeline, "load_wave", gone)
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=3, utterances=4, seed=3)
    rules = LongformConfig(collapse_min_words=2, backoff_words=0)
    cfg = config(LibriSpeechConfig(root=str(corpus.root)), tmp_path / "out", tiny_checkpoint_dir, long=rules)
    result = pipeline.run(replace(cfg, batch=replace(cfg.batch, loader_processes=True)))
    utts = pl.read_parquet(tmp_path / "out" / "utterances.parquet")
    failed = utts.filter(pl.col("status") == "failed")
    assert failed.height >= 2 and utts.height == len(corpus.expected)
    assert set(failed["failure_stage"]) == {"align"} and all("vanished" in m for m in failed["error_message"])
    assert (utts.filter(pl.col("status") == "aligned")["windows"] == 1).all()
    assert result.report["utterances"]["aligned"] == utts.height - failed.height
