"""The corpus runner in-process with the tiny checkpoint: no utterance lost, resume, crashes, shards.

Run: pytest tests/test_pipeline.py. The tiny model's times are random (mostly past the audio end, so
clamped); these tests check bookkeeping and invariants, never the times' values.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from run_checks import check_outputs

from corpus_aligner import pipeline
from corpus_aligner.api import Aligner
from corpus_aligner.config import AppConfig, BatchConfig, LibriSpeechConfig, ModelConfig, OutputConfig, ShardConfig
from corpus_aligner.errors import TooLongError
from corpus_aligner.outputs import OutputMismatchError
from corpus_aligner.testing import tiny_librispeech
from corpus_aligner.testing.tiny_corpus import write_tone

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"


def config(root: Path, out: Path, checkpoint: Path, max_utterances: int = 3, shard: tuple[int, int] = (0, 1)):
    return AppConfig(
        corpus=LibriSpeechConfig(root=str(root)),
        model=ModelConfig(path=str(checkpoint), dtype="float32"),
        batch=BatchConfig(budget_positions=4096, max_utterances=max_utterances),
        output=OutputConfig(dir=str(out), progress=False),
        shard=ShardConfig(index=shard[0], count=shard[1]),
    )


def tables(out: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.read_parquet(out / "words.parquet"), pl.read_parquet(out / "utterances.parquet")


def test_every_utterance_ends_once_at_its_expected_stage(
    tmp_path: Path, tiny_checkpoint_dir: Path, read_with_praat
) -> None:
    corpus = tiny_librispeech(tmp_path / "corpus", bad_cases=True)
    result = pipeline.run(config(corpus.root, tmp_path / "out", tiny_checkpoint_dir))
    words, _ = check_outputs(tmp_path / "out", corpus.expected, read_with_praat)
    assert (
        words.filter(pl.col("utt_id") == "100-2000-0000")["word"].to_list()
        == corpus.transcripts["100-2000-0000"].split()
    )
    n_failed = sum(v != "aligned" for v in corpus.expected.values())
    assert result.report["utterances"]["failed"] == n_failed
    assert (tmp_path / "out" / "textgrids" / "dev-bad" / "müller" / "7" / "müller-7-0000.TextGrid").is_file()


def test_broken_librispeech_tree_from_testdata(tmp_path: Path, tiny_checkpoint_dir: Path, read_with_praat) -> None:
    """Real defects: no trans.txt, a truncated FLAC (header fine, its last frame missing), a line without audio,
    an empty text, audio without a line; each fails at its stage with its own error type."""
    root = TESTDATA / "awkward/librispeech-broken/LibriSpeech"
    pipeline.run(config(root, tmp_path / "out", tiny_checkpoint_dir))
    expected = {
        "1988-24833-0000": "read", "1988-24833-0001": "read", "2412-153948-0000": "aligned",
        "2412-153948-0001": "aligned", "2412-153948-0002": "probe", "2412-153948-0003": "probe",
        "3752-4944-0000": "normalize", "3752-4944-0001": "read", "3752-4944-0002": "aligned",
    }  # fmt: skip
    _, utts = check_outputs(tmp_path / "out", expected, read_with_praat)
    types = dict(zip(utts["utt_id"], utts["error_type"]))
    assert {k: v for k, v in types.items() if v} == {
        "1988-24833-0000": "MissingTranscriptError", "1988-24833-0001": "MissingTranscriptError",
        "2412-153948-0002": "TruncatedAudioError", "2412-153948-0003": "MissingAudioError",
        "3752-4944-0000": "EmptyTranscriptError", "3752-4944-0001": "MissingTranscriptError",
    }  # fmt: skip
    truncated = utts.row(by_predicate=pl.col("utt_id") == "2412-153948-0002", named=True)
    assert "2412-153948-0002.flac: truncated" in truncated["error_message"]
    assert truncated["duration_s"] == pytest.approx(3.72)  # the header was read before the check failed


def test_rerun_adds_nothing(tmp_path: Path, tiny_checkpoint_dir: Path, read_with_praat) -> None:
    corpus = tiny_librispeech(tmp_path / "corpus", bad_cases=True)
    cfg = config(corpus.root, tmp_path / "out", tiny_checkpoint_dir)
    pipeline.run(cfg)
    first = tables(tmp_path / "out")
    parts = sorted((tmp_path / "out" / "parts").rglob("*.parquet"))
    again = pipeline.run(cfg)
    assert again.n_skipped == len(corpus.expected)
    assert again.report["this_run"]["utterances_processed"] == 0
    assert sorted((tmp_path / "out" / "parts").rglob("*.parquet")) == parts
    for before, after in zip(first, check_outputs(tmp_path / "out", corpus.expected, read_with_praat)):
        assert_frame_equal(before, after)


def test_crash_loses_at_most_the_batch_in_flight(
    tmp_path: Path, tiny_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch, read_with_praat
) -> None:
    """A crash in the 3rd batch keeps batches 1-2; the rerun aligns the rest and matches a clean run."""
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=3, utterances=2)
    pipeline.run(config(corpus.root, tmp_path / "clean", tiny_checkpoint_dir, max_utterances=1))

    calls = {"n": 0}
    real_align = pipeline.BatchRunner.align

    def crashing_align(self, ready, features):
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("simulated crash in batch 3")
        return real_align(self, ready, features)

    monkeypatch.setattr(pipeline.BatchRunner, "align", crashing_align)
    cfg = config(corpus.root, tmp_path / "out", tiny_checkpoint_dir, max_utterances=1)
    with pytest.raises(MemoryError):
        pipeline.run(cfg)
    shard = tmp_path / "out" / "parts" / "shard-000-of-001"
    assert len(list(shard.glob("utterances-*.parquet"))) == 2
    # A crash between the two writes of a batch leaves an orphan words part: it must not count.
    shutil.copy(shard / "words-000002.parquet", shard / "words-000003.parquet")
    monkeypatch.setattr(pipeline.BatchRunner, "align", real_align)
    result = pipeline.run(cfg)
    assert result.n_skipped == 2
    words_parts = sorted(p.name.removeprefix("words-") for p in shard.glob("words-*.parquet"))
    assert words_parts == sorted(p.name.removeprefix("utterances-") for p in shard.glob("utterances-*.parquet"))
    for clean, resumed in zip(tables(tmp_path / "clean"), tables(tmp_path / "out")):
        assert_frame_equal(clean, resumed)
    check_outputs(tmp_path / "out", corpus.expected, read_with_praat)


def test_shards_partition_the_corpus_and_merge(tmp_path: Path, tiny_checkpoint_dir: Path, read_with_praat) -> None:
    """Two shards into one folder = one unsharded run (results do not depend on batch composition)."""
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=3, utterances=3, bad_cases=True)
    pipeline.run(config(corpus.root, tmp_path / "whole", tiny_checkpoint_dir))
    sizes = []
    for index in (0, 1):
        result = pipeline.run(config(corpus.root, tmp_path / "out", tiny_checkpoint_dir, 2, (index, 2)))
        sizes.append(result.report["this_run"]["utterances_processed"])
    assert sum(sizes) == len(corpus.expected) and min(sizes) > 0
    assert sorted(p.name for p in (tmp_path / "out" / "parts").iterdir() if p.is_dir()) == [
        "shard-000-of-002",
        "shard-001-of-002",
    ]
    assert (tmp_path / "out" / "run-shard-001-of-002.json").is_file()
    # Times to the ms (a 1 ms difference is 10x atol); probabilities to float32 rounding of other batch mates,
    # as test_api's batch invariance.
    for whole, sharded in zip(tables(tmp_path / "whole"), tables(tmp_path / "out")):
        a, b = whole.drop("textgrid", strict=False), sharded.drop("textgrid", strict=False)
        assert_frame_equal(a, b, rtol=0, atol=1e-4)
    check_outputs(tmp_path / "out", corpus.expected, read_with_praat)


def test_output_folder_of_another_corpus_is_refused(tmp_path: Path, tiny_checkpoint_dir: Path, read_with_praat) -> None:
    first = tiny_librispeech(tmp_path / "a", speakers=1, utterances=1)
    second = tiny_librispeech(tmp_path / "b", speakers=1, utterances=1, seed=1)
    pipeline.run(config(first.root, tmp_path / "out", tiny_checkpoint_dir))
    check_outputs(tmp_path / "out", first.expected, read_with_praat)
    with pytest.raises(OutputMismatchError, match=r"another corpus, model or settings \(corpus\.root: "):
        pipeline.run(config(second.root, tmp_path / "out", tiny_checkpoint_dir))
    check_outputs(tmp_path / "out", first.expected, read_with_praat)  # untouched


def test_a_failing_batch_is_retried_item_by_item(
    tmp_path: Path, tiny_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch, read_with_praat
) -> None:
    """An AlignerError from the model fails only the utterance that causes it, not its batch mates."""
    folder = tmp_path / "corpus" / "dev" / "1" / "1"
    for i in range(3):
        write_tone(folder / f"1-1-{i:04d}.flac", 1.0 + i / 10)
    (folder / "1-1.trans.txt").write_text("1-1-0000 HELLO THERE\n1-1-0001 POISON PILL\n1-1-0002 FINE WORDS\n")
    real = Aligner.align_features

    def picky(self, features, words):
        if any("POISON" in w for w in words):
            raise TooLongError("simulated: the model refused this utterance")
        return real(self, features, words)

    monkeypatch.setattr(Aligner, "align_features", picky)
    pipeline.run(config(tmp_path / "corpus", tmp_path / "out", tiny_checkpoint_dir))
    expected = {"1-1-0000": "aligned", "1-1-0001": "align", "1-1-0002": "aligned"}
    _, utts = check_outputs(tmp_path / "out", expected, read_with_praat)
    assert utts.filter(pl.col("utt_id") == "1-1-0001")["error_message"].to_list() == [
        "simulated: the model refused this utterance"
    ]


def test_progress_is_quiet_off_a_terminal() -> None:
    """Under pytest stderr is not a terminal: the bar stays silent even when enabled."""
    assert pipeline.progress_bar(3600.0, enabled=True).disable
    assert pipeline.progress_bar(3600.0, enabled=False).disable


def test_loader_writer_and_model_lanes_change_nothing(
    tmp_path: Path, tiny_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefetch off, one model lane (the CPU default) and the GPU's arrangement (utterances checked and
    batches loaded ahead in pieces by spawned processes, two batches aligning at once on their own MLX
    streams, written by two spawned processes) write the same tables and TextGrids, failed rows included."""
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=3, utterances=3, bad_cases=True)
    plain = config(corpus.root, tmp_path / "plain", tiny_checkpoint_dir, max_utterances=2)
    plain = replace(plain, batch=replace(plain.batch, prefetch_batches=0))
    pipeline.run(plain)
    monkeypatch.setattr("corpus_aligner.api.default_workers", lambda device: 2)
    monkeypatch.setattr(pipeline, "PREPARE_PIECE", 4)  # the checks of `prepare` in several loader tasks
    lanes = config(corpus.root, tmp_path / "lanes", tiny_checkpoint_dir, max_utterances=2)
    arrangement = dict(prefetch_batches=3, loader_threads=3, loader_processes=True, writer_processes=2)
    lanes = replace(lanes, batch=replace(lanes.batch, **arrangement))
    result = pipeline.run(lanes)
    assert result.report["utterances"]["aligned"] == sum(v == "aligned" for v in corpus.expected.values())
    assert len(list((tmp_path / "lanes" / "parts").rglob("utterances-*.parquet"))) > 3
    for a, b in zip(tables(tmp_path / "plain"), tables(tmp_path / "lanes")):
        assert_frame_equal(a, b)
    grids = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*.TextGrid"))
    assert grids and grids == sorted(
        p.relative_to(tmp_path / "lanes") for p in (tmp_path / "lanes").rglob("*.TextGrid")
    )
    for g in grids:
        assert (tmp_path / "plain" / g).read_bytes() == (tmp_path / "lanes" / g).read_bytes()


def test_gpu_lanes_start_after_one_lane_has_built_the_kernels(
    tmp_path: Path, tiny_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two model lanes on a GPU, one lane runs `Aligner.warm_up` while the corpus is prepared and the batch
    passes start only after it; run.json gives its time."""
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=2, utterances=3)
    monkeypatch.setattr("corpus_aligner.api.default_workers", lambda device: 2)
    init, run = Aligner.__init__, Aligner.run_batch

    def on_gpu(self: Aligner, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        self.device = "gpu"  # what the runner does on a GPU, run on this CPU

    passes: list[bool] = []

    def record(self: Aligner, inputs):
        passes.append(inputs.words == [["warm", "up"]])
        return run(self, inputs)

    monkeypatch.setattr(Aligner, "__init__", on_gpu)
    monkeypatch.setattr(Aligner, "run_batch", record)
    result = pipeline.run(config(corpus.root, tmp_path / "out", tiny_checkpoint_dir, max_utterances=2))
    assert result.report["utterances"]["aligned"] == 6
    assert passes[:2] == [True, True] and not any(passes[2:]) and len(passes) >= 5
    timings = json.loads((tmp_path / "out" / "run.json").read_text())["timings_s"]
    assert timings["warm_up"] > 0 and timings["warm_up_wait"] >= 0


def test_model_processes_change_nothing(
    tmp_path: Path, tiny_checkpoint_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The passes in two spawned model processes (`batch.model_processes`) write the same tables and
    TextGrids as in this process, failed rows included; this process then runs no pass itself."""
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=3, utterances=3, bad_cases=True)
    pipeline.run(config(corpus.root, tmp_path / "here", tiny_checkpoint_dir, max_utterances=2))

    def no_pass_here(*_: object) -> None:
        raise RuntimeError("a pass ran in the parent process")

    monkeypatch.setattr(Aligner, "run_batch", no_pass_here)  # the spawned processes import a clean copy
    there = config(corpus.root, tmp_path / "there", tiny_checkpoint_dir, max_utterances=2)
    pipeline.run(replace(there, batch=replace(there.batch, model_processes=2)))
    for a, b in zip(tables(tmp_path / "here"), tables(tmp_path / "there")):
        assert_frame_equal(a, b)
    grids = sorted(p.relative_to(tmp_path / "here") for p in (tmp_path / "here").rglob("*.TextGrid"))
    assert grids
    for g in grids:
        assert (tmp_path / "here" / g).read_bytes() == (tmp_path / "there" / g).read_bytes()
