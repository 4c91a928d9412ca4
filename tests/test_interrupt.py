"""Crashes, Ctrl-C and foreign output folders, with the CLI as a subprocess (pytest tests/test_interrupt.py).

The SIGKILL test kills a multi-batch run at seeded random points (after a random number of committed
batches plus a random delay, so kills land inside TextGrid and Parquet writes, between the two parts of
a batch, and in the final merge), restarts it each time, and compares the end with an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal
from run_checks import check_outputs

from corpus_aligner.testing import tiny_librispeech
from corpus_aligner.testing.tiny_checkpoint import tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


def command(out: Path, corpus: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "corpus_aligner", f"hydra.run.dir={out}", f"corpus.root={corpus}",
        f"model.path={checkpoint}", "batch.max_utterances=1", "output.progress=false", *extra,
    ]  # fmt: skip


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def committed(out: Path) -> int:
    return len(list((out / "parts").glob("shard-*/utterances-*.parquet"))) if (out / "parts").is_dir() else 0


def wait_for_parts(proc: subprocess.Popen, out: Path, n: int, timeout_s: float = 120.0) -> None:
    """Until `n` batches are committed (or the process ended)."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and committed(out) < n and time.monotonic() < deadline:
        time.sleep(0.002)


def leftovers(out: Path) -> list[Path]:
    """Half-written files: temporaries anywhere, or words parts without their utterances part."""
    temps = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    orphans = [
        p
        for p in out.glob("parts/*/words-*.parquet")
        if not p.with_name(p.name.replace("words-", "utterances-")).exists()
    ]
    return temps + orphans


def textgrids(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "textgrids").rglob("*.TextGrid"))}


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path: Path, read_with_praat) -> None:
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=4, utterances=6, bad_cases=True)
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", seed=0)
    clean = subprocess.run(command(tmp_path / "clean", corpus.root, checkpoint), cwd=REPO, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    n_parts = committed(tmp_path / "clean")
    assert n_parts > 20  # one part of failed rows + one per utterance

    rng = random.Random(20261124)
    out = tmp_path / "killed"
    kills = 0
    for target in sorted(rng.sample(range(n_parts + 1), 5)):
        proc = start(command(out, corpus.root, checkpoint))
        wait_for_parts(proc, out, target)
        time.sleep(rng.uniform(0.0, 0.03))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    assert kills >= 3
    done = subprocess.run(command(out, corpus.root, checkpoint), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    assert leftovers(out) == []
    words, utts = check_outputs(out, corpus.expected, read_with_praat)  # each utterance once; Praat reads all
    clean_words, clean_utts = (pl.read_parquet(tmp_path / "clean" / f) for f in ("words.parquet", "utterances.parquet"))
    assert_frame_equal(words.sort("utt_id", "word_index"), clean_words.sort("utt_id", "word_index"))
    assert_frame_equal(utts.sort("utt_id"), clean_utts.sort("utt_id"))
    assert textgrids(out) == textgrids(tmp_path / "clean")
    parts = pl.concat([pl.read_parquet(p, columns=["utt_id"]) for p in out.glob("parts/*/utterances-*.parquet")])
    assert parts["utt_id"].is_duplicated().sum() == 0  # no utterance was committed twice


def test_ctrl_c_stops_after_the_batch_in_flight_and_says_how_to_resume(tmp_path: Path, read_with_praat) -> None:
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=5, utterances=8)
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", seed=0)
    out = tmp_path / "out"
    cmd = command(out, corpus.root, checkpoint)
    proc = start(cmd)
    wait_for_parts(proc, out, 3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "SIGINT: stopping after the batch in flight" in stdout + stderr  # the log goes to stdout (Hydra)
    assert "run the same command again to resume:" in stderr
    assert f"corpus.root={corpus.root}" in stderr.splitlines()[-1]
    n = committed(out)
    assert 3 <= n < len(corpus.expected) + 1 and leftovers(out) == []
    partial = pl.read_parquet(out / "utterances.parquet")  # the tables hold what was done
    assert partial.height == n and f"interrupted: {n} of 40 utterances are done" in stderr
    assert '"status": "interrupted"' in (out / "run.json").read_text()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"this run: {40 - partial.height} utterances" in again.stdout
    check_outputs(out, corpus.expected, read_with_praat)


def test_other_model_or_settings_into_the_same_folder_are_refused(tmp_path: Path, read_with_praat) -> None:
    """Never mixed: another model, channel choice, window length or language into a finished folder exits 2
    with a one-line reason naming what differs, and leaves the folder as it was."""
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=1, utterances=2)
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", seed=0)
    other = tiny_checkpoint(tmp_path / "other", seed=1)
    out = tmp_path / "out"
    first = subprocess.run(command(out, corpus.root, checkpoint), cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    for extra, what in [
        ((f"model.path={other}",), "model: 'sha256:"),
        ((f"model.path={checkpoint}", "align.channel=0"), "align.channel: None -> 0"),
        ((f"model.path={checkpoint}", "align.long.window_s=30"), "align.long.window_s: 60.0 -> 30.0"),
        ((f"model.path={checkpoint}", "corpus.language=German"), "corpus.language: 'English' -> 'German'"),
    ]:
        cmd = [*command(out, corpus.root, checkpoint)[:-2], *extra]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if not line.startswith("WARNING")]
        assert len(lines) == 1 and lines[0].startswith("error: ") and what in lines[0], done.stderr
        assert "pass another output.dir=" in lines[0]
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before
    # Settings that do not change results may differ on a resume: batch size.
    cmd = [*command(out, corpus.root, checkpoint)[:-2], "batch.max_utterances=7"]
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).returncode == 0


def test_an_unwritable_output_folder_exits_2_with_one_line(tmp_path: Path) -> None:
    corpus = tiny_librispeech(tmp_path / "corpus", speakers=1, utterances=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cmd = [*command(tmp_path / "run", corpus.root, tmp_path / "ckpt"), "model=tiny", f"output.dir={blocker / 'out'}"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write to output.dir={blocker / 'out'}: ")
    assert not (tmp_path / "ckpt").exists()  # it stopped before loading (or generating) the model
    if os.geteuid() != 0:  # a read-only folder stops only non-root users
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cmd[-1] = f"output.dir={locked / 'out'}"
        assert subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300).returncode == 2
