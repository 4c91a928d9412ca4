"""Results -> Parquet with two fixed schemas (documented in docs/main-job.md; change both together).

`words`: one row per aligned word. `utterances`: one row per input utterance, aligned or failed.
`validation` (mode=validate): one row per input utterance, valid or failed, without the model.
Times are seconds relative to the utterance start (its `offset_s` in the audio file), clamped to
[0, duration_s]; the flags (quality.py) say where the model's answer needed clamping or repair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from corpus_aligner.audio import AudioInfo
from corpus_aligner.corpus import Utterance, printable
from corpus_aligner.errors import AlignerError
from corpus_aligner.normalize import Word
from corpus_aligner.quality import WordFlags
from corpus_aligner.records import PlacedWord
from corpus_aligner.writers import atomic_path

WORDS_SCHEMA: dict[str, Any] = {
    "utt_id": pl.String,
    "speaker": pl.String,
    "recording": pl.String,  # LibriSpeech chapter; manifest: the audio file's stem
    "word_index": pl.Int32,  # 0-based position among the utterance's aligned words
    "source_index": pl.Int32,  # index of the whitespace-separated transcript segment it came from
    "word": pl.String,  # the original text, punctuation and case kept ("Hello,")
    "token": pl.String,  # the cleaned word the model aligned ("Hello")
    "start_s": pl.Float64,
    "end_s": pl.Float64,
    "probability": pl.Float64,  # min(start_prob, end_prob)
    "start_prob": pl.Float64,  # softmax probability of the argmax class at the start slot
    "end_prob": pl.Float64,
    "start_tick_raw": pl.Int32,  # argmax class (80 ms ticks from its window's start) before the repair
    "end_tick_raw": pl.Int32,
    "window": pl.Int32,  # the model pass that placed the word (0 unless windowed or recovered)
    "window_start_s": pl.Float64,  # where that pass's audio starts in the utterance
    "repaired": pl.Boolean,  # the monotonic repair moved a raw time
    "repair_shift_s": pl.Float64,  # by how much (the larger of start and end)
    "zero_length": pl.Boolean,  # start_s == end_s
    "identical_run": pl.Boolean,  # same (start_s, end_s) as a neighbouring word
    "beyond_end": pl.Boolean,  # the model put a time after the end of the audio it saw (clamped)
    "low_probability": pl.Boolean,  # probability below align.low_probability
    "collapsed_tail": pl.Boolean,  # part of the utterance's collapsed tail
    "flagged": pl.Boolean,  # any of the flags above
}

UTTERANCES_SCHEMA: dict[str, Any] = {
    "utt_id": pl.String,
    "speaker": pl.String,
    "recording": pl.String,
    "part": pl.String,  # LibriSpeech subset (dev-clean, ...); null for manifests
    "audio_path": pl.String,  # absolute
    "offset_s": pl.Float64,  # start of the utterance in the audio file
    "duration_s": pl.Float64,  # null if the audio could not be probed
    "sample_rate_hz": pl.Int32,  # of the file, before resampling to 16 kHz
    "channels": pl.Int32,
    "language": pl.String,
    "transcript": pl.String,  # as given
    "n_words": pl.Int32,  # rows in words.parquet (0 when failed)
    "status": pl.String,  # "aligned" | "failed"
    "failure_stage": pl.String,  # read | probe | normalize | load | align; null when aligned
    "error_type": pl.String,  # the AlignerError subclass, e.g. TruncatedAudioError
    "error_message": pl.String,
    "warnings": pl.String,  # e.g. an extension that lies about the content; "; "-joined, null if none
    "windows": pl.Int32,  # model passes (1; more for long recordings and recovered tails; 0 if failed)
    "flagged_share": pl.Float64,  # share of the words with a quality flag (null when failed)
    "collapsed_tail_words": pl.Int32,  # words in the collapsed tail left after recovery (0: none)
    "textgrid": pl.String,  # path relative to the output folder; null when failed or disabled
}

# mode=validate: the utterance columns up to the verdict, "valid" | "failed", plus what the model would get.
VALIDATION_SCHEMA: dict[str, Any] = {
    **{k: v for k, v in UTTERANCES_SCHEMA.items() if k not in ("windows", "flagged_share", "textgrid")},
    "long": pl.Boolean,  # longer than align.long.threshold_s: aligned window by window
}

STATUSES = ("aligned", "failed")
STAGES = ("read", "probe", "normalize", "load", "align")


def words_frame(rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=WORDS_SCHEMA, orient="row")


def utterances_frame(rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=UTTERANCES_SCHEMA, orient="row")


def validation_frame(rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=VALIDATION_SCHEMA, orient="row")


def word_rows(
    utt_id: str,
    speaker: str | None,
    recording: str | None,
    words: Sequence[Word],
    placed: Sequence[PlacedWord],
    flags: Sequence[WordFlags],
) -> list[dict[str, Any]]:
    """Rows of one aligned utterance: stitched utterance times and the quality flags of each word."""
    if not len(words) == len(placed) == len(flags):
        raise ValueError(f"{utt_id}: {len(words)} words but {len(placed)} aligned words and {len(flags)} flags")
    rows = []
    for i, (word, p, f) in enumerate(zip(words, placed, flags)):
        a = p.word
        rows.append(
            {
                "utt_id": utt_id,
                "speaker": speaker,
                "recording": recording,
                "word_index": i,
                "source_index": word.source_index,
                "word": word.original,
                "token": word.token,
                "start_s": p.start_s,
                "end_s": p.end_s,
                "probability": a.probability,
                "start_prob": a.start_prob,
                "end_prob": a.end_prob,
                "start_tick_raw": a.start_tick_raw,
                "end_tick_raw": a.end_tick_raw,
                "window": p.window,
                "window_start_s": p.offset_s,
                "repaired": f.repaired,
                "repair_shift_s": f.repair_shift_s,
                "zero_length": f.zero_length,
                "identical_run": f.identical_run,
                "beyond_end": f.beyond_end,
                "low_probability": f.low_probability,
                "collapsed_tail": f.collapsed_tail,
                "flagged": f.flagged,
            }
        )
    return rows


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an aligned utterance came out, for its utterances.parquet row."""

    n_words: int
    windows: int
    flagged_share: float
    collapsed_tail_words: int
    textgrid: str | None


def utterance_row(
    utt: Utterance,
    info: AudioInfo | None = None,
    duration_s: float | None = None,
    outcome: Outcome | None = None,
    failure: tuple[str, AlignerError] | None = None,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """The utterances.parquet row of one input utterance; `failure` is (stage, error) when it failed."""
    stage, error = failure if failure else (None, None)
    return {
        "utt_id": utt.utt_id,
        "speaker": utt.speaker,
        "recording": utt.recording,
        "part": utt.part,
        "audio_path": printable(utt.audio_path),
        "offset_s": utt.offset_s,
        "duration_s": duration_s,
        "sample_rate_hz": info.sample_rate_hz if info else None,
        "channels": info.channels if info else None,
        "language": utt.language,
        "transcript": utt.text,
        "n_words": outcome.n_words if outcome else 0,
        "status": "failed" if failure else "aligned",
        "failure_stage": stage,
        "error_type": type(error).__name__ if error is not None else None,
        "error_message": printable(str(error)) if error is not None else None,
        "warnings": "; ".join(warnings) or None,
        "windows": outcome.windows if outcome else 0,
        "flagged_share": outcome.flagged_share if outcome else None,
        "collapsed_tail_words": outcome.collapsed_tail_words if outcome else 0,
        "textgrid": outcome.textgrid if outcome else None,
    }


def validation_row(row: dict[str, Any], n_words: int, long: bool) -> dict[str, Any]:
    """A validation.parquet row from an utterance row (status "valid" unless failed)."""
    out = {k: row[k] for k in VALIDATION_SCHEMA if k in row}
    out.update(n_words=n_words, long=long, status="failed" if row["status"] == "failed" else "valid")
    return out


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Write atomically and durably (fsync before the rename): a part is either whole or absent."""
    with atomic_path(path, fsync=True) as tmp:
        frame.write_parquet(tmp)


def read_parquet(paths: Sequence[Path], schema: dict[str, Any]) -> pl.DataFrame:
    """Concatenate Parquet files, checking each against `schema` (an empty list gives an empty frame)."""
    frames = [pl.read_parquet(p) for p in paths]
    for path, frame in zip(paths, frames):
        if dict(frame.schema) != schema:
            raise ValueError(f"{path} does not have the expected schema: {dict(frame.schema)}")
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)
