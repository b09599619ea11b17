"""The bundled zoo: tiny trained models shipped inside the package.

Each zoo model is a standard Hugging Face checkpoint directory under ``effective_depth/zoo/NAME``
(config.json, model.safetensors, tokenizer files) with a ``card.json`` beside the weights: the
training recipe, steps and time, held-out exact-match accuracy per difficulty, parameter count,
and the task the model solves (so the CLI can default the task from the model).

Zoo names are written ``zoo/NAME``; the bare ``NAME`` works too where it is unambiguous.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["ZOO_DIR", "ZooEntry", "zoo_entries", "zoo_entry", "zoo_names", "DEFAULT_ZOO_MODEL"]

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"
#: the model the CLI's `run` uses when no --model is given
DEFAULT_ZOO_MODEL = "zoo/add-4l"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    path: Path
    card: dict[str, Any]

    @property
    def task(self) -> dict[str, Any]:
        """``{"name": ..., "params": {...}}``: the task this model was trained on."""
        return self.card.get("task", {})


@lru_cache(maxsize=1)
def zoo_entries() -> dict[str, ZooEntry]:
    """All bundled models by full name (``zoo/NAME``)."""
    out: dict[str, ZooEntry] = {}
    if not ZOO_DIR.is_dir():
        return out
    for card_path in sorted(ZOO_DIR.glob("*/card.json"), key=lambda p: _natural(p.parent.name)):
        card = json.loads(card_path.read_text())
        name = f"zoo/{card_path.parent.name}"
        out[name] = ZooEntry(name, card_path.parent, card)
    return out


def _natural(name: str) -> list[Any]:
    """``add-2l`` before ``add-12l``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def zoo_names() -> list[str]:
    return list(zoo_entries())


def zoo_entry(spec: str) -> ZooEntry | None:
    """The zoo entry ``spec`` names (``zoo/NAME`` or ``NAME``), or None."""
    entries = zoo_entries()
    if spec in entries:
        return entries[spec]
    return entries.get(f"zoo/{spec}") if "/" not in spec else None
