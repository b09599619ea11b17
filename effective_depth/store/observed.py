"""What earlier runs measured that a cost model cannot count in advance, kept for the planner.

Integrated gradients' adaptive rule places as many quadrature nodes per path as the integrand
needs (:mod:`effective_depth.metrics.adaptive_quadrature`): 43 per path on SmolLM2-135M (53
weighted by the blocks each path runs), 60 on ``zoo/add-12l``, at most the budget. A study
records such numbers here (``MetricSpec.observe``), keyed by the model's files and the
measurement's options; ``effective-depth plan`` prices the next study of that model with them
and says so, and falls back on the measurement's typical value (and says that) when no run of
the model has recorded one.

One JSON file, ``observed.json``, in the shared fit cache (:func:`store.fitted.shared_fit_dir`:
off with it), written atomically; a key keeps its last :data:`KEEP` observations. An unreadable
file is ignored (and rewritten by the next record): an observation only ever changes a projected
time, never a result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .fitted import shared_fit_dir
from .results import atomic_write_text, dumps

__all__ = ["KEEP", "observed", "record_observed"]

log = logging.getLogger(__name__)

#: observations kept per key (their mean is what the planner uses)
KEEP = 5


def _file() -> Path | None:
    folder = shared_fit_dir()
    return None if folder is None else folder / "observed.json"


def _key(model_fp: Mapping[str, Any], name: str, options: Mapping[str, Any]) -> str:
    return hashlib.sha256(dumps({"model": dict(model_fp), "measurement": name,
                                 "options": dict(options)}).encode()).hexdigest()[:24]


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record_observed(model_fp: Mapping[str, Any], name: str, options: Mapping[str, Any],
                    values: Mapping[str, float]) -> None:
    """Add one run's observations of measurement ``name`` (e.g. ``{"evals": 43.8}``)."""
    path = _file()
    if path is None or not values:
        return
    data = _read(path)
    key = _key(model_fp, name, options)
    entry = data.get(key)
    if not isinstance(entry, dict):  # new, or damaged: started again
        entry = data[key] = {"measurement": name}
    for k, v in values.items():
        if not _is_number(v):
            continue
        kept = entry.get(k) if isinstance(entry.get(k), list) else []
        entry[k] = ([float(x) for x in kept if _is_number(x)] + [float(v)])[-KEEP:]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, dumps(data))
    except OSError as exc:  # a read-only cache costs the planner a typical value, nothing more
        log.warning("could not record %s's observations in %s (%s)", name, path, exc)


def observed(model_fp: Mapping[str, Any], name: str, options: Mapping[str, Any]
             ) -> dict[str, tuple[float, int]]:
    """The recorded observations of ``name`` on this model with these options: each value's mean
    and how many runs it averages; empty when none."""
    path = _file()
    if path is None or not path.is_file():
        return {}
    entry = _read(path).get(_key(model_fp, name, options), {})
    out = {}
    for k, v in (entry.items() if isinstance(entry, dict) else ()):
        numbers = [float(x) for x in v if _is_number(x)] if isinstance(v, list) else []
        if numbers:  # a hand-edited or damaged value is passed over, like an unreadable file
            out[k] = (sum(numbers) / len(numbers), len(numbers))
    return out


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
