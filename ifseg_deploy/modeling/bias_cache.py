"""A cache of position biases for inference.

OFA's attention biases (the TUPE absolute bias and the per-layer relative biases) depend only on the grid size, the
text length and the weights, yet building them costs a third of an eager forward pass on a CPU (flips, unfolds,
resizes and copies of (heads, L, L) tensors per layer). At inference they are built once per shape and reused.
The cache is used only where reuse is safe: eval mode, no autograd, not while tracing or compiling; and its keys
carry the version counters of the weights they were built from, so an in-place change of a position table (an
optimizer step, ``load_state_dict``, a manual ``copy_``) is never served a stale bias.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn


def caching_allowed(module: nn.Module) -> bool:
    """Inference only: eval mode, autograd off, not tracing/compiling/exporting, not in shape-agnostic mode."""
    return (not module.training and not torch.is_grad_enabled() and not getattr(module, "shape_agnostic", False)
            and not torch.compiler.is_compiling())


class BiasCache:
    """Values keyed by shape, dtype and device, and by the version of every tensor they were computed from.

    Holds at most ``max_entries`` shapes (a camera feeds one size; a folder of photos a few), oldest dropped first.
    """

    def __init__(self, max_entries: int = 4) -> None:
        self._entries: dict[tuple, Any] = {}
        self.max_entries = max_entries
        #: False computes every time (what training does), e.g. to measure what the cache saves
        self.enabled = True
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, sources: Iterable[torch.Tensor], compute: Callable[[], Any],
            anchor: object = None) -> Any:
        """The value for ``key`` computed from the weights ``sources``; ``compute()`` on a miss. ``anchor``: an
        input the value was computed from that has no version counter (a tensor made under inference mode, e.g.
        another cache's output): a hit needs that very object."""
        if not self.enabled:
            return compute()
        full = (*key, tuple(_version(t) for t in sources))
        entry = self._entries.get(full)
        if entry is not None and entry[0] is anchor:
            self.hits += 1
            return entry[1]
        self.misses += 1
        value = compute()
        if full not in self._entries and len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[full] = (anchor, value)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _version(t: torch.Tensor) -> int:
    # Tensors made under inference mode have no version counter; they cannot change outside inference mode.
    return id(t) if t.is_inference() else t._version

