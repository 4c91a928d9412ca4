"""Bad input never crashes a run and never disappears (pytest tests/test_robustness.py).

One manifest holds every case of the issue (awkward_cases.py): each utterance must end exactly once,
aligned, or failed at its stage with its error type, in utterances.parquet and in the report; validate
mode must find the same problems without the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from awkward_cases import DIGITS_WORDS, EXPECTED, awkward_manifest
from run_checks import check_outputs

from corpus_aligner import pipeline, session, validate
from corpus_aligner.api import Aligner
from corpus_aligner.audio import load_audio
from corpus_aligner.config import AlignConfig, AppConfig, BatchConfig, ManifestConfig, ModelConfig, OutputConfig
from corpus_aligner.frontend import log_mel

MESSAGES = {
    "missing-file": "nowhere.flac: file not found",
    "zero-bytes": "the file is empty (0 bytes)",
    "header-only": "no audio frames (a header only)",
    "bogus-chunk": "the WAV header is malformed",
    "m4a": "the content is MP4 audio, which soundfile (libsndfile) cannot decode: convert it to FLAC or WAV",
    "truncated-flac": "truncated: the header states 11.66 s but the last frame cannot be decoded",
    "truncated-wav": "truncated: the header promises 2.925 s (93594 bytes of samples) but the file ends after 1.249 s",
    "truncated-mp3": "truncated: the last MPEG frame (number 57) needs 30 more bytes than the file has",
    "absurd-rate": "sample rate of 1092676 Hz is implausible",
    "too-short": "50 ms of audio is shorter than one encoder step (80 ms)",
    "no-channel-1": "channel 1 requested but the file has 1 channel(s)",
    "nan": "1 non-finite sample(s) (NaN or inf)",
    "silence": "the audio is digital silence",
    "empty-text": "transcript is empty",
    "only-symbols": "no alignable words (only punctuation or symbols",
    "too-many-words": "12 words cannot fit 0.40 s of audio (5 slots of 80 ms)",
    "dup#2": "duplicate utterance id 'dup' (copy 2)",
    "latin1": "line 39 is not valid UTF-8 (byte 0xE9 at character",
    "bad-offset": "offset 5.0 s is beyond the end of",
}  # fmt: skip


def config(manifest: Path, out: Path, checkpoint: Path, mode: str = "align") -> AppConfig:
    return AppConfig(
        corpus=ManifestConfig(path=str(manifest)),
        model=ModelConfig(path=str(checkpoint), dtype="float32"),
        batch=BatchConfig(budget_positions=4096, max_utterances=4),
        output=OutputConfig(dir=str(out), progress=False),
        align=AlignConfig(),
        mode=mode,
    )


@pytest.fixture(scope="module")
def awkward_run(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint_dir: Path) -> tuple[Path, Path, dict]:
    """One run of the main job over the awkward corpus: (manifest, output folder, report)."""
    folder = tmp_path_factory.mktemp("awkward")
    manifest = awkward_manifest(folder / "data")
    result = pipeline.run(config(manifest, folder / "out", tiny_checkpoint_dir))
    return manifest, folder / "out", result.report


def test_every_case_ends_once_at_its_stage_with_its_type_and_reason(awkward_run, read_with_praat) -> None:
    _, out, report = awkward_run
    stages = {utt_id: stage for utt_id, (stage, _) in EXPECTED.items()}
    _, utts = check_outputs(out, stages, read_with_praat)
    got = {r["utt_id"]: (r["failure_stage"] or "aligned", r["error_type"]) for r in utts.iter_rows(named=True)}
    assert got == EXPECTED
    messages = dict(zip(utts["utt_id"], utts["error_message"]))
    for utt_id, part in MESSAGES.items():
        assert part in messages[utt_id], (utt_id, messages[utt_id])
    # The report names every failure: utterance, stage, reason.
    failures = {f["utt_id"]: f for f in report["utterances"]["failures"]}
    assert set(failures) == {k for k, (stage, _) in EXPECTED.items() if stage != "aligned"}
    assert failures["m4a"]["failure_stage"] == "probe" and failures["m4a"]["error_type"] == "UnsupportedAudioError"
    text = (out / "report.txt").read_text(encoding="utf-8")
    assert "    truncated-wav [probe] TruncatedAudioError: " in text
    assert "    latin1 [read] TranscriptEncodingError: line 39 is not valid UTF-8" in text


def test_formats_and_channels_are_described_as_read(awkward_run) -> None:
    """8-bit, 24-bit, float, 32-bit, MP3, Ogg/Vorbis, Opus, AIFF keep their rate and channel count in the row;
    the lying extension aligns by its content and says so in `warnings`."""
    _, out, _ = awkward_run
    utts = pl.read_parquet(out / "utterances.parquet")
    rows = {r["utt_id"]: r for r in utts.iter_rows(named=True)}
    assert (rows["pcm-u8"]["sample_rate_hz"], rows["mp3-48k"]["sample_rate_hz"]) == (44100, 48000)
    assert (rows["ogg-vorbis"]["sample_rate_hz"], rows["aiff"]["sample_rate_hz"]) == (22050, 44100)
    assert (rows["stereo-mean"]["channels"], rows["stereo-ch1"]["channels"]) == (2, 2)
    assert rows["extension-lies"]["warnings"] == "the extension .flac says FLAC but the content is MP3"
    assert utts.filter(pl.col("utt_id") != "extension-lies")["warnings"].null_count() == utts.height - 1


def test_digits_and_abbreviations_keep_the_official_tokens_and_the_original_words(awkward_run) -> None:
    """The official clean_token keeps digits and drops punctuation ("$5.50" -> "550", "i.e." -> "ie");
    words.parquet maps each token back to the text as written."""
    _, out, _ = awkward_run
    words = pl.read_parquet(out / "words.parquet")
    digits = words.filter(pl.col("utt_id") == "digits").sort("word_index")
    assert list(zip(digits["word"], digits["token"])) == DIGITS_WORDS
    lj = words.filter(pl.col("utt_id") == "lj-raw").sort("word_index")
    pairs = list(zip(lj["word"], lj["token"]))
    assert pairs[-7:] == [("or", "or"), ('"forty-two', "fortytwo"), ("line", "line"), ('Bible"', "Bible"),
                          ("of", "of"), ("about", "about"), ("1455,", "1455")]  # fmt: skip
    assert pairs[6:8] == [("types,", "types"), ("the", "the")]


def test_a_configured_channel_is_the_one_aligned(awkward_run, tiny_checkpoint_dir: Path) -> None:
    """`channel: 1` aligns exactly what Aligner.align_features gives for that channel alone (not the mean)."""
    _, out, _ = awkward_run
    words = pl.read_parquet(out / "words.parquet")
    path = Path(__file__).resolve().parents[2] / "shared/testdata/awkward/stereo/stereo_diarization.wav"
    aligner = Aligner.from_pretrained(tiny_checkpoint_dir, dtype="float32")
    tokens = ["The", "horizon", "seems", "extremely", "distant"]
    for channel in (1, None):
        direct = aligner.align_features([log_mel(load_audio(path, channel=channel))], [tokens])[0]
        mine = words.filter(pl.col("utt_id") == "stereo-ch1").sort("word_index")
        same = mine["probability"].to_list() == pytest.approx([a.probability for a in direct], rel=1e-3)
        assert same == (channel == 1)
    assert not np.array_equal(load_audio(path, channel=1), load_audio(path))


def test_validate_finds_every_problem_without_the_model(awkward_run, tmp_path: Path, monkeypatch) -> None:
    """mode=validate reports exactly the failures the run met before the model, and marks the rest valid."""
    manifest, out, _ = awkward_run

    def no_model(*args, **kwargs):
        raise AssertionError("validate must not load the model")

    monkeypatch.setattr(session, "load_aligner", no_model)
    monkeypatch.setattr(Aligner, "from_pretrained", no_model)
    result = validate.run(config(manifest, tmp_path / "v", Path("/nonexistent"), mode="validate"))
    checked = pl.read_parquet(tmp_path / "v" / "validation.parquet")
    aligned = pl.read_parquet(out / "utterances.parquet")
    joined = checked.join(aligned, on="utt_id", suffix="_run")
    assert joined.height == len(EXPECTED) == checked.height
    for row in joined.iter_rows(named=True):
        assert (row["failure_stage"], row["error_type"]) == (row["failure_stage_run"], row["error_type_run"])
        assert row["status"] == ("valid" if row["status_run"] == "aligned" else "failed")
        assert row["error_message"] == row["error_message_run"]
    assert result.summary["failed"] == sum(stage != "aligned" for stage, _ in EXPECTED.values())
    assert "validated 40 utterances:" in result.text and "    nan [load] NonFiniteAudioError:" in result.text
    assert "warning: extension-lies: the extension .flac says FLAC" in result.text
    assert (tmp_path / "v" / "validation.json").is_file() and (tmp_path / "v" / "validation.txt").is_file()
