"""Every bad-input case of the "nothing lost" issue as one manifest corpus, with how each must end.

Real files no one here wrote come from ../shared/testdata/awkward (and multilingual/ for Opus and AIFF);
the rest are generated into the test's tmp folder. `EXPECTED[utt_id]` is ("aligned", None) or
(stage, error_type). The manifest itself is written with CRLF line endings, one row holds Latin-1
bytes, and one id is used twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from corpus_aligner.testing.tiny_corpus import write_tone

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"
AWKWARD = TESTDATA / "awkward"
DIGITS_TEXT = "Dr. Smith paid $5.50 on 3/4/2021, i.e. 10% more than Mr. O'Neil's \"forty-two\"."
DIGITS_WORDS = [
    ("Dr.", "Dr"), ("Smith", "Smith"), ("paid", "paid"), ("$5.50", "550"), ("on", "on"), ("3/4/2021,", "342021"),
    ("i.e.", "ie"), ("10%", "10"), ("more", "more"), ("than", "than"), ("Mr.", "Mr"), ("O'Neil's", "O'Neil's"),
    ('"forty-two".', "fortytwo"),
]  # fmt: skip
LJ_RAW = 'the earliest book printed with movable types, the Gutenberg, or "forty-two line Bible" of about 1455,'

# utt_id: (audio (relative to testdata, or "gen:<name>"), text, extra manifest fields, expected)
CASES: dict[str, tuple[str, str, dict, tuple[str, str | None]]] = {
    # --- audio that cannot be used: a clear message and a failure row -------------------------------------
    "missing-file": ("gen:nowhere.flac", "no audio here", {}, ("probe", "MissingAudioError")),
    "zero-bytes": ("awkward/corrupt/aeneas_mono.empty.wav", "hello", {}, ("probe", "UnsupportedAudioError")),
    "header-only": ("awkward/corrupt/aeneas_mono.zero.wav", "hello", {}, ("probe", "EmptyAudioError")),
    "header-only-2": ("awkward/corrupt/pocketsphinx_null.wav", "hello", {}, ("probe", "EmptyAudioError")),
    "bogus-chunk": ("awkward/corrupt/pocketsphinx_bad.wav", "hello", {}, ("probe", "UnsupportedAudioError")),
    "garbage-chunk": ("awkward/corrupt/pocketsphinx_evil.wav", "hello", {}, ("probe", "UnsupportedAudioError")),
    "not-a-wav": ("awkward/corrupt/aeneas_mono.invalid.wav", "hello", {}, ("probe", "UnsupportedAudioError")),
    "truncated-flac": ("awkward/corrupt/truncated_2412-153948-0000.flac", "it will be seen", {},
                       ("probe", "TruncatedAudioError")),
    "truncated-wav": ("awkward/corrupt/truncated_LDC93S1.wav", "she had your dark suit", {},
                      ("probe", "TruncatedAudioError")),
    "truncated-mp3": ("awkward/corrupt/truncated_common_voice_en_22058264.mp3", "no", {},
                      ("probe", "TruncatedAudioError")),
    "m4a": ("awkward/containers/ej-fra.m4a", "bonjour", {"language": "fr"}, ("probe", "UnsupportedAudioError")),
    "absurd-rate": ("awkward/corrupt/pocketsphinx_awful.wav", "hello", {}, ("probe", "CorruptAudioError")),
    "too-short": ("gen:50ms.wav", "hi", {}, ("probe", "TooShortError")),
    "no-channel-1": ("awkward/sample_rates/bobby_16bit_16khz.wav", "BOBBY", {"channel": 1},
                     ("probe", "ChannelError")),
    "nan": ("gen:nan.wav", "not a number", {}, ("load", "NonFiniteAudioError")),
    "inf": ("gen:inf.wav", "infinity", {}, ("load", "NonFiniteAudioError")),
    "silence": ("gen:silence.flac", "nothing said", {}, ("load", "SilentAudioError")),
    # --- formats that must align ---------------------------------------------------------------------------
    "extension-lies": ("awkward/containers/mp3_with_flac_extension.flac", "no", {}, ("aligned", None)),
    "pcm-u8": ("awkward/encodings/audio-mono-8-bit-44100Hz.wav", "one two three", {}, ("aligned", None)),
    "pcm-24": ("awkward/encodings/cold_corpus_24bit.wav", "uh so this is the sick corpus", {}, ("aligned", None)),
    "float-32": ("awkward/encodings/cold_corpus_32bit_float.wav", "uh so this is", {}, ("aligned", None)),
    "pcm-32-48k": ("awkward/sample_rates/bobby_32bit_48khz.wav", "BOBBY RIPPED THE LEDGER", {}, ("aligned", None)),
    "mp3-48k": ("awkward/sample_rates/common_voice_en_22058266.mp3", "Fire fox", {}, ("aligned", None)),
    "ogg-vorbis": ("awkward/containers/5703-47212-0000.ogg", "a librispeech utterance", {}, ("aligned", None)),
    "opus": ("multilingual/es/mls_13697_11991_000000.opus", "la sorpresa y el disgusto", {"language": "es"},
             ("aligned", None)),
    "aiff": ("multilingual/fr/french.aiff", "si la dictée numéro un", {"language": "fr"}, ("aligned", None)),
    "stereo-mean": ("awkward/stereo/jfk.flac", "And so my fellow Americans, ask not", {}, ("aligned", None)),
    "stereo-ch0": ("awkward/stereo/stereo_diarization.wav", "HE BEGAN A CONFUSED COMPLAINT", {"channel": 0},
                   ("aligned", None)),
    "stereo-ch1": ("awkward/stereo/stereo_diarization.wav", "The horizon seems extremely distant.", {"channel": 1},
                   ("aligned", None)),
    # --- transcripts ---------------------------------------------------------------------------------------
    "empty-text": ("gen:tone1.flac", "", {}, ("normalize", "EmptyTranscriptError")),
    "blank-text": ("gen:tone1.flac", "  \t ", {}, ("normalize", "EmptyTranscriptError")),
    "only-punctuation": ("gen:tone1.flac", "?! -- ... «»", {}, ("normalize", "NoAlignableWordsError")),
    "only-symbols": ("gen:tone1.flac", "♪ ♫ & % $ @ #", {}, ("normalize", "NoAlignableWordsError")),
    "too-many-words": ("gen:400ms.flac", " ".join(["word"] * 12), {}, ("normalize", "TooManyWordsError")),
    "digits": ("gen:tone4.flac", DIGITS_TEXT, {}, ("aligned", None)),
    "lj-raw": ("awkward/transcripts/LJ001-0007.wav", LJ_RAW, {}, ("aligned", None)),
    "dup": ("gen:tone1.flac", "first of two", {}, ("aligned", None)),
    "dup#2": ("gen:tone1.flac", "second of two", {"utt_id": "dup"}, ("read", "DuplicateIdError")),
    "latin1": ("gen:tone1.flac", "caf\xe9", {}, ("read", "TranscriptEncodingError")),
    "bad-offset": ("gen:tone1.flac", "after the end", {"offset": 5.0}, ("probe", "EmptyAudioError")),
}  # fmt: skip
EXPECTED = {utt_id: case[3] for utt_id, case in CASES.items()}


def _generate(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, bad in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        wave = (0.1 * rng.standard_normal(16000)).astype(np.float32)
        wave[8000] = bad
        sf.write(folder / name, wave, 16000, subtype="FLOAT")
    sf.write(folder / "silence.flac", np.zeros(32000, dtype=np.int16), 16000)
    write_tone(folder / "50ms.wav", 0.05)
    write_tone(folder / "400ms.flac", 0.4)
    write_tone(folder / "tone1.flac", 1.0)
    write_tone(folder / "tone4.flac", 4.0, rate=22050)


def awkward_manifest(folder: Path) -> Path:
    """Write the corpus into `folder` and return its manifest (JSON lines, CRLF endings, one Latin-1 row)."""
    _generate(folder / "gen")
    lines: list[bytes] = []
    for utt_id, (audio, text, extra, _) in CASES.items():
        path = str(folder / "gen" / audio[4:]) if audio.startswith("gen:") else str(TESTDATA / audio)
        row = {"audio_filepath": path, "text": text, "utt_id": utt_id, **extra}
        line = json.dumps(row, ensure_ascii=False)
        lines.append(line.encode("latin-1") if utt_id == "latin1" else line.encode("utf-8"))
    manifest = folder / "awkward.jsonl"
    manifest.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return manifest
