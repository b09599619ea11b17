"""A study's clean passes, computed once and read by every measurement that needs them.

In the spirit of TransformerLens's ``ActivationCache``: while :func:`shared_clean_passes` is
active for a model, :meth:`Adapter.clean <effective_depth.engine.adapter.Adapter.clean>` returns
the clean pass it already computed for the same tokens (same shape and ids, same compute policy)
instead of running the model again. Contributions, the logit lens, the tuned lens's evaluation
and the skip sweeps of one study read their prompt chunks' residuals from one pass each.

What is never served from the cache, so that no measurement can read a stale or wrong pass: a
call while any hook is attached to the model (a user's intervention, a skip, a patch), a call
asking for attention keys and values (suffix runs keep their own), and any pass that would take
the cache over its byte budget (it is computed and returned, not kept). Only the residual stream
``h_0..h_L`` is kept: every measurement reads it, while the attention and MLP outputs (read by
contributions alone, and by attention- or MLP-skip sweeps) would triple the memory for one
reader, so a request for them computes its pass. The cached tensors are shared: measurements
read them and never write into them.
"""

from __future__ import annotations

import contextlib
import hashlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["CleanCache", "shared_clean_passes", "active_cache"]

_ACTIVE: weakref.WeakKeyDictionary[Any, CleanCache] = weakref.WeakKeyDictionary()


def _nbytes(clean: Any) -> int:
    parts = [clean.resid, clean.attn, clean.mlp]
    return sum(int(t.numel()) * t.element_size() for t in parts if t is not None)


@dataclass
class CleanCache:
    """Clean passes by (compute policy, tokens), within ``budget`` bytes."""

    budget: int
    entries: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    used: int = 0
    #: passes computed (and kept or not) and passes served from the cache
    computed: int = 0
    reused: int = 0
    #: passes computed but not kept: the budget was spent
    over_budget: int = 0

    @staticmethod
    def key(tokens: Tensor, policy: Any) -> tuple[Any, ...]:
        ids = tokens.detach().cpu().contiguous().numpy().tobytes()
        return (getattr(policy, "name", policy), str(tokens.device), tuple(tokens.shape),
                hashlib.sha1(ids).hexdigest())

    def get(self, key: tuple[Any, ...]) -> Any | None:
        clean = self.entries.get(key)
        if clean is not None:
            self.reused += 1
        return clean

    def put(self, key: tuple[Any, ...], clean: Any) -> None:
        """Keep ``clean``'s residual stream (a pass with components is kept without them)."""
        self.computed += 1
        if key in self.entries:
            return
        if clean.attn is not None or clean.mlp is not None or clean.kv is not None:
            clean = type(clean)(clean.tokens, clean.resid)
        size = _nbytes(clean)
        if self.used + size > self.budget:
            self.over_budget += 1
            return
        self.entries[key] = clean
        self.used += size

    def summary(self) -> dict[str, int]:
        return {"computed": self.computed, "reused": self.reused, "over_budget": self.over_budget,
                "bytes": self.used}


def active_cache(model: Any) -> CleanCache | None:
    """The cache :func:`shared_clean_passes` opened for ``model``, if one is open."""
    try:
        return _ACTIVE.get(model)
    except TypeError:  # a model that cannot be weakly referenced is never cached
        return None


@contextlib.contextmanager
def shared_clean_passes(model: Any, budget: int) -> Iterator[CleanCache]:
    """Within the block, clean passes of ``model`` are computed once per tokens and reused, up
    to ``budget`` bytes kept (a study gives a quarter of the sweep's activation budget on the
    model's device: 256 MiB on CPU). The cache is dropped at the end; nested calls share the
    outer cache."""
    outer = active_cache(model)
    if outer is not None:
        yield outer
        return
    cache = CleanCache(budget)
    _ACTIVE[model] = cache
    try:
        yield cache
    finally:
        _ACTIVE.pop(model, None)
