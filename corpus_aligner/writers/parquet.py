"""Results -> Parquet with two fixed schemas (documented in docs/main-job.md; change both together).

`words`: one row per aligned word. `utterances`: one row per input utterance, aligned or failed.
Times are seconds relative to the utterance start (its `offset_s` in the audio file), clamped to
[0, duration_s]; the flags say where the model's answer needed clamping or repair.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from corpus_aligner.audio import AudioInfo
from corpus_aligner.corpus import Utterance
from corpus_aligner.errors import AlignerError
from corpus_aligner.normalize import Word
from corpus_aligner.records import AlignedWord
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
    "start_tick_raw": pl.Int32,  # argmax class (80 ms ticks) before the monotonic repair
    "end_tick_raw": pl.Int32,
    "repaired": pl.Boolean,  # the monotonic repair moved a raw time
    "zero_length": pl.Boolean,  # start_s == end_s
    "identical_run": pl.Boolean,  # same (start_s, end_s) as a neighbouring word
    "beyond_end": pl.Boolean,  # the model put a time after the audio end (clamped to duration_s)
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
    "error_type": pl.String,  # the AlignerError subclass, e.g. AudioError
    "error_message": pl.String,
    "textgrid": pl.String,  # path relative to the output folder; null when failed or disabled
}

STATUSES = ("aligned", "failed")
STAGES = ("read", "probe", "normalize", "load", "align")


def words_frame(rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=WORDS_SCHEMA, orient="row")


def utterances_frame(rows: Sequence[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=UTTERANCES_SCHEMA, orient="row")


def word_rows(
    utt_id: str,
    speaker: str | None,
    recording: str | None,
    words: Sequence[Word],
    aligned: Sequence[AlignedWord],
    duration_s: float,
    tick_ms: float,
) -> list[dict[str, Any]]:
    """Rows of one aligned utterance: times clamped into [0, duration_s], quality flags set."""
    if len(words) != len(aligned):
        raise ValueError(f"{utt_id}: {len(words)} words but {len(aligned)} aligned words")
    spans = [(min(max(a.start_s, 0.0), duration_s), min(max(a.end_s, 0.0), duration_s)) for a in aligned]
    rows = []
    for i, (word, a, (start, end)) in enumerate(zip(words, aligned, spans)):
        same_as_neighbour = (i > 0 and spans[i - 1] == (start, end)) or (
            i + 1 < len(spans) and spans[i + 1] == (start, end)
        )
        raw = (round(a.start_tick_raw * tick_ms / 1000.0, 3), round(a.end_tick_raw * tick_ms / 1000.0, 3))
        rows.append(
            {
                "utt_id": utt_id,
                "speaker": speaker,
                "recording": recording,
                "word_index": i,
                "source_index": word.source_index,
                "word": word.original,
                "token": word.token,
                "start_s": start,
                "end_s": end,
                "probability": a.probability,
                "start_prob": a.start_prob,
                "end_prob": a.end_prob,
                "start_tick_raw": a.start_tick_raw,
                "end_tick_raw": a.end_tick_raw,
                "repaired": raw != (a.start_s, a.end_s),
                "zero_length": start == end,
                "identical_run": same_as_neighbour,
                "beyond_end": max(a.start_s, a.end_s) > duration_s,
            }
        )
    return rows


def utterance_row(
    utt: Utterance,
    info: AudioInfo | None = None,
    duration_s: float | None = None,
    n_words: int = 0,
    failure: tuple[str, AlignerError] | None = None,
    textgrid: str | None = None,
) -> dict[str, Any]:
    """The utterances.parquet row of one input utterance; `failure` is (stage, error) when it failed."""
    stage, error = failure if failure else (None, None)
    return {
        "utt_id": utt.utt_id,
        "speaker": utt.speaker,
        "recording": utt.recording,
        "part": utt.part,
        "audio_path": utt.audio_path,
        "offset_s": utt.offset_s,
        "duration_s": duration_s,
        "sample_rate_hz": info.sample_rate_hz if info else None,
        "channels": info.channels if info else None,
        "language": utt.language,
        "transcript": utt.text,
        "n_words": n_words,
        "status": "failed" if failure else "aligned",
        "failure_stage": stage,
        "error_type": type(error).__name__ if error is not None else None,
        "error_message": str(error) if error is not None else None,
        "textgrid": textgrid,
    }


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
