"""NeMo-style manifests -> Utterance records. One row per utterance, for example (JSON lines):

    {"audio_filepath": "wavs/a.flac", "text": "Hello, world.", "duration": 1.9, "speaker": "s1"}
    {"audio_filepath": "/data/long.wav", "text": "Second part.", "offset": 12.5, "duration": 3.0}

CSV/TSV manifests have a header row with the same column names (`channel` picks one channel of a
multi-channel file). Relative audio paths resolve against the manifest's folder. A row that cannot
be used (bad JSON, not UTF-8, no audio path, a non-numeric offset) still becomes an Utterance, with
`read_error` saying why, so it ends as a failed row.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corpus_aligner.corpus import Utterance, decode_text, printable, undecodable
from corpus_aligner.errors import CorpusReadError, ManifestRowError

COLUMNS = ("audio_filepath", "text", "duration", "offset", "speaker", "language", "utt_id", "channel")
Row = tuple[int, dict[str, Any], CorpusReadError | None]
FORMATS = {".json": "jsonl", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}


def manifest_format(path: Path, format: str = "auto") -> str:
    if format != "auto":
        return format
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise CorpusReadError(
            f"{path}: cannot tell the manifest format from the extension; pass corpus.format=jsonl|csv|tsv"
        ) from None


def read_manifest(path: Path, format: str = "auto", language: str = "English") -> list[Utterance]:
    """Every row of the manifest as an Utterance, in file order."""
    fmt = manifest_format(path, format)
    try:
        content = decode_text(path.read_bytes())
    except OSError as exc:
        raise CorpusReadError(f"cannot read manifest {path} ({exc})") from exc
    rows = _jsonl_rows(content) if fmt == "jsonl" else _table_rows(content, "," if fmt == "csv" else "\t", path)
    return [_utterance(row, line, error, path, language) for line, row, error in rows]


def _jsonl_rows(content: str) -> Iterator[Row]:
    for line_no, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield line_no, {}, ManifestRowError(f"line {line_no} is not valid JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            yield line_no, {}, ManifestRowError(f"line {line_no} is not a JSON object")
            continue
        yield line_no, row, undecodable(line, f"line {line_no}")


def _table_rows(content: str, delimiter: str, path: Path) -> Iterator[Row]:
    reader = csv.DictReader(content.splitlines(), delimiter=delimiter)
    if not reader.fieldnames or "audio_filepath" not in reader.fieldnames:
        raise CorpusReadError(f"{path}: the header row must name the columns, incl. audio_filepath: {COLUMNS}")
    for row in reader:
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        # Empty cells mean 'not given', as an absent key does in JSON.
        cells = {k: v for k, v in row.items() if k and v not in (None, "")}
        raw = delimiter.join(v for v in cells.values() if isinstance(v, str))
        yield reader.line_num, cells, undecodable(raw, f"line {reader.line_num}")


def _number(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
    return number


def _channel(row: dict[str, Any]) -> int | None:
    value = row.get("channel")
    if value is None:
        return None
    if isinstance(value, bool) or not str(value).strip().isdigit():
        raise ValueError(f"channel must be a channel index >= 0, got {value!r}")
    return int(value)


def _utterance(
    row: dict[str, Any], line: int, error: CorpusReadError | None, manifest: Path, language: str
) -> Utterance:
    audio = str(row.get("audio_filepath") or row.get("audio") or "")
    offset = duration = channel = None
    if error is None and not audio:
        error = ManifestRowError(f"line {line} has no audio_filepath")
    if error is None:
        try:
            offset, duration, channel = _number(row, "offset"), _number(row, "duration"), _channel(row)
        except ValueError as exc:
            error = ManifestRowError(f"line {line}: {exc}")
    folder = manifest.parent.resolve()
    audio_path = (folder / audio).resolve() if audio else folder
    utt_id = str(row.get("utt_id") or "")
    if not utt_id:
        utt_id = audio_path.stem if audio else f"{manifest.stem}-line{line}"
        if offset:  # several segments of one recording get one id each
            utt_id = f"{utt_id}-{round(offset * 1000):08d}"
    text = row.get("text")
    if error is None and text is None:
        error = ManifestRowError(f"line {line} has no text")
    try:
        rel_dir = audio_path.parent.relative_to(folder).as_posix() if audio else ""
    except ValueError:  # audio outside the manifest folder: its TextGrid goes to the top level
        rel_dir = ""
    return Utterance(
        utt_id=printable(utt_id),
        audio_path=str(audio_path),
        text="" if text is None else printable(str(text)),
        speaker=printable(str(row["speaker"])) if row.get("speaker") is not None else None,
        recording=printable(audio_path.stem) if audio else None,
        part=None,
        language=printable(str(row.get("language") or language)),
        offset_s=offset or 0.0,
        duration_s=duration,
        rel_dir="" if rel_dir == "." else printable(rel_dir),
        channel=channel,
        read_error=error,
    )
