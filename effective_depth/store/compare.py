"""Comparisons across runs: the paper's three questions (docs/methods.md §7).

* **Scale** — effective depth and ratio per model, per task: does the ratio stay constant as
  models grow?
* **Training type** — paired runs (a base model and its trained twin: long chain-of-thought,
  instruction tuning, or the zoo's scratchpad model), the difference of ratios with a bootstrap CI.
* **Difficulty** — one model on several difficulty levels of one task: the ratio per level, and
  Spearman's ρ between level and ratio with a bootstrap CI (prompts resampled within each level).
  The prompt-level form (``prompt_difficulty``): ρ between each prompt's difficulty and its own
  per-prompt depth, pooled over the levels, with the same CI.
  Split by correctness (``difficulty_by_correctness``): every estimator per level on the prompts
  the full model answers and, apart, on those it fails, and the prompt-level ρ within each part,
  so that "harder" is not read where "wrong" is meant.
* **Agreement** — whether the estimators measure one quantity: Spearman's ρ between every pair of
  estimators over the prompts of each run, and over the models of a grid (runs of one task and
  difficulty), with bootstrap CIs (:func:`estimator_agreement`).

A scale trend joins only runs of one model family (:mod:`effective_depth.store.families`):
``scale_trend`` has one row per family, task, difficulty and estimator, and says why runs of
other families are not joined with it.

``compare_runs`` returns plain data (lists and dicts) ready for JSON, CSV and the dashboard's
comparison figures; it recomputes estimators on bootstrap resamples from each run's stored
per-prompt data, so nothing is re-run through a model.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..analysis.depth import MIN_PROMPTS, prompt_spearman_bootstrap, spearman_bootstrap
from ..analysis.estimation import RunRules, bootstrap_estimate
from ..errors import ConfigError
from ..stats import bootstrap_indices, percentile_ci
from .families import Family, family_of, named_families, not_joined_reason
from .record import EstimateEntry, RunRecord, ScoreEntry
from .results import Run, load_run

__all__ = ["compare_runs", "comparison_tables", "tidy_comparison", "write_comparison",
           "estimator_names", "estimator_agreement", "write_agreement", "run_correctness",
           "MIN_SUBSET", "SUBSETS"]

#: a part of a level's prompts (answered or failed) with fewer prompts than this gets no
#: estimate and no ρ: its reason says how many it has (the reliability warnings' limit)
MIN_SUBSET = MIN_PROMPTS
#: the parts of the correctness split, in table order
SUBSETS = ("correct", "failed")
log = logging.getLogger(__name__)


def estimator_names() -> tuple[str, ...]:
    """Every registered estimator, in study order."""
    from ..metrics.registry import estimator_specs

    return tuple(estimator_specs())


#: parameters naming the file a run's examples come from: when the examples carry the difficulty
#: (a prompts file per level), runs that differ only in these differ only in difficulty
_SOURCE_PARAMS = ("path", "data_files")


def _task_key(run: Run) -> str:
    """The task without its difficulty: name and the parameters other than the difficulty
    parameter (and split, seed, format). When the level comes from the examples (a prompts file
    with a ``difficulty`` field), the file is what carries the level, so its path is left out,
    and the examples' common ``series`` field (if any) names the task instead."""
    task = run.record.task
    drop = {"split", "seed", "data_files", "format", _difficulty_param(run)}
    series = None
    if run.difficulty_from_examples:
        drop |= set(_SOURCE_PARAMS)
        named = {(ex.meta or {}).get("series") for ex in run.inputs_record.examples}
        series = named.pop() if len(named) == 1 else None
    params = {k: v for k, v in task.params.items() if k not in drop}
    if series is not None:
        params["series"] = series
    return (task.name or "?") + ("(" + ",".join(f"{k}={v}" for k, v in sorted(params.items())) + ")" if params else "")


def _difficulty_groups(loaded: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs with a difficulty level, by (model, task without its difficulty)."""
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in loaded:
        if r.difficulty is not None:
            groups[(_model(r), _task_key(r))].append(r)
    return groups


def difficulty_reasons(loaded: Sequence[Run]) -> list[str]:
    """Why runs give no (or only part of a) difficulty table: runs without a level, and
    (model, task) groups with fewer than two levels."""
    out = []
    for r in loaded:
        if r.difficulty is not None:
            continue
        levels = {lv for lv in r.example_levels() if lv is not None}
        if len(levels) > 1:
            out.append(f"{r.path}: its examples hold {len(levels)} difficulty levels "
                       f"{sorted(levels)}: a per-prompt trend (prompt_difficulty), not a run level")
        else:
            out.append(f"{r.path}: no difficulty level (task {r.record.task.name}"
                       " has no difficulty parameter and its examples carry no 'difficulty' "
                       "field; a prompts file gives one per example, see docs/tasks.md)")
    for (model, task), members in sorted(_difficulty_groups(loaded).items()):
        levels = sorted({r.difficulty for r in members})
        if len(levels) < 2:
            out.append(f"{model} on {task}: {len(members)} run(s), all at difficulty {levels[0]} "
                       "(a trend needs two levels of the same model and task; runs whose task "
                       "differs in more than its difficulty are not compared)")
    return out


def _difficulty_param(run: Run) -> str | None:
    from ..tasks import TASKS, list_tasks

    list_tasks()
    cls = TASKS.get(run.record.task.name or "")
    return None if cls is None else cls.difficulty_param


def _model(run: Run) -> str:
    return str(run.record.model.name or run.config_record.config.model)


def _estimate(run: Run, estimator: str) -> EstimateEntry | ScoreEntry:
    """The run's estimate, or a stand-in whose ``reason`` says why it has none."""
    return run.estimate_entry(estimator)


def compare_runs(
    runs: Sequence[Run | str | Path],
    *,
    estimators: Sequence[str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    families: Mapping[str, Sequence[str]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The scale, training-type and difficulty tables over ``runs``.

    ``pairs`` lists (base model, trained model) names; runs of a pair are matched by task and
    difficulty. Difficulty trends are computed for every (model, task) with two or more levels,
    also split by the full model's correctness (``difficulty_by_correctness``). ``families``
    names model families for the scale trend (``{name: [model or run directory, ...]}``); other
    runs get theirs from the model's name (:func:`effective_depth.store.families.family_of`).
    """
    loaded = [r if isinstance(r, Run) else load_run(r) for r in runs]
    skipped = [{"path": str(r.path), "reason": r.incomplete_reason()} for r in loaded
               if not r.complete]
    for s in skipped:
        log.warning("compare: skipped %s: %s", s["path"], s["reason"])
    loaded = [r for r in loaded if r.complete]
    if not loaded:
        raise ConfigError("compare needs at least one complete run directory"
                          + (f" ({len(skipped)} incomplete skipped)" if skipped else ""))
    known = estimator_names()
    ests = list(estimators or known)
    bad = [e for e in ests if e not in known]
    if bad:
        raise ConfigError(f"unknown estimators {bad}; choose from {', '.join(known)}")
    from ..analysis.per_prompt import run_per_prompt
    from ..metrics.registry import score_specs

    rules = {id(r): RunRules(r) for r in loaded}
    named = named_families(families)
    fams = {id(r): _family(r, named) for r in loaded}
    out: dict[str, Any] = {"estimators": ests, "runs": [], "scale": [], "scale_trend": [],
                           "training": [], "difficulty": [], "prompt_difficulty": [],
                           "difficulty_by_correctness": [], "agreement": [],
                           "families": _family_table(loaded, fams), "skipped": skipped}
    for r in loaded:
        res = r.record
        out["runs"].append({
            "path": str(r.path), "label": r.label, "model": _model(r), "task": _task_key(r),
            "family": fams[id(r)].text,
            "format": res.task.params.get("format"),
            "n_layers": res.model.n_layers,
            **_params(res),
            "difficulty": r.difficulty,
            "estimates": {e: _estimate(r, e).to_json() for e in ests},
            # every registered score under its own name (e.g. "depth_score")
            **{name: _json(res.depth.get(name)) for name in score_specs()},
            "accuracy": res.accuracy,
            "per_prompt": {e: pp.summary() for e, pp in run_per_prompt(r).items() if e in ests},
        })
        for e in ests:
            est = _estimate(r, e)
            out["scale"].append({  # reason: why layer/ratio are empty (not run, skipped, rule)
                "run": str(r.path), "model": _model(r), "family": fams[id(r)].text,
                "n_layers": res.model.n_layers,
                **_params(res), "task": _task_key(r),
                "difficulty": r.difficulty, "estimator": e,
                "layer": getattr(est, "layer", None), "ratio": _ratio(est), "ci": _ci(est),
                "reason": _cell_reason(est),
            })
    for base_name, trained_name in pairs or []:
        out["training"] += _training_rows(loaded, rules, base_name, trained_name, ests, n_boot, seed, level)
    out["scale_trend"], out["scale_reasons"] = _scale_trend_rows(loaded, rules, fams, ests,
                                                                 n_boot, seed, level)
    out["difficulty"] = _difficulty_rows(loaded, rules, ests, n_boot, seed, level)
    out["difficulty_reasons"] = difficulty_reasons(loaded)
    out["prompt_difficulty"] = _prompt_difficulty_rows(loaded, ests, n_boot, seed, level)
    out["difficulty_by_correctness"], out["difficulty_by_correctness_reasons"] = \
        _correctness_rows(loaded, rules, ests, n_boot, seed, level)
    out["agreement"] = estimator_agreement(loaded, estimators=ests, n_boot=n_boot, seed=seed,
                                           level=level, rules=rules)
    return out


def _json(entry: EstimateEntry | ScoreEntry | None) -> dict[str, Any] | None:
    return None if entry is None else entry.to_json()


def _ratio(entry: EstimateEntry | ScoreEntry) -> float | None:
    """An estimate's ratio (a score has none)."""
    return entry.ratio if isinstance(entry, EstimateEntry) else None


def _ci(entry: EstimateEntry | ScoreEntry) -> list[float] | None:
    return None if entry.ci is None else list(entry.ci)


def _params(results: RunRecord) -> dict[str, Any]:
    """The model's size as the scale table states it: ``n_params`` is Hugging Face's
    ``num_parameters()`` (a tied embedding once), beside the non-embedding count. Runs stored
    before the split have only ``n_params``, counted from the hooked tensors (a tied matrix
    twice): their ``n_params_method`` says so."""
    model = results.model
    method = model.n_params_method or ("older run: counted from the backend's own tensors (a "
                                       "tied matrix twice, added zero biases too)")
    return {"n_params": model.n_params, "n_params_non_embedding": model.n_params_non_embedding,
            "n_params_method": method}


def _prompt_levels(run: Run) -> list[Any]:
    """Each prompt's difficulty: its example's own, else the run's level."""
    default = run.difficulty
    return [default if lv is None else lv for lv in run.example_levels()]


def _prompt_difficulty_rows(loaded: list[Run], ests: list[str], n_boot: int, seed: int,
                            level: float) -> list[dict[str, Any]]:
    """Prompt-level difficulty test per (model, task): Spearman's ρ between each prompt's
    difficulty and its per-prompt depth, pooled across levels; prompts resampled within levels."""
    from ..analysis.per_prompt import run_per_prompt

    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in loaded:
        groups[(_model(r), _task_key(r))].append(r)
    rows = []
    for (model, task), members in sorted(groups.items()):
        per_run = [(r, _prompt_levels(r), run_per_prompt(r)) for r in members]
        levels = sorted({lv for _, lvs, _ in per_run for lv in lvs if lv is not None})
        if len(levels) < 2:
            continue
        for e in ests:
            if not all(e in pp for _, _, pp in per_run):
                continue
            values: dict[Any, list[float | None]] = {lv: [] for lv in levels}
            for _, lvs, pp in per_run:
                for lv, ratio in zip(lvs, pp[e].ratios):
                    if lv is not None:
                        values[lv].append(ratio)
            trend = prompt_spearman_bootstrap(levels, [values[lv] for lv in levels],
                                              n_boot=n_boot, seed=seed, level=level)
            rows.append({
                "model": model, "task": task, "estimator": e, "levels": levels,
                "runs": [str(r.path) for r in members],
                "n_prompts": trend["n_prompts"], "n_defined": trend["n_defined"],
                "medians": trend["ratios"], "rho": trend["rho"], "rho_ci": trend["ci"],
                "rho_reason": _rho_reason(levels, trend["ratios"], trend["rho"]),
                "undefined_fraction": trend["undefined_fraction"],
            })
    return rows


# --- families and the scale trend ---------------------------------------------------------------


def _family(run: Run, named: Mapping[str, str]) -> Family:
    return family_of(_model(run), run.record.model.architecture, named=named, run=str(run.path))


def _family_table(loaded: Sequence[Run], fams: Mapping[int, Family]) -> list[dict[str, Any]]:
    """One entry per family: its name, how it was found, the model type, its runs and models."""
    table: dict[str, dict[str, Any]] = {}
    for r in loaded:
        f = fams[id(r)]
        entry = table.setdefault(f.text, {"family": f.text, "name": f.name, "kind": f.kind,
                                          "model_type": f.model_type, "runs": [], "models": []})
        entry["runs"].append(str(r.path))
        if _model(r) not in entry["models"]:
            entry["models"].append(_model(r))
    return list(table.values())


def _scale_trend_rows(loaded: list[Run], rules: dict[int, RunRules], fams: Mapping[int, Family],
                      ests: list[str], n_boot: int, seed: int, level: float
                      ) -> tuple[list[dict[str, Any]], list[str]]:
    """The scale trend within each family: per (family, task, difficulty, estimator) the runs
    by number of blocks, their ratios, and Spearman's ρ between blocks and ratio (CI: prompts
    resampled within every run) when the family holds two depths. Runs of other families on
    the same task and difficulty are never joined with it: ``not_joined`` says so, and the
    returned reasons list each such group once. A task and difficulty with one model has no
    rows (no scale question)."""
    groups: dict[tuple[str, Any], list[Run]] = defaultdict(list)
    for r in loaded:
        groups[(_task_key(r), r.difficulty)].append(r)
    rows: list[dict[str, Any]] = []
    reasons: list[str] = []
    for (task, difficulty), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len({_model(r) for r in members}) < 2:
            continue  # one model on this task: no scale question
        apart = not_joined_reason([fams[id(r)] for r in members])
        where = task + ("" if difficulty is None else f" at difficulty {difficulty}")
        if apart:
            reasons.append(f"{where}: not joined: {apart}; each family is its own trend")
        by_family: dict[str, list[Run]] = defaultdict(list)
        for r in members:
            by_family[fams[id(r)].text].append(r)
        for fam, runs in by_family.items():
            runs = sorted(runs, key=lambda r: (r.record.model.n_layers or 0, _model(r)))
            depths = [r.record.model.n_layers for r in runs]
            for e in ests:
                found = [_estimate(r, e) for r in runs]
                ratios = [_ratio(f) for f in found]
                rho = ci = undefined = None
                if len(set(depths)) < 2:
                    why = (f"one model of family {fam}: no trend" if len(runs) == 1 else
                           f"every run of family {fam} has {depths[0]} blocks: no trend")
                else:
                    fns = [lambda idx, rr=rules[id(r)], e=e: rr.ratio(e, idx) for r in runs]
                    trend = spearman_bootstrap(depths, fns, [rules[id(r)].n_prompts() for r in runs],
                                               n_boot=n_boot, seed=seed, level=level)
                    rho, ci, undefined = trend["rho"], trend["ci"], trend["undefined_fraction"]
                    why = None if rho is not None else _depth_rho_reason(depths, ratios)
                rows.append({
                    "family": fam, "family_kind": fams[id(runs[0])].kind, "task": task,
                    "difficulty": difficulty, "estimator": e,
                    "runs": [str(r.path) for r in runs], "models": [_model(r) for r in runs],
                    "depths": depths, "ratios": ratios, "cis": [_ci(f) for f in found],
                    "rho": rho, "rho_ci": ci, "rho_reason": why,
                    "undefined_fraction": undefined, "not_joined": apart,
                })
    return rows, reasons


def _depth_rho_reason(depths: Sequence[Any], ratios: Sequence[Any]) -> str:
    defined = {d for d, v in zip(depths, ratios) if v is not None}
    if len(defined) < 2:
        return f"ρ undefined: defined at {len(defined)} of {len(set(depths))} depths (needs two)"
    return "ρ undefined: the ratio is the same at every depth"


# --- difficulty by correctness ----------------------------------------------------------------


def run_correctness(run: Run) -> tuple[list[bool] | None, str | None]:
    """Whether the full model answers each of the run's prompts correctly (a registered
    measurement's ``correctness``), or None and why not: ``not available: behaviour not run``
    (or skipped, with the run's warning)."""
    from ..metrics.registry import correctness_specs

    specs = correctness_specs()
    if not specs:
        return None, "not available: no registered measurement records each prompt's correctness"
    for spec in specs:
        if spec.name in run.completed:
            return [bool(x) for x in spec.correctness(run.metric(spec.name))], None  # type: ignore[misc]
    name = specs[0].name
    if name in run.record.settings.skipped_metrics:
        said = [w.message for w in run.record.warnings
                if name in w.message and "skipped" in w.message]
        return None, f"not available: {name} skipped" + (f" ({said[0]})" if said else "")
    return None, f"not available: {name} not run"


def _too_few(subset: str, n: int, what: str = "prompts") -> str:
    return f"too few {subset} {what} (n={n}, need ≥{MIN_SUBSET})"


def _correctness_rows(loaded: list[Run], rules: dict[int, RunRules], ests: list[str],
                      n_boot: int, seed: int, level: float
                      ) -> tuple[list[dict[str, Any]], list[str]]:
    """The difficulty comparison on the prompts the full model answers (``correct``) and, apart,
    on those it fails (``failed``): per (model, task) with two or more levels, per estimator and
    part, the estimate at each level on that part's prompts (its rule on them, a bootstrap CI
    that resamples them), and Spearman's ρ between each prompt's level and its per-prompt depth
    over that part's prompts. A part with fewer than :data:`MIN_SUBSET` prompts gets a reason and
    no number. A group none of whose runs measured correctness is a reason, not rows."""
    from ..analysis.per_prompt import run_per_prompt

    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for r in loaded:
        groups[(_model(r), _task_key(r))].append(r)
    rows: list[dict[str, Any]] = []
    reasons: list[str] = []
    for (model, task), members in sorted(groups.items()):
        prompt_levels = {id(r): _prompt_levels(r) for r in members}
        cells = sorted({(lv, str(r.path)): r for r in members
                        for lv in prompt_levels[id(r)] if lv is not None}.items())
        if len({key[0] for key, _ in cells}) < 2:
            continue
        correct = {id(r): run_correctness(r) for r in members}
        if all(flags is None for flags, _ in correct.values()):
            whys = sorted({why for _, why in correct.values() if why})
            reasons.append(f"{model} on {task}: {'; '.join(whys)} (no run of it records which "
                           "prompts the model answers)")
            continue
        per_prompt = {id(r): run_per_prompt(r) for r in members}
        for e in ests:
            for subset in SUBSETS:
                rows.append(_correctness_row(model, task, e, subset, cells, prompt_levels,
                                             correct, per_prompt, rules, n_boot, seed, level))
    return rows, reasons


def _correctness_row(model: str, task: str, e: str, subset: str,
                     cells: list[tuple[tuple[Any, str], Run]], prompt_levels: dict[int, list[Any]],
                     correct: dict[int, tuple[list[bool] | None, str | None]],
                     per_prompt: dict[int, Any], rules: dict[int, RunRules], n_boot: int,
                     seed: int, level: float) -> dict[str, Any]:
    want = subset == "correct"
    row: dict[str, Any] = {"model": model, "task": task, "estimator": e, "subset": subset,
                           "levels": [], "runs": [], "n_prompts": [], "n_subset": [],
                           "ratios": [], "cis": [], "undefined_fractions": [], "reasons": []}
    values: list[list[float | None]] = []
    missing: list[str] = []
    for (lv, path), r in cells:
        idx = [i for i, x in enumerate(prompt_levels[id(r)]) if x == lv]
        flags, why = correct[id(r)]
        sub = [] if flags is None else [i for i in idx if flags[i] == want]
        ratio = ci = undefined = None
        if flags is None:
            reason: str | None = why
            missing.append(f"{why} ({path})")
        elif e not in rules[id(r)].rules:
            reason = _cell_reason(_estimate(r, e))
        elif len(sub) < MIN_SUBSET:
            reason = _too_few(subset, len(sub))
        else:
            rule = rules[id(r)].rules[e]
            est = bootstrap_estimate(
                e, lambda s, sub=sub, rule=rule: rule(sub if s is None else [sub[j] for j in s]),
                len(sub), int(r.record.model.n_layers or 0), n_boot=n_boot, seed=seed,
                level=level)
            ratio, undefined = est.ratio, est.undefined_fraction
            ci = None if est.ci is None else [float(x) for x in est.ci]
            reason = None if ratio is not None else f"undefined: {est.reason or 'no reason given'}"
        pp = per_prompt[id(r)].get(e)
        values.append([] if pp is None else [pp.ratios[i] for i in sub])
        row["levels"].append(lv)
        row["runs"].append(path)
        row["n_prompts"].append(len(idx))
        row["n_subset"].append(None if flags is None else len(sub))
        row["ratios"].append(ratio)
        row["cis"].append(ci)
        row["undefined_fractions"].append(undefined)
        row["reasons"].append(reason)
    n_defined = sum(v is not None for vs in values for v in vs)
    rho = rho_ci = None
    if missing:
        rho_reason: str | None = "ρ not computed: " + "; ".join(missing)
    elif any(e not in rules[id(r)].rules for _, r in cells):
        absent = next(r for _, r in cells if e not in rules[id(r)].rules)
        rho_reason = f"ρ not computed: {_cell_reason(_estimate(absent, e))}"
    elif any(e not in per_prompt[id(r)] for _, r in cells):
        rho_reason = f"ρ not computed: {e} has no per-prompt depth"
    elif n_defined < MIN_SUBSET:
        rho_reason = _too_few(subset, n_defined, "prompts with a per-prompt depth")
    else:
        trend = prompt_spearman_bootstrap(row["levels"], values, n_boot=n_boot, seed=seed,
                                          level=level)
        rho, rho_ci = trend["rho"], trend["ci"]
        at = {lv for lv, vs in zip(row["levels"], values) if any(v is not None for v in vs)}
        rho_reason = None if rho is not None else (
            f"ρ undefined: {subset} prompts with a per-prompt depth at {len(at)} of "
            f"{len(set(row['levels']))} levels (needs two)" if len(at) < 2 else
            "ρ undefined: the per-prompt depth is the same at every level")
    row.update(rho=rho, rho_ci=rho_ci, rho_n=n_defined, rho_reason=rho_reason,
               min_prompts=MIN_SUBSET, prompt_ratios=values)
    return row


def estimator_agreement(
    runs: Sequence[Run | str | Path],
    *,
    estimators: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    rules: dict[int, RunRules] | None = None,
) -> list[dict[str, Any]]:
    """Rank agreement between estimators, as flat rows ``{"scope", "over", "a", "b", "rho",
    "ci", "n", "reason"}``:

    * ``scope="prompts"``: per run, ρ between two estimators' per-prompt depths over its prompts
      (both defined), CI from resampling prompts;
    * ``scope="models"``: per group of three or more runs of one task and difficulty, ρ between two
      estimators' ratios over the runs' models, CI from resampling prompts within every run (the
      same resample for both estimators of a run): the uncertainty of the estimates, given these
      models.
    """
    from ..analysis.per_prompt import prompt_agreement, run_per_prompt

    loaded = [r if isinstance(r, Run) else load_run(r) for r in runs]
    ests = list(estimators or estimator_names())
    rows: list[dict[str, Any]] = []
    for r in loaded:
        pp = {k: v for k, v in run_per_prompt(r).items() if k in ests}
        for row in prompt_agreement(pp, n_boot=n_boot, seed=seed, level=level):
            rows.append({"scope": "prompts", "over": r.label, "run": str(r.path), **row})
    rules = rules or {id(r): RunRules(r) for r in loaded}
    groups: dict[tuple[str, Any], list[Run]] = defaultdict(list)
    for r in loaded:
        groups[(_task_key(r), r.difficulty)].append(r)
    for (task, difficulty), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if len({_model(r) for r in members}) < 3:
            continue
        rows += _model_agreement(members, rules, ests, task, difficulty, n_boot, seed, level)
    return rows


def _model_agreement(members: list[Run], rules: dict[int, RunRules], ests: list[str], task: str,
                     difficulty: Any, n_boot: int, seed: int, level: float) -> list[dict[str, Any]]:
    import numpy as np

    from ..analysis.per_prompt import rank_agreement

    members = sorted(members, key=lambda r: (r.record.model.n_layers or 0,
                                             _model(r)))
    point = {e: np.asarray([np.nan if (v := _ratio(_estimate(r, e))) is None else v
                            for r in members], float) for e in ests}
    idx = [bootstrap_indices(rules[id(r)].n_prompts(), n_boot, seed + 104729 * i)
           for i, r in enumerate(members)]
    boot = {e: np.asarray([[np.nan if (v := rules[id(r)].ratio(e, idx[i][b].tolist())) is None
                            else v for i, r in enumerate(members)] for b in range(n_boot)], float)
            for e in ests}
    over = f"{task}" + ("" if difficulty is None else f" difficulty {difficulty}") + \
        f" ({len(members)} models)"
    rows = []
    for a, b in itertools.combinations(ests, 2):
        x, y = point[a], point[b]
        keep = ~(np.isnan(x) | np.isnan(y))
        rho = rank_agreement(x, y)
        row: dict[str, Any] = {"scope": "models", "over": over, "run": None, "a": a, "b": b,
                               "rho": None, "ci": None, "n": int(keep.sum()), "reason": None,
                               "undefined_fraction": None}
        if math.isnan(rho):
            row["reason"] = ("fewer than 3 models where both are defined" if keep.sum() < 3 else
                             "one of the two is the same on every model")
        else:
            rhos = [rank_agreement(boot[a][k], boot[b][k]) for k in range(n_boot)]
            ci = percentile_ci(rhos, level)
            row.update(rho=rho, ci=None if ci is None else list(ci),
                       undefined_fraction=float(np.mean([math.isnan(v) for v in rhos])))
        rows.append(row)
    return rows


def _training_rows(loaded: list[Run], rules: dict[int, RunRules], base_name: str, trained_name: str,
                   ests: list[str], n_boot: int, seed: int, level: float) -> list[dict[str, Any]]:
    bases = [r for r in loaded if _model(r) == base_name]
    trained = [r for r in loaded if _model(r) == trained_name]
    if not bases or not trained:
        missing = base_name if not bases else trained_name
        raise ConfigError(f"pair {base_name}={trained_name}: no run of model {missing!r} among "
                          f"{sorted({_model(r) for r in loaded})}")
    rows = []
    for b in bases:
        key = (_task_key(b), b.difficulty)
        for t in trained:
            if (_task_key(t), t.difficulty) != key:
                continue
            rb, rt = rules[id(b)], rules[id(t)]
            nb, nt = rb.n_prompts(), rt.n_prompts()
            paired = nb == nt and [e.prompt for e in b.inputs_record.examples] == \
                [e.prompt for e in t.inputs_record.examples]
            idx_b = bootstrap_indices(nb, n_boot, seed)
            idx_t = idx_b if paired else bootstrap_indices(nt, n_boot, seed + 1)
            for e in ests:
                eb, et = _estimate(b, e), _estimate(t, e)
                rb_, rt_ = _ratio(eb), _ratio(et)
                diff = None if rb_ is None or rt_ is None else rt_ - rb_
                diffs = []
                if diff is not None and n_boot:
                    for i in range(n_boot):
                        x, y = rb.ratio(e, idx_b[i].tolist()), rt.ratio(e, idx_t[i].tolist())
                        if x is not None and y is not None:
                            diffs.append(y - x)
                ci = percentile_ci(diffs, level) if diffs else None
                rows.append({"base": _model(b), "trained": _model(t), "base_run": str(b.path),
                             "trained_run": str(t.path), "task": key[0],
                             "difficulty": key[1], "estimator": e, "ratio_base": rb_,
                             "ratio_trained": rt_, "diff": diff,
                             "diff_ci": None if ci is None else list(ci), "paired": paired,
                             "reason": _diff_reason(eb, et, diff, ci, n_boot)})
    if not rows:
        raise ConfigError(f"pair {base_name}={trained_name}: the two models share no task and difficulty")
    return rows


def _difficulty_rows(loaded: list[Run], rules: dict[int, RunRules], ests: list[str],
                     n_boot: int, seed: int, level: float) -> list[dict[str, Any]]:
    groups = _difficulty_groups(loaded)
    rows = []
    for (model, task), members in sorted(groups.items()):
        members = sorted(members, key=lambda r: r.difficulty)
        levels = [r.difficulty for r in members]
        if len(set(levels)) < 2:
            continue
        for e in ests:
            fns = [lambda idx, rr=rules[id(r)], e=e: rr.ratio(e, idx) for r in members]
            trend = spearman_bootstrap(levels, fns, [rules[id(r)].n_prompts() for r in members],
                                       n_boot=n_boot, seed=seed, level=level)
            found = [_estimate(r, e) for r in members]
            ratios = [_ratio(f) for f in found]
            rows.append({
                "model": model, "task": task, "estimator": e, "levels": levels,
                "runs": [str(r.path) for r in members],
                "ratios": ratios, "cis": [_ci(f) for f in found],
                "reasons": [_cell_reason(f) for f in found],
                "rho": trend["rho"], "rho_ci": trend["ci"],
                "rho_reason": _rho_reason(levels, ratios, trend["rho"]),
                "undefined_fraction": trend["undefined_fraction"],
            })
        from ..metrics.registry import score_specs

        for score, spec in score_specs().items():
            metric = spec.metric
            # scalar scores such as Csordás et al.'s depth score get the same trend test
            if not all(metric in r.completed for r in members):
                continue
            fns = [lambda idx, rr=rules[id(r)], score=score: rr.score(score, idx) for r in members]
            trend = spearman_bootstrap(levels, fns, [rules[id(r)].n_prompts() for r in members],
                                       n_boot=n_boot, seed=seed, level=level)
            stored = [r.record.depth.get(score) for r in members]
            values = [None if s is None else s.shown for s in stored]
            rows.append({
                "model": model, "task": task, "estimator": score, "levels": levels,
                "runs": [str(r.path) for r in members],
                "ratios": values, "cis": [None if s is None else _ci(s) for s in stored],
                "reasons": [None if v is not None else f"undefined: no {score} stored"
                            for v in values],
                "rho": trend["rho"], "rho_ci": trend["ci"],
                "rho_reason": _rho_reason(levels, values, trend["rho"]),
                "undefined_fraction": trend["undefined_fraction"],
            })
    return rows


def _cell_reason(est: EstimateEntry | ScoreEntry) -> str | None:
    """Why an estimate's cell is empty: not run / skipped (from the run), or undefined (the
    rule's reason); None when it has a value."""
    if _ratio(est) is not None:
        return None
    reason = str(getattr(est, "reason", None) or "no reason stored")
    return reason if reason.startswith(("not run", "skipped", "not computed")) \
        else f"undefined: {reason}"


def _rho_reason(levels: Sequence[Any], values: Sequence[Any], rho: float | None) -> str | None:
    """Why Spearman's ρ of a difficulty trend is undefined (None when it is defined)."""
    if rho is not None:
        return None
    defined = [lv for lv, v in zip(levels, values) if v is not None]
    if len(set(defined)) < 2:
        return (f"ρ undefined: defined at {len(set(defined))} of {len(set(levels))} levels "
                "(needs two)")
    return "ρ undefined: the value is the same at every level"


def _diff_reason(base: EstimateEntry | ScoreEntry, trained: EstimateEntry | ScoreEntry,
                 diff: float | None,
                 ci: Any, n_boot: int) -> str | None:
    """Why a training row's difference (or its CI) is empty."""
    if diff is None:
        parts = [f"{who}: {_cell_reason(e)}" for who, e in (("base", base), ("trained", trained))
                 if _ratio(e) is None]
        return "; ".join(parts)
    if ci is None:
        return ("no CI: n_boot = 0" if not n_boot else
                "no CI: the difference is undefined in every resample")
    return None


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


#: the comparison's tables, in the order they are written and printed
TABLES = ("scale", "scale_trend", "training", "difficulty", "prompt_difficulty",
          "difficulty_by_correctness", "agreement")


def comparison_tables(comparison: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The comparison's tables as lists of rows (for CSV and the terminal)."""
    return {k: comparison.get(k, []) for k in TABLES}


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    return buf.getvalue()


def _is_interval(key: str) -> bool:
    return key == "ci" or key.endswith("_ci")


def _split_intervals(row: Mapping[str, Any]) -> dict[str, Any]:
    """``ci: [lo, hi]`` (and ``diff_ci``, ``rho_ci``, ...) as ``ci_lo`` and ``ci_hi`` numbers."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if _is_interval(key):
            lo, hi = value if isinstance(value, (list, tuple)) and len(value) == 2 else (None, None)
            out[f"{key}_lo"], out[f"{key}_hi"] = (float("nan") if v is None else float(v)
                                                  for v in (lo, hi))
        else:
            out[key] = value
    return out


#: per-level list columns whose name stays as it is (already a count per level)
_KEEP_NAME = ("n_prompts", "n_defined", "n_subset")


#: comparison tables stored as lists over levels (over runs: the scale trend), written one row
#: per level (per run)
_PER_LEVEL = {"difficulty": "levels", "prompt_difficulty": "levels",
              "difficulty_by_correctness": "levels", "scale_trend": "runs"}


def _per_level(row: Mapping[str, Any], axis: str = "levels") -> list[dict[str, Any]]:
    """A difficulty row (lists over ``levels``) as one row per level: ``levels`` -> ``level``,
    ``ratios`` -> ``ratio``, ``cis`` -> ``ci``, ``runs`` -> ``run``, ``medians`` -> ``median``,
    ``reasons`` -> ``reason``, every other plural key holding a list of the same length likewise
    (``n_prompts``, ``n_defined`` and ``n_subset`` keep their names); the rest (``rho``,
    ``rho_ci``) repeats on every row. A list of another length (the runs pooled by the per-prompt
    test) becomes one ``; ``-joined text cell: no cell holds a list. ``axis``: the list the rows
    follow (``runs`` for the scale trend: one row per run of a family)."""
    levels = row.get(axis)
    if not isinstance(levels, list):
        return [dict(row)]
    # plural keys only: an interval such as rho_ci is a pair even when there are two levels
    per = {k for k, v in row.items() if isinstance(v, list) and len(v) == len(levels)
           and (k.endswith("s") or k in _KEEP_NAME) and not _is_interval(k)}
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


#: row keys that only the figures read: lists of lists, left out of the tidy tables
_FIGURE_ONLY = ("prompt_ratios",)


def tidy_comparison(table: str, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The comparison ``table``'s rows, flat: intervals split into numeric ``*_lo`` / ``*_hi``
    columns, the difficulty tables one row per level and the scale trend one row per run (what
    the comparison CSVs hold)."""
    flat: list[dict[str, Any]] = []
    for row in rows:
        if table == "prompt_difficulty" and isinstance(row.get("runs"), list):
            # the runs pooled into one test, not one run per level
            row = {**row, "runs": "; ".join(str(r) for r in row["runs"])}
        # each prompt's own depth (for the figure) is in comparison.json, not in a table cell
        row = {k: v for k, v in row.items() if k not in _FIGURE_ONLY}
        axis = _PER_LEVEL.get(table)
        for item in (_per_level(row, axis) if axis else [dict(row)]):
            flat.append(_split_intervals(item))
    return flat


def write_agreement(rows: list[dict[str, Any]], out: str | Path) -> list[Path]:
    """``agreement.json`` and ``agreement.csv`` (the rows of :func:`estimator_agreement`)."""
    from .results import atomic_write_text, dumps

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "agreement.json", out / "agreement.csv"]
    atomic_write_text(written[0], dumps({"agreement": rows}))
    atomic_write_text(written[1], _csv(rows))
    return written


def write_comparison(comparison: dict[str, Any], out: str | Path) -> list[Path]:
    """``comparison.json`` and one CSV per table in directory ``out`` (:data:`TABLES`: among
    them ``scale_trend.csv`` and ``difficulty_by_correctness.csv``): tidy rows with numeric
    ``*_lo`` / ``*_hi`` columns for every interval, the difficulty tables one row per level, the
    scale trend one row per run (:func:`tidy_comparison`)."""
    from .results import atomic_write_text, dumps

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "comparison.json"]
    atomic_write_text(written[0], dumps(comparison))
    for name, rows in comparison_tables(comparison).items():
        if rows:
            path = out / f"{name}.csv"
            atomic_write_text(path, _csv(tidy_comparison(name, rows)))
            written.append(path)
    return written

