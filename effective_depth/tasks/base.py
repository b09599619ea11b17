"""Examples, tasks and the task registry.

A *task* turns parameters (``digits=3``, ``level=5``, ``path=...``) into a list of
:class:`Example` objects: a prompt, the answer that should follow it, and metadata that carries
the difficulty level. Tasks register themselves by name with :func:`register_task`; the registry
refuses duplicates, and :func:`get_task` validates parameters before anything is built, so a typo
fails with the list of valid names instead of deep inside a generator.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import TaskError, close_matches

__all__ = [
    "Example",
    "Param",
    "Task",
    "TASKS",
    "register_task",
    "get_task",
    "list_tasks",
    "task_info",
    "stable_bucket",
]


@dataclass(frozen=True)
class Example:
    """One analysed example: ``prompt + answer`` is the text the model reads.

    ``meta["difficulty"]`` is the difficulty level (digits, MATH level, hops, ...) when the task
    has one; ``meta["query_start"]``, when the prompt holds solved examples before the one asked
    (few-shot), is the character offset in ``prompt`` where the asked example begins (what the
    study's ``positions="query"`` measures; 0 when there are no shots); other keys are
    task-specific (``digits``, ``source_id``, ...).
    """

    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def difficulty(self) -> int | None:
        return self.meta.get("difficulty")

    @property
    def text(self) -> str:
        return self.prompt + self.answer

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "answer": self.answer, "meta": dict(self.meta)}


@dataclass(frozen=True)
class Param:
    """A task parameter: its type, default, valid range or choices, and a help line."""

    type: type
    default: Any = None
    help: str = ""
    min: int | None = None
    max: int | None = None
    choices: tuple[Any, ...] | None = None
    required: bool = False

    def describe(self) -> str:
        parts = [self.type.__name__]
        if self.choices is not None:
            parts.append("one of " + ", ".join(map(str, self.choices)))
        elif self.min is not None or self.max is not None:
            lo = "" if self.min is None else str(self.min)
            hi = "" if self.max is None else str(self.max)
            parts.append(f"range {lo}..{hi}")
        if self.required:
            parts.append("required")
        else:
            parts.append(f"default {self.default!r}")
        return ", ".join(parts)

    def coerce(self, task: str, name: str, value: Any) -> Any:
        """Convert a CLI string (or a Python value) to this parameter's type and check its range."""
        if value is None:
            if self.required:
                raise TaskError(f"task {task!r} needs parameter {name!r} ({self.help})")
            return None
        try:
            if self.type is bool and isinstance(value, str):
                low = value.lower()
                if low not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                value = low in ("1", "true", "yes")
            elif self.type is int and (
                isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())
            ):
                raise ValueError(value)
            else:
                value = self.type(value)
        except (TypeError, ValueError):
            raise TaskError(
                f"task {task!r}: parameter {name!r} must be {self.type.__name__} "
                f"({self.describe()}), got {value!r}"
            ) from None
        if self.choices is not None and value not in self.choices:
            raise TaskError(
                f"task {task!r}: parameter {name!r} must be one of "
                f"{', '.join(map(repr, self.choices))}; got {value!r}"
            )
        if (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        ):
            raise TaskError(
                f"task {task!r}: parameter {name!r} must be in {self.min}..{self.max}; got {value!r}"
            )
        return value


class Task:
    """Base class: subclasses set ``name``, ``params``, ``difficulty_param`` and ``build``.

    ``get_task(name, **params)`` returns an instance whose ``params`` attribute holds the
    validated values; ``examples(n)`` returns the first ``n`` examples (all when ``n`` is None).
    After ``examples``, ``warnings`` holds ``{"code", "message"}`` of what the build had to
    drop (source rows it could not use: ``rows_skipped``); a study stores and prints them.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    #: which parameter is the difficulty level (None: the task has no difficulty knob)
    difficulty_param: ClassVar[str | None] = None
    #: True when the examples are generated (no data set needed)
    generated: ClassVar[bool] = False

    def __init__(self, **values: Any) -> None:
        unknown = sorted(set(values) - set(self.params))
        if unknown:
            valid = ", ".join(sorted(self.params)) or "(none)"
            raise TaskError(
                f"task {self.name!r} has no parameter {unknown[0]!r}"
                f"{close_matches(unknown[0], self.params)} Valid parameters: {valid}"
            )
        self.values: dict[str, Any] = {
            k: spec.coerce(self.name, k, values.get(k, spec.default))
            for k, spec in self.params.items()
        }
        self.warnings: list[dict[str, str]] = []
        self.validate()

    def validate(self) -> None:
        """Cross-parameter checks; raise :class:`TaskError` with the valid range."""

    def __getattr__(self, item: str) -> Any:
        values = self.__dict__.get("values", {})
        if item in values:
            return values[item]
        raise AttributeError(item)

    @property
    def difficulty(self) -> Any:
        return None if self.difficulty_param is None else self.values[self.difficulty_param]

    def examples(self, n: int | None = None) -> list[Example]:
        self.warnings = []
        out = self.build(n)
        return out if n is None else out[:n]

    def build(self, n: int | None) -> list[Example]:
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}``: enough to rebuild this task with get_task."""
        return {"name": self.name, "params": dict(self.values)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
        return f"{type(self).__name__}({args})"


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: add a task to the registry under ``cls.name`` (duplicates refused)."""
    if cls.name in TASKS and TASKS[cls.name] is not cls:
        raise ValueError(f"a task named {cls.name!r} is already registered ({TASKS[cls.name]})")
    TASKS[cls.name] = cls
    return cls


def _ensure_registered() -> None:
    # The task modules register on import; import them lazily so that `tasks.base` stays light.
    from . import arithmetic, datasets, fewshot, prompts  # noqa: F401


def get_task(name: str, **params: Any) -> Task:
    """The task ``name`` built with ``params``; unknown names and parameters list the valid ones."""
    _ensure_registered()
    if name not in TASKS:
        raise TaskError(
            f"unknown task {name!r}{close_matches(name, TASKS)} "
            f"Available tasks: {', '.join(sorted(TASKS))}"
        )
    return TASKS[name](**params)


def list_tasks() -> list[str]:
    """The names of all registered tasks, sorted."""
    _ensure_registered()
    return sorted(TASKS)


def task_info(name: str) -> dict[str, Any]:
    """Description and parameter table of one task (used by ``effective-depth tasks``)."""
    _ensure_registered()
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r}{close_matches(name, TASKS)}")
    cls = TASKS[name]
    return {
        "name": name,
        "description": cls.description,
        "generated": cls.generated,
        "difficulty_param": cls.difficulty_param,
        "params": {k: {"help": p.help, "spec": p.describe()} for k, p in cls.params.items()},
    }


def stable_bucket(text: str, buckets: int = 10) -> int:
    """A hash bucket of ``text`` that is stable across processes (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") % buckets
