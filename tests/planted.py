"""Planted aligners for longform tests: they answer like the model would if it knew the true word times.

The truth for the 5.8-min LibriSpeech chapter in testdata/awkward/long comes from its exact utterance
boundaries; inside an utterance the words are spread by character count (a stand-in for word times,
which the reference does not give, but one with the real rate changes and pauses between utterances).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corpus_aligner.decode import decode_words
from corpus_aligner.longform import Window
from corpus_aligner.records import AlignedWord

TICK_S = 0.08
LONG_DIR = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "awkward" / "long"
LONG_FLAC = LONG_DIR / "26-496_chapter_concat.flac"
LONG_DURATION_S = 345.865


@dataclass(frozen=True)
class Truth:
    words: list[str]
    times: list[tuple[float, float]]  # (start_s, end_s) per word
    utterances: list[tuple[str, float, float, int, int]]  # (id, start_s, end_s, first word, end word)


def chapter_truth() -> Truth:
    """Word times of the long chapter, from its reference utterance boundaries."""
    words, times, utterances = [], [], []
    with open(LONG_DIR / "26-496_chapter_concat.boundaries.tsv", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            start, end, text = float(row["start"]), float(row["end"]), row["text"].split()
            weights = np.cumsum([0] + [len(w) + 1 for w in text]) / (sum(len(w) + 1 for w in text))
            edges = start + 0.15 + weights * (end - start - 0.3)
            first = len(words)
            for k, word in enumerate(text):
                words.append(word)
                times.append((round(float(edges[k]), 3), round(float(edges[k + 1]) - 0.04, 3)))
            utterances.append((row["utterance"], start, end, first, len(words)))
    return Truth(words, times, utterances)


class PlantedAligner:
    """An AlignFn: true times for words inside the window's audio (probability 0.9); words that are not
    in it collapse onto the window's end (probability 0.02), as the model does with surplus words.
    `collapse_after` (seconds of a window) makes it collapse early, like the model on long inputs."""

    def __init__(self, truth: Truth, collapse_after_s: float = float("inf")):
        self.truth, self.collapse_after_s = truth, collapse_after_s
        self.windows: list[Window] = []

    def __call__(self, window: Window, tokens: Sequence[str]) -> list[AlignedWord]:
        first = window.first_word
        assert list(tokens) == self.truth.words[first : first + window.n_words]
        length = window.end_s - window.start_s
        assert length <= 400.0
        self.windows.append(window)
        end_tick = int(min(length, self.collapse_after_s) / TICK_S)
        classes, probs = [], []
        for start, end in self.truth.times[first : first + window.n_words]:
            inside = start >= window.start_s - TICK_S and end - window.start_s <= min(length, self.collapse_after_s)
            for t in (start, end):
                tick = round((t - window.start_s) / TICK_S) if inside else end_tick
                classes.append(min(max(tick, 0), end_tick))
                probs.append(0.9 if inside else 0.02)
        return decode_words(list(tokens), np.array(classes), np.array(probs), TICK_S * 1000)
