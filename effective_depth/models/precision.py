"""The compute policy: which dtype each kind of work runs in, decided once and recorded.

Hugging Face decides ``dtype`` and the attention implementation once, at load; here one
:class:`ComputePolicy` on the model says, for every clean pass, block call, resumed run, lens and
gradient the toolkit computes:

* ``matmul``: the dtype of the matrix multiplies (projections, MLPs, attention, unembedding);
* ``resid``: the dtype of the residual stream between blocks, of the norms, softmaxes, lens
  log-probabilities and every reduction a measurement makes (KL, cosines, norms, sums);
* ``attention``: ``"sdpa"`` (``torch.nn.functional.scaled_dot_product_attention``, fused) or
  ``"eager"`` (TransformerLens's own attention, for architectures the fused blocks do not cover).

Three policies (``docs/methods.md``, "Precision"):

=============  ===========  ===========  ===================================================
name           matmul       resid        use
=============  ===========  ===========  ===================================================
``fp32``       float32      float32      the reference; every equivalence test holds here
``bf16-mixed`` bfloat16     float32      bfloat16 matmuls, float32 everything else
``bf16``       bfloat16     bfloat16     all bfloat16 (the weights too): least memory
=============  ===========  ===========  ===================================================

``auto`` picks ``bf16-mixed`` where the device multiplies bfloat16 matrices fast (CUDA compute
capability >= 8.0; a CPU with AMX-BF16 or AVX512-BF16, for models of width >= 512: narrower
matrices gain nothing on a CPU, where the casts cost what the multiplies save) and ``fp32``
elsewhere, and says which it detected (:attr:`ComputePolicy.reason`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["ComputePolicy", "PRECISIONS", "resolve_precision", "bf16_fast", "get_policy",
           "set_policy", "FP32"]

#: the names ``--precision`` accepts
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16-mixed", "bf16")

_ALIASES = {"float32": "fp32", "bf16_mixed": "bf16-mixed", "mixed": "bf16-mixed",
            "bfloat16": "bf16"}


@dataclass(frozen=True)
class ComputePolicy:
    """Which dtype each kind of work runs in (see the module docstring).

    ``requested`` is what the user asked for (``auto`` or a policy name); ``reason`` says why
    ``auto`` chose this policy (empty when a policy was named).
    """

    name: str
    requested: str = ""
    reason: str = ""
    #: "sdpa": fused blocks where the architecture has them; "eager": TransformerLens's own
    #: blocks everywhere (the reference the fused blocks are tested against)
    attention: str = "sdpa"

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS[1:]:
            raise ConfigError(f"unknown precision {self.name!r}; use one of "
                              f"{', '.join(PRECISIONS)}")
        if self.attention not in ("sdpa", "eager"):
            raise ConfigError(f"unknown attention kernel {self.attention!r}; use 'sdpa' (fused "
                              "blocks) or 'eager' (TransformerLens's own blocks)")
        if not self.requested:
            object.__setattr__(self, "requested", self.name)

    @property
    def matmul(self) -> torch.dtype:
        return torch.float32 if self.name == "fp32" else torch.bfloat16

    @property
    def resid(self) -> torch.dtype:
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    @property
    def weights(self) -> torch.dtype:
        """The dtype the weights are stored in by default (``bf16`` stores them in bfloat16;
        the others keep float32 masters and, for ``bf16-mixed``, a bfloat16 copy of the
        matrices the fused blocks multiply)."""
        return torch.bfloat16 if self.name == "bf16" else torch.float32

    @property
    def mixed(self) -> bool:
        return self.name == "bf16-mixed"

    def for_grad(self) -> ComputePolicy:
        """The policy of passes that are differentiated (integrated gradients): ``bf16-mixed``
        differentiates in float32. Its bfloat16 gradients leave integrated gradients'
        completeness gap at up to 0.3 (``zoo/add-4l``; the tolerance is 0.01) and the adaptive
        quadrature spends its whole node budget on rounding noise (``docs/methods.md``,
        "Precision")."""
        if self.mixed:
            return ComputePolicy("fp32", requested=self.requested, reason=self.reason,
                                 attention=self.attention)
        return self

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager:
        """The context the *fallback* paths (TransformerLens's own blocks, the bridge's HF
        modules) run in: ``torch.autocast`` to bfloat16 under ``bf16-mixed``, nothing otherwise.
        The fused blocks cast explicitly and need no autocast."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)

    def to_dict(self) -> dict[str, str]:
        """What ``config.json`` records (``model.precision``)."""
        return {"policy": self.name, "requested": self.requested, "reason": self.reason,
                "matmul": str(self.matmul).removeprefix("torch."),
                "resid": str(self.resid).removeprefix("torch."), "attention": self.attention}


FP32 = ComputePolicy("fp32")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_fast(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` multiplies bfloat16 matrices fast, and what says so."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        ok = major >= 8
        return ok, (f"CUDA compute capability {major}.{minor} "
                    f"{'>=' if ok else '<'} 8.0")
    if device.type == "cpu":
        flags = _cpu_flags()
        found = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
        if found:
            return True, f"CPU flags: {', '.join(found)}"
        return False, "CPU without amx_bf16 or avx512_bf16"
    return False, f"{device.type}: no bfloat16 detection"


#: the narrowest model for which ``auto`` multiplies in bfloat16 on a CPU: the zoo's 128- and
#: 256-wide models ran their default studies no faster under bf16-mixed (add-12l: 10.3 s fp32,
#: 11.3 s bf16-mixed on an AVX512-BF16 CPU), SmolLM2 (576) and Gemma-3-270M (640) ran faster
CPU_BF16_MIN_WIDTH = 512


def resolve_precision(requested: str | ComputePolicy | None,
                      device: torch.device | str, d_model: int | None = None) -> ComputePolicy:
    """The policy for ``requested`` (``auto``, a policy name, or a policy) on ``device``, for a
    model of width ``d_model`` (when known)."""
    if isinstance(requested, ComputePolicy):
        return requested
    key = str(requested or "auto").lower()
    key = _ALIASES.get(key, key)
    if key not in PRECISIONS:
        raise ConfigError(f"unknown precision {requested!r}; use one of {', '.join(PRECISIONS)}")
    if key != "auto":
        return ComputePolicy(key)
    fast, reason = bf16_fast(device)
    if fast and torch.device(device).type == "cpu" and d_model is not None \
            and d_model < CPU_BF16_MIN_WIDTH:
        fast, reason = False, (f"{reason}, but d_model {d_model} < {CPU_BF16_MIN_WIDTH}: on a CPU "
                               "narrow matrices gain nothing from bfloat16")
    return ComputePolicy("bf16-mixed" if fast else "fp32", requested="auto", reason=reason)


def get_policy(model: Any) -> ComputePolicy:
    """The policy a model was loaded with; a model loaded elsewhere runs as it is stored
    (``fp32`` for float32 weights, ``bf16`` for bfloat16 ones)."""
    policy = getattr(model, "effective_depth_policy", None)
    if isinstance(policy, ComputePolicy):
        return policy
    try:
        dtype = next(model.parameters()).dtype
    except (StopIteration, AttributeError):
        return FP32
    return ComputePolicy("bf16") if dtype == torch.bfloat16 else FP32


def set_policy(model: Any, policy: ComputePolicy) -> None:
    """Attach ``policy`` to ``model``: every adapter of the model computes under it from now on
    (the fused blocks rebuild their weight copies for the new matmul dtype)."""
    model.effective_depth_policy = policy


@contextlib.contextmanager
def policy_of(model: Any, policy: ComputePolicy) -> Iterator[None]:
    """Run a block of code with ``model`` under ``policy``, restoring the previous one."""
    old = getattr(model, "effective_depth_policy", None)
    set_policy(model, policy)
    try:
        yield
    finally:
        if old is None:
            del model.effective_depth_policy
        else:
            model.effective_depth_policy = old
