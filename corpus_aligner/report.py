"""Alignment statistics over the output tables: JSON for machines, a short text for people.

Counts utterances aligned/failed by reason, hours of audio, this run's throughput, per-speaker
distributions of word duration and speaking rate, and suspicious words (zero length, runs of
identical times, times the model put beyond the audio end).
"""

from __future__ import annotations

from typing import Any

import polars as pl

QUANTILES = {"p10": 0.1, "median": 0.5, "p90": 0.9}
MAX_SPEAKERS_IN_TEXT = 20
UNKNOWN_SPEAKER = "(unknown)"


def _distribution(column: pl.Expr, prefix: str) -> list[pl.Expr]:
    exprs = [column.mean().alias(f"{prefix}_mean")]
    exprs += [column.quantile(q, interpolation="linear").alias(f"{prefix}_{k}") for k, q in QUANTILES.items()]
    return exprs


def per_speaker(words: pl.DataFrame, utterances: pl.DataFrame) -> list[dict[str, Any]]:
    """One dict per speaker: utterances, words, audio seconds, word duration and speaking rate stats."""
    aligned = utterances.filter(pl.col("status") == "aligned").with_columns(
        pl.col("speaker").fill_null(UNKNOWN_SPEAKER),
        (pl.col("n_words") / pl.col("duration_s")).alias("rate"),
    )
    by_utt = aligned.group_by("speaker").agg(
        pl.len().alias("utterances"),
        pl.col("n_words").sum().alias("words"),
        pl.col("duration_s").sum().alias("audio_s"),
        *_distribution(pl.col("rate"), "speaking_rate_wps"),
    )
    by_word = (
        words.with_columns(
            pl.col("speaker").fill_null(UNKNOWN_SPEAKER), (pl.col("end_s") - pl.col("start_s")).alias("d")
        )
        .group_by("speaker")
        .agg(*_distribution(pl.col("d"), "word_duration_s"))
    )
    table = by_utt.join(by_word, on="speaker", how="left").sort(["audio_s", "speaker"], descending=[True, False])
    return table.to_dicts()


def build_report(words: pl.DataFrame, utterances: pl.DataFrame, this_run: dict[str, Any]) -> dict[str, Any]:
    """Statistics of everything in the output tables, plus the figures of this run."""
    status = utterances["status"]
    failed = utterances.filter(pl.col("status") == "failed")
    reasons = (
        failed.group_by(["failure_stage", "error_type"])
        .len("count")
        .sort(["count", "failure_stage"], descending=[True, False])
    )
    durations = utterances["duration_s"].fill_null(0.0)
    aligned_s = float(utterances.filter(pl.col("status") == "aligned")["duration_s"].sum())
    return {
        "utterances": {
            "total": utterances.height,
            "aligned": int((status == "aligned").sum()),
            "failed": int((status == "failed").sum()),
            "failed_by_reason": reasons.to_dicts(),
        },
        "audio": {"hours_total": float(durations.sum()) / 3600, "hours_aligned": aligned_s / 3600},
        "words": {
            "total": words.height,
            "zero_length": int(words["zero_length"].sum()),
            "identical_run": int(words["identical_run"].sum()),
            "beyond_end": int(words["beyond_end"].sum()),
            "repaired": int(words["repaired"].sum()),
        },
        "this_run": this_run,
        "per_speaker": per_speaker(words, utterances),
    }


def _stat(value: Any, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def format_report(report: dict[str, Any]) -> str:
    """A readable summary of `build_report`'s dict (at most MAX_SPEAKERS_IN_TEXT speakers)."""
    u, a, w, r = report["utterances"], report["audio"], report["words"], report["this_run"]
    lines = [
        f"utterances: {u['total']} ({u['aligned']} aligned, {u['failed']} failed)",
        *(f"  failed at {f['failure_stage']}: {f['error_type']} x{f['count']}" for f in u["failed_by_reason"]),
        f"audio: {a['hours_total']:.4f} h in total, {a['hours_aligned']:.4f} h aligned",
        f"this run: {r['utterances_processed']} utterances, {r['audio_s_processed']:.1f} s of audio in "
        f"{r['wall_s']:.1f} s; throughput {_stat(r['throughput_audio_s_per_s'], '.2f')} audio s/s",
        f"words: {w['total']}; suspicious: {w['zero_length']} zero-length, {w['identical_run']} in runs of "
        f"identical times, {w['beyond_end']} beyond the audio end ({w['repaired']} repaired for monotonicity)",
        "per speaker: utts  words  audio_s  word_dur_s(p10/median/p90)  rate_wps(p10/median/p90)",
    ]
    speakers = report["per_speaker"]
    for s in speakers[:MAX_SPEAKERS_IN_TEXT]:
        lines.append(
            f"  {s['speaker']:>10} {s['utterances']:5d} {s['words']:6d} {s['audio_s']:8.1f}  "
            f"{_stat(s['word_duration_s_p10'])}/{_stat(s['word_duration_s_median'])}/{_stat(s['word_duration_s_p90'])}"
            f"  {_stat(s['speaking_rate_wps_p10'], '.2f')}/{_stat(s['speaking_rate_wps_median'], '.2f')}"
            f"/{_stat(s['speaking_rate_wps_p90'], '.2f')}"
        )
    if len(speakers) > MAX_SPEAKERS_IN_TEXT:
        lines.append(f"  ... {len(speakers) - MAX_SPEAKERS_IN_TEXT} more speakers in report.json")
    return "\n".join(lines)
