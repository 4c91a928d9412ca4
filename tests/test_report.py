"""Report statistics over planted tables: every figure is known in advance (pytest tests/test_report.py)."""

from __future__ import annotations

import pytest

from corpus_aligner.report import MAX_FAILURES_IN_TEXT, MAX_SPEAKERS_IN_TEXT, build_report, format_report
from corpus_aligner.writers.parquet import utterances_frame, words_frame

THIS_RUN = {
    "utterances_processed": 4,
    "audio_s_processed": 6.0,
    "batches": 1,
    "padding_fraction": 0.0,
    "throughput_audio_s_per_s": 3.0,
    "wall_s": 2.5,
}


def utt(utt_id: str, speaker: str | None, duration: float | None, n_words: int, failure=None, **quality) -> dict:
    row = {"utt_id": utt_id, "speaker": speaker, "audio_path": "/x", "offset_s": 0.0, "duration_s": duration,
           "language": "English", "transcript": "", "n_words": n_words, "status": "aligned", "windows": 1,
           "flagged_share": 0.0, "collapsed_tail_words": 0, **quality}  # fmt: skip
    if failure:
        row |= {"status": "failed", "failure_stage": failure[0], "error_type": failure[1],
                "error_message": f"m {utt_id}", "windows": 0, "flagged_share": None}  # fmt: skip
    return row


FLAGS = ("zero_length", "identical_run", "beyond_end", "repaired", "low_probability", "collapsed_tail")


def word(utt_id: str, speaker: str | None, i: int, start: float, end: float, shift: float = 0.0, **flags) -> dict:
    flags = {f: False for f in FLAGS} | {"zero_length": start == end} | flags
    return {"utt_id": utt_id, "speaker": speaker, "word_index": i, "word": "w", "token": "w", "start_s": start,
            "end_s": end, "repair_shift_s": shift, **flags, "flagged": any(flags.values())}  # fmt: skip


def planted():
    utterances = utterances_frame(
        [
            utt("a1", "A", 2.0, 4),  # 2 words/s
            utt("a2", "A", 1.0, 4),  # 4 words/s
            utt("b1", None, 3.0, 3, windows=3, flagged_share=1.0, collapsed_tail_words=2, warnings="w"),  # 1 word/s
            utt("f1", "A", 5.0, 0, ("probe", "TooLongError")),
            utt("f2", "B", None, 0, ("probe", "AudioError")),
            utt("f3", "B", None, 0, ("probe", "AudioError")),
            utt("f4", "B", 1.0, 0, ("normalize", "TranscriptError")),
        ]
    )
    words = words_frame(
        [word("a1", "A", i, 0.1 * i, 0.1 * i + 0.1) for i in range(4)]  # 0.1 s each
        + [word("a2", "A", i, 0.2 * i, 0.2 * i + 0.2) for i in range(4)]  # 0.2 s each
        + [
            word("b1", None, 0, 1.0, 1.0, 0.4, identical_run=True, repaired=True, collapsed_tail=True),
            word("b1", None, 1, 1.0, 1.0, 0.2, identical_run=True, repaired=True, collapsed_tail=True),
            word("b1", None, 2, 2.0, 3.0, beyond_end=True, low_probability=True),
        ]
    )
    return words, utterances


def test_counts_hours_and_suspicious_words() -> None:
    report = build_report(*planted(), THIS_RUN)
    assert report["utterances"] == {
        "total": 7,
        "aligned": 3,
        "failed": 4,
        "failed_by_reason": [
            {"failure_stage": "probe", "error_type": "AudioError", "count": 2},
            {"failure_stage": "normalize", "error_type": "TranscriptError", "count": 1},
            {"failure_stage": "probe", "error_type": "TooLongError", "count": 1},
        ],
        "failures": [
            {"utt_id": f"f{i}", "failure_stage": stage, "error_type": kind, "error_message": f"m f{i}"}
            for i, (stage, kind) in enumerate(
                [
                    ("probe", "TooLongError"),
                    ("probe", "AudioError"),
                    ("probe", "AudioError"),
                    ("normalize", "TranscriptError"),
                ],
                start=1,
            )
        ],
        "with_warnings": 1,
    }
    assert report["audio"] == pytest.approx({"hours_total": 12.0 / 3600, "hours_aligned": 6.0 / 3600})
    assert report["words"] == pytest.approx(
        {"total": 11, "zero_length": 2, "identical_run": 2, "beyond_end": 1, "repaired": 2, "low_probability": 1,
         "collapsed_tail": 2, "flagged": 3, "repair_shift_s_max": 0.4, "repair_shift_s_mean": 0.3}
    )  # fmt: skip
    assert report["quality"] == pytest.approx(
        {"utterances_with_collapsed_tail": 1, "collapsed_tail_words": 2, "utterances_with_several_passes": 1,
         "model_passes": 5, "flagged_share_mean": 1 / 3}
    )  # fmt: skip
    assert report["this_run"] == THIS_RUN


def test_per_speaker_distributions() -> None:
    """Speaking rate is words per audio second per utterance; word duration is end - start per word."""
    speakers = {s["speaker"]: s for s in build_report(*planted(), THIS_RUN)["per_speaker"]}
    assert set(speakers) == {"A", "(unknown)"}  # B has no aligned utterance
    a = speakers["A"]
    assert (a["utterances"], a["words"], a["audio_s"]) == (2, 8, 3.0)
    assert a["speaking_rate_wps_mean"] == pytest.approx(3.0)
    assert (a["speaking_rate_wps_p10"], a["speaking_rate_wps_p90"]) == pytest.approx((2.2, 3.8))
    assert a["word_duration_s_mean"] == pytest.approx(0.15)
    assert a["word_duration_s_median"] == pytest.approx(0.15)
    unknown = speakers["(unknown)"]
    assert unknown["speaking_rate_wps_median"] == pytest.approx(1.0)
    assert unknown["word_duration_s_mean"] == pytest.approx(1.0 / 3)
    assert [s["speaker"] for s in build_report(*planted(), THIS_RUN)["per_speaker"]] == ["(unknown)", "A"]


def test_text_summary_for_people() -> None:
    text = format_report(build_report(*planted(), THIS_RUN))
    assert "utterances: 7 (3 aligned, 4 failed)" in text
    assert "failed at probe: AudioError x2" in text
    assert "    f4 [normalize] TranscriptError: m f4" in text  # every failure named, with stage and reason
    assert "throughput 3.00 audio s/s" in text
    assert "words: 11; flagged 3: 2 zero-length, 2 in runs of identical times, 1 beyond the audio end" in text
    assert "1 low-probability, 2 in collapsed tails, 2 repaired for monotonicity (moved up to 0.40 s)" in text
    assert "1 with a collapsed tail, 1 aligned in several passes" in text
    assert "(unknown)" in text


def test_empty_tables_and_many_speakers() -> None:
    """A run where nothing aligned still reports; the text lists at most MAX_SPEAKERS_IN_TEXT speakers."""
    empty = build_report(words_frame([]), utterances_frame([]), {**THIS_RUN, "throughput_audio_s_per_s": None})
    assert empty["utterances"]["total"] == 0 and empty["per_speaker"] == []
    assert "throughput - audio s/s" in format_report(empty)
    n = MAX_SPEAKERS_IN_TEXT + 3
    many = build_report(words_frame([]), utterances_frame([utt(f"u{i}", f"s{i}", 1.0, 1) for i in range(n)]), THIS_RUN)
    assert len(many["per_speaker"]) == n
    assert "... 3 more speakers in report.json" in format_report(many)
    failures = [utt(f"f{i:03d}", None, 1.0, 0, ("probe", "AudioError")) for i in range(MAX_FAILURES_IN_TEXT + 2)]
    text = format_report(build_report(words_frame([]), utterances_frame(failures), THIS_RUN))
    assert "f049 [probe]" in text and "f050" not in text
    assert "... 2 more in utterances.parquet and report.json" in text
