"""Pack utterances into batches by padded cost (lhotse's TimeConstraint idea).

A batch costs what the model computes: `n_items * longest_item`, padding included, so
sorting by length before packing keeps the padding small. Every index lands in exactly one batch.
"""

from __future__ import annotations

from collections.abc import Sequence


def pack_batches(lengths: Sequence[float], budget: float, max_items: int | None = None) -> list[list[int]]:
    """Indices of `lengths` grouped so that `len(batch) * max(lengths in batch) <= budget`.

    Items are taken longest first (so the first batch shows the worst-case memory early); an item
    longer than the budget on its own gets a batch of its own rather than being dropped. Within a
    batch, indices keep that longest-first order.
    """
    if budget <= 0:
        raise ValueError(f"batch budget must be positive, got {budget}")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0.0
    for i in order:
        new_longest = max(longest, float(lengths[i]))
        too_costly = (len(current) + 1) * new_longest > budget
        too_many = max_items is not None and len(current) >= max_items
        if current and (too_costly or too_many):
            batches.append(current)
            current, new_longest = [], float(lengths[i])
        current.append(i)
        longest = new_longest
    if current:
        batches.append(current)
    return batches


def padding_fraction(lengths: Sequence[float], batches: Sequence[Sequence[int]]) -> float:
    """Share of computed positions that are padding: 1 - sum(lengths) / sum(n * longest)."""
    computed = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    if computed == 0:
        return 0.0
    return 1.0 - sum(float(lengths[i]) for b in batches for i in b) / computed
