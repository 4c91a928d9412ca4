"""Words -> token ids with two `<timestamp>` slots after each word (model.md §4.2-4.4).

The tokenizer is built with the `tokenizers` library from `vocab.json` + `merges.txt` the way
transformers' `Qwen2Converter` builds `Qwen2TokenizerFast` (the release has no tokenizer.json).
Each word is encoded on its own, without a leading space, which equals encoding the whole prompt because
`<timestamp>` tokens separate the words. Special ids always come from the checkpoint's config.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from corpus_aligner.batching import round_up

# The Qwen2 split regex (transformers `Qwen2Converter`), the default (decision D2 in model.md §10).
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# What transformers 4.57.6 swaps in for a local folder under `fix_mistral_regex=True` (model.md §10 D2).
MISTRAL_SPLIT = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
    r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPLIT_PATTERNS = {"qwen2": QWEN2_SPLIT, "mistral": MISTRAL_SPLIT}


def load_tokenizer(folder: Path, pretokenizer: str = "qwen2") -> Tokenizer:
    """Byte-level BPE from `vocab.json` and `merges.txt` in `folder`."""
    if pretokenizer not in SPLIT_PATTERNS:
        raise ValueError(f"pretokenizer must be one of {sorted(SPLIT_PATTERNS)}, got {pretokenizer!r}")
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = []
    for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        left, right = line.split(" ")
        merges.append((left, right))
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tokenizer.normalizer = normalizers.NFC()  # type: ignore[assignment]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(  # type: ignore[assignment]
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERNS[pretokenizer]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    return tokenizer


@dataclass(frozen=True)
class SpecialIds:
    audio_start: int
    audio_pad: int
    audio_end: int
    timestamp: int


@dataclass(frozen=True)
class Prompt:
    """One utterance's decoder input: ids, where audio rows go, and where each timestamp slot is."""

    input_ids: np.ndarray  # (S,) int32
    audio_offset: int  # position of the first <|audio_pad|>
    n_audio: int
    slots: np.ndarray  # (2K,) positions of the <timestamp> tokens, start/end of word 0, 1, ...


class PromptBuilder:
    """Caches word encodings: corpora repeat words, and BPE on a word is the costly part."""

    def __init__(self, tokenizer: Tokenizer, ids: SpecialIds):
        self.tokenizer = tokenizer
        self.ids = ids
        self._encode = lru_cache(maxsize=200_000)(self._encode_word)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(word, add_special_tokens=False).ids)

    def word_ids(self, words: Sequence[str]) -> list[tuple[int, ...]]:
        return [self._encode(w) for w in words]

    def sequence_length(self, n_audio: int, words: Sequence[str]) -> int:
        """Decoder positions of the prompt: N_a + 2 + sum(|ids(w)|) + 2K (model.md §4.4)."""
        return n_audio + 2 + sum(len(ids) + 2 for ids in self.word_ids(words))

    def build(self, n_audio: int, words: Sequence[str]) -> Prompt:
        ids = self.ids
        parts: list[int] = [ids.audio_start, *([ids.audio_pad] * n_audio), ids.audio_end]
        slots: list[int] = []
        for word in self.word_ids(words):
            parts.extend(word)
            slots.extend((len(parts), len(parts) + 1))
            parts.extend((ids.timestamp, ids.timestamp))
        return Prompt(
            input_ids=np.asarray(parts, dtype=np.int32),
            audio_offset=1,
            n_audio=n_audio,
            slots=np.asarray(slots, dtype=np.int32),
        )


def pad_prompts(
    prompts: Sequence[Prompt], pad_id: int, width_multiple: int = 1, rows_multiple: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-pad ids; map each audio position to its row of the batch's encoder output.

    The width and the number of rows are rounded up to the given multiples (extra rows are all padding,
    no audio, slot 0), so that batches share shapes on a GPU.
    """
    width = round_up(max(len(p.input_ids) for p in prompts), width_multiple)
    k = max(max(len(p.slots) for p in prompts), 1)
    rows = round_up(len(prompts), rows_multiple)
    input_ids = np.full((rows, width), pad_id, dtype=np.int32)
    audio_src = np.full((rows, width), -1, dtype=np.int32)
    slots = np.zeros((rows, k), dtype=np.int32)
    offset = 0
    for b, p in enumerate(prompts):
        input_ids[b, : len(p.input_ids)] = p.input_ids
        audio_src[b, p.audio_offset : p.audio_offset + p.n_audio] = np.arange(offset, offset + p.n_audio)
        slots[b, : len(p.slots)] = p.slots
        offset += p.n_audio
    return input_ids, audio_src, slots
