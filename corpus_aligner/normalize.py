"""Transcript -> the official word list, plus where each word came from (model.md §4.1).

`split_words` reimplements qwen_asr `Qwen3ForceAlignProcessor.encode_timestamp`'s word list
(clean_token, split_segment_with_chinese, tokenize_space_lang / tokenize_japanese (nagisa) /
tokenize_korean (soynlp LTokenizer, reimplemented, with the official dictionary)). `split_transcript`
yields the same tokens with the raw input text each one came from, so outputs keep the user's words.
Unlike the official code, language codes ("ja", "ko") select the Japanese/Korean tokenizers.

Japanese quirks kept from nagisa 0.2.11: words come from the NFKC form of the text, so one raw char
can become several words (each then has that char as its original); and nagisa can drop an unfinished
last word ("Àかか" -> ["À"]): that text is not aligned, and joins the last word's original.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from typing import Any

# The aligner's 11 languages (config.json `support_languages`) and the codes and spellings accepted for them.
_ALIASES: dict[str, tuple[str, ...]] = {
    "English": ("en", "eng"),
    "Chinese": ("zh", "zho", "chi", "cmn", "mandarin"),
    "Cantonese": ("yue", "zh-yue"),
    "German": ("de", "deu", "ger"),
    "Spanish": ("es", "spa"),
    "French": ("fr", "fra", "fre"),
    "Italian": ("it", "ita"),
    "Portuguese": ("pt", "por"),
    "Russian": ("ru", "rus"),
    "Korean": ("ko", "kor"),
    "Japanese": ("ja", "jpn", "jp"),
}
_LANGUAGES = {key: name for name, codes in _ALIASES.items() for key in (name.lower(), *codes)}
_SEGMENT = re.compile(r"\S+")  # the same segments as str.split(): both use Python's Unicode whitespace


def canonical_language(language: str | None) -> str:
    """Official language name for a name or ISO code ("ja", "jpn", "ja_JP", "korean"); None is English.

    Unknown strings come back unchanged: like the official code, they take the space-language path.
    """
    if language is None:
        return "English"
    key = language.strip().lower().replace("_", "-")
    return _LANGUAGES.get(key) or _LANGUAGES.get(key.split("-")[0]) or language


def is_kept_char(ch: str) -> bool:
    """The official filter: ASCII apostrophe, letters (L*) and numbers (N*); marks M* are dropped."""
    return ch == "'" or unicodedata.category(ch)[0] in "LN"


def clean_token(s: str) -> str:
    """`s` without the characters the official aligner deletes (punctuation, symbols, spaces, marks)."""
    return "".join(ch for ch in s if is_kept_char(ch))


def is_cjk_char(ch: str) -> bool:
    """CJK Unified Ideographs, Extensions A-E and Compatibility Ideographs (not kana, not Hangul)."""
    code = ord(ch)
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2B73F
        or 0x2B740 <= code <= 0x2B81F
        or 0x2B820 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF
    )


def _cjk_spans(cleaned: str) -> list[tuple[int, int]]:
    """`split_segment_with_chinese` as spans: each ideograph alone, each run of other chars together."""
    spans: list[tuple[int, int]] = []
    run_start = 0
    for i, ch in enumerate(cleaned):
        if is_cjk_char(ch):
            if run_start < i:
                spans.append((run_start, i))
            spans.append((i, i + 1))
            run_start = i + 1
    if run_start < len(cleaned):
        spans.append((run_start, len(cleaned)))
    return spans


@functools.cache
def _korean_tokenizer() -> Any:
    """soynlp `LTokenizer` scored with the official dictionary (first field of each non-empty line: 1.0),
    built once, as the official `tokenize_korean` does lazily."""
    from soynlp.tokenizer import LTokenizer

    path = resources.files("corpus_aligner").joinpath("assets/korean_dict_jieba.dict")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").split("\n"))
    return LTokenizer(scores={line.split()[0]: 1.0 for line in lines if line})


def _korean_spans(eojeol: str) -> list[tuple[int, int]]:
    """soynlp `LTokenizer.tokenize` on one eojeol (L then R), as character spans of the eojeol."""
    spans, start = [], 0
    for piece in _korean_tokenizer().tokenize(eojeol):
        spans.append((start, start + len(piece)))
        start += len(piece)
    return spans


def _nagisa_words(text: str) -> list[str]:
    # Lazy: nagisa is slow to load, prints [dynet] lines, and its DyNet import turns on the CPU's
    # flush-to-zero/denormals-are-zero modes for the rest of the process (the official code imports it always).
    import nagisa

    return list(nagisa.tagging(text).words)


def split_words(text: str, language: str | None) -> list[str]:
    """The official word list the model sees for `text` (two <timestamp> slots follow each word)."""
    lang = canonical_language(language).lower()
    if lang == "japanese":
        return [c for c in map(clean_token, _nagisa_words(text)) if c]
    if lang == "korean":
        pieces = (e[a:b] for e in text.split() for a, b in _korean_spans(e))
        return [c for c in map(clean_token, pieces) if c]
    words: list[str] = []
    for segment in text.split():
        cleaned = clean_token(segment)
        words.extend(cleaned[a:b] for a, b in _cjk_spans(cleaned))
    return words


@dataclass(frozen=True, slots=True)
class Word:
    """One word the model sees (`token`) and the raw input it came from.

    `original` is the raw substring of the input, with the punctuation of its whitespace segment
    attached ("Hello," for token "Hello"; leading punctuation goes to the segment's first word, the
    rest to the preceding word). `source_index` is the index of the input's whitespace segment
    (for Japanese: of the nagisa word).
    """

    token: str
    original: str
    source_index: int


@dataclass(frozen=True, slots=True)
class _Piece:
    token: str
    core: tuple[int, int]  # raw span from the first to the last kept char of the token
    source_index: int


def _kept_core(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Raw span of the kept chars of text[start:end], or None if it has none."""
    kept = [i for i in range(start, end) if is_kept_char(text[i])]
    return (kept[0], kept[-1] + 1) if kept else None


def _space_pieces(text: str) -> list[_Piece]:
    pieces: list[_Piece] = []
    for index, match in enumerate(_SEGMENT.finditer(text)):
        kept = [i for i in range(match.start(), match.end()) if is_kept_char(text[i])]
        cleaned = "".join(text[i] for i in kept)
        pieces.extend(_Piece(cleaned[a:b], (kept[a], kept[b - 1] + 1), index) for a, b in _cjk_spans(cleaned))
    return pieces


def _korean_pieces(text: str) -> list[_Piece]:
    pieces: list[_Piece] = []
    for index, match in enumerate(_SEGMENT.finditer(text)):
        for a, b in _korean_spans(match.group()):
            start, end = match.start() + a, match.start() + b
            core = _kept_core(text, start, end)
            if core is not None:
                pieces.append(_Piece(clean_token(text[start:end]), core, index))
    return pieces


def _nfkc_spans(text: str) -> tuple[str, list[tuple[int, int]]]:
    """NFKC(text) and, for each of its chars, the raw span it came from.

    Chunks start at a char whose decomposition starts with a starter and which does not compose
    with what precedes it, so NFKC works chunk by chunk; if that ever fails, one chunk is used.
    """
    bounds = [0]
    for i in range(1, len(text)):
        starter = unicodedata.combining(unicodedata.normalize("NFKD", text[i])[0]) == 0
        left = text[bounds[-1] : i]
        if starter and unicodedata.normalize("NFKC", left + text[i]) == unicodedata.normalize(
            "NFKC", left
        ) + unicodedata.normalize("NFKC", text[i]):
            bounds.append(i)
    bounds.append(len(text))
    normalized, spans = "", []
    for a, b in itertools.pairwise(bounds):
        chunk = unicodedata.normalize("NFKC", text[a:b])
        normalized += chunk
        spans.extend([(a, b)] * len(chunk))
    if normalized != unicodedata.normalize("NFKC", text):
        normalized = unicodedata.normalize("NFKC", text)
        spans = [(0, len(text))] * len(normalized)
    return normalized, spans


def _japanese_pieces(text: str) -> list[_Piece]:
    # nagisa's preprocess: rstrip, NFKC, then 1:1 replacements; its words tile that string.
    normalized, spans = _nfkc_spans(text.rstrip())
    normalized = normalized.replace("İ", "I").replace(" ", "\u3000")
    pieces: list[_Piece] = []
    position = 0
    for index, word in enumerate(_nagisa_words(text)):
        token, start = clean_token(word), normalized.find(word, position)
        if token and start < 0:  # cannot happen while nagisa's words tile its preprocessed input
            pieces.append(_Piece(token, (0, len(text)), index))
        elif token:
            kept = [start + k for k, ch in enumerate(word) if is_kept_char(ch)]
            pieces.append(_Piece(token, (spans[kept[0]][0], spans[kept[-1]][1]), index))
        position = start + len(word) if start >= 0 else position
    return pieces


def _attach_originals(text: str, pieces: list[_Piece]) -> list[Word]:
    """Grow each core over the non-space chars around it: rightward up to the next token or a
    space; leftward (up to a space) only where the previous token did not already take them."""
    words: list[Word] = []
    for k, piece in enumerate(pieces):
        start, end = piece.core
        prev_end = pieces[k - 1].core[1] if k else 0
        next_start = pieces[k + 1].core[0] if k + 1 < len(pieces) else len(text)
        left = start
        while left > prev_end and not text[left - 1].isspace():
            left -= 1
        if k and left == prev_end:
            left = start
        right = end
        while right < next_start and not text[right].isspace():
            right += 1
        words.append(Word(piece.token, text[left:right], piece.source_index))
    return words


def split_transcript(text: str, language: str | None) -> list[Word]:
    """`split_words(text, language)` as Words that also carry their original text and segment index."""
    lang = canonical_language(language).lower()
    if lang == "japanese":
        pieces = _japanese_pieces(text)
    elif lang == "korean":
        pieces = _korean_pieces(text)
    else:
        pieces = _space_pieces(text)
    return _attach_originals(text, pieces)
