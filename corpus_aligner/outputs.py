"""The output folder's bookkeeping: Parquet parts per batch and shard, resume, and the merged tables.

    <out>/parts/identity.json                       what corpus and model these parts belong to
    <out>/parts/shard-000-of-001/words-000001.parquet
    <out>/parts/shard-000-of-001/utterances-000001.parquet
    <out>/words.parquet, <out>/utterances.parquet   all committed parts of all shards, merged

A batch is committed when its utterances part exists: the words part is written first, so a crash
between the two leaves an orphan words part, which the next run of that shard deletes. An utterance
listed in any committed part is done and is never aligned again, so a rerun never duplicates a row.
"""

from __future__ import annotations

import fcntl
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from corpus_aligner.errors import AlignerError
from corpus_aligner.writers import atomic_path, stale_temporaries
from corpus_aligner.writers.parquet import UTTERANCES_SCHEMA, WORDS_SCHEMA, read_parquet, write_parquet

log = logging.getLogger(__name__)

_PART = re.compile(r"^(words|utterances)-(\d{6})\.parquet$")


class OutputMismatchError(AlignerError):
    """The output folder already holds results of another corpus, model or settings."""


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def identity_changes(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'key: old -> new' for each setting that differs (flattened keys, e.g. 'align.long.window_s')."""
    old, new = _flatten(stored), _flatten(now)
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)
    ]


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


class OutputStore:
    """Parts of one shard in one output folder; merging sees the parts of every shard."""

    def __init__(self, root: Path, shard_index: int = 0, shard_count: int = 1):
        self.root = Path(root)
        self.parts_dir = self.root / "parts"
        self.shard_dir = self.parts_dir / f"shard-{shard_index:03d}-of-{shard_count:03d}"
        self.run_json = self.root / ("run.json" if shard_count == 1 else f"run-{self.shard_dir.name}.json")
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        self._seq = max((int(m[2]) for m in self._parts(self.shard_dir)), default=0)

    @staticmethod
    def _parts(folder: Path) -> Iterator[re.Match[str]]:
        return (m for p in sorted(folder.iterdir()) if (m := _PART.match(p.name)))

    def claim(self, identity: dict[str, Any]) -> None:
        """Record what this folder holds; refuse to mix in results of another corpus, model or settings."""
        path = self.parts_dir / "identity.json"
        if path.exists():
            stored = json.loads(path.read_text(encoding="utf-8"))
            changes = identity_changes(stored, json.loads(json.dumps(identity, default=str)))
            if changes:
                raise OutputMismatchError(
                    f"{self.root} already holds results of another corpus, model or settings "
                    f"({'; '.join(changes)}): pass another output.dir=... (or delete that folder) to start afresh"
                )
            return
        write_json(path, identity)

    def remove_stale_temporaries(self) -> None:
        """Delete the temporaries that killed runs on this host left in the folder (never a finished file)."""
        for path in stale_temporaries(self.root):
            log.warning("removing %s: a temporary of a run that was killed while writing it", path)
            path.unlink(missing_ok=True)

    def committed(self) -> list[tuple[Path, Path]]:
        """(words part, utterances part) of every committed batch, all shards, in a stable order."""
        utt_parts = sorted(self.parts_dir.glob("shard-*/utterances-*.parquet"))
        return [(p.with_name(p.name.replace("utterances-", "words-")), p) for p in utt_parts]

    def completed_ids(self) -> set[str]:
        """Ids already written by any shard; also deletes this shard's orphan words parts."""
        for m in list(self._parts(self.shard_dir)):
            if m[1] == "words" and not (self.shard_dir / f"utterances-{m[2]}.parquet").exists():
                log.warning("removing %s: its batch was not committed (interrupted run)", m[0])
                (self.shard_dir / m[0]).unlink()
        done: set[str] = set()
        for _, utt_part in self.committed():
            done.update(pl.read_parquet(utt_part, columns=["utt_id"])["utt_id"].to_list())
        return done

    def next_seq(self) -> int:
        """The number of the next part of this shard (parts may be committed out of order, by several writers)."""
        self._seq += 1
        return self._seq

    def write_batch(self, words: pl.DataFrame, utterances: pl.DataFrame) -> None:
        """Commit one batch as the next part (nothing when it has no utterances)."""
        if not utterances.is_empty():
            self.write_part(self.next_seq(), words, utterances)

    def write_part(self, seq: int, words: pl.DataFrame, utterances: pl.DataFrame) -> None:
        """Commit part `seq`: the words part, then the utterances part that marks it done."""
        if utterances.is_empty():
            return
        write_parquet(words, self.shard_dir / f"words-{seq:06d}.parquet")
        write_parquet(utterances, self.shard_dir / f"utterances-{seq:06d}.parquet")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Serialize merging between shards that share this folder (an advisory flock)."""
        with open(self.parts_dir / ".merge.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def merge(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Write words.parquet and utterances.parquet from all committed parts; call under lock()."""
        pairs = self.committed()
        words = read_parquet([w for w, _ in pairs if w.exists()], WORDS_SCHEMA)
        utterances = read_parquet([u for _, u in pairs], UTTERANCES_SCHEMA)
        n_before = utterances.height
        utterances = utterances.unique(subset="utt_id", keep="first", maintain_order=True).sort("utt_id")
        words = words.unique(subset=["utt_id", "word_index"], keep="first", maintain_order=True)
        if utterances.height != n_before:
            log.warning("%d duplicate utterance rows in the parts were dropped", n_before - utterances.height)
        words = words.sort(["utt_id", "word_index"])
        write_parquet(words, self.root / "words.parquet")
        write_parquet(utterances, self.root / "utterances.parquet")
        return words, utterances


PACKAGES = ("mlx", "numpy", "polars", "pyarrow", "praatio", "soundfile", "soxr", "tokenizers", "hydra-core")


def package_versions() -> dict[str, str | None]:
    import platform
    from importlib import metadata

    import corpus_aligner

    versions: dict[str, str | None] = {
        "python": platform.python_version(),
        "corpus-aligner": corpus_aligner.__version__,
    }
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_info(cfg: Any, checkpoint: Any, n_utterances: int, n_done: int) -> dict[str, Any]:
    """The head of run.json: what ran (model, config, versions, device), on what share, and when."""
    import mlx.core as mx

    from corpus_aligner import cpu_blas

    return {
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "source": checkpoint.source,
            "path": str(checkpoint.path),
            "revision": checkpoint.revision,
            "fingerprint": checkpoint.fingerprint,
        },
        "config": asdict(cfg),
        "versions": package_versions(),
        "device": str(mx.default_device()),
        "cpu_matmul": cpu_blas.matmul_info() if mx.default_device() == mx.cpu else None,
        "utterances_in_shard": n_utterances,
        "already_done": n_done,
    }
