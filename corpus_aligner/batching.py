"""Pack utterances into batches by padded cost (lhotse's TimeConstraint idea, split optimally).

A batch costs what the model computes: `n_items * longest_item`, padding included. Items are sorted by
length and cut into consecutive runs; where to cut is chosen by dynamic programming so that the total
padded cost plus a fixed `overhead` per batch is smallest (greedy filling leaves the long tail of a
corpus in half-empty or badly padded batches). Every index lands in exactly one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Fixed cost of one more batch, as a share of the budget: a batch is split only where that saves more
# padded positions than this (launches and host work per batch, smaller matrix products).
OVERHEAD_SHARE = 0.03


def pack_batches(
    lengths: Sequence[float],
    budget: float,
    max_items: int | None = None,
    overhead: float | None = None,
    rows_multiple: int = 1,
    width_multiple: int = 1,
) -> list[list[int]]:
    """Indices of `lengths` grouped so that a batch's padded cost stays within `budget`.

    A batch's cost is `len(batch) * max(lengths in batch)`, each factor rounded up to `rows_multiple`
    and `width_multiple` when the model pads its batches to such multiples (GPU shapes): what it
    computes, so the cuts fall where the rounding wastes least. Items are taken longest first (so the
    first batch shows the worst-case memory early); an item longer than the budget on its own gets a
    batch of its own rather than being dropped. Within a batch, indices keep that longest-first order.
    `overhead` (positions; default 3% of the budget) is what one more batch costs in the objective.
    """
    if budget <= 0:
        raise ValueError(f"batch budget must be positive, got {budget}")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: (-lengths[i], i))
    sorted_len = round_up(np.array([float(lengths[i]) for i in order]), width_multiple)
    extra = budget * OVERHEAD_SHARE if overhead is None else float(overhead)
    cap = n if max_items is None else max_items
    best = np.zeros(n + 1)  # best[i]: cheapest packing of the first i sorted items
    cut = np.zeros(n + 1, dtype=np.int64)  # where the last batch of that packing starts
    for i in range(1, n + 1):
        j = np.arange(max(0, i - cap), i)  # candidate starts of the batch ending at item i - 1
        size = i - j
        cost = round_up(size, rows_multiple) * sorted_len[j]  # the first item of a run is its longest
        ok = (cost <= budget) | (size == 1)
        total = np.where(ok, best[j] + cost + extra, np.inf)
        pick = int(np.argmin(total))  # ties: the earliest start, i.e. the larger batch
        best[i], cut[i] = total[pick], j[pick]
    batches: list[list[int]] = []
    i = n
    while i > 0:
        batches.append(order[int(cut[i]) : i])
        i = int(cut[i])
    return batches[::-1]


def padding_fraction(
    lengths: Sequence[float], batches: Sequence[Sequence[int]], rows_multiple: int = 1, width_multiple: int = 1
) -> float:
    """Share of computed positions that are padding: 1 - sum(lengths) / sum(n * longest), with n and the
    longest length rounded up to the multiples the model pads its batches to."""
    computed = sum(
        round_up(len(b), rows_multiple) * round_up(max(lengths[i] for i in b), width_multiple) for b in batches if b
    )
    if computed == 0:
        return 0.0
    return 1.0 - sum(float(lengths[i]) for b in batches for i in b) / computed


def round_up(x: Any, multiple: int) -> Any:
    """`x` (a number or an array) rounded up to a multiple of `multiple`: how `prompt.pad_prompts` pads a
    batch, and so how the packer costs it."""
    return -(-x // multiple) * multiple
