"""Figures and dashboards: plotly figures of every measurement, and one self-contained HTML
dashboard per set of runs.

``viz`` only arranges numbers that ``metrics`` and ``analysis`` computed; it never computes a
metric. Its ``reprs`` module makes the notebook views. plotly is imported lazily (on first use of
a figure), so that importing the package, and the ``effective-depth dashboard`` command's
``--help``, stay fast::

    from effective_depth.viz import figure_for, write_dashboard
    fig = figure_for(result)                      # the default figure of any measurement result
    write_dashboard(["runs/a", "runs/b"], "dashboard.html")

Figures are found through the registry :data:`effective_depth.viz.figures.FIGURES` (result type
-> figure kind -> spec); see ``docs/dashboards.md`` for what each figure shows.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    "FIGURES": "figures",
    "FigureSpec": "figures",
    "register_figure": "figures",
    "figure_specs": "figures",
    "ed_summary_figure": "figures",
    "COMPARISON_FIGURES": "compare_figures",
    "comparison_figures": "compare_figures",
    "scale_figure": "compare_figures",
    "training_figure": "compare_figures",
    "difficulty_figure": "compare_figures",
    "build_dashboard_html": "dashboard",
    "write_dashboard": "dashboard",
    "run_panels": "dashboard",
    "export_figures": "export",
    "export_runs": "export",
}

__all__ = sorted([*_EXPORTS, "figure_for"])


def figure_for(result: Any, kind: str | None = None, **kwargs: Any) -> Any:
    """The plotly figure ``kind`` (default: the first registered) of a measurement result,
    dispatched by the result's type through the figure registry."""
    from .figures import figure_for as dispatch

    return dispatch(result, kind, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'effective_depth.viz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
