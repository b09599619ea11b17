"""Interventions: skip, ablate, patch — as self-cleaning hooks *and* as resumable plans.

Every intervention has two equivalent forms, and the tests check that they agree:

* **hooks** (``spec.hooks(model)``, or ``with intervene(model, spec, ...):``): TransformerLens
  hook functions for a normal forward pass. The context manager removes exactly the hooks it added,
  in ``finally``, so it composes with ``model.hooks(...)``, ``run_with_hooks`` and hooks the user
  added themselves (TransformerLens ``HookedRootModule.hooks`` semantics).
* **plan** (``compile_plan([spec, ...], clean, row)``): where a run can *resume*. A skip of block
  ``s`` changes nothing below ``s``, so the sweep engine starts at the first changed residual,
  built from the clean cache, and applies later changes as in-run patches.

Positions: ``None`` (every position), an ``int``, a ``slice``, a list of ints, or a boolean mask of
shape ``[pos]`` or ``[batch, pos]``. Values broadcast: a ``[d_model]`` vector (a mean), or
``[pos, d_model]`` / ``[batch, pos, d_model]`` tensors (resampled activations).

The catalogue (Csordás et al. 2025 for the skips; mean/resample ablation as in the patching
literature):

========================  ================================================================
``skip_block(s)``         ``h_{s+1} := h_s`` (the block's output replaced by its input)
``skip_attn(s)``          ``a_s := 0``
``skip_mlp(s)``           ``m_s := 0``
``local_skip(s)``         only block ``s``'s *direct* contribution is removed from the final
                          residual, ``h_L := h_L - d_s``; later blocks see the clean stream
``replace_residual(l)``   ``h_l := value`` (mean ablation of the stream, residual erasure)
``ablate(s, component,    the contribution of the block / attention / MLP replaced by zero, a
mode, value)``            mean vector or resampled activations
========================  ================================================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import ConfigError
from .adapter import Adapter, Clean, HookFn, get_adapter

__all__ = [
    "Intervention",
    "PatchContribution",
    "LocalSkip",
    "ReplaceResidual",
    "Patch",
    "Plan",
    "skip_block",
    "skip_attn",
    "skip_mlp",
    "local_skip",
    "replace_residual",
    "ablate",
    "intervene",
    "compile_plan",
    "position_mask",
    "COMPONENTS",
]

Component = Literal["block", "attn", "mlp"]
COMPONENTS = ("block", "attn", "mlp")
Positions = Any  # None | int | slice | Sequence[int] | Tensor (documented above)


def position_mask(positions: Positions, width: int, device: torch.device | str = "cpu") -> Tensor:
    """Boolean mask ``[pos]`` or ``[batch, pos]`` of the positions an intervention touches."""
    if positions is None:
        return torch.ones(width, dtype=torch.bool, device=device)
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        if positions.shape[-1] != width:
            raise ConfigError(f"position mask has width {positions.shape[-1]}, sequence has {width}")
        return positions.to(device)
    mask = torch.zeros(width, dtype=torch.bool, device=device)
    if isinstance(positions, slice):
        mask[positions] = True
    else:
        idx = [positions] if isinstance(positions, int) else list(
            positions.tolist() if isinstance(positions, Tensor) else positions
        )
        bad = [p for p in idx if not -width <= int(p) < width]
        if bad:
            raise ConfigError(f"positions {bad} outside a sequence of {width} tokens")
        mask[torch.as_tensor(idx, dtype=torch.long, device=device)] = True
    return mask


def _where(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``old`` with ``new`` at ``mask``; ``old`` is ``[pos, d]`` or ``[batch, pos, d]``, ``mask``
    is ``[pos]`` or ``[batch, pos]``."""
    m = mask.to(old.device)
    if m.dim() == 1:
        m = m[:, None] if old.dim() == 2 else m[None, :, None]
    elif m.dim() == 2 and old.dim() == 3:
        if m.shape[0] not in (1, old.shape[0]):
            raise ConfigError(
                f"position mask batch {m.shape[0]} does not match activations {old.shape[0]}"
            )
        m = m[:, :, None]
    else:
        raise ConfigError(f"position mask of shape {tuple(m.shape)} for activations {tuple(old.shape)}")
    return torch.where(m, new.to(old.dtype).to(old.device), old)


def _value(value: Tensor | None, like: Tensor) -> Tensor:
    if value is None:
        return torch.zeros((), dtype=like.dtype, device=like.device)
    return value.to(like.dtype).to(like.device)


@dataclass(frozen=True)
class Patch:
    """An in-run change: at ``kind`` ("resid" boundary, or "block"/"attn"/"mlp" of a layer),
    positions ``mask`` get ``value`` (resid/attn/mlp) or ``input + value`` (block)."""

    kind: str
    index: int
    mask: Tensor
    value: Tensor | None = None


@dataclass
class Plan:
    """How to run an intervention from the clean cache: resume at boundary ``start`` from
    ``resid`` (``[pos, d_model]``), applying ``patches`` on the way. Positions before
    ``first_pos`` are unchanged at every layer (causality), so a run may skip them."""

    start: int
    resid: Tensor
    patches: list[Patch] = field(default_factory=list)
    first_pos: int = 0
    #: set by a ``grad=True`` sweep: the leaf tensor the run started from (its ``.grad`` is the
    #: gradient w.r.t. ``h'_start``)
    resid_leaf: Tensor | None = None


class Intervention:
    """Base class. Subclasses implement ``hooks`` and ``plan``."""

    positions: Positions = None

    def mask(self, width: int, device: Any = "cpu") -> Tensor:
        return position_mask(self.positions, width, device)

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        raise NotImplementedError

    def start(self, adapter: Adapter) -> int:
        """The earliest residual boundary this intervention changes when used as a plan."""
        raise NotImplementedError

    def resid_form(self, adapter: Adapter, clean: Clean, row: int, mask: Tensor) -> Tensor:
        """``h'_start`` for prompt ``row`` built from the clean cache."""
        raise NotImplementedError

    def patches(self, adapter: Adapter, mask: Tensor) -> list[Patch]:
        """The same change applied inside a run that started earlier (needed only when this
        intervention is combined with others in one plan)."""
        raise ConfigError(
            f"{type(self).__name__} cannot be combined with other interventions in one plan; "
            "run it on its own, or implement `patches`"
        )

    def plan_patches(self, adapter: Adapter, mask: Tensor, row: int) -> list[Patch]:
        """In-run patches a single-intervention plan still needs after resuming (usually none)."""
        return []


def _row(mask: Tensor, row: int) -> Tensor:
    return mask[row] if mask.dim() == 2 else mask


def _row_value(value: Tensor | None, row: int) -> Tensor | None:
    if value is not None and value.dim() == 3:
        return value[row]
    return value


@dataclass(frozen=True)
class PatchContribution(Intervention):
    """Replace the contribution of block ``layer``'s ``component`` by ``value`` (None: zero).

    ``component="block"`` with ``value=None`` is the layer skip ``h_{s+1} := h_s``.
    """

    layer: int
    component: Component = "block"
    positions: Positions = None
    value: Tensor | None = None

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise ConfigError(f"component must be one of {COMPONENTS}, got {self.component!r}")

    def _check(self, adapter: Adapter) -> None:
        if not 0 <= self.layer < adapter.n_layers:
            raise ConfigError(f"block {self.layer} outside 0..{adapter.n_layers - 1}")

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        adapter = get_adapter(model)
        self._check(adapter)
        s = self.layer
        if self.component == "attn":
            return [(adapter.attn_hook(s), self._replace_hook())]
        if self.component == "mlp":
            return [(adapter.mlp_hook(s), self._replace_hook())]
        seen: dict[str, Tensor] = {}

        def grab(x: Tensor, hook: Any) -> None:
            seen["in"] = x

        def put(x: Tensor, hook: Any) -> Tensor:
            mask = self.mask(x.shape[1], x.device)
            return _where(mask, seen["in"] + _value(self.value, x), x)

        return [(adapter.resid_hook(s), grab), (f"blocks.{s}.hook_resid_post", put)]

    def _replace_hook(self) -> HookFn:
        def hook(x: Tensor, hook: Any) -> Tensor:
            return _where(self.mask(x.shape[1], x.device), _value(self.value, x).expand_as(x), x)

        return hook

    def start(self, adapter: Adapter) -> int:
        self._check(adapter)
        if self.component == "attn" and not adapter.parallel:
            return self.layer  # the MLP of the same block reads the changed attention output
        return self.layer + 1

    def resid_form(self, adapter: Adapter, clean: Clean, row: int, mask: Tensor) -> Tensor:
        s, value = self.layer, _row_value(self.value, row)
        if self.component == "attn" and not adapter.parallel:
            return clean.resid[s, row]
        after = clean.resid[s + 1, row]
        if self.component == "block":
            removed = clean.resid[s + 1, row] - clean.resid[s, row]
        else:
            source = clean.attn if self.component == "attn" else clean.mlp
            if source is None:
                raise ValueError("the clean pass was run without components")
            removed = source[s, row]
        return _where(mask, after - removed + _value(value, after), after)

    def patches(self, adapter: Adapter, mask: Tensor) -> list[Patch]:
        return [Patch(self.component, self.layer, mask, self.value)]

    def plan_patches(self, adapter: Adapter, mask: Tensor, row: int) -> list[Patch]:
        # the resid form of a sequential attention skip still needs the patch inside block s
        if self.component == "attn" and not adapter.parallel:
            return [Patch("attn", self.layer, mask, _row_value(self.value, row))]
        return []


@dataclass(frozen=True)
class LocalSkip(Intervention):
    """Remove block ``layer``'s own contribution from the final residual only: ``h_L := h_L -
    d_s`` at the positions; later blocks keep their clean inputs (the "direct" effect)."""

    layer: int
    positions: Positions = None

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        adapter = get_adapter(model)
        s, L = self.layer, adapter.n_layers
        seen: dict[str, Tensor] = {}

        def grab_in(x: Tensor, hook: Any) -> None:
            seen["in"] = x

        def grab_out(x: Tensor, hook: Any) -> None:
            seen["d"] = x - seen["in"]

        def subtract(x: Tensor, hook: Any) -> Tensor:
            return _where(self.mask(x.shape[1], x.device), x - seen["d"], x)

        return [
            (adapter.resid_hook(s), grab_in),
            (f"blocks.{s}.hook_resid_post", grab_out),
            (adapter.resid_hook(L), subtract),
        ]

    def start(self, adapter: Adapter) -> int:
        return adapter.n_layers

    def resid_form(self, adapter: Adapter, clean: Clean, row: int, mask: Tensor) -> Tensor:
        final = clean.resid[-1, row]
        return _where(mask, final - clean.block_out(self.layer)[row], final)

    def patches(self, adapter: Adapter, mask: Tensor) -> list[Patch]:
        raise ConfigError("local_skip cannot be combined with other interventions in one run")


@dataclass(frozen=True)
class ReplaceResidual(Intervention):
    """``h_boundary := value`` at the positions (boundary 0..L; L is the final residual)."""

    boundary: int
    value: Tensor
    positions: Positions = None

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        adapter = get_adapter(model)

        def hook(x: Tensor, hook: Any) -> Tensor:
            return _where(self.mask(x.shape[1], x.device), _value(self.value, x).expand_as(x), x)

        return [(adapter.resid_hook(self.boundary), hook)]

    def start(self, adapter: Adapter) -> int:
        if not 0 <= self.boundary <= adapter.n_layers:
            raise ConfigError(f"boundary {self.boundary} outside 0..{adapter.n_layers}")
        return self.boundary

    def resid_form(self, adapter: Adapter, clean: Clean, row: int, mask: Tensor) -> Tensor:
        h = clean.resid[self.boundary, row]
        return _where(mask, _value(_row_value(self.value, row), h).expand_as(h), h)

    def patches(self, adapter: Adapter, mask: Tensor) -> list[Patch]:
        return [Patch("resid", self.boundary, mask, self.value)]


def skip_block(layer: int, positions: Positions = None) -> PatchContribution:
    """Skip block ``layer``: its output is replaced by its input at ``positions``."""
    return PatchContribution(layer, "block", positions)


def skip_attn(layer: int, positions: Positions = None) -> PatchContribution:
    """Zero the attention output of block ``layer`` at ``positions``."""
    return PatchContribution(layer, "attn", positions)


def skip_mlp(layer: int, positions: Positions = None) -> PatchContribution:
    """Zero the MLP output of block ``layer`` at ``positions``."""
    return PatchContribution(layer, "mlp", positions)


def local_skip(layer: int, positions: Positions = None) -> LocalSkip:
    return LocalSkip(layer, positions)


def replace_residual(boundary: int, value: Tensor, positions: Positions = None) -> ReplaceResidual:
    return ReplaceResidual(boundary, value, positions)


def ablate(
    layer: int,
    component: Component = "block",
    mode: Literal["zero", "mean", "resample"] = "zero",
    value: Tensor | None = None,
    positions: Positions = None,
) -> PatchContribution:
    """Zero, mean or resample ablation of a block's (or its attention's / MLP's) contribution.

    ``mean``: ``value`` is the mean contribution (``[d_model]``, e.g. over a reference set);
    ``resample``: ``value`` holds the contributions from other prompts (``[batch, pos, d_model]``).
    """
    if mode == "zero":
        if value is not None:
            raise ConfigError("zero ablation takes no value")
        return PatchContribution(layer, component, positions)
    if mode not in ("mean", "resample"):
        raise ConfigError(f"ablation mode must be zero, mean or resample, got {mode!r}")
    if value is None:
        raise ConfigError(f"{mode} ablation needs the replacement contribution as `value`")
    if mode == "mean" and value.dim() != 1:
        raise ConfigError(f"mean ablation takes a [d_model] vector, got shape {tuple(value.shape)}")
    return PatchContribution(layer, component, positions, value)


@contextlib.contextmanager
def intervene(model: Any, *specs: Intervention) -> Iterator[Any]:
    """Apply interventions to every forward pass inside the block; hooks removed on exit.

    >>> with intervene(model, skip_block(3, positions=slice(1, None))):  # doctest: +SKIP
    ...     logits = model(tokens)
    """
    adapter = get_adapter(model)
    hooks: list[tuple[str, HookFn]] = []
    for spec in specs:
        hooks += spec.hooks(model)
    with adapter.hooks(hooks):
        yield model


def compile_plan(
    specs: Sequence[Intervention], adapter: Adapter, clean: Clean, row: int
) -> Plan:
    """The resume plan of ``specs`` applied together to prompt ``row`` of ``clean``.

    One intervention resumes at its own first changed residual, built from the clean cache. Several
    together resume at the earliest block any of them touches, from the clean residual there, and
    are all applied as in-run patches (so each sees the stream the others already changed).
    """
    width = int(clean.resid.shape[2])
    device = clean.resid.device
    if not specs:
        return Plan(adapter.n_layers, clean.resid[-1, row], [], first_pos=width)
    masks = [_row(s.mask(width, device), row) for s in specs]
    changed = torch.zeros(width, dtype=torch.bool, device=device)
    for m in masks:
        changed |= m
    nz = changed.nonzero()
    first = int(nz[0]) if len(nz) else width
    if len(specs) == 1:
        spec, mask = specs[0], masks[0]
        patches = spec.plan_patches(adapter, mask, row)
        return Plan(spec.start(adapter), spec.resid_form(adapter, clean, row, mask), patches, first)
    patches: list[Patch] = []
    for spec, mask in zip(specs, masks):
        for p in spec.patches(adapter, mask):
            patches.append(Patch(p.kind, p.index, p.mask, _row_value(p.value, row)))
    start = min(p.index for p in patches)
    return Plan(start, clean.resid[start, row], patches, first)
