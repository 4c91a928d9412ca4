"""`mode=validate`: check the whole corpus without the model before a long run (like `mfa validate`).

Runs exactly the stages the main job runs before the model (pipeline.prepare: read, probe, normalize;
loading.load_waves: decode every file, one at a time), so an utterance that validates fails the real
run only at stage `align`. Writes to output.dir:

    validation.parquet   one row per input utterance: valid, or failed with stage, error type and message
    validation.json/.txt counts by stage and reason, every failure, warnings, recordings taking the long path
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from corpus_aligner import loading, pipeline
from corpus_aligner.config import AppConfig
from corpus_aligner.corpus import read_corpus, select_shard
from corpus_aligner.decode import TICK_MS
from corpus_aligner.outputs import write_json
from corpus_aligner.writers import atomic_path
from corpus_aligner.writers.parquet import utterance_row, validation_frame, validation_row, write_parquet

log = logging.getLogger(__name__)
MAX_LISTED = 50


@dataclass(frozen=True)
class ValidationResult:
    output_dir: Path
    table: pl.DataFrame
    summary: dict[str, Any]
    text: str


def validate_corpus(cfg: AppConfig) -> pl.DataFrame:
    """The validation table of the configured corpus (or shard), sorted by utt_id."""
    utterances = select_shard(read_corpus(cfg.corpus), cfg.shard.index, cfg.shard.count)
    prepared, failed = pipeline.prepare(utterances, cfg.align, TICK_MS / 1000.0)
    rows = [validation_row(r, 0, False) for r in failed]
    for p in prepared:
        loaded, bad = loading.load_waves([p])  # one at a time: a long corpus never sits in memory
        row = bad[0] if bad else utterance_row(p.utt, p.probed.info, p.duration_s, warnings=p.probed.warnings)
        rows.append(validation_row(row, 0 if bad else len(p.words), bool(loaded) and p.long))
    return validation_frame(rows).sort("utt_id")


def summarize(table: pl.DataFrame, cfg: AppConfig) -> dict[str, Any]:
    failed = table.filter(pl.col("status") == "failed")
    valid = table.filter(pl.col("status") == "valid")
    reasons = failed.group_by(["failure_stage", "error_type"]).len("count")
    return {
        "utterances": table.height,
        "valid": valid.height,
        "failed": failed.height,
        "failed_by_reason": reasons.sort(["count", "failure_stage"], descending=[True, False]).to_dicts(),
        "failures": failed.select("utt_id", "failure_stage", "error_type", "error_message").to_dicts(),
        "warnings": table.filter(pl.col("warnings").is_not_null()).select("utt_id", "warnings").to_dicts(),
        "hours_valid": float(valid["duration_s"].sum()) / 3600,
        "long_recordings": int(valid["long"].sum()),
        "long_threshold_s": cfg.align.long.threshold_s,
        "words_valid": int(valid["n_words"].sum()),
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"validated {s['utterances']} utterances: {s['valid']} valid, {s['failed']} would fail before the model",
        *(f"  {f['failure_stage']}: {f['error_type']} x{f['count']}" for f in s["failed_by_reason"]),
        *(f"    {f['utt_id']} [{f['failure_stage']}] {f['error_type']}: {f['error_message']}"
          for f in s["failures"][:MAX_LISTED]),
        *([f"    ... {len(s['failures']) - MAX_LISTED} more in validation.parquet"]
          if len(s["failures"]) > MAX_LISTED else []),
        *(f"  warning: {w['utt_id']}: {w['warnings']}" for w in s["warnings"][:MAX_LISTED]),
        f"valid: {s['hours_valid']:.4f} h of audio, {s['words_valid']} words; {s['long_recordings']} recordings "
        f"longer than {s['long_threshold_s']:.0f} s will be aligned window by window",
    ]  # fmt: skip
    return "\n".join(lines)


def run(cfg: AppConfig) -> ValidationResult:
    """Validate, write validation.parquet/.json/.txt into cfg.output.dir, and return the summary."""
    output_dir = Path(cfg.output.dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    table = validate_corpus(cfg)
    summary = summarize(table, cfg)
    text = format_summary(summary)
    write_parquet(table, output_dir / "validation.parquet")
    write_json(output_dir / "validation.json", summary)
    with atomic_path(output_dir / "validation.txt") as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return ValidationResult(output_dir, table, summary, text)
