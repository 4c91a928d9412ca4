"""Corpus readers: a corpus on disk -> a list of `Utterance`, one per input utterance, none dropped.

A reader never skips what it cannot use: an audio file without a transcript line, a malformed
manifest row or a duplicate id comes back as an `Utterance` whose `read_error` says what is wrong,
and the pipeline records it as a failed row. Only a corpus that cannot be read at all (missing root,
no parts, unreadable manifest) raises CorpusReadError.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from corpus_aligner.config import LibriSpeechConfig, ManifestConfig
from corpus_aligner.errors import CorpusReadError, DuplicateIdError, TranscriptEncodingError

SAMPLE_ROOT = Path(__file__).resolve().parent.parent / "data" / "librispeech" / "LibriSpeech"


@dataclass(frozen=True, slots=True)
class Utterance:
    """One input utterance. Times are relative to `offset_s` in `audio_path`.

    `rel_dir` is the folder (relative, '/'-separated) that mirrors the corpus layout in the output;
    `duration_s` is set when the corpus states the segment length (manifest `duration`); `channel` when
    the corpus picks one channel of the file (manifest `channel`). `read_error` is why the corpus entry
    itself is unusable (the pipeline records it as failed at stage `read`).
    """

    utt_id: str
    audio_path: str
    text: str
    speaker: str | None = None
    recording: str | None = None
    part: str | None = None
    language: str = "English"
    offset_s: float = 0.0
    duration_s: float | None = None
    rel_dir: str = ""
    channel: int | None = None
    read_error: CorpusReadError | None = None


def read_corpus(cfg: LibriSpeechConfig | ManifestConfig) -> list[Utterance]:
    """Every utterance of the configured corpus, sorted by utt_id; repeated ids are made unique."""
    if isinstance(cfg, LibriSpeechConfig):
        from corpus_aligner.corpus.librispeech import read_librispeech

        root = Path(cfg.root).expanduser() if cfg.root else SAMPLE_ROOT
        utterances = read_librispeech(root, cfg.parts, cfg.language)
    else:
        from corpus_aligner.corpus.manifest import read_manifest

        utterances = read_manifest(Path(cfg.path).expanduser(), cfg.format, cfg.language)
    return unique_ids(sorted(utterances, key=lambda u: u.utt_id))


def corpus_identity(cfg: LibriSpeechConfig | ManifestConfig) -> dict[str, object]:
    """What makes two runs 'the same corpus' for resuming: the kind, the resolved input paths, the language."""
    if isinstance(cfg, LibriSpeechConfig):
        root = Path(cfg.root).expanduser().resolve() if cfg.root else SAMPLE_ROOT
        parts = sorted(cfg.parts) if cfg.parts else None
        return {"kind": cfg.kind, "root": str(root), "parts": parts, "language": cfg.language}
    return {
        "kind": cfg.kind,
        "path": str(Path(cfg.path).expanduser().resolve()),
        "format": cfg.format,
        "language": cfg.language,
    }


def shard_of(utt_id: str, count: int) -> int:
    """The shard an utterance belongs to: stable across runs, machines and Python versions."""
    digest = hashlib.sha1(utt_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select_shard(utterances: Sequence[Utterance], index: int, count: int) -> list[Utterance]:
    """The share of `utterances` that shard `index` of `count` aligns; shards partition the corpus."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"need 0 <= index < count, got {index} of {count}")
    return [u for u in utterances if shard_of(u.utt_id, count) == index]


def unique_ids(utterances: list[Utterance]) -> list[Utterance]:
    """Rename a repeated id to `<id>#<n>` and mark the repeat failed: every input keeps its own row."""
    taken = {u.utt_id for u in utterances}
    seen: set[str] = set()
    out: list[Utterance] = []
    for u in utterances:
        if u.utt_id not in seen:
            seen.add(u.utt_id)
            out.append(u)
            continue
        n = 2
        while f"{u.utt_id}#{n}" in taken:
            n += 1
        new_id = f"{u.utt_id}#{n}"
        taken.add(new_id)
        error = DuplicateIdError(f"duplicate utterance id {u.utt_id!r} (copy {n}); only the first one is aligned")
        out.append(replace(u, utt_id=new_id, read_error=u.read_error or error))
    return out


def decode_text(data: bytes) -> str:
    """Text of a transcript or manifest file: UTF-8 (a BOM is dropped) or BOM-marked UTF-16. Invalid UTF-8
    bytes survive as lone surrogates (surrogateescape), so one bad line can be reported without losing
    the others (`undecodable`)."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16", errors="surrogateescape")
    return data.decode("utf-8-sig", errors="surrogateescape")


def undecodable(text: str, where: str) -> TranscriptEncodingError | None:
    """The error for a line that held bytes which are not UTF-8 (surrogate-escaped by decode_text), or None."""
    bad = [i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"]
    if not bad:
        return None
    code = ord(text[bad[0]])
    what = f"byte 0x{code - 0xDC00:02X}" if 0xDC80 <= code <= 0xDCFF else f"a lone surrogate U+{code:04X}"
    return TranscriptEncodingError(
        f"{where} is not valid UTF-8 ({what} at character {bad[0] + 1}); "
        "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def printable(text: str) -> str:
    """`text` with undecodable bytes (surrogates) as U+FFFD, so it can be written to Parquet and TextGrids."""
    try:
        raw = text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape ("\\ud800"), not from a byte
        raw = text.encode("utf-8", errors="replace")
    return raw.decode("utf-8", errors="replace")


__all__ = [
    "SAMPLE_ROOT",
    "Utterance",
    "decode_text",
    "printable",
    "read_corpus",
    "select_shard",
    "shard_of",
    "undecodable",
    "unique_ids",
]
