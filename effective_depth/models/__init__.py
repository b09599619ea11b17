"""Model loading (TransformerLens names, hub ids, local directories, GGUF files, the zoo and its
real/ section) and the zoo itself.

Names are imported lazily: listing the zoo (``effective-depth models``) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BACKENDS": "loading",
    "HOOKED_ARCHITECTURES": "loading",
    "ResolvedSpec": "loading",
    "load_model": "loading",
    "resolve_spec": "loading",
    "DEFAULT_ZOO_MODEL": "zoo",
    "ZooEntry": "zoo",
    "zoo_entries": "zoo",
    "zoo_entry": "zoo",
    "zoo_names": "zoo",
    "RealModel": "real",
    "real_models": "real",
    "real_names": "real",
    "fetch_real_model": "real",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
