"""Grids of studies: models × tasks × difficulty levels, run locally or on a Ray cluster.

A grid file (YAML or JSON)::

    out: runs/scale                 # one run directory per cell below this
    base:                           # StudyConfig options shared by every cell
      n_examples: 40
      metrics: [contributions, logit_lens, skip_effects, behaviour]
      options:                      # each measurement's own options (docs/cli.md)
        skip_effects: {mode: current}
        integrated_gradients: {steps: 64}
    models: [zoo/add-2l, zoo/add-4l, zoo/add-8l, zoo/add-12l]
    tasks:
      - name: addition              # or null: each zoo model's own task
        params: {format: direct}
        levels: {digits: [1, 2, 3]} # one cell per value
    pairs: [[zoo/add-4l, zoo/add-4l-scratch]]   # for the training-type comparison
    families: {mine: [my/model-small, my/model-large]}  # a scale trend may join these
    compare: true                   # write comparison tables into OUT/comparison
    gpus_per_cell: 1                # Ray only; default: 1 when the cluster has GPUs, else 0

Every cell is validated (options, model spec, task parameters) before the first one runs. Each
cell is an independent :func:`~effective_depth.study.run_study`; finished cells are reused when
the grid is run again, and a cell that fails is reported in one line while the others go on. With
``executor="ray"`` the cells become Ray tasks on ``ray.init(address=...)`` or a local instance.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, EffectiveDepthError
from .run import StudyConfig, default_out_dir, run_study

__all__ = ["Grid", "GridCell", "load_grid", "run_grid", "EXECUTORS"]

log = logging.getLogger(__name__)
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class GridCell:
    config: StudyConfig
    out: Path


@dataclass
class Grid:
    out: Path
    cells: list[GridCell]
    pairs: list[tuple[str, str]] = field(default_factory=list)
    compare: bool = True
    gpus_per_cell: float | None = None
    #: model families named by the grid file, for the comparison's scale trend
    families: dict[str, list[str]] = field(default_factory=dict)


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping from ``path`` (grid files and ``run --config`` files)."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values")
    return data


def grid_from_dict(data: Mapping[str, Any], root: Path | None = None) -> Grid:
    known = {"out", "base", "models", "tasks", "pairs", "compare", "gpus_per_cell", "families"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown grid keys {unknown}; valid: {sorted(known)}")
    out = Path(data.get("out", "runs/grid"))
    if root is not None and not out.is_absolute():
        out = root / out
    base = data.get("base") or {}
    if not isinstance(base, Mapping):
        raise ConfigError(f"grid 'base' must be a mapping of study options, got {base!r}")
    base = dict(base)
    models = data.get("models") or [base.pop("model", "zoo/add-4l")]
    tasks = data.get("tasks") or [{"name": base.pop("task", None)}]
    if isinstance(models, str) or not isinstance(models, Sequence):
        raise ConfigError(f"grid 'models' must be a list of model specs, got {models!r}")
    if isinstance(tasks, (str, Mapping)) or not isinstance(tasks, Sequence):
        raise ConfigError(f"grid 'tasks' must be a list, got {tasks!r}")
    configs: list[StudyConfig] = []
    for model, task in itertools.product(models, tasks):
        if not isinstance(task, Mapping):
            task = {"name": task}
        levels = task.get("levels") or {}
        if not isinstance(levels, Mapping) or not all(
                isinstance(v, Sequence) and not isinstance(v, str) for v in levels.values()):
            raise ConfigError(
                f"task {task.get('name')!r}: levels must map one parameter to a list of values, "
                f"e.g. levels: {{digits: [1, 2, 3]}}; got {levels!r}")
        if len(levels) > 1:
            raise ConfigError("a grid task varies one difficulty parameter at a time")
        level_items = [(k, v) for k, vs in levels.items() for v in vs] or [(None, None)]
        for key, value in level_items:
            params = dict(task.get("params") or {})
            if key is not None:
                params[key] = value
            cfg = StudyConfig.from_dict({**base, "model": model, "task": task.get("name"),
                                         "task_params": params}, "grid base")
            configs.append(cfg)
    pairs = [tuple(p) for p in data.get("pairs") or []]
    if any(len(p) != 2 for p in pairs):
        raise ConfigError("grid pairs are [base model, trained model] lists")
    gpus = data.get("gpus_per_cell")
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or gpus < 0):
        raise ConfigError(f"gpus_per_cell must be a number >= 0, got {gpus!r}")
    families = data.get("families") or {}
    if not isinstance(families, Mapping) or not all(
            isinstance(v, Sequence) and not isinstance(v, str) for v in families.values()):
        raise ConfigError("grid families map a family name to a list of models, e.g. "
                          f"families: {{mine: [my/model-small, my/model-large]}}; got {families!r}")
    cells = validated_cells(configs, out)
    return Grid(out, cells, pairs, bool(data.get("compare", True)), gpus,  # type: ignore[arg-type]
                {str(k): [str(m) for m in v] for k, v in families.items()})


def validated_cells(configs: Sequence[StudyConfig], out: Path) -> list[GridCell]:
    """The grid's cells, every model spec and task parameter checked before the first cell runs
    (no model is loaded, nothing is written): a typo in the last cell fails now, not hours in."""
    from ..models.loading import resolve_spec
    from ..tasks import get_task
    from .run import resolve_task

    cells: list[GridCell] = []
    outs: dict[Path, StudyConfig] = {}
    for i, cfg in enumerate(configs, start=1):
        try:
            resolve_spec(cfg.model)
            name, params = resolve_task(cfg)
            get_task(name, **params)
            cell = GridCell(cfg, default_out_dir(cfg, out))
        except EffectiveDepthError as exc:
            raise ConfigError(f"grid cell {i} of {len(configs)} ({cfg.model}, task "
                              f"{cfg.task or 'own'}, {dict(cfg.task_params)}): {exc}") from None
        other = outs.get(cell.out)
        if other is not None and other != cfg:
            raise ConfigError(f"two grid cells write the same run directory {cell.out}; give "
                              "them different tasks or levels")
        outs[cell.out] = cfg
        cells.append(cell)
    return cells


def load_grid(path: str | os.PathLike[str], base: Mapping[str, Any] | None = None,
              models: Sequence[str] | None = None) -> Grid:
    """The grid in ``path``; ``base`` overrides study options of its ``base`` (CLI flags);
    ``models`` keeps only those of the grid's models (their cells write where the whole grid's
    would, so a later run of the whole grid reuses them)."""
    path = Path(path)
    data = read_config_file(path)
    given = data.get("base") or {}
    if base and isinstance(given, Mapping):  # a malformed base is grid_from_dict's error
        data = {**data, "base": {**given, **base}}
    if models:
        listed = data.get("models")
        if not isinstance(listed, Sequence) or isinstance(listed, str):
            raise ConfigError(f"{path} lists no models to choose from (--model {models[0]})")
        unknown = [m for m in models if m not in listed]
        if unknown:
            raise ConfigError(f"{', '.join(unknown)} not among the models of {path}: "
                              f"{', '.join(map(str, listed))}")
        pairs = [p for p in data.get("pairs") or [] if all(m in models for m in p)]
        data = {**data, "models": [m for m in listed if m in models], "pairs": pairs}
    return grid_from_dict(data)


def _run_cell(config_dict: dict[str, Any], out: str, progress: bool = False,
              threads: int | None = None) -> dict[str, Any]:
    """One cell (also the body of the Ray task: only plain data crosses the boundary)."""
    from ..models.devices import set_threads

    set_threads(threads)
    result = run_study(StudyConfig.from_dict(config_dict), out, progress=progress)
    return {"out": str(result.path), "computed": result.computed, "reused": result.reused,
            "depth": {k: v.to_json() for k, v in result.record.depth.items()}}


def _failed(cell: GridCell, exc: BaseException) -> dict[str, Any]:
    text = str(exc).strip().splitlines()
    # a Ray task error wraps the cell's own exception: keep its last line, the message
    line = text[-1] if text else type(exc).__name__
    summary = {"out": str(cell.out), "computed": [], "reused": [], "depth": {},
               "error": f"{type(exc).__name__}: {line}" if not isinstance(exc, EffectiveDepthError)
               else line}
    log.error("grid cell %s failed: %s", cell.out, summary["error"])
    return summary


def run_grid(
    grid: Grid,
    *,
    executor: str = "local",
    address: str | None = None,
    progress: bool = True,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Run every cell; returns one summary per cell (run directory, what was computed, or the
    one-line ``error`` of a cell that failed — the other cells still run and are compared).
    ``on_cell`` is called with each summary as its cell finishes. ``threads``: torch CPU threads
    of every cell (None: torch's default), recorded in each run's environment."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    from ..models.devices import set_threads

    set_threads(threads)  # checked before any cell starts
    if executor == "ray":
        summaries = _run_ray(grid, address, progress, on_cell, threads)
    else:
        summaries = _run_local(grid, progress, on_cell, threads=threads)
    ok = [s for s in summaries if "error" not in s]
    if grid.compare and len(ok) > 1:
        from ..store.compare import compare_runs, write_comparison

        comparison = compare_runs([s["out"] for s in ok], pairs=grid.pairs,
                                  families=grid.families)
        write_comparison(comparison, grid.out / "comparison")
        try:
            from ..viz.dashboard import write_dashboard

            write_dashboard([s["out"] for s in ok], grid.out / "dashboard.html",
                            comparison=comparison)
        except ImportError:
            pass
    return summaries


class CellClock:
    """The sweep's ETA from the cells that finished: the mean time of the cells that computed
    something, times the cells left. Reused and failed cells finish in moments and would make
    the ETA far too short (tqdm's own rate counts them), so they are left out of the mean."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.durations: list[float] = []

    def finished(self, seconds: float, computed: bool) -> None:
        self.done += 1
        if computed:
            self.durations.append(seconds)

    def per_cell(self) -> float | None:
        return sum(self.durations) / len(self.durations) if self.durations else None

    def eta(self) -> float | None:
        per = self.per_cell()
        return None if per is None else per * (self.total - self.done)

    def label(self, index: int, cell: GridCell) -> str:
        """``cell 3/6: zoo/add-8l -> zoo_add-8l__addition-digits2 | 134 s/cell, ETA 7 min``."""
        text = f"cell {index}/{self.total}: {cell.config.model} -> {cell.out.name}"
        per, eta = self.per_cell(), self.eta()
        if per is not None and eta is not None:
            text += f" | {_seconds(per)}/cell, ETA {_seconds(eta)}"
        return text


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def _run_local(grid: Grid, progress: bool,
               on_cell: Callable[[dict[str, Any]], None] | None,
               on_label: Callable[[str], None] | None = None,
               threads: int | None = None) -> list[dict[str, Any]]:
    import time

    from ..progress import tqdm

    summaries = []
    clock = CellClock(len(grid.cells))
    # the ETA is the clock's (finished cells), not tqdm's rate
    bar = tqdm(total=len(grid.cells), desc="grid", disable=not progress, unit="cell",
               bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} [{elapsed}]")
    for index, cell in enumerate(grid.cells, start=1):
        label = clock.label(index, cell)
        bar.set_description_str(label, refresh=True)
        if on_label is not None:
            on_label(label)
        start = time.perf_counter()
        try:
            summary = _run_cell(cell.config.to_dict(), str(cell.out), progress, threads)
        except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the rest
            log.debug("grid cell %s", cell.out, exc_info=True)
            summary = _failed(cell, exc)
        clock.finished(time.perf_counter() - start, bool(summary["computed"]))
        summaries.append(summary)
        if on_cell is not None:
            on_cell(summary)
        bar.update(1)
    bar.close()
    return summaries


def _run_ray(grid: Grid, address: str | None, progress: bool,
             on_cell: Callable[[dict[str, Any]], None] | None,
             threads: int | None = None) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'effective_depth[ray]'") from None
    from ..progress import tqdm

    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
        started = True
    try:
        gpus = grid.gpus_per_cell
        if gpus is None:  # what the cluster has, not what the driver sees
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        remote = ray.remote(num_gpus=gpus)(_run_cell)
        futures = {remote.remote(c.config.to_dict(), str(c.out.resolve()), False, threads): i
                   for i, c in enumerate(grid.cells)}
        summaries: list[dict[str, Any] | None] = [None] * len(grid.cells)
        pending = list(futures)
        bar = tqdm(total=len(pending), desc="grid (ray)", disable=not progress, unit="cell")
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                i = futures[ref]
                try:
                    summary = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the rest
                    cause = getattr(exc, "cause", None) or exc
                    summary = _failed(grid.cells[i], cause)
                summaries[i] = summary
                if on_cell is not None:
                    on_cell(summary)
                bar.set_postfix_str(grid.cells[i].out.name, refresh=False)
                bar.update(1)
        bar.close()
        return [s for s in summaries if s is not None]
    finally:
        if started:
            ray.shutdown()
