"""``effective-depth prune``: pruning criteria side by side, and the pruned model exported.

:func:`run_prune` sequences the work (the only code here that touches a pruning run directory):

1. the task's examples: ``n_examples`` held-out evaluation examples (the task as given; a task
   whose default ``split=all`` would hold the calibration split is evaluated on ``split=test``), and
   ``n_calib`` *calibration* examples the criteria are measured on: the task's ``train`` split
   when it has one (as the tuned lens trains), else further examples of the same task drawn
   after the evaluation ones; any overlap is a warning in results.json;
2. :func:`effective_depth.analysis.pruning.compare_criteria`: every criterion's removal sets for
   ``k = 1 … max_remove`` and their held-out accuracy and answer log-likelihood;
3. results.json, the per-prompt tensors and pruning.html (:mod:`effective_depth.store.pruning`,
   :mod:`effective_depth.viz.pruning`); a rerun with the same options reuses them;
4. with ``remove=K, criterion=C, export_dir=DIR``: the checkpoint with C's ``K`` blocks removed
   (:func:`effective_depth.models.export.export_pruned`), loaded back by the toolkit to measure
   its accuracy on the same evaluation examples, and its forward time and parameter count against
   the original's on the same tokens (Hugging Face models, alternating calls).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError
from ..frozen import check_field_types

__all__ = ["PruneConfig", "PruneResult", "run_prune", "prune_examples", "default_prune_dir"]

log = logging.getLogger(__name__)

#: options that say where and how to compute, not what: a stored run with other values is reused
_NOT_COMPARED = ("device", "batch_size")


@dataclass(frozen=True)
class PruneConfig:
    """What a pruning comparison depends on (stored as results.json's ``config``)."""

    model: str = "zoo/add-4l"
    task: str | None = None
    task_params: dict[str, Any] = field(default_factory=dict)
    #: held-out evaluation examples
    n_examples: int = 50
    #: calibration examples the criteria are measured on
    n_calib: int = 32
    criteria: tuple[str, ...] = ()
    #: the most blocks removed (None: half the blocks)
    max_remove: int | None = None
    seed: int = 0
    n_boot: int = 1000
    device: str | None = None
    dtype: str | None = None
    precision: str = "auto"
    batch_size: int = 16

    def __post_init__(self) -> None:
        from ..analysis.pruning import check_criteria

        if isinstance(self.criteria, str):
            object.__setattr__(self, "criteria", tuple(check_criteria(self.criteria)))
        object.__setattr__(self, "criteria", tuple(check_criteria(list(self.criteria) or None)))
        object.__setattr__(self, "task_params", dict(self.task_params))
        check_field_types(self, "prune option")
        for name in ("n_examples", "n_calib"):
            if getattr(self, name) < 2:
                raise ConfigError(f"{name} must be at least 2 (the CIs resample prompts), got "
                                  f"{getattr(self, name)}")
        if self.n_boot < 0:
            raise ConfigError(f"n_boot must be >= 0, got {self.n_boot}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["criteria"] = list(self.criteria)
        return out


@dataclass
class PruneResult:
    path: Path
    results: dict[str, Any]
    comparison: Any
    reused: bool


def _study_config(config: PruneConfig) -> Any:
    from .run import StudyConfig

    return StudyConfig(model=config.model, task=config.task, task_params=config.task_params)


def default_prune_dir(config: PruneConfig, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<model>__<task>…__prune``: beside the study's directory of the same model and task."""
    from .run import default_out_dir

    study = default_out_dir(_study_config(config), root)
    return study.with_name(study.name + "__prune")


def prune_examples(config: PruneConfig) -> tuple[Any, list[Any], list[Any], dict[str, Any],
                                                  list[dict[str, str]]]:
    """The task, the evaluation and calibration examples, where the calibration ones came from,
    and warnings (too few examples, overlap)."""
    from ..tasks import get_task
    from .run import resolve_task

    name, params = resolve_task(_study_config(config))
    task = get_task(name, **params)
    warnings: list[dict[str, str]] = []
    split = type(task).params.get("split")
    if split is not None and split.choices and "train" in split.choices \
            and task.values.get("split") != "train":
        if task.values.get("split") == "all" and "split" not in config.task_params \
                and "test" in split.choices:
            # the default split mixes the calibration split in: evaluate on the held-out one
            task = type(task)(**{**task.values, "split": "test"})
            warnings.append({"code": "split_test",
                             "message": f"{name}: evaluated on split=test (the task's default "
                                        "split=all holds the train split the criteria are "
                                        "measured on); pass --param split=all to evaluate on "
                                        "all"})
        examples = task.examples(config.n_examples)
        calib_params = {**task.values, "split": "train"}
        calib = type(task)(**calib_params).examples(config.n_calib)
        source = {"source": "task train split", "task": name, "params": calib_params}
    else:
        both = task.examples(config.n_examples + config.n_calib)
        examples, calib = both[:config.n_examples], both[config.n_examples:]
        source = {"source": "the task's examples after the evaluation ones", "task": name,
                  "params": dict(task.values)}
    if len(examples) < 2 or len(calib) < 2:
        raise ConfigError(f"task {name} with {params} supplies {len(examples)} evaluation and "
                          f"{len(calib)} calibration examples; pruning needs at least 2 of each")
    for what, got, want in (("evaluation", examples, config.n_examples),
                            ("calibration", calib, config.n_calib)):
        if len(got) < want:
            warnings.append({"code": "few_examples",
                             "message": f"the task supplies {len(got)} {what} examples, fewer "
                                        f"than the {want} asked for"})
    shared = {ex.text for ex in examples} & {ex.text for ex in calib}
    if shared:
        warnings.append({"code": "calibration_overlap",
                         "message": f"{len(shared)} of the {len(examples)} evaluation examples are "
                                    "among the calibration examples: the curves are not held out"})
    source["n"] = len(calib)
    source["overlap"] = len(shared)
    return task, examples, calib, source, warnings


def _stored(path: Path, config: PruneConfig, force: bool) -> Any:
    """The stored run at ``path`` when it was made with the same options (else None)."""
    from ..store.pruning import is_prune_dir, load_prune_run

    if force or not path.exists() or not is_prune_dir(path):
        return None
    run = load_prune_run(path)
    stored = {k: v for k, v in run.config.items() if k not in _NOT_COMPARED}
    wanted = {k: v for k, v in config.to_dict().items() if k not in _NOT_COMPARED}
    if stored != wanted:
        diffs = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        raise ConfigError(f"{path} holds a pruning run made with other options ({', '.join(diffs)}"
                          "); use --force to replace it, or another --out")
    return run


def run_prune(config: PruneConfig, out: str | os.PathLike[str] | None = None, *,
              remove: int | None = None, criterion: str | None = None,
              export_dir: str | os.PathLike[str] | None = None, force: bool = False,
              time_repeats: int = 5, progress: bool = True) -> PruneResult:
    """Compare the criteria (or reuse the stored comparison), write the run directory, and, with
    ``remove``/``criterion``/``export_dir``, export the pruned checkpoint and measure it."""
    from ..analysis.pruning import check_criteria, compare_criteria
    from ..engine.batch import encode_batch
    from ..models.loading import load_model, resolve_spec
    from ..models.params import parameter_counts
    from ..store.pruning import PRUNE_FIGURE, write_prune_run
    from ..viz.pruning import write_pruning_figure

    asked = [remove is not None, criterion is not None, export_dir is not None]
    if any(asked) and not all(asked):
        raise ConfigError("exporting a pruned model needs all of --remove K, --criterion C and "
                          "--out-model DIR")
    if criterion is not None:
        criterion = check_criteria([criterion])[0]
        if criterion not in config.criteria:
            raise ConfigError(f"criterion {criterion!r} is not among the compared criteria "
                              f"({', '.join(config.criteria)})")
    resolve_spec(config.model)  # an unknown model is named before anything runs
    task, examples, calib, calib_info, warnings = prune_examples(config)
    path = Path(out) if out is not None else default_prune_dir(config)
    stored = _stored(path, config, force)
    model = load_model(config.model, device=config.device, dtype=config.dtype,
                       precision=config.precision)
    if model.tokenizer is None:
        raise ConfigError(f"model {config.model!r} has no tokenizer; pruning needs one")
    L = int(model.cfg.n_layers)
    if remove is not None and not 1 <= remove <= L - 1:
        raise ConfigError(f"--remove must be within 1..{L - 1} for {config.model} ({L} blocks), "
                          f"got {remove}")
    if config.max_remove is not None and not 1 <= config.max_remove <= L - 1:
        raise ConfigError(f"--max-remove must be within 1..{L - 1} for {config.model} ({L} "
                          f"blocks), got {config.max_remove}")
    k_max = config.max_remove or max(1, L // 2)
    if remove is not None and remove > k_max:
        raise ConfigError(f"--remove {remove} is beyond the comparison's {k_max} blocks; add "
                          f"--max-remove {remove}")
    device = next(model.parameters()).device
    batch = encode_batch(model.tokenizer, examples, device=device)
    calib_batch = encode_batch(model.tokenizer, calib, device=device)
    if stored is not None:
        comparison, results, reused = stored.comparison, dict(stored.results), True
        for key in ("kind", "format", "comparison"):
            results.pop(key, None)
    else:
        start = time.perf_counter()
        comparison = compare_criteria(model, batch, calib_batch, criteria=config.criteria,
                                      k_max=k_max, seed=config.seed,
                                      batch_size=config.batch_size, progress=progress)
        comparison.meta.update({"model": config.model, "task": task.name})
        elapsed = time.perf_counter() - start
        reused = False
        results = {
            "config": config.to_dict(),
            "model": {"name": config.model, "n_layers": L, "d_model": int(model.cfg.d_model),
                      "architecture": getattr(model.cfg, "original_architecture", None),
                      "params": parameter_counts(model),
                      "source": getattr(model, "effective_depth_source", {})},
            "task": {"name": task.name, "params": dict(task.values), "n_examples": batch.size},
            "calibration": calib_info,
            "curves": comparison.curves(n_boot=config.n_boot, seed=config.seed),
            "warnings": warnings,
            "timing": {"compare_s": elapsed},
        }
    if remove is not None:
        assert criterion is not None and export_dir is not None
        results["export"] = _export(model, config, comparison, batch, criterion, remove,
                                    Path(export_dir), path, force, time_repeats)
    write_prune_run(path, results, comparison)
    try:
        write_pruning_figure(comparison, path / PRUNE_FIGURE, n_boot=min(config.n_boot, 200))
    except Exception as exc:  # noqa: BLE001 - the results are on disk; say what went wrong
        log.warning("could not write the pruning figure of %s: %s", path, exc)
    return PruneResult(path, results, comparison, reused)


def _export(model: Any, config: PruneConfig, comparison: Any, batch: Any, criterion: str,
            remove: int, export_dir: Path, run_path: Path, force: bool, repeats: int
            ) -> dict[str, Any]:
    """Write the pruned checkpoint, check it, and measure what it buys."""
    from ..analysis.pruning import CRITERION_DEFINITIONS, SetEvaluator
    from ..models.export import export_pruned, time_checkpoints
    from ..models.loading import load_model

    source = getattr(model, "effective_depth_source", {}) or {}
    src = source.get("path")
    if not src or not (Path(src) / "config.json").is_file():
        raise ModelError(f"exporting needs the model's checkpoint directory, and {config.model!r} "
                         f"was loaded as a {source.get('kind', '?')} model without one; pass its "
                         "Hugging Face hub id or a local save_pretrained directory as --model")
    removed = comparison.removed(criterion, remove)
    ranking = comparison.rankings[criterion]
    why = {"criterion": criterion, "definition": CRITERION_DEFINITIONS[criterion],
           "k": remove, "source": ranking.source, "run": str(run_path),
           "model": config.model, "task": comparison.meta.get("task"),
           "scores": ranking.scores, "order": ranking.order,
           "scores_by_k": ranking.scores_by_k}
    info = export_pruned(src, removed, export_dir, record=why, force=force)
    accuracy = {"full": float(comparison.accuracy(criterion)[0]),
                "pruned_by_skipping": float(comparison.accuracy(criterion)[remove])}
    pruned = load_model(export_dir, device=config.device, dtype=config.dtype,
                        precision=config.precision)
    correct, loglik = SetEvaluator(pruned, batch, batch_size=config.batch_size).run([[]])
    accuracy["exported"] = float(correct.float().mean())
    accuracy["exported_loglik"] = float(loglik.mean())
    del pruned
    timing = time_checkpoints(src, export_dir, batch.tokens, device=str(batch.tokens.device),
                              dtype=next(model.parameters()).dtype, repeats=repeats)
    return {"dir": str(export_dir), "criterion": criterion, "k": remove, "removed": removed,
            "kept": info["kept"], "n_layers": info["n_layers"], "sliced_config":
            info["sliced_config"], "why": why, "accuracy": accuracy, **timing}
