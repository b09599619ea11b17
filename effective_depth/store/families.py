"""Model families: which runs a scale trend may join (docs/methods.md §7, "Families").

A scale trend (a line from a small model to a large one, or a ρ over the number of blocks) says
something only across models that differ in size alone: one architecture, one tokenizer, one
training recipe. The family of a run's model is, in this order:

* **named** by the user (``compare --family NAME=MODEL,MODEL``, a grid's ``families:``): any
  model or run directory listed under ``NAME``;
* a **zoo** depth series: the zoo name without its ``-<N>l`` block count (``zoo/add-2l``,
  ``zoo/add-12l`` -> ``zoo/add``; ``zoo/spare-4l`` -> ``zoo/spare``; ``zoo/add-4l-scratch`` ->
  ``zoo/add-scratch``, a family of its own);
* a **checkpoint** (a Hugging Face id, a local directory, a ``real/`` model): the name's last
  part without its size (``Qwen2.5-0.5B``, ``Qwen2.5-7B`` -> ``qwen2.5``; ``SmolLM2-135M-Instruct``
  -> ``smollm2-instruct``; ``gemma-3-270m`` -> ``gemma-3``), together with the model type read
  from the architecture the run recorded (``LlamaForCausalLM`` -> ``llama``): two checkpoints are
  one family when both agree.

Anything else is a family of one model. The rule is deliberately strict: a missed family costs a
line the user can ask for (``--family``); an invented one draws a trend across models that share
nothing but a task.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Family", "family_of", "model_type_of", "named_families", "not_joined_reason"]

#: a size in a checkpoint's name: 135M, 0.5B, 1.5b, 8x7B, 70m (not the 3 of gemma-3, nor the
#: 2.5 of Qwen2.5: a size has a unit and stands alone between separators)
_SIZE = re.compile(r"(?<![a-z0-9.])(\d+x)?\d+(\.\d+)?[kmbt](?![a-z0-9])", re.IGNORECASE)
#: size words of series named by size rather than by count (gpt2-medium, t5-large)
_SIZE_WORDS = re.compile(r"(?<![a-z0-9])(small|medium|large|xl|xxl)(?![a-z0-9])", re.IGNORECASE)
#: a zoo depth series' block count: add-12l, spare-4l, add-4l-scratch
_ZOO_DEPTH = re.compile(r"-\d+l(?=-|$)")


@dataclass(frozen=True)
class Family:
    """A run's model family: its ``name``, how it was found (``kind``: ``named``, ``zoo``,
    ``checkpoint``) and the model type recorded by the run (``llama``; None when unknown)."""

    name: str
    kind: str
    model_type: str | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        """What two runs must share to be one family: a user's name or a zoo series alone; a
        checkpoint's name stem and its model type."""
        return (self.name, None) if self.kind in ("named", "zoo") else (self.name, self.model_type)

    @property
    def text(self) -> str:
        """``smollm2-instruct (llama)``; a named or zoo family by its name alone."""
        if self.kind == "checkpoint" and self.model_type:
            return f"{self.name} ({self.model_type})"
        return self.name


def model_type_of(architecture: str | None) -> str | None:
    """The model type in a recorded architecture class: ``LlamaForCausalLM`` -> ``llama``,
    ``Gemma3ForCausalLM`` -> ``gemma3``; None when the run recorded none."""
    if not architecture:
        return None
    stem = re.split(r"For[A-Z]|Model$|LMHead", str(architecture))[0] or str(architecture)
    return stem.lower()


def _stem(name: str) -> str:
    """A checkpoint name's last part without its size, lower case: ``Qwen/Qwen2.5-1.5B`` ->
    ``qwen2.5``."""
    base = Path(str(name).rstrip("/")).name or str(name)
    out = _SIZE_WORDS.sub("", _SIZE.sub("", base))
    out = re.sub(r"[-_ ]{2,}", "-", out).strip("-_ .")
    return (out or base).lower()


def family_of(model: str | None, architecture: str | None = None, *,
              named: Mapping[str, str] | None = None, run: str | None = None) -> Family:
    """The family of ``model`` (a run's model name) with its recorded ``architecture``;
    ``named`` maps a model name or run directory to a user's family name (:func:`named_families`),
    ``run`` is the run directory looked up there."""
    model = "?" if model is None else str(model)
    model_type = model_type_of(architecture)
    for key in (run, model):
        if key is not None and named and key in named:
            return Family(named[key], "named", model_type)
    if model.startswith("zoo/"):
        return Family(_ZOO_DEPTH.sub("", model), "zoo", model_type)
    return Family(_stem(model), "checkpoint", model_type)


def named_families(families: Mapping[str, Sequence[str]] | None) -> dict[str, str]:
    """``{family: [model or run directory, ...]}`` as ``{member: family}``; a member named in
    two families is an error."""
    from ..errors import ConfigError

    out: dict[str, str] = {}
    for name, members in (families or {}).items():
        if isinstance(members, str) or not isinstance(members, Sequence):
            raise ConfigError(f"family {name!r}: expected a list of models or run directories, "
                              f"got {members!r}")
        for m in members:
            m = str(m).strip()
            if m in out and out[m] != name:
                raise ConfigError(f"{m!r} is in two families: {out[m]!r} and {name!r}")
            out[m] = str(name)
            out[str(Path(m))] = str(name)  # runs/x/ and runs/x name one run directory
    return out


def not_joined_reason(families: Sequence[Family]) -> str | None:
    """Why runs of these families are not joined by a trend: ``different families: smollm2
    (llama) vs gemma-3 (gemma3)``; None when they are one family."""
    seen: dict[Any, Family] = {}
    for f in families:
        seen.setdefault(f.key, f)
    if len(seen) < 2:
        return None
    texts = [f.text for f in seen.values()]
    if len(set(texts)) < len(texts):  # same name, another model type: say both
        texts = [f"{f.name} ({f.model_type or 'model type unknown'})" for f in seen.values()]
    return "different families: " + " vs ".join(texts)
