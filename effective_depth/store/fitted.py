"""The fitted objects of measurements (the tuned lens's translators), cached by fingerprint.

A fit is kept in two places, both as safetensors (the tensors) and JSON (its fingerprint and
info; no pickles):

* the run directory, ``fitted/<name>.safetensors`` and ``fitted/<name>.json``: it travels with
  the run and survives ``--force`` (its fingerprint decides whether it is reused);
* a shared cache, ``<cache>/fitted/<name>-<hash>.*`` (``<cache>`` as for the real models:
  ``$EFFECTIVE_DEPTH_CACHE`` or ``~/.cache/effective_depth``; ``$EFFECTIVE_DEPTH_FIT_CACHE``
  names another folder, or ``off``), where ``<hash>`` is the SHA-256 of the fingerprint. Another
  run of the same model files, training token ids and fit settings — another cell of a grid, the
  same study with ``positions=query`` — reads the fit from there instead of training it again.

The fingerprint (``want``) is the caller's: model files, training data, settings. A fit whose
stored fingerprint differs from ``want``, or whose files are unreadable, is trained again, never
trusted. The JSON is written after the tensors and removed before them, so a crash in between
never pairs an old fingerprint with new tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from .results import atomic_write_bytes, atomic_write_text, dumps

__all__ = ["FITTED", "find_fit", "load_or_fit", "shared_fit_dir"]

log = logging.getLogger(__name__)

#: the run directory's folder of fitted objects
FITTED = "fitted"


def shared_fit_dir() -> Path | None:
    """The shared cache of fits, or None when ``$EFFECTIVE_DEPTH_FIT_CACHE`` is ``off``."""
    env = os.environ.get("EFFECTIVE_DEPTH_FIT_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("off", "0", "none", "") else Path(env).expanduser()
    from ..models.real import cache_root

    return cache_root() / FITTED


def _read(meta_file: Path, tensor_file: Path, fit: Any, want: dict[str, Any]) -> Any | None:
    """The fit stored at these files when its fingerprint is ``want``; None otherwise (absent,
    another fingerprint, unreadable: logged)."""
    from safetensors.torch import load_file

    if not (meta_file.is_file() and tensor_file.is_file()):
        return None
    try:
        old = json.loads(meta_file.read_text())
        if not isinstance(old, dict) or old.get("fingerprint") != want:
            if isinstance(old, dict) and isinstance(old.get("fingerprint"), dict):
                changed = [k for k in want if old["fingerprint"].get(k) != want[k]]
                log.info("the %s in %s is for another %s", fit.name, meta_file.parent,
                         ", ".join(changed) or "fingerprint")
            return None
        return fit.load(load_file(str(tensor_file)), dict(old.get("info", {})))
    except Exception as exc:  # noqa: BLE001 - a corrupt cache is retrained, never trusted
        log.warning("the cached %s in %s is unreadable (%s); retraining it", fit.name,
                    meta_file.parent, exc)
        return None


def _write(meta_file: Path, tensor_file: Path, fitted: Any, want: dict[str, Any],
           info: dict[str, Any]) -> None:
    from safetensors.torch import save

    meta_file.unlink(missing_ok=True)
    atomic_write_bytes(tensor_file, save({k: v.detach().cpu().contiguous()
                                          for k, v in fitted.tensors().items()}))
    atomic_write_text(meta_file, dumps({"fingerprint": want, "info": info}))


def _files(name: str, want: dict[str, Any], run_dir: str | os.PathLike[str] | None
           ) -> tuple[tuple[Path, Path] | None, tuple[Path, Path] | None]:
    """The (JSON, tensors) files of a fit in the run directory and in the shared cache."""
    run_files = None
    if run_dir is not None:
        local = Path(run_dir) / FITTED
        run_files = local / f"{name}.json", local / f"{name}.safetensors"
    shared = shared_fit_dir()
    digest = hashlib.sha256(dumps(want).encode()).hexdigest()[:24]
    shared_files = None if shared is None else (shared / f"{name}-{digest}.json",
                                                shared / f"{name}-{digest}.safetensors")
    return run_files, shared_files


def find_fit(name: str, want: dict[str, Any],
             run_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder holding a stored fit of ``name`` whose fingerprint is ``want`` (the run
    directory first, then the shared cache), or None: what :func:`load_or_fit` would read instead
    of training, found without loading it (the planner prices a reused fit at nothing)."""
    want = json.loads(dumps(want))
    for files in _files(name, want, run_dir):
        if files is None or not (files[0].is_file() and files[1].is_file()):
            continue
        try:
            if json.loads(files[0].read_text()).get("fingerprint") == want:
                return files[0].parent
        except (OSError, ValueError, AttributeError):
            continue
    return None


def load_or_fit(run_dir: str | os.PathLike[str], fit: Any, ctx: Any, want: dict[str, Any]) -> Any:
    """The fitted object of ``fit`` (a measurement's ``FitSpec``: ``name``, ``fit(ctx)``,
    ``load(tensors, info)``) for the fingerprint ``want``: from the run directory, else from
    the shared cache (then copied into the run directory), else trained by ``fit.fit(ctx)`` and
    saved in both. ``info["reused"]`` says whether it was read, ``info["fingerprint"]`` is
    ``want``."""
    want = json.loads(dumps(want))  # compared as stored: lists, not tuples
    run_files, shared_files = _files(fit.name, want, run_dir)
    assert run_files is not None
    fitted = _read(*run_files, fit, want)
    if fitted is not None:
        log.info("reusing the %s fitted in %s", fit.name, run_files[0].parent)
    if fitted is None and shared_files is not None:
        fitted = _read(*shared_files, fit, want)
        if fitted is not None:
            log.info("reusing the %s fitted for another run (%s)", fit.name,
                     shared_files[0].parent)
            _write(*run_files, fitted, want, dict(fitted.info))
    if fitted is not None:
        fitted.info.update({"reused": True, "fingerprint": want})
        return fitted
    log.info("training the %s", fit.name)
    fitted = fit.fit(ctx)
    info = dict(fitted.info)
    _write(*run_files, fitted, want, info)
    if shared_files is not None:
        try:
            shared_files[0].parent.mkdir(parents=True, exist_ok=True)
            _write(*shared_files, fitted, want, info)
        except OSError as exc:  # a read-only or full cache costs a refit later, nothing more
            log.warning("could not keep the %s in the shared cache %s (%s)", fit.name,
                        shared_files[0].parent, exc)
    fitted.info.update({"reused": False, "fingerprint": want})
    return fitted
