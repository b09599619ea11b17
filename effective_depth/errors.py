"""The toolkit's errors: one base class, one subclass per kind of user mistake.

Every error says what was wrong and what to do about it, so the CLI can show it as one line
instead of a traceback (``cli.py`` catches :class:`EffectiveDepthError` and nothing else).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "EffectiveDepthError",
    "ModelError",
    "TaskError",
    "ConfigError",
    "ResultsError",
    "close_matches",
]


class EffectiveDepthError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class ModelError(EffectiveDepthError):
    """A model spec that cannot be loaded: unknown name, missing path, unsupported architecture."""


class TaskError(EffectiveDepthError):
    """An unknown task, a bad task parameter, or a data set that cannot be found."""


class ConfigError(EffectiveDepthError):
    """Inconsistent options: a bad metric name, a threshold out of range, a bad grid file."""


class ResultsError(EffectiveDepthError):
    """A run directory that is corrupt, incomplete, or was written by a different config."""


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> str:
    """A human-readable "did you mean" fragment, or an empty string when nothing is close."""
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    hits = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    # Substring matches catch "qwen2.5-1.5b" for "Qwen/Qwen2.5-1.5B-Instruct" style typos.
    for c in candidates:
        if len(hits) >= n:
            break
        if word.lower() in c.lower() and c.lower() not in hits:
            hits.append(c.lower())
    if not hits:
        return ""
    return "; did you mean " + ", ".join(repr(lowered[h]) for h in hits[:n]) + "?"
