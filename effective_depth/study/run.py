"""Studies: a frozen :class:`StudyConfig` in, a run directory out.

``run_study(config, out)`` is the only code that sequences work and touches the run directory:
it loads the model, builds the task's examples, runs the chosen measurements (each one saved as
soon as it finishes, so a killed run resumes where it stopped), then the effective-depth estimates
with bootstrap CIs, and writes the dashboard. ``run_grid`` runs a grid of studies (models × tasks ×
difficulty levels) in sequence or on a Ray cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.batch import POSITIONS, query_starts
from ..engine.clean_cache import shared_clean_passes
from ..engine.sweep import default_memory_budget
from ..errors import ConfigError, ResultsError, close_matches
from ..frozen import check_field_types, from_dict
from ..metrics.options import MetricOptions, flatten_options, nest_flat_options
from ..resources import ResourceMeter
from ..store.fingerprint import compute_fingerprint, inputs_fingerprint, loaded_model_fingerprint
from ..store.fitted import load_or_fit
from ..store.observed import record_observed
from ..store.record import RunConfig, RunRecord
from ..store.results import (
    CONFIG,
    FORMAT_VERSION,
    INPUTS,
    LOCK,
    NOT_HASHED,
    RESULTS,
    TENSORS,
    RunDir,
    config_hash,
    metric_from_store,
)

__all__ = ["StudyConfig", "run_study", "resolve_task", "default_out_dir", "StudyResult",
           "config_differences"]

log = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    if name == "METRICS":  # every registered measurement, in study order (read at access time)
        from ..metrics.registry import metric_names

        return metric_names()
    raise AttributeError(name)


def _freeze(params: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(sorted((params or {}).items()))


def _split(metrics: str | Sequence[str]) -> list[str]:
    items = [metrics] if isinstance(metrics, str) else list(metrics)
    return [m.strip() for item in items for m in str(item).split(",") if m.strip()]


@dataclass(frozen=True)
class StudyConfig:
    """Everything a study depends on; saved as ``config.json`` beside the results.

    ``task=None`` takes the task the zoo model was trained on (from its card); ``metrics=()``
    every registered measurement (``effective_depth.metrics.registry``). ``options`` maps a measurement's
    name to its options (``effective_depth.metrics.options``): given as objects or mappings, missing ones
    take their defaults, so every registered measurement with options has an entry.
    """

    model: str = "zoo/add-4l"
    task: str | None = None
    task_params: dict[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    n_examples: int = 20
    seed: int = 0
    thresholds: dict[str, float | int] = field(default_factory=dict)
    rules: str = "toolkit"
    skip_front: int = 1
    include_front: bool = True
    #: which positions the position-averaged measurements (contributions, lenses, skip effects)
    #: read: ``all``, or ``query``, the asked example's of a few-shot prompt (docs/methods.md)
    positions: str = "all"
    n_boot: int = 1000
    ci_level: float = 0.95
    device: str | None = None
    dtype: str | None = None
    #: the compute policy (``effective_depth.models.precision``): auto, fp32, bf16-mixed, bf16
    precision: str = "auto"
    backend: str = "hooked"
    process_weights: bool = False
    batch_size: int = 8
    allow_lossy_tokenization: bool = False
    #: inputs: render each example through a chat template (True: the tokenizer's own; a
    #: Jinja file or template text), with an optional system turn
    chat_template: bool | str = False
    system_prompt: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.metrics, (list, str)):
            object.__setattr__(self, "metrics", tuple(_split(self.metrics)))
        check_field_types(self, "study option")
        object.__setattr__(self, "task_params", _freeze(self.task_params))
        object.__setattr__(self, "thresholds", _freeze(self.thresholds))
        from ..metrics.registry import default_thresholds, get_metric, metric_names
        from ..stats import RULE_SETS

        names = metric_names()
        metrics = tuple(self.metrics) or names
        for m in metrics:
            get_metric(m)  # an unknown name is an error with the closest names
        object.__setattr__(self, "metrics", tuple(m for m in names if m in metrics))

        def positive(name: str) -> tuple[bool, str]:
            value = getattr(self, name)
            return value is None or value >= 1, f"{name} must be >= 1, got {value}"

        checks = [
            positive("n_examples"),
            (0 <= self.seed < 2**63, f"seed must be a non-negative integer, got {self.seed}"),
            (self.rules in RULE_SETS, f"rules must be one of {', '.join(RULE_SETS)}, got {self.rules!r}"),
            (self.skip_front >= 0, f"skip_front must be >= 0, got {self.skip_front}"),
            (self.positions in POSITIONS,
             f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}"),
            positive("batch_size"),
            (self.n_boot >= 0, f"n_boot must be >= 0, got {self.n_boot}"),
            (0 < self.ci_level < 1, f"ci_level must be in (0, 1), got {self.ci_level}"),
            (self.backend in ("hooked", "bridge"), f"backend must be hooked or bridge, got {self.backend!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        from ..models.chat import chat_format

        chat_format(self.chat_template, self.system_prompt)  # a bad value fails here
        object.__setattr__(self, "options", _measurement_options(self.options, self))
        known = default_thresholds()
        for k, v in self.thresholds.items():
            if k not in known:
                raise ConfigError(f"unknown threshold {k!r}{close_matches(k, known)} "
                                  f"Thresholds: {', '.join(known)}")
            if not 0 < float(v) < 1:
                raise ConfigError(f"threshold {k} must be in (0, 1), got {v}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``config.json``): core fields, then ``options`` nested by measurement."""
        d = dataclasses.asdict(self)
        d["metrics"] = list(self.metrics)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "study options") -> StudyConfig:
        """A config from its JSON form; dotted keys (``skip_effects.mode``, as ``--set`` gives
        them) are read into ``options`` and win over the same option given there."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping of option names to values, got "
                              f"{type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in data if k not in known and "." not in k)
        if unknown:
            raise ConfigError(f"unknown study options {unknown}{_near(unknown[0], known)} "
                              f"Valid: {', '.join(sorted(known))}, and MEASUREMENT.OPTION "
                              "(listed by effective-depth run --help)")
        data = _nest_dotted(data)
        if isinstance(data.get("metrics"), str):
            data["metrics"] = _split(data["metrics"])
        return from_dict(cls, data, "study options", tuples=("metrics",))

    def replace(self, **changes: Any) -> StudyConfig:
        return dataclasses.replace(self, **changes)


def _near(word: str, known: set[str]) -> str:
    """Close names among the core options and every measurement's options (``cut_start`` finds
    ``skip_effects.cut_start``)."""
    from ..metrics.registry import metric_specs

    dotted = [f"{s.name}.{f.name}" for s in metric_specs() if s.options is not None
              for f in dataclasses.fields(s.options)]
    near = close_matches(word, [*sorted(known), *dotted])
    fields = [d for d in dotted if close_matches(word, [d.split(".", 1)[1]])]
    return near or (f"; did you mean {', '.join(map(repr, fields[:5]))}?" if fields else "")


def _nest_dotted(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with its dotted keys (``skip_effects.mode: current``) moved into ``options``
    (``{skip_effects: {mode: current}}``), where they win over the same option."""
    out = {k: v for k, v in data.items() if "." not in k or k.startswith(".")}
    dotted = {k: v for k, v in data.items() if k not in out}
    if not dotted:
        return out
    options = {m: v.to_dict() if isinstance(v, MetricOptions) else
               dict(v) if isinstance(v, Mapping) else v  # a wrong value: StudyConfig names it
               for m, v in dict(out.pop("options", None) or {}).items()}
    for key, value in dotted.items():
        measurement, name = key.split(".", 1)
        entry = options.setdefault(measurement, {})
        if isinstance(entry, dict):
            entry[name] = value
    out["options"] = options
    return out


def _measurement_options(given: Mapping[str, Any], config: StudyConfig) -> dict[str, Any]:
    """Every registered measurement's options object (defaults where not given), validated
    against the study's core options; an unknown measurement is an error with close names."""
    from ..metrics.registry import metric_specs

    given = dict(given)
    out: dict[str, Any] = {}
    for spec in metric_specs():
        if spec.options is None:
            continue
        value = given.pop(spec.name, None)
        if value is None:
            value = spec.options()
        elif isinstance(value, Mapping):
            value = spec.options.from_dict(value, f"{spec.name} options")
        elif not isinstance(value, spec.options):
            raise ConfigError(f"options of {spec.name} must be a {spec.options.__name__} or a "
                              f"mapping, got {type(value).__name__}")
        value.check(config)
        out[spec.name] = value
    if given:
        name = sorted(given)[0]
        raise ConfigError(f"no measurement with options named {name!r}"
                          f"{close_matches(name, out)} Measurements with options: "
                          f"{', '.join(out)}")
    return out


def resolve_task(config: StudyConfig) -> tuple[str, dict[str, Any]]:
    """The task name and parameters: explicit, or the zoo model's own task."""
    from ..models.real import real_entry
    from ..models.zoo import zoo_entry

    entry = zoo_entry(config.model) or real_entry(config.model)
    if entry is None and config.model.startswith("real/") and not Path(config.model).exists():
        from ..models.real import unknown_real

        raise unknown_real(config.model)
    if entry is None and config.model.startswith("zoo/"):
        from ..errors import ModelError
        from ..models.zoo import zoo_names

        raise ModelError(f"unknown zoo model {config.model!r}{close_matches(config.model, zoo_names())} "
                         f"Zoo: {', '.join(zoo_names())}")
    if config.task is None:
        if entry is None:
            from ..models.loading import resolve_spec

            resolve_spec(config.model)  # an unknown model is named as such, with close names
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
    if params.get("path"):  # a prompts file: runs of different files must not share a directory
        keys += "-" + Path(str(params["path"])).stem
    return Path(root) / f"{model}__{task}{keys}"


@dataclass
class StudyResult:
    """What :func:`run_study` returns: the run directory, its results, and which measurements
    this call computed or reused (``load_run(result.path)`` gives the full :class:`Run`)."""

    path: Path
    results: dict[str, Any] = field(repr=False)
    computed: list[str]
    reused: list[str]
    #: ``results`` as the typed record (:mod:`effective_depth.store.record`)
    record: RunRecord = field(default_factory=RunRecord, repr=False)

    def _repr_html_(self) -> str:
        from ..store.results import Run
        from ..viz.reprs import run_html

        done = ", ".join(f"{k}: {', '.join(v)}" for k, v in
                         (("computed", self.computed), ("reused", self.reused)) if v)
        return run_html(Run(self.path, {}, {}, self.results), extra=done or "nothing to do")


def _environment() -> dict[str, Any]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    from .._version import __version__

    def dist(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    from ..models.devices import threads_info

    return {"effective_depth": __version__, "torch": torch.__version__,
            "transformer_lens": dist("transformer-lens"),
            "transformers": transformers.__version__, "python": platform.python_version(),
            **threads_info()}


#: the files of a run directory that a fresh start removes (the lock stays)
_RUN_FILES = (CONFIG, INPUTS, RESULTS, TENSORS, "dashboard.html")
#: where measurements' fitted objects are cached (``store.fitted``) stays on a fresh start (even
#: ``--force``): their own fingerprints decide whether they are reused


def _earlier_compute(stored: Mapping[str, Any]) -> dict[str, str]:
    """The compute fingerprint of a run written before runs recorded one: TransformerLens's
    blocks in the weights' dtype (float32 unless asked otherwise, bfloat16 on CUDA)."""
    config = stored.get("config") if isinstance(stored.get("config"), Mapping) else {}
    dtype = str(config.get("dtype") or "").lower().removeprefix("torch.")
    if not dtype:
        dtype = "bfloat16" if str(config.get("device") or "").startswith("cuda") else "float32"
    return {"precision": "bf16" if dtype in ("bf16", "bfloat16") else "fp32"}


def _check_existing(out: Path, config: StudyConfig, force: bool) -> None:
    """Refuse, before anything is loaded, a directory that holds a run of another config."""
    rd = RunDir(out)
    if force or not rd.exists():
        return
    old = rd.read_json(CONFIG)
    if not isinstance(old, dict):
        raise ResultsError(f"{rd.path / CONFIG} is not a run config (it holds a "
                           f"{type(old).__name__}); rerun with --force")
    diffs = config_differences(old, config, where=str(rd.path / CONFIG))
    if diffs:
        raise ResultsError(
            f"{rd.path} holds a run with a different config (differs in: {', '.join(diffs)}); "
            "choose another --out, or pass --force to discard it"
        )


def config_differences(stored: Mapping[str, Any], config: StudyConfig,
                       where: str = "config.json") -> list[str]:
    """The options in which the run config ``stored`` (a ``config.json`` mapping) differs from
    ``config``; empty when it is the same config.

    The same hash is the same config. A ``config.json`` of an earlier version (flat measurement
    options, options added since) is read as a config of today, its defaults filled in, and
    compared option by option, so that an older run resumes without recomputing and a run with
    other options is never reused.
    """
    cfg = config.to_dict()
    record = RunConfig.from_json(dict(stored), where)
    if record.hash == config_hash(cfg):
        return []
    before = nest_flat_options(record.config.to_json())
    try:
        before = StudyConfig.from_dict(before, where).to_dict()
    except ConfigError as exc:  # an unreadable config is another config: say what differs
        log.info("%s is not a config of this version (%s)", where, exc)

    def flat(d: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k != "options"}
        out.update(flatten_options(d.get("options") or {}))
        return {k: v for k, v in out.items() if k not in NOT_HASHED}

    old, new = flat(before), flat(cfg)
    diffs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not diffs:
        log.info("%s was written by an earlier version; it is the same config", where)
    return diffs


def _prepare_dir(rd: RunDir, config: StudyConfig, fingerprint: dict[str, Any], force: bool,
                 warnings: list[dict[str, Any]],
                 tokens: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check (or start) the run directory, under its lock; returns the results written so far.

    Same config and same fingerprints: the finished measurements are reused. Same config but
    changed inputs (an edited prompts file, other weights or tokenizer): everything is recomputed
    and ``warnings`` says why.
    """
    cfg = config.to_dict()
    fresh = force
    if not force and rd.exists():
        _check_existing(rd.path, config, force)
        old = rd.read_json(CONFIG)
        stored = dict(RunConfig.from_json(old, str(rd.path / CONFIG)).fingerprint)
        stored.setdefault("compute", _earlier_compute(old))
        changed = [k for k in ("model", "compute", "inputs")
                   if stored.get(k) != fingerprint.get(k)]
        if changed:
            what = {"model": "the model's files", "inputs": "the analysed token ids (prompts, "
                    "answers, data files or tokenizer)",
                    "compute": "the compute policy (precision, attention kernel)"}
            message = (f"{' and '.join(what[k] for k in changed)} changed since the run in "
                       f"{rd.path}: every measurement is recomputed")
            log.warning(message)
            warnings.append({"code": "inputs_changed", "message": message})
            fresh = True
    if fresh:
        for name in _RUN_FILES:
            (rd.path / name).unlink(missing_ok=True)
    if rd.exists():
        results = rd.read_json(RESULTS, default={"completed": []})
        if not isinstance(results, dict):
            raise ResultsError(f"{rd.path / RESULTS} is not a results mapping (it holds a "
                               f"{type(results).__name__}); rerun with --force")
        RunRecord.from_json(results, str(rd.path / RESULTS))  # another format: an error
        return results
    rd.write_json(CONFIG, {"hash": config_hash(cfg), "config": cfg, "fingerprint": fingerprint,
                           "environment": _environment(),
                           # how the text became tokens: the BOS, whether the model reads it
                           **({"tokens": tokens} if tokens is not None else {})})
    return {"completed": []}


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Exclusive write access to the run directory ``path`` (created if missing): a second
    writer gets a :class:`ResultsError` at once instead of interleaving its files."""
    from filelock import FileLock, Timeout

    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ResultsError(
            f"{path} is being written by another effective-depth process (lock file {path / LOCK}); "
            "wait for it to finish, or choose another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def run_study(
    config: StudyConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    dashboard: bool = True,
    after_metric: Callable[[str], None] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> StudyResult:
    """Run every measurement of ``config`` and write the run directory ``out``.

    Finished measurements found in ``out`` (same config, same model files, same token ids) are
    loaded, not recomputed. Nothing is written before the model and the examples are known to
    be usable; the directory is locked while the run writes. ``after_metric`` is called with
    each metric's name once it is saved (used by tests to simulate a crash).

    ``progress`` shows one overall bar ("step 3/6: skip effects", after "loading MODEL") with
    each measurement's own bar nested below it; ``on_step`` is called with every such label.
    """
    from ..models.loading import resolve_spec
    from ..tasks import get_task
    from .prepare import prepare_study

    # every mistake the user can make is caught before anything is written
    task_name, task_params = resolve_task(config)
    task = get_task(task_name, **task_params)
    resolve_spec(config.model)
    out_path = Path(out) if out is not None else default_out_dir(config)
    _check_existing(out_path, config, force)
    examples = task.examples(config.n_examples)
    if not examples:
        raise ConfigError(f"task {task_name} with {task_params} produced no examples")
    warnings: list[dict[str, Any]] = list(getattr(task, "warnings", []))
    for w in warnings:
        log.warning(w["message"])
    if len(examples) < config.n_examples:
        message = (f"the task supplies {len(examples)} examples, fewer than n_examples="
                   f"{config.n_examples}; all {len(examples)} are analysed")
        log.warning(message)
        warnings.append({"code": "few_examples", "message": message})
    # the same decisions the planner makes: what runs, what is skipped and why, what it needs
    prep = prepare_study(config, task, examples)
    warnings += prep.warnings
    steps = StudySteps(len(prep.specs) + 1, progress, on_step)
    try:
        return _run_measurements(config, out_path, force, dashboard, after_metric, steps, task,
                                 task_name, examples, warnings, prep)
    finally:
        steps.close()


def _run_measurements(config: StudyConfig, out_path: Path, force: bool, dashboard: bool,
                      after_metric: Callable[[str], None] | None, steps: StudySteps, task: Any,
                      task_name: str, examples: Sequence[Any], warnings: list[dict[str, Any]],
                      prep: Any) -> StudyResult:
    """The body of :func:`run_study` once the config, task and examples are known: load the
    model, encode what the measurements read, then (locked) start the run directory, measure,
    estimate."""
    model = _load(config, steps)
    inputs = _encode_inputs(model, config, examples, prep, warnings, steps.enabled)
    rd = RunDir(out_path)
    # one clean pass per prompt chunk, read by every measurement (engine.clean_cache)
    clean_budget = default_memory_budget(inputs.device) // 4
    with run_lock(out_path), shared_clean_passes(model, clean_budget) as passes:
        results = _start_run(rd, config, force, warnings, model, task, task_name, examples,
                             prep, inputs)
        done, computed, reused = _measure_all(rd, results, model, config, prep.specs, inputs,
                                              steps, after_metric)
        log.info("clean passes: %s", passes.summary())
        steps.step("estimates", f" ({config.n_boot} bootstrap resamples)")
        _estimate(results, done, prep.specs, config, model, warnings)
        record = rd.write_results(results)
        if dashboard:
            _write_dashboard(rd.path)
        steps.finish()
    return StudyResult(rd.path, results, computed, reused, record)


@dataclass
class _StudyInputs:
    """What the measurements read, encoded for the loaded model, and its fingerprint."""

    device: Any
    chat: Any
    batch: Any
    #: measurement -> (encoded reference prompts, the examples, what they are)
    references: dict[str, tuple[Any, list[Any], dict[str, Any]]]
    #: measurement -> (encoded training text, what it is, its token-id fingerprint)
    train: dict[str, tuple[Any, dict[str, Any], str]]
    #: per-example inputs drawn up front (cut positions), as inputs.json records them
    drawn: dict[str, list[Any]]
    fingerprint: dict[str, Any]


def _load(config: StudyConfig, steps: StudySteps) -> Any:
    """The study's model, under its compute policy; it must have a tokenizer."""
    from ..models.loading import load_model

    steps.announce(f"loading {config.model}")
    start = time.perf_counter()
    model = load_model(config.model, device=config.device, dtype=config.dtype,
                       backend=config.backend, process_weights=config.process_weights,
                       precision=config.precision)
    log.info("loaded %s in %.1f s", config.model, time.perf_counter() - start)
    if model.tokenizer is None:
        raise ConfigError(f"model {config.model!r} has no tokenizer; studies need one")
    return model


def _encode_inputs(model: Any, config: StudyConfig, examples: Sequence[Any], prep: Any,
                   warnings: list[dict[str, Any]], progress: bool) -> _StudyInputs:
    """The analysed examples, the reference prompts and the training text, encoded and checked
    against the model's context; the cut positions drawn; the fingerprint of all of it (the
    model's files, the compute policy, every token id)."""
    from ..engine.batch import encode_batch
    from ..models.chat import chat_format
    from .prepare import draw_inputs

    device = next(model.parameters()).device
    chat = chat_format(config.chat_template, config.system_prompt)

    def encode(items: Sequence[Any], what: str) -> Any:
        encoded = encode_batch(model.tokenizer, items, device=device,
                               allow_lossy=config.allow_lossy_tokenization, chat=chat)
        _check_context(model, encoded, config, what=what)
        return encoded

    batch = encode(examples, "example")
    for w in batch.warnings:
        log.warning(w["message"])
        warnings.append(w)
    query_starts(batch, config.positions)  # positions="query" on prompts that do not mark it
    # the reference prompts the measurements drew (erasure's)
    references = {name: (encode(ref, "reference example"), ref, info)
                  for name, (ref, info) in prep.reference.items()}
    reference_ids = [r[0].token_ids(b) for r in references.values() for b in range(r[0].size)]
    # what the fitted measurements train on (the tuned lens): encoded and fingerprinted
    train: dict[str, tuple[Any, dict[str, Any], str]] = {}
    for name, (train_list, info) in prep.train.items():
        make_text = next(s.fit.text for s in prep.specs if s.name == name)
        if train_list or make_text is None:
            encoded = encode(train_list, f"{name} training example")
        else:  # text made with the model: its own samples, or a text file cut into its tokens
            encoded, info = make_text(model, info, config, progress)
            _check_context(model, encoded, config, what=f"{name} training example")
        for w in encoded.warnings[:3]:
            log.warning(w["message"])
            warnings.append(w)
        ids = [encoded.token_ids(b) for b in range(encoded.size)]
        train[name] = (encoded, info, inputs_fingerprint(ids, encoded.answer_start.tolist()))
    fingerprint = {
        "model": loaded_model_fingerprint(model),
        # the policy auto resolved to on this device: another policy is another computation
        "compute": compute_fingerprint(model),
        "inputs": inputs_fingerprint([batch.token_ids(b) for b in range(batch.size)],
                                     batch.answer_start.tolist(), {
                                         "reference": reference_ids,
                                         # only when something trains: older runs keep their hash
                                         **({"train": {n: t[2] for n, t in train.items()}}
                                            if train else {})}),
    }
    return _StudyInputs(device, chat, batch, references, train,
                        draw_inputs(prep.specs, batch, config), fingerprint)


def _start_run(rd: RunDir, config: StudyConfig, force: bool, warnings: list[dict[str, Any]],
               model: Any, task: Any, task_name: str, examples: Sequence[Any], prep: Any,
               inputs: _StudyInputs) -> dict[str, Any]:
    """The run directory made ready (a run of another config or other inputs refused or, with
    ``force``, replaced; a finished one's results kept for reuse), ``inputs.json`` written, and
    the results' header: model, task, settings."""
    from ..engine.batch import bos_read
    from ..models.params import parameter_counts

    batch = inputs.batch
    tokens_info = {"bos_token": getattr(model.tokenizer, "bos_token", None),
                   "bos_read": bos_read(model.tokenizer, batch),
                   "chat_template": inputs.chat is not None}
    results = _prepare_dir(rd, config, inputs.fingerprint, force, warnings, tokens_info)
    rd.write_json(INPUTS, {
        "examples": [{**ex.to_dict(), "tokens": batch.token_ids(b),
                      "str_tokens": batch.str_tokens[b],
                      **({"answer_start": int(batch.answer_start[b])} if ex.answer else {}),
                      **({"query_start": int(batch.query_start[b])}
                         if batch.query_start is not None else {}),
                      **{key: values[b] for key, values in inputs.drawn.items()}}
                     for b, ex in enumerate(examples)],
        # one measurement draws reference prompts today (erasure); inputs.json keeps its form
        "reference": next(({**info, "examples": [ex.to_dict() for ex in ref]}
                           for _, ref, info in inputs.references.values()), None),
    })
    results.update({
        "format": FORMAT_VERSION,
        "model": {"name": config.model, "n_layers": int(model.cfg.n_layers),
                  "d_model": int(model.cfg.d_model),
                  "d_vocab": int(model.cfg.d_vocab), "n_ctx": int(model.cfg.n_ctx),
                  "architecture": getattr(model.cfg, "original_architecture", None),
                  **_param_fields(parameter_counts(model)),
                  "source": getattr(model, "effective_depth_source", {})},
        "task": {"name": task_name, "params": task.values,
                 **_task_difficulty(task, examples), "n_examples": len(examples)},
        "settings": {"rules": config.rules, "skipped_metrics": list(prep.skipped)},
    })
    for key in ("metrics", "timing", "resources"):
        results.setdefault(key, {})
    return results


def _measure_all(rd: RunDir, results: dict[str, Any], model: Any, config: StudyConfig,
                 specs: Sequence[Any], inputs: _StudyInputs, steps: StudySteps,
                 after_metric: Callable[[str], None] | None
                 ) -> tuple[dict[str, Any], list[str], list[str]]:
    """Every measurement in registry order: a finished one read back from the run directory, the
    others computed and saved one by one (results.json after each, so an interruption loses at
    most the measurement in progress). The results by name, and which were computed / reused."""
    from ..metrics.registry import metric_names

    done: dict[str, Any] = {}
    stored = rd.load_tensors()
    reused, computed = [], []
    order = metric_names()
    for spec in specs:
        name = spec.name
        if name in results["completed"]:
            steps.step(name, " (reused)")
            prefix = f"metrics.{name}."
            tensors = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
            done[name] = metric_from_store(name, tensors, results["metrics"][name])
            reused.append(name)
            steps.finish()
            continue
        steps.step(name)
        result, use = _measure_one(rd, spec, model, config, inputs, dict(done), steps.enabled)
        rd.update_tensors(f"metrics.{name}", result.tensors())
        results["metrics"][name] = result.entry()
        results["timing"][name] = round(use.seconds, 3)
        results["resources"][name] = use.to_dict()
        results["completed"] = [m for m in order if m in results["completed"] or m == name]
        rd.write_results(results)
        if spec.observe is not None:  # for the next plan of this model (store.observed)
            record_observed(inputs.fingerprint["model"], name, spec.options_dict(config),
                            spec.observe(result))
        done[name] = result
        computed.append(name)
        steps.finish()
        if after_metric is not None:
            after_metric(name)
    return done, computed, reused


def fit_want(model_fp: Mapping[str, Any], data_fp: str, spec: Any, config: StudyConfig
             ) -> dict[str, Any]:
    """The fingerprint a measurement's fit is stored and found under (``store.fitted``): the
    model's files, the training token ids' fingerprint, the fit's settings."""
    return {"model": dict(model_fp), "data": data_fp, "settings": dict(spec.fit.settings(config))}


def _measure_one(rd: RunDir, spec: Any, model: Any, config: StudyConfig, inputs: _StudyInputs,
                 done: dict[str, Any], progress: bool) -> tuple[Any, Any]:
    """One measurement (its fit first, read from the fitted cache or trained: ``store.fitted``)
    and the time and memory it took, fit included."""
    from ..metrics.registry import StudyContext

    encoded_ref, _, ref_info = inputs.references.get(spec.name, (None, None, None))
    ctx = StudyContext(model, inputs.batch, config, inputs.drawn, encoded_ref, ref_info, done,
                       progress, options=spec.options_of(config))
    with ResourceMeter(inputs.device) as meter:  # a fit counts as part of its measurement
        if spec.fit is not None:
            encoded, info, data_fp = inputs.train[spec.name]
            ctx = dataclasses.replace(ctx, train=encoded, train_info=info)
            want = fit_want(inputs.fingerprint["model"], data_fp, spec, config)
            ctx = dataclasses.replace(ctx, fitted=load_or_fit(rd.path, spec.fit, ctx, want))
        result = spec.run(ctx)
    assert meter.use is not None
    for w in result.meta.get("warnings", []):  # a measurement's own warnings
        log.warning(w["message"])
    return result, meter.use


def _estimate(results: dict[str, Any], done: dict[str, Any], specs: Sequence[Any],
              config: StudyConfig, model: Any, warnings: list[dict[str, Any]]) -> None:
    """The estimates with their bootstrap CIs, the scores, the per-prompt depths, each
    measurement's summaries and every warning, into ``results``; the run marked complete."""
    from ..analysis.depth import reliability_warnings
    from ..analysis.estimation import estimate_all, per_prompt_estimates, score_estimates

    estimates = estimate_all(done, thresholds=config.thresholds, n_boot=config.n_boot,
                             seed=config.seed, level=config.ci_level, rules=config.rules)
    warnings += reliability_warnings(done, estimates, thresholds=config.thresholds,
                                     n_boot=config.n_boot, d_vocab=int(model.cfg.d_vocab))
    results["depth"] = {k: v.to_dict() for k, v in estimates.items()}
    results["depth"].update(score_estimates(done, n_boot=config.n_boot, seed=config.seed,
                                            level=config.ci_level))
    results["per_prompt"] = {k: v.to_dict() for k, v in per_prompt_estimates(
        done, thresholds=config.thresholds, rules=config.rules).items()}
    for spec in specs:
        if spec.summaries is not None and spec.name in done:
            for key, value in spec.summaries(done[spec.name], config).items():
                if isinstance(value, dict) and isinstance(results.get(key), dict):
                    results[key].update(value)
                else:
                    results[key] = value
    warnings += [w for r in done.values() for w in getattr(r, "meta", {}).get("warnings", [])]
    results["warnings"] = _dedupe(warnings)
    results["status"] = "complete"


class StudySteps:
    """The study's overall progress: one bar over the steps (each measurement, then the
    estimates), labelled "step 3/7: skip effects"; the measurements' own bars nest below it.
    Every label also goes to the log (INFO) and to ``on_step``."""

    def __init__(self, total: int, progress: bool,
                 on_step: Callable[[str], None] | None = None) -> None:
        from ..progress import tqdm

        self.total, self.index, self.enabled, self.on_step = total, 0, progress, on_step
        self.labels: list[str] = []
        self.bar = tqdm(total=total, unit="step", disable=not progress, leave=False, desc="study",
                        bar_format="{desc} |{bar}| {n_fmt}/{total_fmt} [{elapsed}]")

    def announce(self, label: str) -> None:
        self.labels.append(label)
        log.info("%s", label)
        self.bar.set_description_str(label, refresh=True)
        if self.on_step is not None:
            self.on_step(label)

    def step(self, name: str, note: str = "") -> None:
        self.index += 1
        self.announce(f"step {self.index}/{self.total}: {name.replace('_', ' ')}{note}")

    def finish(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _dedupe(warnings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    kept: dict[tuple[Any, Any], dict[str, Any]] = {}
    for w in warnings:
        key = (w.get("code"), w.get("message"))
        if key not in kept:
            kept[key] = dict(w)
        elif "estimators" in w:  # one warning about several estimators lists them all
            names = list(kept[key].get("estimators", []))
            kept[key]["estimators"] = names + [n for n in w["estimators"] if n not in names]
    return list(kept.values())


def _task_difficulty(task: Any, examples: Sequence[Any]) -> dict[str, Any]:
    """The run's difficulty level and where it comes from: the task's difficulty parameter, else
    the ``difficulty`` every example carries (a prompts file's field, all equal); else none."""
    if task.difficulty is not None:
        return {"difficulty": task.difficulty, "difficulty_source": task.difficulty_param}
    levels = {ex.difficulty for ex in examples}
    if len(levels) == 1 and None not in levels:
        return {"difficulty": levels.pop(), "difficulty_source": "examples"}
    return {"difficulty": None, "difficulty_source": None}


def _param_fields(counts: dict[str, Any]) -> dict[str, Any]:
    """``results.json``'s model size: Hugging Face's ``num_parameters()`` (a tied matrix once),
    with the embedding and non-embedding parts and how they were counted."""
    return {"n_params": counts["total"], "n_params_embedding": counts["embedding"],
            "n_params_non_embedding": counts["non_embedding"],
            "n_params_method": counts["method"]}


def _check_context(model: Any, batch: Any, config: StudyConfig, what: str = "example") -> None:
    n_ctx = int(model.cfg.n_ctx)
    too_long = [(b, int(n)) for b, n in enumerate(batch.lengths.tolist()) if n > n_ctx]
    if too_long:
        b, n = too_long[0]
        raise ConfigError(
            f"{what} {b + 1} is {n} tokens long (prompt + answer), but {config.model} reads at most "
            f"{n_ctx}; {len(too_long)} {what}(s) are too long: shorten or drop them"
        )


def _write_dashboard(path: Path) -> None:
    """The run's dashboard; a failure here never loses results that are already saved."""
    try:
        from ..viz.dashboard import write_dashboard

        write_dashboard([path], path / "dashboard.html")
    except Exception as exc:  # noqa: BLE001 - the results are on disk; say what went wrong
        log.warning("could not write the dashboard of %s: %s", path, exc)
