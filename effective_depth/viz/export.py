"""Static export of the dashboard's figures (PNG or SVG), one file per figure.

Uses plotly's ``Figure.write_image``, which needs the optional ``kaleido`` package (and, for
kaleido 1.x, a Chrome or Chromium it can find). kaleido is not a dependency of the toolkit:
without it the export stops with a :class:`~effective_depth.errors.ConfigError` that says
``pip install kaleido``; the HTML dashboard never needs it.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["FORMATS", "ExportError", "require_kaleido", "export_figures", "export_runs"]

log = logging.getLogger(__name__)

#: the static formats ``--format`` offers besides ``html``
FORMATS = ("png", "svg")


class ExportError(ConfigError):
    """A static export that cannot run: kaleido missing, or kaleido without a browser."""


def require_kaleido() -> None:
    """Raise :class:`ExportError` with the install command when kaleido cannot be imported."""
    try:
        importlib.import_module("kaleido")
    except ImportError:
        raise ExportError(
            "static export (--format png or svg) needs the optional kaleido package: "
            "pip install kaleido (kaleido 1.x also needs Chrome or Chromium; the HTML dashboard "
            "needs neither)"
        ) from None


def export_figures(figures: Mapping[str, Any], out_dir: str | os.PathLike, fmt: str = "png",
                   *, width: int = 1100, scale: float = 1.0) -> list[Path]:
    """Write every figure of ``figures`` (file stem -> plotly figure) as ``out_dir/STEM.fmt``."""
    if fmt not in FORMATS:
        raise ConfigError(f"static export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    require_kaleido()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; static export writes one {fmt} per figure into a directory")
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{stem}.{fmt}" for stem in figures]
    figs = list(figures.values())
    if not figs:
        return []
    try:
        # one kaleido (browser) session for all figures, where plotly offers it
        write_images = getattr(importlib.import_module("plotly.io"), "write_images", None)
        if write_images is not None:
            write_images(figs, written, format=fmt, width=width, scale=scale,
                         height=[f.layout.height or 450 for f in figs])
        else:
            for fig, path in zip(figs, written):
                fig.write_image(str(path), format=fmt, width=width,
                                height=fig.layout.height or 450, scale=scale)
    except (RuntimeError, ValueError, OSError) as exc:
        raise ExportError(f"kaleido could not write the {fmt} files to {out}: {exc}") from None
    log.info("wrote %d %s files to %s", len(written), fmt, out)
    return written


def export_runs(run_dirs: Sequence[Any], out_dir: str | os.PathLike, fmt: str = "png",
                comparison: Mapping[str, Any] | None = None) -> list[Path]:
    """Every figure of the dashboard of ``run_dirs`` as ``fmt`` files in ``out_dir``: files
    ``run1-<figure>.<fmt>``, ``run2-…``, and ``comparison-<figure>.<fmt>`` for several runs."""
    require_kaleido()
    from .dashboard import (
        comparison_panels,
        compute_comparison,
        load_runs,
        run_panels,
        skip_mode_panels,
    )

    runs = load_runs(run_dirs)
    if comparison is None and len(runs) > 1:
        comparison = compute_comparison(runs)
    figures: dict[str, Any] = {}
    if comparison:
        figures.update({f"comparison-{p.key.removeprefix('compare-')}": p.figure
                        for p in comparison_panels(comparison)})
    if len(runs) > 1:
        figures.update({f"comparison-{p.key}": p.figure for p in skip_mode_panels(runs)})
    for i, run in enumerate(runs):
        figures.update({f"run{i + 1}-{p.key}": p.figure for p in run_panels(run)})
    return export_figures(figures, out_dir, fmt)
