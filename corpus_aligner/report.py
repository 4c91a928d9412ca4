"""Alignment statistics over the output tables: JSON for machines, a short text for people.

Counts utterances aligned/failed by reason and names every failure (utterance, stage, reason), hours
of audio, this run's throughput, per-speaker distributions of word duration and speaking rate, and the
quality flags (quality.py): suspicious words by kind, utterances with a collapsed tail, windowed ones.
"""

from __future__ import annotations

from typing import Any

import polars as pl

QUANTILES = {"p10": 0.1, "median": 0.5, "p90": 0.9}
MAX_SPEAKERS_IN_TEXT = 20
MAX_FAILURES_IN_TEXT = 50
WORD_FLAGS = ("zero_length", "identical_run", "beyond_end", "repaired", "low_probability", "collapsed_tail", "flagged")
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
    aligned = utterances.filter(pl.col("status") == "aligned")
    repaired = words.filter(pl.col("repaired"))
    return {
        "utterances": {
            "total": utterances.height,
            "aligned": int((status == "aligned").sum()),
            "failed": int((status == "failed").sum()),
            "failed_by_reason": reasons.to_dicts(),
            "failures": failed.select("utt_id", "failure_stage", "error_type", "error_message").to_dicts(),
            "with_warnings": int(utterances["warnings"].is_not_null().sum()),
        },
        "audio": {
            "hours_total": float(durations.sum()) / 3600,
            "hours_aligned": float(aligned["duration_s"].sum()) / 3600,
        },
        "words": {
            "total": words.height,
            **{flag: int(words[flag].sum()) for flag in WORD_FLAGS},
            "repair_shift_s_max": float(repaired["repair_shift_s"].max() or 0.0),  # type: ignore[arg-type]
            "repair_shift_s_mean": float(repaired["repair_shift_s"].mean() or 0.0),  # type: ignore[arg-type]
        },
        "quality": {
            "utterances_with_collapsed_tail": int((aligned["collapsed_tail_words"] > 0).sum()),
            "collapsed_tail_words": int(aligned["collapsed_tail_words"].sum()),
            "utterances_with_several_passes": int((aligned["windows"] > 1).sum()),
            "model_passes": int(aligned["windows"].sum()),
            "flagged_share_mean": float(aligned["flagged_share"].mean() or 0.0),  # type: ignore[arg-type]
        },
        "this_run": this_run,
        "per_speaker": per_speaker(words, utterances),
    }


def _stat(value: Any, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def format_report(report: dict[str, Any]) -> str:
    """A readable summary of `build_report`'s dict (at most MAX_SPEAKERS_IN_TEXT speakers)."""
    u, a, w, r, q = report["utterances"], report["audio"], report["words"], report["this_run"], report["quality"]
    failures = u["failures"]
    lines = [
        f"utterances: {u['total']} ({u['aligned']} aligned, {u['failed']} failed)",
        *(f"  failed at {f['failure_stage']}: {f['error_type']} x{f['count']}" for f in u["failed_by_reason"]),
        *(f"    {f['utt_id']} [{f['failure_stage']}] {f['error_type']}: {f['error_message']}"
          for f in failures[:MAX_FAILURES_IN_TEXT]),
        *([f"    ... {len(failures) - MAX_FAILURES_IN_TEXT} more in utterances.parquet and report.json"]
          if len(failures) > MAX_FAILURES_IN_TEXT else []),
        *([f"  {u['with_warnings']} with warnings (the `warnings` column)"] if u["with_warnings"] else []),
        f"audio: {a['hours_total']:.4f} h in total, {a['hours_aligned']:.4f} h aligned",
        f"this run: {r['utterances_processed']} utterances, {r['audio_s_processed']:.1f} s of audio in "
        f"{r['wall_s']:.1f} s; throughput {_stat(r['throughput_audio_s_per_s'], '.2f')} audio s/s",
        f"words: {w['total']}; flagged {w['flagged']}: {w['zero_length']} zero-length, {w['identical_run']} in runs "
        f"of identical times, {w['beyond_end']} beyond the audio end, {w['low_probability']} low-probability, "
        f"{w['collapsed_tail']} in collapsed tails, {w['repaired']} repaired for monotonicity "
        f"(moved up to {w['repair_shift_s_max']:.2f} s)",
        f"utterances: {q['utterances_with_collapsed_tail']} with a collapsed tail, "
        f"{q['utterances_with_several_passes']} aligned in several passes (windows or tail recovery), "
        f"mean flagged share {q['flagged_share_mean']:.3f}",
        "per speaker: utts  words  audio_s  word_dur_s(p10/median/p90)  rate_wps(p10/median/p90)",
    ]  # fmt: skip
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
