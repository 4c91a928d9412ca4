"""End to end: `python -m corpus_aligner` as a subprocess with hydra.run.dir=<tmp> (pytest tests/test_cli.py).

Every TextGrid written here is opened by real Praat and by praatio; the Parquet is read back with
polars against the documented schemas.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
from run_checks import check_outputs

from corpus_aligner.testing import tiny_librispeech, tiny_manifest

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IDS = {
    "1988-24833-0000", "1988-24833-0002", "26-496-0006", "26-496-0026",
    "3752-4944-0000", "3752-4944-0002", "61-70968-0000",
}  # fmt: skip


def run_cli(run_dir: Path, *overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "corpus_aligner", f"hydra.run.dir={run_dir}", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_the_config_groups() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "corpus_aligner", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for line in ["corpus: ", "model: ", "batch: base_batch, cpu, gpu", "output: "]:
        assert line in done.stdout
    for option in ["librispeech", "manifest", "qwen3_forced_aligner_4bit", "qwen3_forced_aligner,", "tiny"]:
        assert option in done.stdout


def test_main_job_on_the_shipped_sample_and_rerun(tmp_path: Path, tiny_checkpoint_dir: Path, read_with_praat) -> None:
    run_dir = tmp_path / "run"
    args = ("corpus=librispeech", "model=tiny", f"model.path={tiny_checkpoint_dir}")
    done = run_cli(run_dir, *args)
    assert done.returncode == 0, done.stderr
    assert "RANDOM weights" in done.stderr and "MEANINGLESS" in done.stderr
    assert "utterances: 7 (7 aligned, 0 failed)" in done.stdout
    words, utts = check_outputs(run_dir, dict.fromkeys(SAMPLE_IDS, "aligned"), read_with_praat)
    assert utts["part"].unique().sort().to_list() == ["dev-clean-2", "test-clean", "train-clean-100"]
    assert (run_dir / "textgrids/test-clean/61/70968/61-70968-0000.TextGrid").is_file()
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "finished" and run["model"]["fingerprint"].startswith("sha256:")
    assert run["model"]["source"] == str(tiny_checkpoint_dir) and run["config"]["model"]["random_tiny"]
    assert {"mlx", "polars", "praatio", "corpus-aligner"} <= set(run["versions"])
    assert run["cpu_matmul"] == {"precision": "float32", "library": "openblas"}  # conftest pins float32
    assert run["timings_s"]["total"] > 0 and run["this_run"]["audio_s_processed"] > 20
    report = json.loads((run_dir / "report.json").read_text())
    assert report["utterances"]["aligned"] == 7 and report["words"]["total"] == words.height
    assert (run_dir / "report.txt").read_text().startswith("utterances: 7")

    parts = sorted((run_dir / "parts").rglob("*.parquet"))
    again = run_cli(run_dir, *args)
    assert again.returncode == 0, again.stderr
    assert "this run: 0 utterances" in again.stdout
    assert pl.read_parquet(run_dir / "words.parquet").equals(words)
    assert pl.read_parquet(run_dir / "utterances.parquet").equals(utts)
    assert sorted((run_dir / "parts").rglob("*.parquet")) == parts  # the rerun wrote no new part


def test_tiny_corpus_with_bad_cases_and_generated_checkpoint(tmp_path: Path, read_with_praat) -> None:
    """model=tiny alone generates its checkpoint; bad inputs end as failed rows and the run exits 0."""
    corpus = tiny_librispeech(tmp_path / "corpus", bad_cases=True)
    run_dir = tmp_path / "run"
    done = run_cli(run_dir, f"corpus.root={corpus.root}", "model=tiny", "batch.max_utterances=2")
    assert done.returncode == 0, done.stderr
    assert (run_dir / "tiny-checkpoint" / "config.json").is_file()
    check_outputs(run_dir, corpus.expected, read_with_praat)


def test_manifest_corpus(tmp_path: Path, tiny_checkpoint_dir: Path, read_with_praat) -> None:
    corpus = tiny_manifest(tmp_path / "data", format="tsv", bad_cases=True)
    run_dir = tmp_path / "run"
    done = run_cli(run_dir, "corpus=manifest", f"corpus.path={corpus.root}", f"model.path={tiny_checkpoint_dir}")
    assert done.returncode == 0, done.stderr
    words, utts = check_outputs(run_dir, corpus.expected, read_with_praat)
    assert words.filter(pl.col("utt_id") == "a")["word"].to_list() == ["Hello,", "world!", "It's", "here."]
    assert words.filter(pl.col("utt_id") == "a")["token"].to_list() == ["Hello", "world", "It's", "here"]
    assert (run_dir / "textgrids/audio/sub/utt-b.TextGrid").is_file()
    segment = utts.row(by_predicate=pl.col("utt_id") == "long-00001700", named=True)
    assert (segment["offset_s"], segment["duration_s"]) == (1.7, 1.2)


def test_no_weights_is_a_clear_error(tmp_path: Path) -> None:
    """No network: the error names the repo id and how to pass a local folder; nothing random is used."""
    done = run_cli(tmp_path / "run", "model.path=someone/missing-aligner", env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    assert "someone/missing-aligner" in done.stderr and "model.path=DIR" in done.stderr
    assert not (tmp_path / "run" / "words.parquet").exists()
    done = run_cli(tmp_path / "run", f"model.path={tmp_path / 'nowhere' / 'model'}")
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_unreadable_corpus_is_a_clear_error(tmp_path: Path) -> None:
    done = run_cli(tmp_path / "run", f"corpus.root={tmp_path / 'nope'}", "model=tiny")
    assert done.returncode == 2
    assert f"LibriSpeech root {tmp_path / 'nope'} does not exist" in done.stderr


def test_config_errors_exit_2_with_the_key(tmp_path: Path) -> None:
    done = run_cli(tmp_path / "run", "corpus=manifest")
    assert done.returncode == 2 and "corpus.path" in done.stderr


def test_shards_through_a_hydra_multirun(tmp_path: Path, tiny_checkpoint_dir: Path, read_with_praat) -> None:
    """`--multirun shard.index=range(2)`: the same command as two shards into one output folder."""
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=2, utterances=3, bad_cases=True)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "corpus_aligner", "--multirun", f"hydra.sweep.dir={tmp_path / 'sweep'}",
         f"corpus.root={corpus.root}", f"model.path={tiny_checkpoint_dir}", f"output.dir={out}",
         "shard.count=2", "shard.index=range(2)"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("run-shard-*.json")) == [
        "run-shard-000-of-002.json",
        "run-shard-001-of-002.json",
    ]
    shares = [json.loads(p.read_text())["utterances_in_shard"] for p in sorted(out.glob("run-shard-*.json"))]
    assert sum(shares) == len(corpus.expected) and min(shares) > 0
    check_outputs(out, corpus.expected, read_with_praat)


def test_validate_mode_checks_the_corpus_without_weights(tmp_path: Path) -> None:
    """`mode=validate` needs no model (none can be downloaded here): it exits 0 and lists every problem the
    run would meet before the model, at the same stages."""
    corpus = tiny_librispeech(tmp_path / "corpus", bad_cases=True)
    run_dir = tmp_path / "run"
    done = run_cli(run_dir, "mode=validate", f"corpus.root={corpus.root}", "model.path=someone/missing-aligner",
                   env={"HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    n_bad = sum(v != "aligned" for v in corpus.expected.values())
    assert (
        f"validated {len(corpus.expected)} utterances: {len(corpus.expected) - n_bad} valid, {n_bad} would fail"
        in done.stdout
    )
    assert "    900-1-0004 [load] SilentAudioError:" in done.stdout
    table = pl.read_parquet(run_dir / "validation.parquet")
    assert dict(zip(table["utt_id"], table["failure_stage"].fill_null("aligned"))) == corpus.expected
    assert not (run_dir / "words.parquet").exists() and not (run_dir / "parts").exists()
    assert json.loads((run_dir / "validation.json").read_text())["failed"] == n_bad
