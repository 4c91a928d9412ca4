"""Container sniffing and truncation checks, on the real awkward files and on files cut here
(pytest tests/test_containers.py)."""

from __future__ import annotations

import csv
import mmap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from corpus_aligner.audio import check_header, check_signal, inspect_audio, load_audio, probe_audio
from corpus_aligner.containers import _mpeg_frame, check_complete, describe_unreadable, extension_mismatch, sniff
from corpus_aligner.errors import (
    CorruptAudioError,
    EmptyAudioError,
    SilentAudioError,
    TruncatedAudioError,
    UnsupportedAudioError,
)

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"
SNIFFED = {"WAV": "WAV", "WAVEX": "WAV", "FLAC": "FLAC", "MP3": "MP3", "OGG": "OGG", "AIFF": "AIFF"}


def inventory() -> list[dict[str, str]]:
    with open(TESTDATA / "INVENTORY.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_every_inventory_file_is_judged_as_measured() -> None:
    """Readable files: the sniffed container is libsndfile's; only the two cut files are truncated; only the
    MP3 named .flac has a lying extension. Unreadable files: inspect_audio says why."""
    truncated, lying = set(), set()
    for row in inventory():
        path = TESTDATA / row["path"]
        if row["status"] == "open_error":
            with pytest.raises(UnsupportedAudioError, match="cannot read audio header: "):
                inspect_audio(path)
            continue
        assert sniff(path) == SNIFFED[row["format"]], row["path"]
        try:
            check_complete(path, row["format"])
        except TruncatedAudioError:
            truncated.add(row["path"])
        if extension_mismatch(path):
            lying.add(row["path"])
    assert truncated == {
        "awkward/corrupt/truncated_LDC93S1.wav",
        "awkward/corrupt/truncated_common_voice_en_22058264.mp3",
    }
    assert lying == {"awkward/containers/mp3_with_flac_extension.flac"}


@pytest.mark.parametrize(
    ("relpath", "error", "message"),
    [
        ("awkward/corrupt/aeneas_mono.empty.wav", UnsupportedAudioError, "the file is empty (0 bytes)"),
        ("awkward/containers/ej-fra.m4a", UnsupportedAudioError, "the content is MP4 audio"),
        ("awkward/corrupt/pocketsphinx_bad.wav", UnsupportedAudioError, "the WAV header is malformed"),
        ("awkward/corrupt/aeneas_mono.zero.wav", EmptyAudioError, "no audio frames"),
        ("awkward/corrupt/pocketsphinx_awful.wav", CorruptAudioError, "sample rate of 1092676 Hz is implausible"),
        ("awkward/corrupt/truncated_2412-153948-0000.flac", TruncatedAudioError, "the last frame cannot be decoded"),
        ("awkward/corrupt/truncated_LDC93S1.wav", TruncatedAudioError, "but the file ends after 1.249 s"),
    ],
)
def test_inspect_audio_names_the_problem(relpath: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        inspect_audio(TESTDATA / relpath)


def test_sniff_kinds_and_reasons(tmp_path: Path) -> None:
    (tmp_path / "notes.wav").write_text("hello, this is text\n")
    (tmp_path / "blob.flac").write_bytes(bytes(range(200, 256)) * 3)
    (tmp_path / "clip.webm").write_bytes(b"\x1aE\xdf\xa3" + bytes(60))
    assert [sniff(tmp_path / n) for n in ("notes.wav", "blob.flac", "clip.webm")] == ["TEXT", None, "WEBM"]
    assert describe_unreadable(tmp_path / "notes.wav") == "the file holds text, not audio"
    assert describe_unreadable(tmp_path / "blob.flac") == "the content is not an audio format soundfile knows"
    assert "WEBM audio, which soundfile (libsndfile) cannot decode" in describe_unreadable(tmp_path / "clip.webm")
    assert extension_mismatch(tmp_path / "clip.webm") is None


def speech() -> tuple[np.ndarray, int]:
    return sf.read(
        TESTDATA / "librispeech-mini/LibriSpeech/dev-clean-2/1988/24833/1988-24833-0000.flac", dtype="float32"
    )


@pytest.mark.parametrize("fmt", ["wav", "aiff"])
def test_cut_wav_and_aiff_are_truncated_and_whole_ones_are_not(tmp_path: Path, fmt: str) -> None:
    """libsndfile silently reads what is left of a cut WAV/AIFF; the data-chunk size says it is cut."""
    wave, rate = speech()
    whole = tmp_path / f"whole.{fmt}"
    sf.write(whole, wave, rate, subtype="PCM_24")
    check_complete(whole, sf.info(whole).format)
    data = whole.read_bytes()
    cut = tmp_path / f"cut.{fmt}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert sf.read(cut)[0].shape[0] < wave.shape[0]  # no error from libsndfile
    with pytest.raises(TruncatedAudioError, match="truncated"):
        check_header(probe_audio(cut))


def test_cut_mp3_inside_a_frame_or_on_a_frame_boundary(tmp_path: Path) -> None:
    """Cut inside a frame: the last frame is short. Cut on a boundary: fewer frames than the Xing header."""
    wave, rate = speech()
    whole = tmp_path / "whole.mp3"
    sf.write(whole, wave[: rate * 2], rate, format="MP3")
    data = whole.read_bytes()
    assert b"Xing" in data[:64] or b"Info" in data[:64]
    check_complete(whole, "MP3")
    boundaries, pos = [], 0
    with open(whole, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        while (frame := _mpeg_frame(m, pos)) is not None:
            pos += frame[0]
            boundaries.append(pos)
    inside, boundary = tmp_path / "inside.mp3", tmp_path / "boundary.mp3"
    inside.write_bytes(data[: boundaries[20] + 10])
    boundary.write_bytes(data[: boundaries[20]])
    with pytest.raises(TruncatedAudioError, match="the last MPEG frame"):
        check_complete(inside, "MP3")
    with pytest.raises(TruncatedAudioError, match="the Xing/Info header counts"):
        check_complete(boundary, "MP3")


def test_decoding_errors_say_where_decoding_stops(tmp_path: Path) -> None:
    with pytest.raises(CorruptAudioError, match=r"decoding stops at \d+\.\d\d s of the 11\.66 s the header states"):
        load_audio(TESTDATA / "awkward/corrupt/truncated_2412-153948-0000.flac")


def test_digital_silence_but_not_quiet_speech() -> None:
    with pytest.raises(SilentAudioError, match=r"x\.wav: the audio is digital silence"):
        check_signal(np.zeros(1600, dtype=np.float32), "x.wav")
    with pytest.raises(SilentAudioError):
        check_signal(np.full(1600, 2.0**-15, dtype=np.float32), "x.wav")  # one 16-bit step
    check_signal(np.full(1600, 2.0**-14, dtype=np.float32), "x.wav")  # two steps: very quiet, not silent
    wave, _ = speech()
    check_signal(wave * 0.001, "quiet speech")
