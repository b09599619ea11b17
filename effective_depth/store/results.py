"""The run directory: one directory per study, JSON + safetensors, atomic writes, resumable.

::

    RUN_DIR/
      config.json           the StudyConfig that produced the run (and library versions)
      inputs.json           every analysed example: prompt, answer, token ids and strings, cuts
      results.json          every curve as a list, every estimate with its CI, timings, status
      tensors.safetensors   the larger matrices and maps, keyed ``metrics.<metric>.<tensor>``
      dashboard.html        written by ``run`` (see effective_depth.viz)

Every file is written to a temporary file in the same directory and renamed over the old one, so
a killed run leaves either the old or the new version, never half a file. ``results.json`` lists
the metrics that finished; a rerun with the same config skips them. No pickles anywhere.
The JSON files' shapes are owned by :mod:`effective_depth.store.record` (typed, read by
attribute); ``results.json`` is written through it (:meth:`RunDir.write_results`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ResultsError
from .record import (
    FORMAT_VERSION,
    EstimateEntry,
    RunConfig,
    RunInputs,
    RunRecord,
    ScoreEntry,
)

__all__ = ["RunDir", "Run", "load_run", "find_runs", "atomic_write_text", "config_hash",
           "FORMAT_VERSION", "metric_types", "metric_from_store"]

CONFIG = "config.json"
INPUTS = "inputs.json"
RESULTS = "results.json"
TENSORS = "tensors.safetensors"
LOCK = ".lock"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 files; results are meant to be shared: honour the umask
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _json_default(obj: Any) -> Any:
    import math

    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return str(obj)


def dumps(obj: Any) -> str:
    return json.dumps(_clean_nans(obj), indent=2, default=_json_default, allow_nan=False) + "\n"


def _clean_nans(obj: Any) -> Any:
    """JSON has no NaN: NaN and inf become null."""
    import math

    if isinstance(obj, float):
        return None if (math.isnan(obj) or math.isinf(obj)) else obj
    if isinstance(obj, dict):
        return {k: _clean_nans(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_nans(v) for v in obj]
    return obj


#: study options that say where and how to compute, not what: left out of the config's hash.
#: The compute policy a run used is in its fingerprint (``compute``), so another policy
#: recomputes the measurements instead of refusing the directory.
NOT_HASHED = ("device", "out", "progress", "precision")


def config_hash(config: dict[str, Any]) -> str:
    """A hash of the config without :data:`NOT_HASHED` (the backend is in it)."""
    relevant = {k: v for k, v in config.items() if k not in NOT_HASHED}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class RunDir:
    """Reading and writing the files of one run directory."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    def exists(self) -> bool:
        return (self.path / CONFIG).is_file()

    def read_json(self, name: str, default: Any = None) -> Any:
        file = self.path / name
        if not file.exists():
            if default is not None:
                return default
            raise ResultsError(f"{file} is missing; is {self.path} a run directory?")
        try:
            return json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ResultsError(
                f"{file} is corrupt ({exc.msg} at line {exc.lineno}); rerun with --force to redo "
                "the run from scratch"
            ) from None

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_text(self.path / name, dumps(obj))

    def write_results(self, results: dict[str, Any]) -> RunRecord:
        """Write ``results.json`` through the typed record: ``results`` is read as a
        :class:`RunRecord` (a malformed entry is a :class:`ResultsError`, and nothing is
        written) and the record's JSON is what is written: the same text, key for key."""
        record = RunRecord.from_json(json.loads(dumps(results)), str(self.path / RESULTS))
        atomic_write_text(self.path / RESULTS, dumps(record.to_json()))
        return record

    def load_tensors(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        file = self.path / TENSORS
        if not file.exists():
            return {}
        try:
            return load_file(str(file))
        except Exception as exc:
            raise ResultsError(f"{file} is corrupt ({exc}); rerun with --force") from None

    def save_tensors(self, tensors: dict[str, Any]) -> None:
        from safetensors.torch import save

        clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_bytes(self.path / TENSORS, save(clean))

    def update_tensors(self, prefix: str, tensors: dict[str, Any]) -> None:
        """Replace every tensor under ``prefix.`` with ``tensors`` (keys relative to it)."""
        current = {k: v for k, v in self.load_tensors().items() if not k.startswith(prefix + ".")}
        current.update({f"{prefix}.{k}": v for k, v in tensors.items()})
        self.save_tensors(current)


def metric_types() -> dict[str, Any]:
    """Result class of every registered measurement, by name."""
    from ..metrics.registry import metric_specs

    return {spec.name: spec.result_type for spec in metric_specs()}


def metric_from_store(name: str, tensors: dict[str, Any], entry: dict[str, Any]) -> Any:
    """Rebuild a metric result object from its tensors and its results.json entry."""
    types = metric_types()
    if name not in types:
        raise ResultsError(f"{name!r} in the results is not a registered measurement "
                           f"(registered: {', '.join(types)})")
    return types[name].from_entry(tensors, entry)


@dataclass
class Run:
    """A finished (or partial) run, loaded back: config, inputs, results and metric objects.

    ``record``, ``config_record`` and ``inputs_record`` are the typed views of
    ``results.json``, ``config.json`` and ``inputs.json`` (:mod:`effective_depth.store.record`):
    read a run by attribute (``run.record.model.n_layers``). ``results``, ``config`` and
    ``inputs`` stay the raw mappings as read, for scripts that index them. The records are made
    from them when the run is built (a malformed file is a :class:`ResultsError` then) and again
    whenever one of them is assigned (``run.results = {...}``); a change made *inside* the
    mapping (``run.results["task"]["name"] = ...``) is seen after :meth:`refresh`."""

    path: Path
    config: dict[str, Any] = field(repr=False)
    inputs: dict[str, Any] = field(repr=False)
    results: dict[str, Any] = field(repr=False)
    tensors: dict[str, Any] = field(repr=False, default_factory=dict)
    record: RunRecord = field(init=False, repr=False)
    config_record: RunConfig = field(init=False, repr=False)
    inputs_record: RunInputs = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.refresh()

    def refresh(self) -> None:
        """Make the records again from ``results``, ``config`` and ``inputs`` (after a change
        inside one of them)."""
        for raw in _RECORDS:
            self._make_record(raw)

    def _make_record(self, raw: str) -> None:
        name, cls, file = _RECORDS[raw]
        object.__setattr__(self, name, cls.from_json(getattr(self, raw), str(self.path / file)))

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name in _RECORDS and "tensors" in self.__dict__:  # a mapping replaced after __init__
            self._make_record(name)

    @property
    def completed(self) -> list[str]:
        return list(self.record.completed)

    @property
    def complete(self) -> bool:
        """Whether the study finished: every measurement and the estimates were written."""
        return self.record.complete

    def incomplete_reason(self) -> str | None:
        """Why the run is not complete (None when it is)."""
        if self.complete:
            return None
        if not (self.path / RESULTS).is_file():
            return "no results.json (the study never finished a measurement)"
        done = ", ".join(self.completed) or "none"
        return f"the study did not finish (measurements finished: {done}); rerun it to complete"

    @property
    def model_name(self) -> str:
        """The model as the results name it, else as the config does ("?" when neither)."""
        return self.record.model.name or self.config_record.config.model or "?"

    @property
    def label(self) -> str:
        task = self.record.task
        params = task.params_text(drop=("split", "seed", "data_files"))
        return f"{self.model_name} | {task.name or '?'}" + (f"({params})" if params else "")

    def metric(self, name: str) -> Any:
        if name not in self.completed:
            raise ResultsError(f"{self.path} has no finished {name!r} (finished: {self.completed})")
        prefix = f"metrics.{name}."
        tensors = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
        return metric_from_store(name, tensors, self.record.metrics[name].to_json())

    def example_levels(self) -> list[Any]:
        """Each analysed example's own ``difficulty`` (None where it has none)."""
        examples = self.inputs_record.examples
        n = self.record.task.n_examples
        n = len(examples) if n is None else int(n)
        own = [ex.difficulty for ex in examples[:n]]
        return own + [None] * (n - len(own))

    @property
    def difficulty(self) -> Any:
        """The run's difficulty level: its task's difficulty parameter (digits, hops, ...), else
        the level every analysed example carries (a prompts file's ``difficulty`` field, all
        equal); None when neither holds (no level, or mixed levels within the run)."""
        if self.record.task.difficulty is not None:
            return self.record.task.difficulty
        levels = set(self.example_levels())
        return levels.pop() if len(levels) == 1 and None not in levels else None

    @property
    def difficulty_from_examples(self) -> bool:
        """Whether :attr:`difficulty` comes from the examples rather than a task parameter."""
        return self.record.task.difficulty is None and self.difficulty is not None

    def estimate_entry(self, estimator: str) -> EstimateEntry | ScoreEntry:
        """The stored estimate of ``estimator`` (``results.json``'s ``depth`` entry), or a
        stand-in with ``layer`` and ``ratio`` None whose ``reason`` says why there is none."""
        entry = self.record.depth.get(estimator)
        if entry is not None:
            return entry
        return EstimateEntry.from_json({"layer": None, "ratio": None, "ci": None,
                                        "reason": self.absent_reason(estimator)})

    def absent_reason(self, estimator: str) -> str:
        """Why the run holds no ``estimator``: its measurement was skipped (with the warning
        that said so), not asked for (which option adds it), or not finished."""
        from ..metrics.registry import estimator_specs

        spec = estimator_specs().get(estimator)
        if spec is None:
            return f"not run: {estimator} is not a registered estimator"
        metric = spec.metric
        if metric in self.record.settings.skipped_metrics:
            said = [w.message for w in self.record.warnings
                    if metric in w.message and "skipped" in w.message]
            return "skipped: " + (said[0] if said else f"{metric} (see the run's warnings)")
        asked = self.config_record.config.metrics
        if asked is not None and metric not in asked:
            return (f"not run: {metric} was not among the run's measurements (--metrics "
                    f"{','.join(asked)}); add {metric} to --metrics")
        if metric not in self.completed:
            return f"not run: {metric} did not finish (the run is incomplete); rerun it"
        return (f"not computed: the run's {metric} finished before {estimator} existed; rerun "
                "with --force to add it")

    def estimates(self) -> dict[str, Any]:
        from ..analysis.estimation import Estimate

        return {k: Estimate.from_dict(v.to_json()) for k, v in self.record.estimates().items()}

    def to_frame(self, kind: str = "estimates", **options: Any) -> Any:
        """This run as a tidy pandas DataFrame: ``"curves"`` (one row per measurement × curve ×
        layer, with bootstrap CI columns from the per-prompt data; ``n_boot``, ``level`` and
        ``seed`` default to the run's own) or ``"estimates"`` (one row per estimator and score,
        numeric ``ci_lo`` / ``ci_hi``). Needs pandas (the ``frames`` extra). Comparison tables
        compare runs: :func:`effective_depth.store.frames.runs_to_frame`."""
        from .tables import run_table

        return run_table(self, kind, **options)

    def _repr_html_(self) -> str:
        from ..display import render_html

        return render_html("run", self)


#: each raw mapping of a :class:`Run`: its record's attribute, the record type, its file
_RECORDS: dict[str, tuple[str, Any, str]] = {
    "results": ("record", RunRecord, RESULTS),
    "config": ("config_record", RunConfig, CONFIG),
    "inputs": ("inputs_record", RunInputs, INPUTS),
}


def load_run(path: str | os.PathLike[str]) -> Run:
    """Load a run directory written by :func:`effective_depth.study.run_study`."""
    rd = RunDir(Path(path))
    if not rd.path.is_dir():
        raise ResultsError(f"run directory {str(rd.path)!r} does not exist")
    if not rd.exists():
        raise ResultsError(f"{rd.path} has no config.json: not a run directory")
    parts = {name: rd.read_json(name, default=default)
             for name, default in ((CONFIG, None), (RESULTS, {}), (INPUTS, {}))}
    for name, value in parts.items():
        if not isinstance(value, dict):
            raise ResultsError(f"{rd.path / name} holds a JSON {type(value).__name__}, not the "
                               "mapping a run writes; rerun the study with --force")
    config = parts[CONFIG]
    if isinstance(config.get("config"), dict):
        # a config.json of an earlier version has flat measurement options: read them nested
        from ..metrics.options import nest_flat_options

        config = {**config, "config": nest_flat_options(config["config"])}
    return Run(rd.path, config, parts[INPUTS], parts[RESULTS], rd.load_tensors())


def find_runs(paths: Sequence[str | os.PathLike[str]], *, complete_only: bool = True
              ) -> tuple[list[Path], list[str]]:
    """The run directories among ``paths`` and a one-line note for everything left out.

    A path may be a run directory, a directory of runs (a sweep's output) or anything a shell
    glob produced (dashboard.html, comparison/): non-runs are skipped with a note, and so are
    incomplete runs (interrupted, or a stub) when ``complete_only``. Missing paths are an error.
    """
    found: list[Path] = []
    notes: list[str] = []

    def consider(run_path: Path) -> None:
        if run_path in found:
            return
        try:
            run = load_run(run_path)
        except ResultsError as exc:
            notes.append(f"skipped {run_path}: {exc}")
            return
        reason = run.incomplete_reason()
        if reason is not None and complete_only:
            notes.append(f"skipped {run_path}: {reason}")
            return
        found.append(run_path)

    for item in paths:
        path = Path(item)
        if not path.exists():
            raise ResultsError(f"{str(path)!r} does not exist")
        if (path / CONFIG).is_file():
            consider(path)
        elif path.is_dir():
            inner = sorted(p for p in path.iterdir() if (p / CONFIG).is_file())
            if not inner:
                notes.append(f"skipped {path}: not a run directory, and holds none")
            for p in inner:
                consider(p)
        else:
            notes.append(f"skipped {path}: a file, not a run directory")
    return found, notes
