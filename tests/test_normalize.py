"""corpus_aligner.normalize against the official Qwen3ForceAlignProcessor word lists (model.md §4.1).

Run: pytest tests/test_normalize.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qwen_asr.inference.qwen3_forced_aligner import Qwen3ForceAlignProcessor
from soynlp.tokenizer import LTokenizer

from corpus_aligner.normalize import (
    Word,
    canonical_language,
    clean_token,
    split_transcript,
    split_words,
)

TESTDATA = Path("/work/shared/testdata")
OFFICIAL_DICT = Path(sys.modules["qwen_asr"].__file__ or "").parent / "inference/assets/korean_dict_jieba.dict"
OURS_DICT = Path(__file__).parents[1] / "corpus_aligner/assets/korean_dict_jieba.dict"


@pytest.fixture(scope="module")
def official() -> Qwen3ForceAlignProcessor:
    return Qwen3ForceAlignProcessor()


def _official_words(processor: Qwen3ForceAlignProcessor, text: str, language: str | None) -> list[str]:
    words, _prompt = processor.encode_timestamp(text, canonical_language(language))
    return words


# (text, language, words) — the words were produced by the official code; the table pins them.
TABLE = [
    (
        "Hello, world! It's 3.5 o'clock — well-known “quotes” don’t",
        "English",
        ["Hello", "world", "It's", "35", "o'clock", "wellknown", "quotes", "dont"],
    ),
    ("I'm  can't -- 1,000,000 $5 x-ray 'quoted'", "en", ["I'm", "can't", "1000000", "5", "xray", "'quoted'"]),
    ("甚至出现交易几乎停滞的情况。", "Chinese", list("甚至出现交易几乎停滞的情况")),
    ("我用iPhone拍照，hello,world", "zh", ["我", "用", "iPhone", "拍", "照", "helloworld"]),
    ("l'homme est là", "fr", ["l'homme", "est", "là"]),
    ("e\u0301te\u0301 NFD", "French", ["ete", "NFD"]),
    ("zero\u200bwidth space", "en", ["zerowidth", "space"]),
    ("ＡＢＣ，ｄｅｆ　１２３", "en", ["ＡＢＣｄｅｆ", "１２３"]),
    ("non\u00a0breaking\u2009thin\u3000ideographic", "en", ["non", "breaking", "thin", "ideographic"]),
    ("가마솥에 밥을 지었습니다", "Korean", ["가마솥", "에", "밥을", "지었습니다"]),
    ("안녕하세요.", "ko", ["안녕", "하세요"]),
    ("안녕하세요.", "English", ["안녕하세요"]),
    (
        "真っ昼間なのにキャンプの外れの電柱に電球がともっていた",
        "ja",
        [
            "真っ",
            "昼間",
            "な",
            "の",
            "に",
            "キャンプ",
            "の",
            "外れ",
            "の",
            "電柱",
            "に",
            "電球",
            "が",
            "ともっ",
            "て",
            "い",
            "た",
        ],
    ),
    ("ＡＢＣ　ｄｅｆ ﾊﾟﾝ。", "Japanese", ["ABC", "def", "パン"]),
    ("", "ja", []),
    ("。、！", "Japanese", []),
    ("— ... !!", "en", []),
]


@pytest.mark.oracle
@pytest.mark.parametrize(("text", "language", "words"), TABLE)
def test_split_words_table(official: Qwen3ForceAlignProcessor, text: str, language: str, words: list[str]) -> None:
    """Each table row gives exactly the listed words, which are also what the official code gives."""
    assert split_words(text, language) == words
    assert _official_words(official, text, language) == words
    assert [w.token for w in split_transcript(text, language)] == words


def _manifest() -> list[dict[str, str]]:
    lines = (TESTDATA / "multilingual/manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


@pytest.mark.oracle
def test_split_words_on_real_transcripts(official: Qwen3ForceAlignProcessor) -> None:
    """Every transcript of the multilingual manifest (12 languages, ja and zh included) splits as officially."""
    rows = _manifest()
    assert {row["language"] for row in rows} >= {"ja", "zh", "fr", "de", "ru", "hi", "ar"}
    for row in rows:
        words = split_words(row["text"], row["language"])
        assert words == _official_words(official, row["text"], row["language"]), row["audio"]
        assert [w.token for w in split_transcript(row["text"], row["language"])] == words


def test_originals_keep_punctuation_and_case() -> None:
    """Originals are the user's raw words: punctuation attached, case and accents kept."""
    words = split_transcript("“Hello,” she said — It's 3.5%! (well-known)", "en")
    assert [(w.token, w.original, w.source_index) for w in words] == [
        ("Hello", "“Hello,”", 0),
        ("she", "she", 1),
        ("said", "said", 2),
        ("It's", "It's", 4),
        ("35", "3.5%!", 5),
        ("wellknown", "(well-known)", 6),
    ]


def test_originals_for_cjk_characters() -> None:
    """Each ideograph is its own original; punctuation after it stays with it, Latin runs stay whole."""
    words = split_transcript("「我用iPhone拍照，hello,world」 好。", "Chinese")
    assert [(w.token, w.original, w.source_index) for w in words] == [
        ("我", "「我", 0),
        ("用", "用", 0),
        ("iPhone", "iPhone", 0),
        ("拍", "拍", 0),
        ("照", "照，", 0),
        ("helloworld", "hello,world」", 0),
        ("好", "好。", 1),
    ]


def test_originals_for_korean_and_japanese() -> None:
    """Korean pieces keep their eojeol's punctuation; Japanese originals are raw (not NFKC) text."""
    korean = split_transcript("안녕하세요. 가마솥에!", "ko")
    assert [(w.token, w.original, w.source_index) for w in korean] == [
        ("안녕", "안녕", 0),
        ("하세요", "하세요.", 0),
        ("가마솥", "가마솥", 1),
        ("에", "에!", 1),
    ]
    japanese = split_transcript("「ＡＢＣ」　ﾊﾟﾝを読んだ。", "ja")
    assert [(w.token, w.original) for w in japanese] == [
        ("ABC", "「ＡＢＣ」"),
        ("パン", "ﾊﾟﾝ"),
        ("を", "を"),
        ("読ん", "読ん"),
        ("だ", "だ。"),
    ]
    assert all(isinstance(w, Word) for w in japanese)


def test_japanese_originals_with_reordered_combining_marks() -> None:
    """Combining marks that NFKC reorders and composes stay with their base letter's word, nothing more."""
    words = split_transcript("本a\u0315\u0300を読んだ", "ja")
    assert [(w.token, w.original) for w in words] == [
        ("本", "本"),
        ("\u00e0", "a\u0315\u0300"),
        ("を", "を"),
        ("読ん", "読ん"),
        ("だ", "だ"),
    ]


def test_text_nagisa_drops_stays_in_the_last_original() -> None:
    """nagisa can drop an unfinished last word (official words: ["À"] for "Àかか"); its text joins the last original."""
    assert split_words("Àかか", "ja") == _PROCESSOR.tokenize_japanese("Àかか") == ["À"]
    assert [(w.token, w.original) for w in split_transcript("Àかか", "ja")] == [("À", "Àかか")]


def test_one_raw_char_expanding_to_two_japanese_words() -> None:
    """When NFKC turns one raw char into two nagisa words (㍿ -> 株式 会社), both carry that char."""
    words = split_transcript("㍿です", "ja")
    assert [(w.token, w.original) for w in words] == [("株式", "㍿"), ("会社", "㍿"), ("です", "です")]


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        (None, "English"),
        ("English", "English"),
        ("JAPANESE", "Japanese"),
        ("ja", "Japanese"),
        ("jpn", "Japanese"),
        ("ja_JP", "Japanese"),
        ("ko-KR", "Korean"),
        ("kor", "Korean"),
        ("zh", "Chinese"),
        ("zh-CN", "Chinese"),
        ("yue", "Cantonese"),
        ("en-US", "English"),
        ("pt-BR", "Portuguese"),
        ("de", "German"),
        (" French ", "French"),
        ("sv", "sv"),
        ("Klingon", "Klingon"),
        ("", ""),
    ],
)
def test_canonical_language(given_name: str | None, expected: str) -> None:
    """Names and ISO codes map to the official language names; unknown strings pass through unchanged."""
    assert canonical_language(given_name) == expected


def test_language_codes_dispatch_like_names() -> None:
    """Codes "ja"/"ko" reach the Japanese/Korean tokenizers (the official code would treat them as space languages)."""
    text = "안녕하세요."
    assert split_words(text, "ko") == split_words(text, "Korean") == ["안녕", "하세요"]
    assert split_words("本を読んだ", "ja") == split_words("本を読んだ", "Japanese") == ["本", "を", "読ん", "だ"]
    assert split_words("本を読んだ", None) == ["本", "を", "読", "んだ"]


def test_shipped_korean_dictionary_is_the_official_file() -> None:
    """The packaged dictionary is byte-identical to qwen-asr 0.0.6's asset."""
    assert OURS_DICT.read_bytes() == OFFICIAL_DICT.read_bytes()
    assert (OURS_DICT.parent / "NOTICE.md").read_text(encoding="utf-8").count("qwen-asr==0.0.6") == 1


def test_nagisa_is_imported_only_for_japanese() -> None:
    """Splitting English or Korean does not import nagisa (slow, prints [dynet] lines, sets flush-to-zero)."""
    code = (
        "import sys; from corpus_aligner.normalize import split_words; "
        "split_words('Hello there', 'en'); split_words('안녕하세요.', 'ko'); "
        "assert 'nagisa' not in sys.modules, 'nagisa imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_every_unicode_whitespace_separates_segments() -> None:
    """All 29 chars Python's str.split() splits on separate segments in split_transcript too; U+200B does not."""
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    assert len(spaces) == 29
    text = "".join(f"w{i}{space}" for i, space in enumerate(spaces)) + "x\u200by"
    words = split_transcript(text, "en")
    assert [(w.token, w.source_index) for w in words] == [(f"w{i}", i) for i in range(29)] + [("xy", 29)]
    assert [w.token for w in words] == split_words(text, "en")


def test_clean_token() -> None:
    """Only letters, numbers and the ASCII apostrophe survive; marks, U+2019 and hyphens go."""
    assert clean_token("don’t-stop'n_ROLL 3.5 e\u0301") == "dontstop'nROLL35e"


# Random text for the property tests: every kind of char the splitter treats differently.
_SPECIAL = " \t\n\u00a0\u2009\u3000\u200b\u1680\x1c'’-.,!?。，「」()\u0301\u0308ᅡ"
_TEXT = st.text(
    st.one_of(
        st.characters(exclude_categories=("Cs",)),
        st.sampled_from(list(_SPECIAL)),
        st.sampled_from(list("abcXYZ019éß甚至出现交易几乎ｱﾊﾟＡ１")),
    ),
    max_size=60,
)


@pytest.mark.oracle
@settings(max_examples=400, deadline=None)
@given(_TEXT)
def test_space_language_property(text: str) -> None:
    """For any text: official words == split_words == split_transcript tokens; originals partition segments."""
    processor = _PROCESSOR
    words = split_words(text, "English")
    assert words == processor.tokenize_space_lang(text)
    transcript = split_transcript(text, "English")
    assert [w.token for w in transcript] == words
    _check_partition(text, transcript)


def _check_partition(text: str, transcript: list[Word]) -> None:
    """Originals clean back to their token and tile each whitespace segment that has words."""
    segments = text.split()
    by_segment: dict[int, list[str]] = {}
    for word in transcript:
        assert clean_token(word.original) == word.token
        by_segment.setdefault(word.source_index, []).append(word.original)
    for index, originals in by_segment.items():
        assert "".join(originals) == segments[index]


_HANGUL = st.text(st.characters(min_codepoint=0xAC00, max_codepoint=0xAC40), min_size=1, max_size=4)
_KOREAN_DICT = sorted(Qwen3ForceAlignProcessor().ko_score)
_PROCESSOR = Qwen3ForceAlignProcessor()


@pytest.mark.oracle
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(_HANGUL, st.sampled_from(_KOREAN_DICT), st.sampled_from([" ", "  ", ".", "!", "a", "1", "\u3000"])),
        max_size=12,
    ).map("".join)
)
def test_korean_property(text: str) -> None:
    """For any Hangul/dictionary-word text: words equal soynlp LTokenizer + official dict; originals partition."""
    tokenizer = LTokenizer(scores=_PROCESSOR.ko_score)
    words = split_words(text, "Korean")
    assert words == _PROCESSOR.tokenize_korean(tokenizer, text)
    transcript = split_transcript(text, "Korean")
    assert [w.token for w in transcript] == words
    _check_partition(text, transcript)


_JAPANESE_CHARS = "あいうえおかがきゃアイウｱｲｳﾊﾟｶﾞﾟ本読電球昼間ＡＢＣａ１２abc ,。、「」！？①İ\u3000\u3099\u0300\u0315"


@pytest.mark.oracle
@settings(max_examples=100, deadline=None)
@given(st.text(st.one_of(st.sampled_from(list(_JAPANESE_CHARS + "㍿¼")), st.characters(exclude_categories=("Cs",)))))
def test_japanese_property(text: str) -> None:
    """For any text: official nagisa words == split_words == split_transcript tokens; originals are raw text."""
    words = split_words(text, "Japanese")
    assert words == _PROCESSOR.tokenize_japanese(text)
    transcript = split_transcript(text, "Japanese")
    assert [w.token for w in transcript] == words
    for word in transcript:
        assert word.original in text
        assert word.token in clean_token(unicodedata.normalize("NFKC", word.original).replace("İ", "I"))


@settings(max_examples=100, deadline=None)
@given(st.text(st.sampled_from(list(_JAPANESE_CHARS)), max_size=30))
def test_japanese_originals_are_local(text: str) -> None:
    """Without chars NFKC expands into several words, each original normalizes back to exactly its token.

    The last original may also hold trailing text that nagisa dropped.
    """
    transcript = split_transcript(text, "Japanese")
    for k, word in enumerate(transcript):
        normalized = clean_token(unicodedata.normalize("NFKC", word.original).replace("İ", "I"))
        if k == len(transcript) - 1:
            assert normalized.startswith(word.token)
        else:
            assert normalized == word.token
