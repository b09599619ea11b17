"""Tidy tables of runs: curves, estimates and comparisons as rows, for pandas and for files.

Three kinds of table, each with one observation per row and numbers in numeric columns:

* ``curves`` — one row per run × measurement × curve × layer: the curve's ``value`` over all
  prompts and a percentile bootstrap CI (``ci_lo``, ``ci_hi``) from the stored per-prompt data
  (prompts resampled with replacement, the curve recomputed, as the estimates' CIs are);
* ``estimates`` — one row per run × estimator (or scalar score such as the depth score):
  ``layer``, ``ratio``, ``value`` and the CI bounds as numbers;
* ``comparison`` — the tables of :func:`effective_depth.store.compare.compare_runs` (``scale``,
  ``training``, ``difficulty``) with every ``[lo, hi]`` pair split into ``*_lo`` / ``*_hi``
  columns and the difficulty table one row per level.

Everything is read from the measurement registry and the result types (``curves_of`` of each
result), so a newly registered measurement appears without changes here. The rows of one run are
built by :mod:`effective_depth.store.tables` (``Run.to_frame``), the comparison's by
:mod:`effective_depth.store.compare`; they need only the standard library, :func:`runs_to_frame`
needs pandas (the ``frames`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .compare import compare_runs, tidy_comparison
from .results import Run, atomic_write_bytes, dumps, load_run
from .tables import RUN_TABLES, require_pandas, table_rows

__all__ = ["FRAME_KINDS", "COMPARISON_TABLES", "EXPORT_FORMATS", "comparison_rows",
           "runs_to_frame", "write_frame"]

FRAME_KINDS = (*RUN_TABLES, "comparison")
COMPARISON_TABLES = ("scale", "training", "difficulty")
EXPORT_FORMATS = ("csv", "parquet", "json")


def _check_kind(kind: str) -> None:
    if kind not in FRAME_KINDS:
        raise ConfigError(f"unknown table kind {kind!r}; choose from {', '.join(FRAME_KINDS)}")


def comparison_rows(runs: Sequence[Any], table: str = "scale", *,
                    pairs: Sequence[tuple[str, str]] | None = None, n_boot: int = 1000,
                    seed: int = 0, level: float = 0.95) -> list[dict[str, Any]]:
    """The comparison ``table`` of ``runs`` (see :func:`effective_depth.store.compare.compare_runs`)."""
    if table not in COMPARISON_TABLES:
        raise ConfigError(f"unknown comparison table {table!r}; choose from "
                          f"{', '.join(COMPARISON_TABLES)}")
    comparison = compare_runs(list(runs), pairs=pairs, n_boot=n_boot, seed=seed, level=level)
    return tidy_comparison(table, comparison[table])


def _rows(runs: Sequence[Any], kind: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    _check_kind(kind)
    if kind == "comparison":
        return comparison_rows(runs, **options)
    return table_rows(runs, kind, options)


def _load(runs: Iterable[Any]) -> list[Any]:
    return [r if isinstance(r, Run) else load_run(r) for r in runs]


def runs_to_frame(runs: Iterable[Any], kind: str, **options: Any) -> Any:
    """The ``kind`` table (``curves``, ``estimates`` or ``comparison``) of several runs (``Run``
    objects or run directories) as one pandas DataFrame.

    ``curves`` takes ``n_boot``, ``level``, ``seed`` (default: each run's own); ``comparison``
    takes ``table`` (``scale``, ``training`` or ``difficulty``), ``pairs``, ``n_boot``,
    ``seed``, ``level``, as :func:`~effective_depth.store.compare.compare_runs` does.
    """
    _check_kind(kind)
    pd = require_pandas()
    rows = _rows(_load(runs), kind, options)
    return pd.DataFrame.from_records(rows)


def write_frame(frame: Any, fmt: str, out: str | os.PathLike[str] | None = None) -> str | None:
    """Write ``frame`` as ``csv``, ``parquet`` or ``json`` (records) to ``out``; with no ``out``
    the text is returned instead (parquet, a binary format, needs a file)."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    if fmt == "parquet":
        if out is None:
            raise ConfigError("parquet is a binary format: give a file with -o/--out")
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("parquet needs pyarrow: pip install 'effective_depth[frames]'") from None
    if fmt == "parquet":
        import io

        buf = io.BytesIO()
        frame.to_parquet(buf, index=False)
        data = buf.getvalue()
    elif fmt == "csv":
        data = frame.to_csv(index=False).encode()
    else:
        data = dumps(frame.to_dict(orient="records")).encode()  # NaN -> null
    if out is None:
        return data.decode()
    atomic_write_bytes(Path(out), data)
    return None
