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
result), so a newly registered measurement appears without changes here. The row builders need
only the standard library; :func:`run_frame` and :func:`runs_to_frame` need pandas (the
``frames`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .record import EstimateEntry

__all__ = ["FRAME_KINDS", "COMPARISON_TABLES", "EXPORT_FORMATS", "curve_rows", "estimate_rows",
           "comparison_rows", "tidy_comparison", "run_frame", "runs_to_frame", "write_frame",
           "require_pandas"]

FRAME_KINDS = ("curves", "estimates", "comparison")
COMPARISON_TABLES = ("scale", "training", "difficulty")
EXPORT_FORMATS = ("csv", "parquet", "json")


def require_pandas() -> Any:
    """pandas, or a :class:`ConfigError` naming the extra that installs it."""
    try:
        import pandas
    except ImportError:
        raise ConfigError("tables (to_frame, runs_to_frame, effective-depth export) need pandas: "
                          "pip install 'effective_depth[frames]'") from None
    return pandas


def _check_kind(kind: str) -> None:
    if kind not in FRAME_KINDS:
        raise ConfigError(f"unknown table kind {kind!r}; choose from {', '.join(FRAME_KINDS)}")


def _run_keys(run: Any) -> dict[str, Any]:
    res = run.record
    return {"run": str(run.path), "model": res.model.name or run.config_record.config.model,
            "task": res.task.name, "task_params": _params_text(res.task.params),
            "difficulty": run.difficulty}


def _params_text(params: Mapping[str, Any]) -> str:
    """A task's parameters as one cell: ``name=value`` pairs, sorted, ``; ``-separated."""
    return "; ".join(f"{k}={v}" for k, v in sorted(params.items()))


def _float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def curve_rows(run: Any, *, n_boot: int | None = None, level: float | None = None,
               seed: int | None = None) -> list[dict[str, Any]]:
    """One row per measurement × curve × layer of ``run`` with the bootstrap CI of each value.

    ``n_boot``, ``level`` and ``seed`` default to the run's own (its ``n_boot``, ``ci_level``
    and ``seed``); ``n_boot=0`` leaves the CI columns NaN. A measurement whose result cannot
    resample prompts (see ``MetricResult.curves_of``) gets its curves without a CI.
    """
    import numpy as np

    from ..stats import curve_bands

    cfg = run.config_record.config
    n_boot = int(cfg.n_boot if n_boot is None else n_boot)
    level = float(cfg.ci_level if level is None else level)
    seed = int(cfg.seed if seed is None else seed)
    keys = _run_keys(run)
    rows: list[dict[str, Any]] = []
    for name in run.completed:
        result = run.metric(name)
        curves = result.curves_of(None) or {}
        if not curves:
            continue
        n_prompts = result.n_prompts
        bands = (curve_bands(result.curves_of, n_prompts, n_boot=n_boot, seed=seed, level=level)
                 if n_boot else None) or {}
        for curve, values in curves.items():
            band = bands.get(curve)
            for layer, value in enumerate(np.asarray(values, dtype=float).tolist()):
                rows.append({**keys, "measurement": name, "curve": curve, "layer": layer,
                             "value": value,
                             "ci_lo": float("nan") if band is None else float(band[0][layer]),
                             "ci_hi": float("nan") if band is None else float(band[1][layer]),
                             "n_prompts": n_prompts, "n_boot": n_boot if band is not None else 0,
                             "ci_level": level})
    return rows


def estimate_rows(run: Any) -> list[dict[str, Any]]:
    """One row per effective-depth estimator and scalar score stored in ``run``'s results."""
    from ..metrics.registry import estimator_specs, score_specs

    ests, scores = estimator_specs(), score_specs()
    keys = _run_keys(run)
    n_layers = run.record.model.n_layers
    rows = []
    for name, entry in run.record.depth.items():
        ci = entry.ci or (None, None)
        measurement = (ests[name].metric if name in ests else
                       scores[name].metric if name in scores else None)
        est = entry if isinstance(entry, EstimateEntry) else None
        layer_ci = (est.layer_ci if est else None) or (None, None)
        rows.append({
            **keys, "n_layers": n_layers, "estimator": name, "kind": entry.kind,
            "measurement": measurement,
            "layer": _float(est.layer if est else None), "ratio": _float(est.ratio if est else None),
            "value": _float(entry.shown), "ci_lo": _float(ci[0]), "ci_hi": _float(ci[1]),
            "layer_ci_lo": _float(layer_ci[0]), "layer_ci_hi": _float(layer_ci[1]),
            "undefined_fraction": _float(est.undefined_fraction if est else None),
            "n_boot": entry.n_boot,
            "threshold": _float(est.threshold if est else None),
            "reason": est.reason if est else None, "notes": "; ".join(est.notes if est else ()),
        })
    return rows


def _is_interval(key: str) -> bool:
    return key == "ci" or key.endswith("_ci")


def _split_intervals(row: Mapping[str, Any]) -> dict[str, Any]:
    """``ci: [lo, hi]`` (and ``diff_ci``, ``rho_ci``, ...) as ``ci_lo`` and ``ci_hi`` numbers."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if _is_interval(key):
            lo, hi = value if isinstance(value, (list, tuple)) and len(value) == 2 else (None, None)
            out[f"{key}_lo"], out[f"{key}_hi"] = _float(lo), _float(hi)
        else:
            out[key] = value
    return out


#: per-level list columns whose name stays as it is (already a count per level)
_KEEP_NAME = ("n_prompts", "n_defined")


#: comparison tables stored as lists over levels, written one row per level
_PER_LEVEL = ("difficulty", "prompt_difficulty")


def _per_level(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A difficulty row (lists over ``levels``) as one row per level: ``levels`` -> ``level``,
    ``ratios`` -> ``ratio``, ``cis`` -> ``ci``, ``runs`` -> ``run``, ``medians`` -> ``median``,
    ``reasons`` -> ``reason``, every other plural key holding a list of the same length likewise
    (``n_prompts`` and ``n_defined`` keep their names); the rest (``rho``, ``rho_ci``) repeats on
    every row. A list of another length (the runs pooled by the per-prompt test) becomes one
    ``; ``-joined text cell: no cell holds a list."""
    levels = row.get("levels")
    if not isinstance(levels, list):
        return [dict(row)]
    # plural keys only: an interval such as rho_ci is a pair even when there are two levels
    per = {k for k, v in row.items() if isinstance(v, list) and len(v) == len(levels)
           and k.endswith("s") and not _is_interval(k)}
    out = []
    for i in range(len(levels)):
        item: dict[str, Any] = {}
        for key, value in row.items():
            if key in per:
                item[key if key in _KEEP_NAME else key[:-1]] = value[i]
            elif not isinstance(value, list) or _is_interval(key):
                item[key] = value
            else:
                item[key] = "; ".join(str(x) for x in value)
        out.append(item)
    return out


def tidy_comparison(table: str, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The comparison ``table``'s rows, flat: intervals split into numeric ``*_lo`` / ``*_hi``
    columns, the difficulty table one row per level (what the comparison CSVs hold)."""
    flat: list[dict[str, Any]] = []
    for row in rows:
        if table == "prompt_difficulty" and isinstance(row.get("runs"), list):
            # the runs pooled into one test, not one run per level
            row = {**row, "runs": "; ".join(str(r) for r in row["runs"])}
        for item in (_per_level(row) if table in _PER_LEVEL else [dict(row)]):
            flat.append(_split_intervals(item))
    return flat


def comparison_rows(runs: Sequence[Any], table: str = "scale", *,
                    pairs: Sequence[tuple[str, str]] | None = None, n_boot: int = 1000,
                    seed: int = 0, level: float = 0.95) -> list[dict[str, Any]]:
    """The comparison ``table`` of ``runs`` (see :func:`effective_depth.store.compare.compare_runs`)."""
    from .compare import compare_runs

    if table not in COMPARISON_TABLES:
        raise ConfigError(f"unknown comparison table {table!r}; choose from "
                          f"{', '.join(COMPARISON_TABLES)}")
    comparison = compare_runs(list(runs), pairs=pairs, n_boot=n_boot, seed=seed, level=level)
    return tidy_comparison(table, comparison[table])


def _rows(runs: Sequence[Any], kind: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    _check_kind(kind)
    if kind == "comparison":
        return comparison_rows(runs, **options)
    unknown = sorted(set(options) - ({"n_boot", "level", "seed"} if kind == "curves" else set()))
    if unknown:
        raise ConfigError(f"{kind} tables take no option {', '.join(unknown)}")
    build = curve_rows if kind == "curves" else estimate_rows
    return [row for run in runs for row in build(run, **options)]


def _load(runs: Iterable[Any]) -> list[Any]:
    from .results import Run, load_run

    return [r if isinstance(r, Run) else load_run(r) for r in runs]


def run_frame(run: Any, kind: str, **options: Any) -> Any:
    """The ``kind`` table of one run as a pandas DataFrame (see :meth:`Run.to_frame`)."""
    return runs_to_frame([run], kind, **options)


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
    from .results import atomic_write_bytes, dumps

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
