"""Old import paths of modules that moved into the layer packages, kept working (deprecated).

``import effective_depth.results`` or ``from effective_depth.planner import CostPlan`` still
work: a finder on ``sys.meta_path`` (installed by ``effective_depth/__init__.py``) answers the old
name with *the same module object* as the new one (so patching either patches both) and warns
with a :class:`DeprecationWarning` that names the new path. Base layer: it imports nothing of
the package until an old name is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["MOVED", "MovedModuleFinder", "install", "renamed", "moved_message"]

#: old module path -> new module path (both absolute)
MOVED: dict[str, str] = {
    f"effective_depth.{old}": f"effective_depth.{new}"
    for old, new in {
        "registry": "metrics.registry",
        "options": "metrics.options",
        "costs": "metrics.costs",
        "estimation": "analysis.estimation",
        "depth": "analysis.depth",
        "per_prompt": "analysis.per_prompt",
        "results": "store.results",
        "fingerprint": "store.fingerprint",
        "frames": "store.frames",
        "compare": "store.compare",
        "reprs": "viz.reprs",
        "prepare": "study.prepare",
        "planner": "study.planner",
        "grid": "study.grid",
    }.items()
}


def moved_message(old: str, new: str) -> str:
    return f"{old} moved to {new}; import {new} instead (the old path will be removed)"


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module already imported (or now imported) under the new one."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.own_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(moved_message(spec.name, self.new), DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.new)
        self.own_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The module ran when it was imported under its new name; the import system has just
        set its ``__spec__`` to the old name's: give it back its own."""
        module.__spec__ = self.own_spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names of :data:`MOVED` (and nothing else)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None
                  ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once: it answers only the old names, and must
    answer them before any other finder could find a stale file of that name (an editable
    install of an older checkout, files left over from an upgrade)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())


def renamed(module: str, names: dict[str, str], namespace: dict[str, Any]
            ) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` that answers the old public names of ``module`` (``{old:
    new}``) with the renamed objects of ``namespace``, warning with a DeprecationWarning."""

    def __getattr__(name: str) -> Any:
        if name in names:
            warnings.warn(f"{module}.{name} is deprecated: use {module}.{names[name]}",
                          DeprecationWarning, stacklevel=2)
            return namespace[names[name]]
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
