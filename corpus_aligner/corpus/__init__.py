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

SAMPLE_ROOT = Path(__file__).resolve().parent.parent / "data" / "librispeech" / "LibriSpeech"


@dataclass(frozen=True, slots=True)
class Utterance:
    """One input utterance. Times are relative to `offset_s` in `audio_path`.

    `rel_dir` is the folder (relative, '/'-separated) that mirrors the corpus layout in the output;
    `duration_s` is set when the corpus states the segment length (manifest `duration`).
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
    read_error: str | None = None


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
    """What makes two runs 'the same corpus' for resuming: the kind and the resolved input paths."""
    if isinstance(cfg, LibriSpeechConfig):
        root = Path(cfg.root).expanduser().resolve() if cfg.root else SAMPLE_ROOT
        return {"kind": cfg.kind, "root": str(root), "parts": sorted(cfg.parts) if cfg.parts else None}
    return {"kind": cfg.kind, "path": str(Path(cfg.path).expanduser().resolve())}


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
        error = f"duplicate utterance id {u.utt_id!r} (copy {n}); only the first one is aligned"
        out.append(replace(u, utt_id=new_id, read_error=u.read_error or error))
    return out


__all__ = ["SAMPLE_ROOT", "Utterance", "read_corpus", "select_shard", "shard_of", "unique_ids"]
