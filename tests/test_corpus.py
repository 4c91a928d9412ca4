"""Corpus readers: every input utterance comes back exactly once, none dropped (pytest tests/test_corpus.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corpus_aligner.config import LibriSpeechConfig, ManifestConfig
from corpus_aligner.corpus import SAMPLE_ROOT, Utterance, read_corpus, select_shard, shard_of, unique_ids
from corpus_aligner.corpus.librispeech import read_librispeech
from corpus_aligner.corpus.manifest import read_manifest
from corpus_aligner.errors import CorpusReadError
from corpus_aligner.testing import tiny_librispeech, tiny_manifest

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
    assert [(u.utt_id, u.read_error) for u in utts] == [
        ("x", None),
        ("m-line2", "line 2 is not valid JSON (Expecting property name enclosed in double quotes)"),
        ("y", "line 3 has no text"),
        ("z", "line 4: offset must be a finite number >= 0, got -1"),
        ("m-line6", "line 6 is not a JSON object"),
    ]
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
