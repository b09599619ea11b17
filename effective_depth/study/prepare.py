"""What a study will do, decided before anything runs: shared by the study and the planner.

:func:`prepare_study` decides which of the chosen measurements run and why the others are
skipped (examples without answers, a fitted measurement without training data), gathers each
fitted measurement's training examples and each measurement's reference prompts, and collects the
warnings a study stores. :func:`draw_inputs` draws the per-example inputs the measurements
declare (skip effects' cut positions) once the examples are tokenized. ``run_study`` and
``plan_study`` both call them, so a plan counts exactly the work a study will do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = ["Preparation", "prepare_study", "draw_inputs"]

log = logging.getLogger(__name__)


@dataclass
class Preparation:
    """The outcome of :func:`prepare_study`.

    - ``specs``: the measurements that will run, in dependency order;
    - ``skipped``: ``name -> reason`` of the chosen measurements that will not;
    - ``warnings``: ``{"code", "message"}`` records for ``results.json``;
    - ``train``: ``name -> (examples, info)`` of every fitted measurement that runs;
    - ``reference``: ``name -> (examples, info)`` of every measurement that draws reference
      prompts.
    """

    specs: list[Any]
    skipped: dict[str, str] = field(default_factory=dict)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    train: dict[str, tuple[list[Any], dict[str, Any]]] = field(default_factory=dict)
    reference: dict[str, tuple[list[Any], dict[str, Any]]] = field(default_factory=dict)

    def warn(self, code: str, message: str) -> None:
        log.warning(message)
        self.warnings.append({"code": code, "message": message})


def prepare_study(config: Any, task: Any, examples: Sequence[Any]) -> Preparation:
    """Which measurements of ``config`` run on ``examples`` of ``task``, and what they need.

    A measurement the user named explicitly that cannot run is an error naming the fix; one that
    runs only because every measurement was asked for is skipped with a warning.
    """
    from ..metrics.registry import dependency_order, get_metric

    prep = Preparation([])
    no_answers = _answers_state(examples, config)
    if no_answers:
        reason = "it needs answers and the examples have none"
        prep.skipped.update({name: reason for name in no_answers})
        prep.warn("no_answers", f"skipped {', '.join(no_answers)}: they need answers and the "
                                "examples have none")
    specs = [get_metric(m) for m in config.metrics if m not in no_answers]
    prep.specs = dependency_order(_fit_examples(task, examples, config, specs, prep))
    for spec in prep.specs:
        if spec.reference is not None:
            ref, info, messages = spec.reference(task, examples, config)
            for message in messages:
                prep.warn(f"{spec.name}_reference", message)
            prep.reference[spec.name] = (list(ref), dict(info))
    return prep


def draw_inputs(specs: Sequence[Any], batch: Any, config: Any) -> dict[str, list[Any]]:
    """The per-example inputs every measurement in ``specs`` declares (``MetricSpec.inputs``),
    drawn from the tokenized ``batch``: recorded in ``inputs.json`` and costed by the planner."""
    drawn: dict[str, list[Any]] = {}
    for spec in specs:
        if spec.inputs is not None:
            drawn.update(spec.inputs(batch, config))
    return drawn


def _answers_state(examples: Sequence[Any], config: Any) -> tuple[str, ...]:
    """The measurements to skip because the examples have no answers (an error when the user
    asked for one of them explicitly, or when only some examples have answers)."""
    missing = [i for i, ex in enumerate(examples) if not ex.answer]
    if not missing:
        return ()
    if len(missing) < len(examples):
        lines = ", ".join(str(examples[i].meta.get("source_id", i)) for i in missing[:10])
        raise ConfigError(
            f"{len(missing)} of {len(examples)} examples have no answer (lines/items {lines}"
            f"{' ...' if len(missing) > 10 else ''}); give every example an answer, or none"
        )
    from ..metrics.registry import get_metric, metric_names

    needing = tuple(m for m in config.metrics if get_metric(m).needs_answers)
    if needing and config.metrics != metric_names():
        raise ConfigError(
            f"{', '.join(needing)} need answers, and the examples have none (a .txt prompts file "
            "has prompts only); use a .jsonl file with \"answer\" fields, or other --metrics"
        )
    return needing


def _fit_examples(task: Any, examples: Sequence[Any], config: Any, specs: list[Any],
                  prep: Preparation) -> list[Any]:
    """The measurements of ``specs`` that can run, with the training examples of those that fit
    something first (the tuned lens) recorded in ``prep.train``.

    Training data that cannot be found is an error for a measurement the user named, a skip with
    a warning otherwise. Training examples that are also analysed make the curves not held out:
    a warning says how many.
    """
    from ..metrics.registry import metric_names

    kept = []
    for spec in specs:
        if spec.fit is None:
            kept.append(spec)
            continue
        try:
            train, info = spec.fit.examples(task, examples, config)
        except ConfigError as exc:
            if config.metrics != metric_names():
                raise
            prep.skipped[spec.name] = f"no training data: {exc}"
            prep.warn("no_train_data", f"skipped {spec.name}: {exc}")
            continue
        if not train and spec.fit.text is None:
            raise ConfigError(f"{spec.name}: the training data ({dict(info)}) holds no examples")
        shared = {ex.text for ex in examples} & {ex.text for ex in train}
        if shared:
            prep.warn("train_overlap",
                      f"{spec.name}: {len(shared)} of the {len(examples)} analysed examples are "
                      f"among its {len(train)} training examples, so its curves are not held out; "
                      "analyse another split (e.g. --param split=test) or train on other data")
        kept.append(spec)
        prep.train[spec.name] = (list(train), {**info, "overlap": len(shared)})
    return kept
