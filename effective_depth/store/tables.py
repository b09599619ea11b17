"""The tidy rows of one run: its curves and its estimates, one observation per row and numbers
in numeric columns (see :mod:`effective_depth.store.frames` for the columns).

``Run.to_frame`` makes them a pandas table of the run; :mod:`effective_depth.store.frames` puts
the rows of several runs (``Run`` objects or run directories) and the comparison tables across
them into one. A run is read by attribute (``record``, ``config_record``, ``completed``,
``metric``), so ``Run`` builds its own tables with this module and the modules that load runs and
compare them sit above both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigError
from .record import EstimateEntry

__all__ = ["RUN_TABLES", "require_pandas", "curve_rows", "estimate_rows", "table_rows",
           "run_table"]

#: the tables of one run (``comparison`` tables compare several: ``frames.runs_to_frame``)
RUN_TABLES = ("curves", "estimates")


def require_pandas() -> Any:
    """pandas, or a :class:`ConfigError` naming the extra that installs it."""
    try:
        import pandas
    except ImportError:
        raise ConfigError("tables (to_frame, runs_to_frame, effective-depth export) need pandas: "
                          "pip install 'effective_depth[frames]'") from None
    return pandas


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


def table_rows(runs: Iterable[Any], kind: str, options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The ``curves`` or ``estimates`` rows of every run of ``runs``; ``curves`` takes
    ``n_boot``, ``level`` and ``seed``, ``estimates`` no option."""
    if kind not in RUN_TABLES:
        raise ConfigError(f"unknown table kind {kind!r}; choose from {', '.join(RUN_TABLES)} "
                          "(a comparison table compares runs: "
                          "effective_depth.runs_to_frame(runs, 'comparison'))")
    unknown = sorted(set(options) - ({"n_boot", "level", "seed"} if kind == "curves" else set()))
    if unknown:
        raise ConfigError(f"{kind} tables take no option {', '.join(unknown)}")
    build = curve_rows if kind == "curves" else estimate_rows
    return [row for run in runs for row in build(run, **options)]


def run_table(run: Any, kind: str, **options: Any) -> Any:
    """``run``'s ``curves`` or ``estimates`` as a pandas DataFrame (:meth:`Run.to_frame`)."""
    rows = table_rows([run], kind, options)
    return require_pandas().DataFrame.from_records(rows)
