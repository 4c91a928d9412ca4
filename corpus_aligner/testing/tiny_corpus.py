"""Tiny generated corpora (tones + noise, written with soundfile) for tests, demos and benches.

`tiny_librispeech` writes a LibriSpeech-shaped tree, `tiny_manifest` a manifest (jsonl/csv/tsv).
With `bad_cases=True` each also holds the inputs a corpus run must survive, and `expected` says how
each utterance must end: "aligned", or the stage at which it must fail (see pipeline.py).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

WORDS = [
    *("he", "hoped", "there", "would", "be", "stew", "for", "dinner", "turnips", "and", "carrots"),
    *("bruised", "potatoes", "the", "north", "wind", "sun", "were", "disputing", "which", "was"),
    *("stronger", "when", "a", "traveller", "came", "along"),
]


@dataclass
class TinyCorpus:
    """Where the corpus is and what a run over it must produce, per utterance id."""

    root: Path
    expected: dict[str, str] = field(default_factory=dict)  # utt_id -> "aligned" | failure stage
    transcripts: dict[str, str] = field(default_factory=dict)  # utt_id -> transcript as written

    def add(self, utt_id: str, text: str, expected: str = "aligned") -> None:
        self.expected[utt_id] = expected
        self.transcripts[utt_id] = text


def write_tone(path: Path, duration_s: float, rate: int = 16000, channels: int = 1, seed: int = 0) -> Path:
    """A decaying tone over faint noise, as 16-bit FLAC/WAV (by extension)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(duration_s * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * (150 + 50 * rng.random()) * t) * np.exp(-t) + 0.01 * rng.standard_normal(t.size)
    data = np.stack([wave * (0.5 + 0.5 * c) for c in range(channels)], axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data.astype(np.float32), rate, subtype="PCM_16")
    return path


def sentence(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n_words)).upper()


def tiny_librispeech(
    root: Path, *, speakers: int = 2, utterances: int = 2, bad_cases: bool = False, seed: int = 0
) -> TinyCorpus:
    """<root>/<part>/<speaker>/<chapter>/ with FLACs and .trans.txt; bad cases in part `dev-bad`."""
    rng = np.random.default_rng(seed)
    corpus = TinyCorpus(Path(root))
    for s in range(speakers):
        spk, chapter = str(100 + s), str(2000 + s)
        folder = corpus.root / "dev-tiny" / spk / chapter
        lines = []
        for u in range(utterances):
            utt_id = f"{spk}-{chapter}-{u:04d}"
            text = sentence(rng, int(rng.integers(2, 6)))
            write_tone(folder / f"{utt_id}.flac", float(rng.uniform(0.8, 2.0)), seed=seed + s * 100 + u)
            lines.append(f"{utt_id} {text}")
            corpus.add(utt_id, text)
        (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if bad_cases:
        _librispeech_bad_cases(corpus, rng)
    return corpus


def _librispeech_bad_cases(corpus: TinyCorpus, rng: np.random.Generator) -> None:
    part = corpus.root / "dev-bad"
    folder = part / "900" / "1"
    cases = {
        # utt_id: (audio: (duration_s, rate, channels) | "missing" | "corrupt", text, expected)
        "900-1-0000": ((1.2, 16000, 1), "", "normalize"),  # empty transcript
        "900-1-0001": ("missing", "NO AUDIO HERE", "probe"),
        "900-1-0002": ((1.5, 8000, 1), sentence(rng, 3), "aligned"),  # 8 kHz: resampled
        "900-1-0003": ((1.1, 44100, 2), sentence(rng, 3), "aligned"),  # stereo 44.1 kHz: downmixed
        "900-1-0004": ("too long", sentence(rng, 3), "load"),  # 401 s (long path) of digital silence
        "900-1-0005": ("corrupt", sentence(rng, 2), "probe"),  # not audio at all
        "900-1-0006": ((0.3, 16000, 1), sentence(rng, 12), "normalize"),  # more words than 80 ms slots
        "900-1-0007": ((1.0, 16000, 1), "?! -- ...", "normalize"),  # nothing alignable
    }
    lines = []
    for utt_id, (audio, text, expected) in cases.items():
        path = folder / f"{utt_id}.flac"
        if audio == "corrupt":
            folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"this is not a FLAC file" * 10)
        elif audio == "too long":  # silence, so the FLAC stays a few kB
            sf.write(path, np.zeros(401 * 8000, dtype=np.int16), 8000, subtype="PCM_16")
        elif isinstance(audio, tuple):
            duration, rate, channels = audio
            write_tone(path, duration, rate, channels)
        lines.append(f"{utt_id} {text}".rstrip())
        corpus.add(utt_id, text, expected)
    lines.append("900-1-0002 A REPEATED LINE")  # same id twice: the copy fails at read
    corpus.add("900-1-0002#2", "A REPEATED LINE", "read")
    (folder / "900-1.trans.txt").write_text("\r\n".join(lines) + "\r\n\r\n", encoding="utf-8")  # CRLF, blank line
    write_tone(folder / "900-1-0099.flac", 1.0)  # audio without a transcript line
    corpus.add("900-1-0099", "", "read")
    # A non-ASCII speaker id, and a chapter without any transcript file.
    write_tone(part / "müller" / "7" / "müller-7-0000.flac", 1.3)
    (part / "müller" / "7" / "müller-7.trans.txt").write_text("müller-7-0000 ÜBER DIE BRÜCKE\n", encoding="utf-8")
    corpus.add("müller-7-0000", "ÜBER DIE BRÜCKE")
    write_tone(part / "901" / "2" / "901-2-0000.flac", 1.0)
    corpus.add("901-2-0000", "", "read")


def tiny_manifest(folder: Path, *, format: str = "jsonl", bad_cases: bool = False, seed: int = 0) -> TinyCorpus:
    """A manifest `manifest.<format>` in `folder` over generated audio (relative and absolute paths)."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    corpus = TinyCorpus(folder / f"manifest.{format}")
    rows: list[dict[str, object]] = []

    def row(expected_id: str, expected: str = "aligned", **fields: object) -> None:
        rows.append(fields)
        corpus.add(expected_id, str(fields.get("text", "")), expected)

    write_tone(folder / "audio" / "a.flac", 1.4, seed=seed)
    row("a", audio_filepath="audio/a.flac", text="Hello, world! It's here.", speaker="s1")
    write_tone(folder / "audio" / "sub" / "b.wav", 1.1, rate=22050, seed=seed + 1)
    row("utt-b", audio_filepath="audio/sub/b.wav", text=sentence(rng, 3), speaker="s2", utt_id="utt-b")
    long = write_tone(folder / "long.flac", 3.0, seed=seed + 2)
    # Two segments of one recording, by absolute path: ids from the stem and the offset in ms.
    row("long-00000500", audio_filepath=str(long), text=sentence(rng, 2), offset=0.5, duration=1.0, speaker="s1")
    row("long-00001700", audio_filepath=str(long), text=sentence(rng, 3), offset=1.7, duration=1.2, speaker="s2")
    if bad_cases:
        row("missing", "probe", audio_filepath="audio/missing.flac", text="no audio")
        row("long-00009000", "probe", audio_filepath=str(long), text="after the end", offset=9.0)
        row("a#2", "read", audio_filepath="audio/a.flac", text="same id as the first row")
        line = len(rows) + 1 + (format != "jsonl")  # csv/tsv: the header is line 1
        row(f"manifest-line{line}", "read", text="a row without audio")  # the id comes from the line
    _write_rows(corpus.root, rows, format)
    return corpus


def _write_rows(path: Path, rows: list[dict[str, object]], format: str) -> None:
    if format == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return
    columns = ["audio_filepath", "text", "duration", "offset", "speaker", "language", "utt_id"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, delimiter="," if format == "csv" else "\t")
        writer.writeheader()
        writer.writerows(rows)
