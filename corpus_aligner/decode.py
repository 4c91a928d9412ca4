"""Timestamp classes -> monotone word times in seconds (model.md §5).

Mirrors qwen_asr `Qwen3ForcedAligner.align` after the forward pass and
`Qwen3ForceAlignProcessor.fix_timestamp` / `parse_timestamp`, with the O(n^2) LIS replaced by an
O(n log n) one that picks exactly the same subsequence.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from corpus_aligner.records import AlignedWord

TICK_MS = 80  # one timestamp class = 80 ms (config.json `timestamp_segment_time`); 5000 classes = 400 s


def _official_lis(values: Sequence[float]) -> list[bool]:
    """Mask of the longest non-decreasing subsequence the official DP picks.

    Official tie rules: each index's parent is the *smallest* earlier index one level down with a
    value <= its own, and the chain ends at the *first* index of maximal length. Indices of one
    level have strictly decreasing values in index order, so that parent is found by bisection.
    """
    tails: list[float] = []  # tails[L]: smallest value ending a subsequence of length L + 1
    levels: list[list[int]] = []  # levels[L]: indices whose best length is L + 1, in index order
    negated: list[list[float]] = []  # -values of levels[L], increasing
    parent = [-1] * len(values)
    for i, v in enumerate(values):
        level = bisect_right(tails, v)
        if level:
            parent[i] = levels[level - 1][bisect_left(negated[level - 1], -v)]
        if level == len(tails):
            tails.append(v)
            levels.append([])
            negated.append([])
        tails[level] = v
        levels[level].append(i)
        negated[level].append(-v)
    normal = [False] * len(values)
    i = levels[-1][0] if levels else -1
    while i != -1:
        normal[i] = True
        i = parent[i]
    return normal


def _neighbours(values: Sequence[float], normal: Sequence[bool]) -> tuple[list[float | None], list[float | None]]:
    """For each index: the value at the nearest normal index before it, and at or after it."""
    n = len(values)
    left: list[float | None] = [None] * n
    right: list[float | None] = [None] * n
    last: float | None = None
    for k in range(n):
        left[k] = last
        last = values[k] if normal[k] else last
    last = None
    for k in range(n - 1, -1, -1):
        last = values[k] if normal[k] else last
        right[k] = last
    return left, right


def fix_timestamp(values: Sequence[float]) -> list[int]:
    """Official monotonic repair: keep the LIS; refill runs of outliers; truncate to int.

    A run of <= 2 outliers takes the nearest kept neighbour (ties go left); a longer run is
    interpolated between its kept neighbours, or copies the only one it has.
    """
    values = [float(v) for v in values]
    if all(a <= b for a, b in pairwise(values)):  # already monotone (a trained model's usual output)
        return [int(v) for v in values]  # the subsequence is all of it: nothing to refill
    normal = _official_lis(values)
    left, right = _neighbours(values, normal)
    result = list(values)
    i, n = 0, len(values)
    while i < n:
        if normal[i]:
            i += 1
            continue
        j = i
        while j < n and not normal[j]:
            j += 1
        lo, hi = left[i], right[i]
        if lo is None or hi is None:
            only = hi if lo is None else lo
            assert only is not None  # a non-empty input always keeps at least one value
            result[i:j] = [only] * (j - i)
        elif j - i <= 2:
            result[i:j] = [lo if (k - (i - 1)) <= (j - k) else hi for k in range(i, j)]
        else:
            step = (hi - lo) / (j - i + 1)
            result[i:j] = [lo + step * (k - i + 1) for k in range(i, j)]
        i = j
    return [int(v) for v in result]


def decode_words(
    words: Sequence[str], classes: np.ndarray, probs: np.ndarray, segment_ms: float = float(TICK_MS)
) -> list[AlignedWord]:
    """Words + the argmax class and its probability at each of their 2K <timestamp> slots -> AlignedWords.

    Times as the official code computes them: class * segment_ms in float32, repaired, int ms,
    then round(ms / 1000, 3) seconds. Raw classes and probabilities are kept for quality flags.
    """
    classes = np.asarray(classes).reshape(-1)
    probs = np.asarray(probs).reshape(-1)
    if classes.shape[0] != 2 * len(words) or probs.shape[0] != classes.shape[0]:
        raise ValueError(
            f"need 2 timestamp slots per word: {len(words)} words, {classes.shape[0]} classes, "
            f"{probs.shape[0]} probabilities"
        )
    ms = classes.astype(np.float32) * np.float32(segment_ms)
    fixed = fix_timestamp(ms.tolist())
    # plain Python numbers once (numpy scalar indexing per field was most of this function's time)
    ticks, p = classes.astype(np.int64).tolist(), probs.astype(np.float64).tolist()
    return [
        AlignedWord(
            text=word,
            start_s=round(fixed[2 * i] / 1000.0, 3),
            end_s=round(fixed[2 * i + 1] / 1000.0, 3),
            start_prob=p[2 * i],
            end_prob=p[2 * i + 1],
            start_tick_raw=ticks[2 * i],
            end_tick_raw=ticks[2 * i + 1],
        )
        for i, word in enumerate(words)
    ]
