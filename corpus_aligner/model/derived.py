"""Arrays derived from a module's weights (stacked projection weights, a CPU layer's bf16 copy), made once and
cached on the module.

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


def stacked(module: nn.Module, names: tuple[str, ...], biased: bool = False) -> tuple[mx.array, ...] | None:
    """The weights of `module`'s projections `names` stacked along the output axis in that order, for one product,
    and with `biased` their biases stacked the same way: (weight,) or (weight, bias), cached. None where the
    weights are quantized (packed codes) or the layers' biases are not what `biased` says (all there or none)."""
    layers = [module[name] for name in names]
    weights = tuple(layer.weight for layer in layers)
    if any(("bias" in layer) != biased for layer in layers):
        return None
    if not all(mx.issubdtype(w.dtype, mx.floating) for w in weights):
        return None
    sources = weights + tuple(layer.bias for layer in layers) if biased else weights

    def build() -> tuple[mx.array, ...]:
        parts = [mx.concatenate(list(weights), axis=0)]
        if biased:
            parts.append(mx.concatenate(list(sources[len(weights) :]), axis=0))
        mx.eval(parts)  # built once, then read by every thread's stream
        return tuple(parts)

    return cached(module, "stacked_" + "_".join(names), sources, build)
