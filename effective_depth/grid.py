"""Grids of studies: models × tasks × difficulty levels, run locally or on a Ray cluster.

A grid file (YAML or JSON)::

    out: runs/scale                 # one run directory per cell below this
    base:                           # StudyConfig options shared by every cell
      n_examples: 40
      metrics: [contributions, logit_lens, skip_effects, behaviour]
    models: [zoo/add-2l, zoo/add-4l, zoo/add-8l, zoo/add-12l]
    tasks:
      - name: addition              # or null: each zoo model's own task
        params: {format: direct}
        levels: {digits: [1, 2, 3]} # one cell per value
    pairs: [[zoo/add-4l, zoo/add-4l-scratch]]   # for the training-type comparison
    compare: true                   # write comparison tables into OUT/comparison

Each cell is an independent :func:`~effective_depth.study.run_study`; finished cells are reused
when the grid is run again. With ``executor="ray"`` the cells become Ray tasks (one GPU each where
there are GPUs), on ``ray.init(address=...)`` or a local instance.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .study import StudyConfig, default_out_dir, run_study

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
    known = {"out", "base", "models", "tasks", "pairs", "compare"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown grid keys {unknown}; valid: {sorted(known)}")
    out = Path(data.get("out", "runs/grid"))
    if root is not None and not out.is_absolute():
        out = root / out
    base = dict(data.get("base", {}))
    models = data.get("models") or [base.pop("model", "zoo/add-4l")]
    tasks = data.get("tasks") or [{"name": base.pop("task", None)}]
    cells: list[GridCell] = []
    for model, task in itertools.product(models, tasks):
        if not isinstance(task, Mapping):
            task = {"name": task}
        levels = dict(task.get("levels") or {})
        if len(levels) > 1:
            raise ConfigError("a grid task varies one difficulty parameter at a time")
        level_items = [(k, v) for k, vs in levels.items() for v in vs] or [(None, None)]
        for key, value in level_items:
            params = dict(task.get("params") or {})
            if key is not None:
                params[key] = value
            cfg = StudyConfig.from_dict({**base, "model": model, "task": task.get("name"),
                                         "task_params": params})
            cells.append(GridCell(cfg, default_out_dir(cfg, out)))
    pairs = [tuple(p) for p in data.get("pairs", [])]
    if any(len(p) != 2 for p in pairs):
        raise ConfigError("grid pairs are [base model, trained model] lists")
    return Grid(out, cells, pairs, bool(data.get("compare", True)))  # type: ignore[arg-type]


def load_grid(path: str | os.PathLike[str]) -> Grid:
    path = Path(path)
    return grid_from_dict(read_config_file(path))


def _run_cell(config_dict: dict[str, Any], out: str) -> dict[str, Any]:
    """One cell (also the body of the Ray task: only plain data crosses the boundary)."""
    result = run_study(StudyConfig.from_dict(config_dict), out, progress=False)
    return {"out": str(result.path), "computed": result.computed, "reused": result.reused,
            "depth": result.results.get("depth", {})}


def run_grid(
    grid: Grid,
    *,
    executor: str = "local",
    address: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every cell; returns one summary per cell (run directory, what was computed)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "ray":
        summaries = _run_ray(grid.cells, address)
    else:
        from tqdm.auto import tqdm

        summaries = [
            _run_cell(c.config.to_dict(), str(c.out))
            for c in tqdm(grid.cells, desc="grid", disable=not progress)
        ]
    if grid.compare and len(grid.cells) > 1:
        from .compare import compare_runs, write_comparison

        comparison = compare_runs([s["out"] for s in summaries], pairs=grid.pairs)
        write_comparison(comparison, grid.out / "comparison")
        try:
            from .viz.dashboard import write_dashboard

            write_dashboard([s["out"] for s in summaries], grid.out / "dashboard.html",
                            comparison=comparison)
        except ImportError:
            pass
    return summaries


def _run_ray(cells: Sequence[GridCell], address: str | None) -> list[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'effective_depth[ray]'") from None
    import torch

    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
        started = True
    try:
        gpus = 1 if torch.cuda.is_available() else 0
        remote = ray.remote(num_gpus=gpus)(_run_cell)
        futures = [remote.remote(c.config.to_dict(), str(c.out.resolve())) for c in cells]
        return list(ray.get(futures))
    finally:
        if started:
            ray.shutdown()
