"""How an object of a lower layer shows itself in a notebook, without importing the layer that
draws it.

A result, an estimate or a run directory has a ``_repr_html_`` (Jupyter's hook); the HTML is
made by :mod:`effective_depth.viz.reprs`, which sits above them (its run view carries a plotly
figure). So the lower layers ask this registry for the view of a *kind* of object, and
``viz.reprs`` registers one function per kind when it is imported, which the package's
``__init__`` does. Without a registered view an object shows its escaped ``repr``.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

__all__ = ["register_html", "render_html", "html_kinds"]

_VIEWS: dict[str, Callable[[Any], str]] = {}


def register_html(kind: str, view: Callable[[Any], str]) -> Callable[[Any], str]:
    """Make ``view(obj)`` the HTML of every object that renders as ``kind``."""
    _VIEWS[kind] = view
    return view


def render_html(kind: str, obj: Any) -> str:
    """The registered view of ``obj`` as a ``kind``, or its escaped ``repr``."""
    view = _VIEWS.get(kind)
    if view is None:
        return f"<pre>{html.escape(repr(obj))}</pre>"
    return view(obj)


def html_kinds() -> tuple[str, ...]:
    return tuple(_VIEWS)
