"""Fingerprints of what a run read: the model's files and the exact token ids analysed.

A run directory is reused only when its config *and* these fingerprints are unchanged, so that an
edited prompts file, a retrained checkpoint or another tokenizer is never answered with stale
numbers. Files up to :data:`FULL_HASH_BYTES` are hashed whole; larger weight files by their size,
modification time and three sampled 1 MiB windows (start, middle, end) — hashing tens of GB on
every run would cost more than the run. An edit that keeps a large file's size *and* modification
time *and* its sampled windows is not detected; ``--force`` recomputes unconditionally.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["path_fingerprint", "model_fingerprint", "loaded_model_fingerprint",
           "compute_fingerprint", "inputs_fingerprint",
           "FULL_HASH_BYTES"]

FULL_HASH_BYTES = 64 * 2**20
_WINDOW = 2**20


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: fh.read(2**20), b""):
                h.update(block)
        else:
            h.update(f"{size}:{path.stat().st_mtime_ns}".encode())
            for offset in (0, size // 2, max(0, size - _WINDOW)):
                fh.seek(offset)
                h.update(fh.read(_WINDOW))
    return h.hexdigest()


def path_fingerprint(path: str | os.PathLike[str]) -> str:
    """A digest of every file below ``path`` (names and contents; symlinks followed)."""
    root = Path(path)
    h = hashlib.sha256()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        if file.name.startswith("."):  # caches, locks, editor files
            continue
        h.update(str(file.relative_to(root) if file != root else file.name).encode())
        h.update(_file_digest(file).encode())
    return h.hexdigest()[:16]


def loaded_model_fingerprint(model: Any) -> dict[str, Any]:
    """:func:`model_fingerprint` of a model the toolkit loaded (its recorded source)."""
    return model_fingerprint(getattr(model, "effective_depth_source", {}))


def model_fingerprint(source: dict[str, Any]) -> dict[str, Any]:
    """What identifies the loaded weights: the files of zoo, local and hub checkpoints (and, for
    weights dequantised from a GGUF file, that file's name, sha256 and quantisation); the name
    (and revision) of official TransformerLens models, whose files TransformerLens locates."""
    path = source.get("path")
    if path and Path(path).exists():
        out = {"kind": source.get("kind"), "files": path_fingerprint(path)}
        gguf = source.get("gguf")
        if gguf:  # weights dequantised from a GGUF file: which file, and its quantisation
            out["gguf"] = {"file": gguf.get("file"), "sha256": gguf.get("sha256"),
                           "quantisation": gguf.get("quantisation")}
        return out
    return {"kind": source.get("kind"), "name": source.get("name"),
            "revision": source.get("revision")}


def compute_fingerprint(model: Any) -> dict[str, str]:
    """The compute policy a model runs under, as a fingerprint records it: the policy (not why
    ``auto`` chose it, nor the attention kernel: fused and TransformerLens blocks compute the
    same numbers to 1e-5, ``tests/test_fused.py``)."""
    from ..models.precision import get_policy

    return {"precision": get_policy(model).name}


def inputs_fingerprint(token_lists: Sequence[Sequence[int]], answer_starts: Sequence[int],
                       extra: dict[str, Any] | None = None) -> str:
    """A digest of the exact token ids (and where each answer starts) a run analyses."""
    payload = {"tokens": [list(map(int, t)) for t in token_lists],
               "answer_starts": [int(s) for s in answer_starts], **(extra or {})}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
