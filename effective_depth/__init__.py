"""effective_depth: how many of a language model's layers does it really use?

The public API (imported lazily, so that ``import effective_depth`` and the CLI's ``--help`` stay
fast)::

    import effective_depth as ed
    model = ed.load_model("zoo/add-4l")
    task = ed.get_task("addition", digits=3)

See ``docs/`` for the methods, the CLI and the hook-scripting guide.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "EffectiveDepthError": "errors",
    "ModelError": "errors",
    "TaskError": "errors",
    "ConfigError": "errors",
    "ResultsError": "errors",
    "load_model": "models",
    "resolve_spec": "models",
    "zoo_names": "models",
    "get_task": "tasks",
    "list_tasks": "tasks",
    "Example": "tasks",
    # the engine: a batch, the interventions (as hooks or resumed plans) and the sweep
    "encode_batch": "engine",
    "Batch": "engine",
    "get_adapter": "engine",
    "intervene": "engine",
    "Intervention": "engine",
    "Patch": "engine",
    "where": "engine",
    "skip_block": "engine",
    "skip_attn": "engine",
    "skip_mlp": "engine",
    "local_skip": "engine",
    "replace_residual": "engine",
    "ablate": "engine",
    "compile_plan": "engine",
    "Row": "engine",
    "Chunk": "engine",
    "sweep": "engine",
    # the measurements and their result types
    "contributions": "metrics",
    "skip_effects": "metrics",
    "logit_lens": "metrics",
    "tuned_lens": "metrics",
    "train_tuned_lens": "metrics",
    "erasure": "metrics",
    "integrated_gradients": "metrics",
    "behaviour": "metrics",
    "MetricResult": "metrics",
    "Contributions": "metrics",
    "SkipEffects": "metrics",
    "LogitLensResult": "metrics",
    "TunedLensResult": "metrics",
    "Translators": "metrics",
    "Erasure": "metrics",
    "IntegratedGradients": "metrics",
    "Behaviour": "metrics",
    "estimate_all": "analysis.estimation",
    "Estimate": "analysis.estimation",
    "StudyConfig": "study.run",
    "run_study": "study.run",
    "load_run": "store.results",
    "Run": "store.results",
    "RunRecord": "store.record",
    "runs_to_frame": "store.frames",
    "compare_runs": "store.compare",
    "figure_for": "viz",
    "write_dashboard": "viz",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

from .viz import reprs as _reprs  # noqa: E402, F401 - registers the notebook views (effective_depth.display)

if "IPython" in __import__("sys").modules:  # a notebook: no "IProgress not found" from tqdm.auto
    from .progress import quiet_missing_widgets

    quiet_missing_widgets()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'effective_depth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
