"""Arrays derived from a module's weights (the decoder's stacked q/k/v weight, a CPU layer's bf16 copy),
made once and cached on the module.

The cache is a plain attribute, not a parameter: an array attribute of an `nn.Module` would count among its
parameters (saved, loaded, quantized with them). It is rebuilt when any source array is replaced (weights
loaded again), and a lock keeps two batch threads from building the same copy at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import mlx.core as mx
import mlx.nn as nn

T = TypeVar("T")

_lock = threading.Lock()


class _Entry(Generic[T]):
    __slots__ = ("sources", "value")

    def __init__(self, sources: tuple[mx.array, ...], value: T):
        self.sources = sources
        self.value = value


def cached(module: nn.Module, key: str, sources: tuple[mx.array, ...], build: Callable[[], T]) -> T:
    """`build()`, remembered on `module` as attribute `key` for as long as `sources` are its arrays."""
    with _lock:
        entry = getattr(module, key, None)
        stale = (
            not isinstance(entry, _Entry)
            or len(entry.sources) != len(sources)
            or any(a is not b for a, b in zip(entry.sources, sources))
        )
        if stale:
            entry = _Entry(sources, build())
            setattr(module, key, entry)
        assert isinstance(entry, _Entry)
        return entry.value
