"""LibriSpeech in its original layout -> Utterance records (lhotse's `prepare_librispeech`, minus the drops).

    <root>/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <root>/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt

Speaker and chapter come from the folder names, the utterance id from the transcript line, so ids
need not be numeric. Nothing is dropped: a transcript line without audio keeps the expected .flac
path (probing it fails later), and audio without a transcript line comes back with `read_error`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from corpus_aligner.corpus import Utterance, decode_text, printable, undecodable
from corpus_aligner.errors import CorpusReadError, MissingTranscriptError

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".opus", ".mp3", ".sph")


def find_parts(root: Path) -> list[str]:
    """Names of the folders under `root` laid out as <part>/<speaker>/<chapter>/, sorted."""
    if not root.is_dir():
        raise CorpusReadError(f"LibriSpeech root {root} does not exist or is not a folder")
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and any(c.is_dir() for c in p.glob("*/*"))
    )


def read_librispeech(root: Path, parts: list[str] | None = None, language: str = "English") -> list[Utterance]:
    """Every utterance of the chosen parts (all parts found under `root` when `parts` is None)."""
    available = find_parts(root)
    if not available:
        raise CorpusReadError(
            f"no LibriSpeech parts under {root}: expected <root>/<part>/<speaker>/<chapter>/*.trans.txt "
            "(root is the folder that holds dev-clean, test-clean, ...)"
        )
    chosen = available if parts is None else list(parts)
    unknown = [p for p in chosen if p not in available]
    if unknown:
        raise CorpusReadError(f"parts {unknown} not found under {root}; available: {available}")
    utterances: list[Utterance] = []
    for part in chosen:
        for chapter_dir in sorted(c for c in (root / part).glob("*/*") if c.is_dir()):
            utterances.extend(read_chapter(chapter_dir, part, language))
    return utterances


def read_transcripts(trans_file: Path) -> list[tuple[str, str, CorpusReadError | None]]:
    """(utt_id, text, error) per line, in file order. Lines look like (upper case, apostrophes only):

    1988-24833-0000 THE TWO STRAY KITTENS GRADUALLY MAKE THEMSELVES AT HOME
    1988-24833-0002 SHE DOESN'T PICK THEM UP BUT JUST HAVING THEM IN THE ROOM SURE DOESN'T GIVE HER ASTHMA

    CRLF endings, a BOM and blank lines are tolerated; an id with no text gets "" (it fails at normalize).
    A line that is not UTF-8 keeps its id (bad bytes as U+FFFD) with a TranscriptEncodingError, so one
    bad byte costs one utterance, not the chapter. A repeated id is kept (the pipeline records the repeat
    as failed rather than dropping it). An unreadable file raises CorpusReadError.
    """
    try:
        content = decode_text(trans_file.read_bytes())
    except OSError as exc:
        raise CorpusReadError(f"{trans_file}: cannot read transcript file ({exc})") from exc
    out: list[tuple[str, str, CorpusReadError | None]] = []
    for line_no, line in enumerate(content.splitlines(), start=1):
        fields = line.strip().split(maxsplit=1)
        if fields:
            error = undecodable(line, f"line {line_no} of {trans_file.name}")
            out.append((printable(fields[0]), printable(fields[1]) if len(fields) > 1 else "", error))
    return out


def read_chapter(chapter_dir: Path, part: str, language: str) -> list[Utterance]:
    """The utterances of one <speaker>/<chapter> folder: transcript lines plus stray audio files."""
    speaker, chapter = printable(chapter_dir.parent.name), printable(chapter_dir.name)
    rel_dir = f"{part}/{speaker}/{chapter}"
    audio: dict[str, Path] = {}
    # .flac first: of two files with one stem (x.flac, x.wav), the LibriSpeech one is the utterance.
    files = [p for p in chapter_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES]
    for path in sorted(files, key=lambda p: (AUDIO_SUFFIXES.index(p.suffix.lower()), p.name)):
        if audio.setdefault(printable(path.stem), path) is not path:
            log.warning("%s: ignored, %s has the same utterance id", path, audio[printable(path.stem)].name)
    trans_files = sorted(chapter_dir.glob("*.trans.txt"))
    lines: list[tuple[str, str, CorpusReadError | None]] = []
    unreadable: list[str] = []
    for trans_file in trans_files:
        try:
            lines.extend(read_transcripts(trans_file))
        except CorpusReadError as exc:  # this chapter's audio fails at read; the corpus goes on
            log.warning("%s", exc)
            unreadable.append(str(exc))
    texts = {utt_id: text for utt_id, text, _ in lines}

    def utterance(utt_id: str, path: Path, text: str, error: CorpusReadError | None = None) -> Utterance:
        return Utterance(
            utt_id=utt_id,
            audio_path=str(path.resolve()),
            text=text,
            speaker=speaker,
            recording=chapter,
            part=part,
            language=language,
            rel_dir=rel_dir,
            read_error=error,
        )

    utterances = [
        utterance(utt_id, audio.get(utt_id, chapter_dir / f"{utt_id}.flac"), text, error)
        for utt_id, text, error in lines
    ]
    expected = f"{speaker}-{chapter}.trans.txt"
    for stem, path in audio.items():
        if stem in texts:
            continue
        if unreadable:
            problem: CorpusReadError = MissingTranscriptError(f"no transcript for {path.name}: {'; '.join(unreadable)}")
        elif trans_files:
            names = ", ".join(f.name for f in trans_files)
            problem = MissingTranscriptError(f"no transcript line for {path.name} in {names}")
        else:
            problem = MissingTranscriptError(f"chapter folder {chapter_dir} has no transcript file ({expected})")
        utterances.append(utterance(stem, path, "", problem))
    return utterances
