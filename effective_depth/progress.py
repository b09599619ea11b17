"""Progress bars that degrade gracefully: a notebook widget where ipywidgets can draw one, the
plain text bar everywhere else.

``tqdm.auto`` picks the widget bar inside any Jupyter kernel and, when ipywidgets is missing,
warns "IProgress not found" before falling back. Here the widget bar is chosen only when
ipywidgets is importable, so a notebook without it gets the text bar and no warning.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

__all__ = ["tqdm", "tqdm_class"]


def _in_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - an odd IPython: take the text bar
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def tqdm_class() -> type:
    """The notebook bar in a Jupyter kernel with ipywidgets, else ``tqdm.std.tqdm``."""
    if _in_kernel() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm
    from tqdm.std import tqdm as std_tqdm

    return std_tqdm


def tqdm(*args: Any, **kwargs: Any) -> Any:
    """A progress bar (same arguments as ``tqdm.tqdm``) of the class :func:`tqdm_class` picks."""
    return tqdm_class()(*args, **kwargs)


def quiet_missing_widgets() -> None:
    """In a Jupyter kernel without ipywidgets, import ``tqdm.autonotebook`` once with its
    "IProgress not found" warning silenced: libraries we load (transformers, datasets) import
    ``tqdm.auto`` and would print it, though our own bars never need the widget."""
    if not _in_kernel() or "tqdm.autonotebook" in sys.modules \
            or importlib.util.find_spec("ipywidgets") is not None:
        return
    import warnings

    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
        import tqdm.autonotebook  # noqa: F401
