"""The run directory of ``effective-depth prune``: JSON + safetensors, atomic writes.

::

    PRUNE_DIR/
      results.json          kind "prune": the config, model and task, every criterion's removal
                            sets and scores, the accuracy / log-likelihood curves with their CIs,
                            and (after --remove) the export: blocks removed and why, parameter
                            counts, forward times
      tensors.safetensors   per-prompt exact match and answer log-likelihood,
                            ``pruning.correct`` / ``pruning.loglik`` ``[criterion, k, prompt]``
      pruning.html          the figure (accuracy vs blocks removed, a line per criterion)

There is no ``config.json``, so the study commands (``compare``, ``dashboard``, ``export``) do not
take a pruning directory for a study run; :func:`load_prune_run` reads it back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.pruning import PruningComparison
from ..errors import ResultsError
from .results import RESULTS, RunDir

__all__ = ["PRUNE_KIND", "PRUNE_FORMAT", "PRUNE_FIGURE", "PruneRun", "load_prune_run",
           "write_prune_run", "is_prune_dir"]

PRUNE_KIND = "prune"
#: the version of the layout of a pruning run's results.json
PRUNE_FORMAT = 1
PRUNE_FIGURE = "pruning.html"
_PREFIX = "pruning"


@dataclass
class PruneRun:
    """A pruning run read back: ``results`` as stored, the comparison rebuilt from it."""

    path: Path
    results: dict[str, Any] = field(repr=False)
    comparison: PruningComparison = field(repr=False)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.results.get("config", {}))

    @property
    def export(self) -> dict[str, Any] | None:
        return self.results.get("export")


def is_prune_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a pruning run's results.json."""
    rd = RunDir(Path(path))
    if not (rd.path / RESULTS).is_file():
        return False
    data = rd.read_json(RESULTS)
    return isinstance(data, dict) and data.get("kind") == PRUNE_KIND


def write_prune_run(path: str | os.PathLike[str], results: dict[str, Any],
                    comparison: PruningComparison) -> None:
    """Write results.json (``kind``, ``format`` and the comparison's JSON added to ``results``)
    and the per-prompt tensors, each atomically. A study's run directory is never overwritten."""
    rd = RunDir(Path(path))
    if rd.exists():
        raise ResultsError(f"{rd.path} is a study's run directory (it has config.json); write the "
                           "pruning run elsewhere (--out)")
    rd.save_tensors({f"{_PREFIX}.{k}": v for k, v in comparison.tensors().items()})
    rd.write_json(RESULTS, {"kind": PRUNE_KIND, "format": PRUNE_FORMAT, **results,
                            "comparison": comparison.to_json()})


def load_prune_run(path: str | os.PathLike[str]) -> PruneRun:
    """Read a pruning run directory written by :func:`write_prune_run`."""
    rd = RunDir(Path(path))
    if not (rd.path / RESULTS).is_file():
        raise ResultsError(f"{rd.path} has no results.json: not a pruning run directory")
    data = rd.read_json(RESULTS)
    if not isinstance(data, dict) or data.get("kind") != PRUNE_KIND:
        raise ResultsError(f"{rd.path / RESULTS} is not a pruning run's (kind "
                           f"{data.get('kind') if isinstance(data, dict) else None!r}); "
                           "a study's run directory is read with load_run")
    if data.get("format") != PRUNE_FORMAT:
        raise ResultsError(f"{rd.path / RESULTS} was written in pruning format "
                           f"{data.get('format')!r}; this version reads {PRUNE_FORMAT}: rerun "
                           "with --force")
    tensors = {k[len(_PREFIX) + 1:]: v for k, v in rd.load_tensors().items()
               if k.startswith(_PREFIX + ".")}
    try:
        comparison = PruningComparison.from_store(data["comparison"], tensors)
    except (KeyError, ValueError) as exc:
        raise ResultsError(f"{rd.path} holds an incomplete pruning run ({exc}); rerun with "
                           "--force") from None
    return PruneRun(rd.path, data, comparison)
