"""Corpus readers: every input utterance comes back exactly once, none dropped (pytest tests/test_corpus.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given
from hypothesis import strategies as st

from corpus_aligner.config import LibriSpeechConfig, ManifestConfig
from corpus_aligner.corpus import SAMPLE_ROOT, Utterance, read_corpus, select_shard, shard_of, unique_ids
from corpus_aligner.corpus.librispeech import read_librispeech
from corpus_aligner.corpus.manifest import read_manifest
from corpus_aligner.errors import CorpusReadError, ManifestRowError, MissingTranscriptError, TranscriptEncodingError
from corpus_aligner.testing import tiny_librispeech, tiny_manifest
from corpus_aligner.testing.tiny_corpus import write_tone
from corpus_aligner.writers.parquet import utterance_row, utterances_frame, write_parquet

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"
SAMPLE_IDS = [
    "1988-24833-0000", "1988-24833-0002", "26-496-0006", "26-496-0026",
    "3752-4944-0000", "3752-4944-0002", "61-70968-0000",
]  # fmt: skip


def test_embedded_sample_is_real_librispeech_in_its_layout() -> None:
    """The default corpus: 7 genuine utterances, speaker/chapter/part from the folders, licence shipped."""
    utts = read_corpus(LibriSpeechConfig())
    assert [u.utt_id for u in utts] == SAMPLE_IDS
    first = utts[0]
    assert (first.speaker, first.recording, first.part) == ("1988", "24833", "dev-clean-2")
    assert first.text == "THE TWO STRAY KITTENS GRADUALLY MAKE THEMSELVES AT HOME"
    assert first.rel_dir == "dev-clean-2/1988/24833"
    assert Path(first.audio_path) == SAMPLE_ROOT / "dev-clean-2/1988/24833/1988-24833-0000.flac"
    assert all(Path(u.audio_path).is_file() and u.read_error is None for u in utts)
    assert {u.part for u in utts} == {"dev-clean-2", "test-clean", "train-clean-100"}
    assert "CC BY 4.0" in (SAMPLE_ROOT.parent / "README.md").read_text(encoding="utf-8")


def test_parts_select_subsets_and_unknown_parts_fail() -> None:
    utts = read_corpus(LibriSpeechConfig(parts=["test-clean", "train-clean-100"]))
    assert [u.utt_id for u in utts] == ["26-496-0006", "26-496-0026", "61-70968-0000"]
    with pytest.raises(CorpusReadError, match=r"\['dev-clean'\] not found.*available: \['dev-clean-2'"):
        read_corpus(LibriSpeechConfig(parts=["dev-clean"]))


def test_unreadable_roots_fail_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(CorpusReadError, match="does not exist"):
        read_corpus(LibriSpeechConfig(root=str(tmp_path / "nope")))
    (tmp_path / "README.TXT").write_text("not a corpus")
    with pytest.raises(CorpusReadError, match="no LibriSpeech parts"):
        read_corpus(LibriSpeechConfig(root=str(tmp_path)))


def test_broken_librispeech_tree_keeps_every_line_and_every_file() -> None:
    """testdata/awkward/librispeech-broken: no trans.txt, a .wav, a line without audio, CRLF, empty text."""
    utts = {u.utt_id: u for u in read_librispeech(TESTDATA / "awkward/librispeech-broken/LibriSpeech")}
    assert sorted(utts) == [
        "1988-24833-0000", "1988-24833-0001", "2412-153948-0000", "2412-153948-0001",
        "2412-153948-0002", "2412-153948-0003", "3752-4944-0000", "3752-4944-0001", "3752-4944-0002",
    ]  # fmt: skip
    with_errors = {k for k, u in utts.items() if u.read_error}
    assert with_errors == {"1988-24833-0000", "1988-24833-0001", "3752-4944-0001"}
    assert "no transcript file (1988-24833.trans.txt)" in str(utts["1988-24833-0001"].read_error)
    assert utts["1988-24833-0001"].audio_path.endswith(".wav")
    assert not Path(utts["2412-153948-0003"].audio_path).exists()  # listed, no audio: fails at probe
    assert utts["3752-4944-0000"].text == ""  # empty text: fails at normalize
    assert utts["3752-4944-0002"].text == "IN THE VALLEY OF THE SHADOW OF DEATH HE IS WITH US"  # no CR left


def test_tiny_corpus_bad_cases_all_come_back(tmp_path: Path) -> None:
    corpus = tiny_librispeech(tmp_path, bad_cases=True)
    utts = read_corpus(LibriSpeechConfig(root=str(tmp_path)))
    assert sorted(u.utt_id for u in utts) == sorted(corpus.expected)
    assert {u.utt_id for u in utts if u.read_error} == {k for k, v in corpus.expected.items() if v == "read"}
    by_id = {u.utt_id: u for u in utts}
    assert by_id["müller-7-0000"].speaker == "müller"
    assert by_id["900-1-0002"].text == corpus.transcripts["900-1-0002"]  # the first of two lines wins
    assert "duplicate utterance id '900-1-0002'" in str(by_id["900-1-0002#2"].read_error)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv"])
def test_manifest_formats_read_alike(tmp_path: Path, fmt: str) -> None:
    """The same rows as JSON lines, CSV or TSV give the same utterances; relative paths resolve."""
    corpus = tiny_manifest(tmp_path, format=fmt, bad_cases=True)
    utts = {u.utt_id: u for u in read_corpus(ManifestConfig(path=str(corpus.root)))}
    assert sorted(utts) == sorted(corpus.expected)
    a = utts["a"]
    assert a.audio_path == str(tmp_path / "audio" / "a.flac") and a.rel_dir == "audio"
    assert (a.text, a.speaker, a.offset_s, a.duration_s) == ("Hello, world! It's here.", "s1", 0.0, None)
    assert utts["utt-b"].rel_dir == "audio/sub"
    seg = utts["long-00001700"]
    assert (seg.offset_s, seg.duration_s, seg.recording, seg.rel_dir) == (1.7, 1.2, "long", "")
    assert {k for k, u in utts.items() if u.read_error} == {k for k, v in corpus.expected.items() if v == "read"}


def test_manifest_rows_that_cannot_be_used_become_failed_utterances(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [
        '{"audio_filepath": "x.flac", "text": "fine", "language": "de"}',
        "{not json",
        '{"audio_filepath": "y.flac"}',
        '{"audio_filepath": "z.flac", "text": "t", "offset": -1}',
        "",
        "[1, 2]",
    ]
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    utts = read_manifest(manifest, language="English")
    assert [(u.utt_id, u.read_error and str(u.read_error)) for u in utts] == [
        ("x", None),
        ("m-line2", "line 2 is not valid JSON (Expecting property name enclosed in double quotes)"),
        ("y", "line 3 has no text"),
        ("z", "line 4: offset must be a finite number >= 0, got -1"),
        ("m-line6", "line 6 is not a JSON object"),
    ]
    assert {type(u.read_error).__name__ for u in utts if u.read_error} == {"ManifestRowError"}
    assert utts[0].language == "de"


def test_manifest_errors_that_stop_the_run(tmp_path: Path) -> None:
    with pytest.raises(CorpusReadError, match="cannot read manifest"):
        read_manifest(tmp_path / "missing.jsonl")
    with pytest.raises(CorpusReadError, match=r"corpus\.format"):
        read_manifest(tmp_path / "m.txt")
    bad = tmp_path / "m.csv"
    bad.write_text("path,text\na.flac,hi\n")
    with pytest.raises(CorpusReadError, match="audio_filepath"):
        read_manifest(bad)
    (tmp_path / "m.json").write_text(json.dumps({"audio_filepath": "a.flac", "text": "hi"}) + "\n")
    assert [u.utt_id for u in read_manifest(tmp_path / "m.json")] == ["a"]


def test_shard_assignment_is_stable() -> None:
    """Pinned values: shards must not move between versions, or a resumed sharded run would redo work."""
    ids = ["1988-24833-0000", "61-70968-0000", "26-496-0006", "a", "müller-7-0000"]
    assert [shard_of(i, 4) for i in ids] == [0, 2, 1, 0, 0]


@given(st.lists(st.text(min_size=1, max_size=12), max_size=40, unique=True), st.integers(1, 7))
def test_shards_partition_the_corpus(ids: list[str], count: int) -> None:
    """Every utterance lands in exactly one shard."""
    utts = [Utterance(utt_id=i, audio_path="", text="") for i in ids]
    shards = [select_shard(utts, k, count) for k in range(count)]
    assert sorted(u.utt_id for s in shards for u in s) == sorted(ids)


def test_unique_ids_keeps_every_row() -> None:
    utts = [Utterance(utt_id=i, audio_path="", text="") for i in ["a", "a", "a#2", "a"]]
    out = unique_ids(utts)
    assert [u.utt_id for u in out] == ["a", "a#3", "a#2", "a#4"]
    assert [u.read_error is not None for u in out] == [False, True, False, True]


def write_chapter(root: Path, lines: bytes, *utt_ids: str) -> Path:
    folder = root / "dev" / "1" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    for utt_id in utt_ids:
        write_tone(folder / f"{utt_id}.flac", 0.5)
    (folder / "1-1.trans.txt").write_bytes(lines)
    return folder


def test_a_transcript_line_that_is_not_utf8_fails_alone(tmp_path: Path) -> None:
    """One Latin-1 line costs one utterance (TranscriptEncodingError naming line and byte), not the chapter;
    its text keeps U+FFFD where the byte was, so it can still be written to Parquet."""
    write_chapter(tmp_path, b"1-1-0000 GOOD LINE\r\n1-1-0001 CAF\xc9 AU LAIT\r\n1-1-0002 ALSO GOOD\r\n",
                  "1-1-0000", "1-1-0001", "1-1-0002")  # fmt: skip
    utts = {u.utt_id: u for u in read_librispeech(tmp_path)}
    assert [k for k, u in utts.items() if u.read_error] == ["1-1-0001"]
    error = utts["1-1-0001"].read_error
    assert isinstance(error, TranscriptEncodingError)
    assert str(error).startswith("line 2 of 1-1.trans.txt is not valid UTF-8 (byte 0xC9 at character 13)")
    assert utts["1-1-0001"].text == "CAF\ufffd AU LAIT" and utts["1-1-0002"].text == "ALSO GOOD"
    frame = utterances_frame([utterance_row(u, failure=("read", u.read_error)) for u in utts.values() if u.read_error])
    assert frame["transcript"].to_list() == ["CAF\ufffd AU LAIT"]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_transcripts_with_a_byte_order_mark(tmp_path: Path, encoding: str) -> None:
    write_chapter(tmp_path, "1-1-0000 ÜBER ALLES\n".encode(encoding), "1-1-0000")
    (utt,) = read_librispeech(tmp_path)
    assert (utt.utt_id, utt.text, utt.read_error) == ("1-1-0000", "ÜBER ALLES", None)


def test_unreadable_transcript_file_and_undecodable_file_names(tmp_path: Path) -> None:
    """A trans.txt that cannot be read fails its chapter's audio at read (the corpus goes on); a file name
    with bytes that are not UTF-8 gets an id with U+FFFD instead of crashing the Parquet writer."""
    folder = write_chapter(tmp_path, b"", "1-1-0000")
    (folder / "1-1.trans.txt").unlink()
    (folder / "1-1.trans.txt").mkdir()  # reading it raises IsADirectoryError
    other = tmp_path / "dev" / "2" / "2"
    other.mkdir(parents=True)
    odd = os.fsencode(other) + b"/2-2-caf\xe9.flac"
    sf.write(odd, np.zeros(8000, dtype=np.int16) + 1, 16000)
    (other / "2-2.trans.txt").write_text("2-2-0000 NO AUDIO\n")
    utts = {u.utt_id: u for u in read_librispeech(tmp_path)}
    assert sorted(utts) == ["1-1-0000", "2-2-0000", "2-2-caf\ufffd"]
    assert isinstance(utts["1-1-0000"].read_error, MissingTranscriptError)
    assert "cannot read transcript file" in str(utts["1-1-0000"].read_error)
    assert "no transcript line for" in str(utts["2-2-caf\ufffd"].read_error)
    rows = [utterance_row(u, failure=("read", u.read_error)) for u in utts.values() if u.read_error]
    write_parquet(utterances_frame(rows), tmp_path / "u.parquet")
    assert os.path.exists(utts["2-2-caf\ufffd"].audio_path)  # the real (undecodable) path still opens


def test_manifest_rows_not_utf8_crlf_and_channels(tmp_path: Path) -> None:
    """CSV with CRLF endings: a Latin-1 row fails at read, a `channel` column picks a channel per row."""
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(
        b"audio_filepath,text,channel,utt_id\r\na.flac,fine,1,a\r\nb.flac,caf\xe9,,b\r\nc.flac,x,left,c\r\n"
        b"d.flac,y,-1,d\r\ne.flac,z,,e\r\n"
    )
    utts = {u.utt_id: u for u in read_manifest(manifest)}
    assert (utts["a"].channel, utts["a"].read_error, utts["e"].channel) == (1, None, None)
    assert isinstance(utts["b"].read_error, TranscriptEncodingError) and utts["b"].text == "caf\ufffd"
    assert str(utts["c"].read_error) == "line 4: channel must be a channel index >= 0, got 'left'"
    assert isinstance(utts["d"].read_error, ManifestRowError)
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_bytes(
        b'{"audio_filepath": "a.flac", "text": "ok", "channel": 0}\r\n'
        b'{"audio_filepath": "b.flac", "text": "x", "channel": true}\r\n'
    )
    assert [(u.channel, type(u.read_error).__name__) for u in read_manifest(jsonl)] == [
        (0, "NoneType"),
        (None, "ManifestRowError"),
    ]
