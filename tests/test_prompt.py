"""Tokenizer and prompt layout (model.md §4.2-4.4) against transformers' Qwen2TokenizerFast on the real
Qwen3 vocabulary, and the official processor's prompt ids.

Run: python -m pytest -q tests/test_prompt.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import AutoTokenizer, Qwen2TokenizerFast

from corpus_aligner.model import AlignerArgs, DecoderArgs, EncoderArgs
from corpus_aligner.prompt import PromptBuilder, SpecialIds, load_tokenizer
from corpus_aligner.testing.tiny_checkpoint import REAL_SPECIAL_IDS, _config, _tokenizer_config, qwen_tokenizer_files

WORDS = [
    "Hello", "world", "It's", "35", "o'clock", "wellknown", "quotes", "dont", "THE", "STRAY", "kittens",
    "iPhone", "McDonald's", "YouTube", "macOS", "DiCaprio", "'tis", "甚", "至", "真っ昼間なのに", "가마솥", "에",
    "Привет", "Stärkere", "là", "l'homme", "2024", "naïve", "ﬁne", "e\u0301te\u0301",
]  # fmt: skip


@pytest.fixture(scope="module")
def real_folder(tmp_path_factory) -> Path:
    """The real vocab/merges with an official-style config (transformers_version 4.57.6)."""
    folder = tmp_path_factory.mktemp("real_tok")
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(qwen_tokenizer_files() / name, folder / name)
    (folder / "config.json").write_text(
        json.dumps(_config(AlignerArgs(EncoderArgs(), DecoderArgs()), REAL_SPECIAL_IDS))
    )
    (folder / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(REAL_SPECIAL_IDS)))
    return folder


def test_qwen2_regex_equals_transformers_tokenizer(real_folder):
    """Default pre-tokenizer: the ids transformers' Qwen2TokenizerFast gives each word."""
    ours = load_tokenizer(real_folder, "qwen2")
    theirs = Qwen2TokenizerFast(vocab_file=str(real_folder / "vocab.json"), merges_file=str(real_folder / "merges.txt"))
    for word in WORDS:
        assert ours.encode(word, add_special_tokens=False).ids == theirs.encode(word, add_special_tokens=False), word


def test_mistral_regex_equals_official_local_folder_loading(real_folder):
    """'mistral' reproduces what transformers 4.57.6 does for a local folder with fix_mistral_regex=True."""
    ours = load_tokenizer(real_folder, "mistral")
    theirs = AutoTokenizer.from_pretrained(str(real_folder), fix_mistral_regex=True)
    qwen2 = load_tokenizer(real_folder, "qwen2")
    differ = 0
    for word in WORDS:
        ids = ours.encode(word, add_special_tokens=False).ids
        assert ids == theirs.encode(word, add_special_tokens=False), word
        differ += ids != qwen2.encode(word, add_special_tokens=False).ids
    assert differ >= 2, "camelCase words must tokenize differently under the two regexes"


def test_prompt_layout_puts_two_timestamps_after_each_word(real_folder):
    """ids = start + pads + end + w1 ts ts + w2 ts ts ...; slots point at the timestamp tokens."""
    ids = SpecialIds(151669, 151676, 151670, 151705)
    builder = PromptBuilder(load_tokenizer(real_folder), ids)
    prompt = builder.build(3, ["Hello", "world"])
    hello = builder.word_ids(["Hello"])[0]
    world = builder.word_ids(["world"])[0]
    expected = [151669, 151676, 151676, 151676, 151670, *hello, 151705, 151705, *world, 151705, 151705]
    assert prompt.input_ids.tolist() == expected
    assert [expected[i] for i in prompt.slots] == [151705] * 4
    assert prompt.slots.tolist() == [
        5 + len(hello),
        6 + len(hello),
        7 + len(hello) + len(world),
        8 + len(hello) + len(world),
    ]
    assert builder.sequence_length(3, ["Hello", "world"]) == len(expected)
    assert builder.build(0, []).input_ids.tolist() == [151669, 151670]
