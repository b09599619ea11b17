"""The orchestration layer: studies, their preparation, the planner and grids of studies.

``run`` (``run_study``: a frozen :class:`StudyConfig` in, a run directory out), ``prepare``
(what a study measures and the inputs it draws, shared with the planner), ``planner`` (the work a
study will do, before doing it) and ``grid`` (grids of studies, local or on Ray).

``from effective_depth.study import run_study, StudyConfig`` keeps working: the names of
``effective_depth.study.run`` are read from here (lazily, so that importing the planner or a grid
does not import the runner before it needs it).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["StudyConfig", "run_study", "resolve_task", "default_out_dir", "StudyResult",
           "config_differences"]


def __getattr__(name: str) -> Any:
    # every name of the runner (its __all__, METRICS and the rest), as when this was one module
    if name.startswith("__"):
        raise AttributeError(f"module 'effective_depth.study' has no attribute {name!r}")
    run = importlib.import_module(".run", __name__)
    try:
        return getattr(run, name)
    except AttributeError:
        raise AttributeError(f"module 'effective_depth.study' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*__all__, "run", "prepare", "planner", "grid"})
