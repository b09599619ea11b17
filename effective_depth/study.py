"""Studies: a frozen :class:`StudyConfig` in, a run directory out.

``run_study(config, out)`` is the only code that sequences work and touches the run directory:
it loads the model, builds the task's examples, runs the chosen measurements (each one saved as
soon as it finishes, so a killed run resumes where it stopped), then the effective-depth estimates
with bootstrap CIs, and writes the dashboard. ``run_grid`` runs a grid of studies (models × tasks ×
difficulty levels) in sequence or on a Ray cluster.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, ResultsError, close_matches
from .frozen import from_dict
from .results import CONFIG, FORMAT_VERSION, INPUTS, RESULTS, RunDir, config_hash, metric_from_store

__all__ = ["StudyConfig", "METRICS", "run_study", "resolve_task", "default_out_dir", "StudyResult"]

log = logging.getLogger(__name__)

#: measurement names in the order a study runs them
METRICS = ("contributions", "logit_lens", "skip_effects", "behaviour", "erasure",
           "integrated_gradients")


def _freeze(params: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(sorted((params or {}).items()))


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study depends on; saved as ``config.json`` beside the results.

    ``task=None`` takes the task the zoo model was trained on (from its card).
    """

    model: str = "zoo/add-4l"
    task: str | None = None
    task_params: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] = METRICS
    n_examples: int = 20
    seed: int = 0
    thresholds: dict[str, float | int] = field(default_factory=dict)
    skip_front: int = 1
    include_front: bool = True
    lens_k: int = 5
    skip_mode: str = "future"
    skip_component: str = "block"
    aggregate: str = "max"
    n_cuts: int = 4
    cut_start: int = 8
    cut_stride: int = 8
    cut_margin: int = 4
    map_examples: int = 3
    ig_steps: int = 256
    n_reference: int = 10
    n_boot: int = 1000
    ci_level: float = 0.95
    device: str | None = None
    dtype: str | None = None
    backend: str = "hooked"
    process_weights: bool = False
    batch_size: int = 8
    allow_lossy_tokenization: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "task_params", _freeze(self.task_params))
        object.__setattr__(self, "thresholds", _freeze(self.thresholds))
        for k, v in self.thresholds.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"threshold {k} must be a number, got {v!r}")
        metrics = tuple(self.metrics)
        for m in metrics:
            if m not in METRICS:
                raise ConfigError(f"unknown metric {m!r}{close_matches(m, METRICS)} Metrics: {', '.join(METRICS)}")
        object.__setattr__(self, "metrics", tuple(m for m in METRICS if m in metrics))
        checks = [
            (self.n_examples >= 1, f"n_examples must be >= 1, got {self.n_examples}"),
            (self.skip_front >= 0, f"skip_front must be >= 0, got {self.skip_front}"),
            (self.skip_mode in ("future", "current"), f"skip_mode must be future or current, got {self.skip_mode!r}"),
            (self.skip_component in ("block", "attn", "mlp", "local"),
             f"skip_component must be block, attn, mlp or local, got {self.skip_component!r}"),
            (self.aggregate in ("max", "mean"), f"aggregate must be max or mean, got {self.aggregate!r}"),
            (self.n_cuts >= 1, f"n_cuts must be >= 1, got {self.n_cuts}"),
            (self.lens_k >= 1, f"lens_k must be >= 1, got {self.lens_k}"),
            (self.cut_stride >= 1, f"cut_stride must be >= 1, got {self.cut_stride}"),
            (self.map_examples >= 1, f"map_examples must be >= 1, got {self.map_examples}"),
            (self.ig_steps >= 1, f"ig_steps must be >= 1, got {self.ig_steps}"),
            (self.n_reference >= 1, f"n_reference must be >= 1, got {self.n_reference}"),
            (self.n_boot >= 0, f"n_boot must be >= 0, got {self.n_boot}"),
            (0 < self.ci_level < 1, f"ci_level must be in (0, 1), got {self.ci_level}"),
            (self.backend in ("hooked", "bridge"), f"backend must be hooked or bridge, got {self.backend!r}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (isinstance(self.allow_lossy_tokenization, bool),
             f"allow_lossy_tokenization must be true or false, got {self.allow_lossy_tokenization!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        from .depth import DEFAULT_THRESHOLDS

        for k, v in self.thresholds.items():
            if k not in DEFAULT_THRESHOLDS:
                raise ConfigError(f"unknown threshold {k!r}{close_matches(k, DEFAULT_THRESHOLDS)} "
                                  f"Thresholds: {', '.join(DEFAULT_THRESHOLDS)}")
            if not 0 < float(v) < 1:
                raise ConfigError(f"threshold {k} must be in (0, 1), got {v}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["metrics"] = list(self.metrics)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudyConfig:
        return from_dict(cls, data, "study options", tuples=("metrics",))

    def replace(self, **changes: Any) -> StudyConfig:
        return dataclasses.replace(self, **changes)


def resolve_task(config: StudyConfig) -> tuple[str, dict[str, Any]]:
    """The task name and parameters: explicit, or the zoo model's own task."""
    from .models.zoo import zoo_entry

    entry = zoo_entry(config.model)
    if entry is None and config.model.startswith("zoo/"):
        from .errors import ModelError
        from .models.zoo import zoo_names

        raise ModelError(f"unknown zoo model {config.model!r}{close_matches(config.model, zoo_names())} "
                         f"Zoo: {', '.join(zoo_names())}")
    if config.task is None:
        if entry is None:
            raise ConfigError(f"model {config.model!r} is not a zoo model: choose a task with --task")
        task = entry.task
        return task["name"], {**task.get("params", {}), **config.task_params}
    if entry is not None and config.task == entry.task.get("name"):
        # a zoo model reads its own format: default the parameters from its card
        return config.task, {**entry.task.get("params", {}), **config.task_params}
    return config.task, dict(config.task_params)


def default_out_dir(config: StudyConfig, root: str | os.PathLike[str] = "runs") -> Path:
    task, params = resolve_task(config)
    path = Path(config.model).expanduser()
    # a checkpoint directory is named by its own name; hub and zoo names keep their owner
    model = path.resolve().name if path.is_dir() else config.model.replace("/", "_").strip("_.")
    model = model or "model"
    keys = "".join(f"-{k}{v}" for k, v in params.items() if k in ("digits", "steps", "level", "hops"))
    return Path(root) / f"{model}__{task}{keys}"


@dataclass
class StudyResult:
    path: Path
    results: dict[str, Any]
    computed: list[str]
    reused: list[str]


def _environment() -> dict[str, Any]:
    import platform

    import torch
    import transformer_lens
    import transformers

    from . import __version__

    return {"effective_depth": __version__, "torch": torch.__version__,
            "transformer_lens": getattr(transformer_lens, "__version__", "?"),
            "transformers": transformers.__version__, "python": platform.python_version()}


def _prepare_dir(rd: RunDir, config: StudyConfig, force: bool) -> dict[str, Any]:
    """Check (or start) the run directory; returns the results written so far."""
    cfg = config.to_dict()
    if force and rd.path.exists():
        for name in (CONFIG, INPUTS, RESULTS, "tensors.safetensors", "dashboard.html"):
            (rd.path / name).unlink(missing_ok=True)
    if rd.exists():
        old = rd.read_json(CONFIG)
        if old.get("hash") != config_hash(cfg):
            diffs = sorted(k for k in set(old.get("config", {})) | set(cfg)
                           if old.get("config", {}).get(k) != cfg.get(k) and k != "device")
            raise ResultsError(
                f"{rd.path} holds a run with a different config (differs in: {', '.join(diffs) or '?'}); "
                "choose another --out, or pass --force to discard it"
            )
        results = rd.read_json(RESULTS, default={"completed": []})
        if results.get("format") not in (None, FORMAT_VERSION):
            raise ResultsError(f"{rd.path} was written by another format version; use --force")
        return results
    rd.path.mkdir(parents=True, exist_ok=True)
    rd.write_json(CONFIG, {"hash": config_hash(cfg), "config": cfg, "environment": _environment()})
    return {"completed": []}


def run_study(
    config: StudyConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    dashboard: bool = True,
    after_metric: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run every measurement of ``config`` and write the run directory ``out``.

    Finished measurements found in ``out`` (same config) are loaded, not recomputed.
    ``after_metric`` is called with each metric's name once it is saved (used by tests to
    simulate a crash).
    """
    from .depth import depth_score_estimate, estimate_all
    from .engine.batch import encode_batch
    from .metrics.skip_effects import draw_cuts
    from .models.loading import load_model, resolve_spec
    from .tasks import get_task

    # every mistake the user can make is caught before anything is written
    task_name, task_params = resolve_task(config)
    task = get_task(task_name, **task_params)
    resolve_spec(config.model)
    out_path = Path(out) if out is not None else default_out_dir(config)
    rd = RunDir(out_path)
    results = _prepare_dir(rd, config, force)
    examples = task.examples(config.n_examples)
    if not examples:
        raise ConfigError(f"task {task_name} with {task_params} produced no examples")
    model = load_model(config.model, device=config.device, dtype=config.dtype,
                       backend=config.backend, process_weights=config.process_weights)
    if model.tokenizer is None:
        raise ConfigError(f"model {config.model!r} has no tokenizer; studies need one")
    device = next(model.parameters()).device
    batch = encode_batch(model.tokenizer, examples, device=device,
                         allow_lossy=config.allow_lossy_tokenization)
    L = int(model.cfg.n_layers)
    cuts = [draw_cuts(int(n), config.n_cuts, f"{config.seed}:{b}", config.cut_start,
                      config.cut_stride, config.cut_margin) for b, n in enumerate(batch.lengths.tolist())]
    if config.skip_mode == "current":
        cuts = [[] for _ in cuts]
    rd.write_json(INPUTS, {"examples": [
        {**ex.to_dict(), "tokens": batch.token_ids(b), "str_tokens": batch.str_tokens[b],
         "cuts": cuts[b]} for b, ex in enumerate(examples)]})
    results.update({
        "format": FORMAT_VERSION,
        "model": {"name": config.model, "n_layers": L, "d_model": int(model.cfg.d_model),
                  "d_vocab": int(model.cfg.d_vocab),
                  "architecture": getattr(model.cfg, "original_architecture", None),
                  "n_params": int(sum(p.numel() for p in model.parameters())),
                  "source": getattr(model, "effective_depth_source", {})},
        "task": {"name": task_name, "params": task.values, "difficulty": task.difficulty,
                 "n_examples": len(examples)},
    })
    results.setdefault("metrics", {})
    results.setdefault("timing", {})
    if batch.warnings:
        results["warnings"] = sorted({*results.get("warnings", []), *batch.warnings})
    done: dict[str, Any] = {}
    stored = rd.load_tensors()
    reused, computed = [], []
    for name in config.metrics:
        if name in results["completed"]:
            prefix = f"metrics.{name}."
            tensors = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
            done[name] = metric_from_store(name, tensors, results["metrics"][name])
            reused.append(name)
            continue
        log.info("running %s", name)
        start = time.perf_counter()
        result = _run_metric(name, model, batch, config, cuts, done, examples, task, progress)
        elapsed = time.perf_counter() - start
        entry = {"meta": result.meta, "curves": result.curves()}
        if name == "skip_effects":
            entry["cuts"] = result.cuts
        rd.update_tensors(f"metrics.{name}", result.tensors())
        results["metrics"][name] = entry
        results["timing"][name] = round(elapsed, 3)
        results["completed"] = [m for m in METRICS if m in results["completed"] or m == name]
        rd.write_json(RESULTS, results)
        done[name] = result
        computed.append(name)
        if after_metric is not None:
            after_metric(name)
    estimates = estimate_all(done, thresholds=config.thresholds, n_boot=config.n_boot,
                             seed=config.seed, level=config.ci_level)
    depth = {k: v.to_dict() for k, v in estimates.items()}
    if "skip_effects" in done:
        depth["depth_score"] = depth_score_estimate(done["skip_effects"], n_boot=config.n_boot,
                                                    seed=config.seed, level=config.ci_level)
    results["depth"] = depth
    if "behaviour" in done:
        results["accuracy"] = done["behaviour"].accuracy()
    results["status"] = "complete"
    rd.write_json(RESULTS, results)
    if dashboard:
        _write_dashboard(rd.path)
    return StudyResult(rd.path, results, computed, reused)


def _run_metric(name: str, model: Any, batch: Any, config: StudyConfig, cuts: list[list[int]],
                done: dict[str, Any], examples: Sequence[Any], task: Any, progress: bool) -> Any:
    from . import metrics as M
    from .engine.batch import encode_batch

    common = {"progress": progress}
    if name == "contributions":
        return M.contributions(model, batch, skip_front=config.skip_front,
                               include_front=config.include_front, batch_size=config.batch_size, **common)
    if name == "logit_lens":
        return M.logit_lens(model, batch, k=config.lens_k, skip_front=config.skip_front,
                            include_front=config.include_front, batch_size=config.batch_size, **common)
    if name == "skip_effects":
        if config.skip_mode == "future" and not any(cuts):
            raise ConfigError(
                f"no example is long enough for future skip effects (cuts from range("
                f"{config.cut_start}, T - {config.cut_margin}, {config.cut_stride})); set "
                "skip_mode='current' or smaller cut_start / cut_stride"
            )
        return M.skip_effects(model, batch, mode=config.skip_mode, component=config.skip_component,
                              n_cuts=config.n_cuts, seed=config.seed, skip_front=config.skip_front,
                              aggregate=config.aggregate,
                              cuts=cuts if config.skip_mode == "future" else None,
                              batch_size=config.batch_size, **common)
    if name == "behaviour":
        if "skip_effects" in done and done["skip_effects"].meta.get("component") == "block":
            effect = done["skip_effects"].output_effect_of(aggregate="mean")
        else:
            effect = M.skip_effects(model, batch, mode="current", aggregate="mean",
                                    skip_front=0).output_effect
        import torch

        effect = torch.nan_to_num(effect, nan=0.0)
        return M.behaviour(model, batch, order=M.prune_order(effect), **common)
    if name in ("erasure", "integrated_gradients"):
        sub = batch.select(list(range(min(config.map_examples, batch.size))))
        if name == "integrated_gradients":
            return M.integrated_gradients(model, sub, n_steps=config.ig_steps, **common)
        ref_examples = task.examples(config.n_examples + config.n_reference)[config.n_examples:]
        if len(ref_examples) < config.n_reference:
            ref_examples = list(examples[: config.n_reference])
        reference = encode_batch(model.tokenizer, ref_examples, device=batch.tokens.device,
                                 allow_lossy=config.allow_lossy_tokenization)
        return M.residual_erasure(model, sub, reference=reference, skip_front=config.skip_front, **common)
    raise ConfigError(f"unknown metric {name!r}")


def _write_dashboard(path: Path) -> None:
    """The run's dashboard; a failure here never loses results that are already saved."""
    try:
        from .viz.dashboard import write_dashboard

        write_dashboard([path], path / "dashboard.html")
    except Exception as exc:  # noqa: BLE001 - the results are on disk; say what went wrong
        log.warning("could not write the dashboard of %s: %s", path, exc)
