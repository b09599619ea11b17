"""Interventions: skip, ablate, patch — described once, used as hooks *and* as resumed plans.

An intervention is written once, as a list of :class:`Patch` es: "at this point of the forward
pass (a residual boundary, or block ``l``'s attention, MLP or whole contribution), at these
positions, the activation becomes ``value`` (or ``fn(activation)``)". Both ways of running it are
derived from that one description, generically, and the tests check that they agree:

* **hooks** (``spec.hooks(model)``, or ``with intervene(model, spec, ...):``): TransformerLens
  hook functions for a normal forward pass (:func:`patch_hooks`). The context manager removes
  exactly the hooks it added, in ``finally``, so it composes with ``model.hooks(...)``,
  ``run_with_hooks`` and hooks the user added themselves (``HookedRootModule.hooks`` semantics).
* **plan** (``compile_plan([spec, ...], adapter, clean, row)``): where a run can *resume*. A skip
  of block ``s`` changes nothing below ``s``, so the sweep starts at the first changed residual,
  built from the clean cache by folding the first patches into it, and applies the rest as in-run
  patches (the same :func:`patch_hooks`).

A new intervention implements only ``patches()`` (see ``docs/hook_scripting.md``).

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
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
    "ResumePlan",
    "skip_block",
    "skip_attn",
    "skip_mlp",
    "local_skip",
    "replace_residual",
    "ablate",
    "intervene",
    "compile_plan",
    "patch_hooks",
    "position_mask",
    "where",
    "COMPONENTS",
    "POINTS",
]

Component = Literal["block", "attn", "mlp"]
COMPONENTS = ("block", "attn", "mlp")
#: the points a patch can change, in forward order within a block: the residual entering block
#: ``l`` ("resid", boundaries 0..L), then its attention output, its MLP output, and its whole
#: contribution ``d_l = h_{l+1} - h_l`` ("block")
POINTS = ("resid", "attn", "mlp", "block")
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


def where(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``old`` with ``new`` at the positions of ``mask``.

    ``old`` is ``[pos, d]`` or ``[batch, pos, d]``; ``mask`` is ``[pos]`` or ``[batch, pos]``;
    ``new`` broadcasts against ``old`` (a ``[d]`` vector, or a tensor of ``old``'s shape).
    """
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


@dataclass(frozen=True)
class Patch:
    """One change at one point of the forward pass: the single description of an intervention.

    ``kind``/``index``: "resid" with a boundary 0..L (``h_index``), or "attn" / "mlp" / "block"
    with a block 0..L-1 (its attention output, MLP output, or whole contribution ``d_l``; a block
    skip sets ``d_l := 0``, i.e. ``h_{l+1} := h_l``). At ``positions`` the activation becomes:

    * ``fn(x)`` if ``fn`` is given (``fn(x, r)`` when ``read`` names another point, whose
      activation ``r`` in the same run is passed along); ``fn`` must act on each position on its
      own, since a resumed run may call it on a suffix of the positions;
    * else ``value`` (``None``: zero), a ``[d_model]`` vector or a ``[pos, d_model]`` /
      ``[batch, pos, d_model]`` tensor.

    ``read_value`` is filled in by :func:`compile_plan` when the read point is unchanged by the
    plan (it is then taken from the clean cache).
    """

    kind: str
    index: int
    positions: Positions = None
    value: Tensor | None = None
    fn: Callable[..., Tensor] | None = None
    read: tuple[str, int] | None = None
    read_value: Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in POINTS:
            raise ConfigError(f"patch kind must be one of {POINTS}, got {self.kind!r}")
        if self.read is not None and self.read[0] not in POINTS:
            raise ConfigError(f"a patch reads one of {POINTS}, got {self.read[0]!r}")

    @property
    def order(self) -> tuple[int, int]:
        """Where the point sits in the forward pass (boundary ``l`` comes before block ``l``)."""
        return _order(self.kind, self.index)

    def at(self, adapter: Adapter) -> Patch:
        """This patch with its indices checked against the model, negative ones counted from the
        end as in Python (boundary ``-1`` is the final residual ``h_L``, block ``-1`` the last)."""

        def resolve(kind: str, index: int) -> int:
            top = adapter.n_layers if kind == "resid" else adapter.n_layers - 1
            i = index + top + 1 if index < 0 else index
            if not 0 <= i <= top:
                what = "boundary" if kind == "resid" else "block"
                raise ConfigError(f"{what} {index} outside 0..{top} ({kind} patch)")
            return i

        read = None if self.read is None else (self.read[0], resolve(*self.read))
        index = resolve(self.kind, self.index)
        if index == self.index and read == self.read:
            return self
        return replace(self, index=index, read=read)

    def new(self, x: Tensor, offset: int = 0, read: Tensor | None = None) -> Tensor:
        """The replacement of activation ``x`` (positions ``offset..`` of the sequence)."""
        if self.fn is not None:
            if self.read is None:
                return self.fn(x)
            r = read if read is not None else _from(self.read_value, offset)
            if r is None:
                raise ConfigError(f"the patch at {self.kind} {self.index} reads {self.read} but "
                                  "was given no value for it")
            return self.fn(x, r.to(x.device, x.dtype))
        value = _from(self.value, offset)
        if value is None:
            return torch.zeros((), dtype=x.dtype, device=x.device).expand_as(x)
        return value.to(x.dtype).to(x.device).expand_as(x)

    def mask(self, width: int, device: Any = "cpu", offset: int = 0) -> Tensor:
        """Positions ``offset..width-1`` of the patch's mask (``[pos]`` or ``[batch, pos]``)."""
        return position_mask(self.positions, width, device)[..., offset:]


def _order(kind: str, index: int) -> tuple[int, int]:
    return index, POINTS.index(kind)


def _from(value: Tensor | None, offset: int) -> Tensor | None:
    # values with a position axis ([pos, d] or [batch, pos, d]) lose the positions before offset
    if value is None or offset == 0 or value.dim() < 2:
        return value
    return value[..., offset:, :]


@dataclass(frozen=True)
class ResumePlan:
    """How to run an intervention from the clean cache: resume at boundary ``start`` from
    ``resid`` (``[pos, d_model]``), applying ``patches`` on the way. Positions before
    ``first_pos`` are unchanged at every layer (causality), so a run may skip them."""

    start: int
    resid: Tensor
    patches: tuple[Patch, ...] = ()
    first_pos: int = 0


class Intervention:
    """Base class: a subclass implements :meth:`patches`; its hooks and its resumed plan are
    derived from them (:meth:`hooks`, :func:`compile_plan`)."""

    positions: Positions = None

    def patches(self) -> Sequence[Patch]:
        raise NotImplementedError(f"{type(self).__name__} must implement patches()")

    def hooks(self, model: Any) -> list[tuple[str, HookFn]]:
        """TransformerLens ``(name, hook)`` pairs applying this intervention to a forward pass."""
        adapter = get_adapter(model)
        return patch_hooks(adapter, [(p.at(adapter), None) for p in self.patches()])


# ---------------------------------------------------------------------------- the hook form
Target = int | None  # a row of the running batch, or None: the whole batch


def patch_hooks(
    adapter: Adapter, items: Sequence[tuple[Patch, Target]], offset: int = 0
) -> list[tuple[str, HookFn]]:
    """Hooks applying each ``(patch, target)``: to row ``target`` of the running batch (rows not
    yet in the batch are left alone), or with ``None`` to every row. The activations cover the
    positions ``offset..`` of the sequence. Patches at one point act in the order given; points
    act in forward order. Only the adapter spells the hook names."""
    by_point: dict[tuple[str, int], list[tuple[Patch, Target]]] = {}
    for p, target in items:
        by_point.setdefault((p.kind, p.index), []).append((p, target))
    hooks: list[tuple[str, HookFn]] = []
    for (kind, index), group in sorted(by_point.items(), key=lambda kv: _order(*kv[0])):
        reads: dict[tuple[str, int], dict[str, Tensor]] = {}
        for p, _ in group:
            if p.read is not None and p.read_value is None and p.read not in reads:
                reads[p.read] = {}
                hooks += _grab(adapter, p.read, reads[p.read])
        seen: dict[str, Tensor] = {}
        if kind == "block":
            name_in, name = adapter.block_io_hooks(index)
            hooks.append((name_in, _keep(seen, "in")))
        else:
            name = adapter.point_hook(kind, index)
        hooks.append((name, _apply(group, seen, reads, offset)))
    return hooks


def _keep(store: dict[str, Tensor], key: str) -> HookFn:
    def hook(x: Tensor, hook: Any) -> None:
        store[key] = x

    return hook


def _grab(adapter: Adapter, point: tuple[str, int], store: dict[str, Tensor]) -> list[tuple[str, HookFn]]:
    kind, index = point
    if kind != "block":
        return [(adapter.point_hook(kind, index), _keep(store, "x"))]
    name_in, name_out = adapter.block_io_hooks(index)

    def out(x: Tensor, hook: Any) -> None:
        store["x"] = x - store["in"]

    return [(name_in, _keep(store, "in")), (name_out, out)]


def _apply(group: list[tuple[Patch, Target]], seen: dict[str, Tensor],
           reads: dict[tuple[str, int], dict[str, Tensor]], offset: int) -> HookFn:
    def hook(x: Tensor, hook: Any) -> Tensor:
        width = offset + x.shape[1]
        if any(target is not None for _, target in group):
            x = x.clone()  # rows are written in place below; never into the caller's tensor
        for p, target in group:
            if target is not None and target >= x.shape[0]:
                continue  # the row joins at a later block
            sel = slice(None) if target is None else target
            base = seen["in"][sel] if p.kind == "block" else None
            cur = x[sel] if base is None else x[sel] - base
            read = reads[p.read]["x"][sel] if p.read in reads else None
            new = p.new(cur, offset, read)
            if base is not None:
                new = base + new
            mask = p.mask(width, x.device, offset)
            if target is None:
                x = where(mask, new, x)
            else:
                x[target] = where(mask, new, x[target])
        return x

    return hook


# ---------------------------------------------------------------------------- the resumed form
def _clean_point(adapter: Adapter, clean: Clean, kind: str, index: int, row: int) -> Tensor:
    if kind == "resid":
        return clean.resid[index, row]
    if kind == "block":
        return clean.block_out(index)[row]
    source = clean.attn if kind == "attn" else clean.mlp
    if source is None:
        raise ConfigError(f"this plan needs the clean {kind} outputs: run adapter.clean(tokens, "
                          "components=True)")
    return source[index, row]


def _entry(adapter: Adapter, p: Patch) -> int | None:
    """The boundary whose residual can hold this patch's effect, or None when it must act
    inside the run (a sequential block's MLP reads its attention output)."""
    if p.kind == "resid":
        return p.index
    if p.kind == "attn" and not adapter.parallel:
        return None
    return p.index + 1


def _for_row(p: Patch, row: int, width: int, device: Any) -> Patch:
    mask = p.mask(width, device)
    value = p.value
    if value is not None and value.dim() == 3:
        value = value[row]
    return replace(p, positions=mask[row] if mask.dim() == 2 else mask, value=value)


def compile_plan(
    specs: Sequence[Intervention], adapter: Adapter, clean: Clean, row: int
) -> ResumePlan:
    """The resume plan of ``specs`` applied together to prompt ``row`` of ``clean``.

    Derived from the specs' patches alone: the run resumes at the first boundary the earliest
    patch changes, with that patch (and any other acting at the same boundary) folded into the
    residual built from the clean cache; the remaining patches act inside the run, so each sees
    the stream the earlier ones already changed.
    """
    width = int(clean.resid.shape[2])
    device = clean.resid.device
    patches = [_for_row(p.at(adapter), row, width, device) for spec in specs for p in spec.patches()]
    if not patches:
        return ResumePlan(adapter.n_layers, clean.resid[-1, row], (), first_pos=width)
    changed = torch.zeros(width, dtype=torch.bool, device=device)
    for p in patches:
        changed |= p.positions
    nz = changed.nonzero()
    first_pos = int(nz[0]) if len(nz) else width
    patches.sort(key=lambda p: p.order)  # stable: one point keeps the order given
    first = patches[0].order
    for i, p in enumerate(patches):
        if p.read is None:
            continue
        if _order(*p.read) >= first:
            raise ConfigError(
                f"the patch at {p.kind} {p.index} reads {p.read[0]} {p.read[1]}, which this plan "
                "changes first; a resumed run cannot provide it (apply these interventions with "
                "intervene(...) instead)"
            )
        patches[i] = replace(p, read_value=_clean_point(adapter, clean, *p.read, row))
    entry = _entry(adapter, patches[0])
    start = patches[0].index if entry is None else entry
    resid = clean.resid[start, row]
    in_run: list[Patch] = []
    for p in patches:
        if in_run or _entry(adapter, p) != start:
            in_run.append(p)
            continue
        mask = p.positions
        if p.kind == "resid":
            resid = where(mask, p.new(resid), resid)
        elif p.kind == "block":
            before = clean.resid[p.index, row]
            resid = where(mask, before + p.new(resid - before), resid)
        else:  # an output nothing else in its block reads: h' = h - c + c'
            c = _clean_point(adapter, clean, p.kind, p.index, row)
            resid = where(mask, resid - c + p.new(c), resid)
    return ResumePlan(start, resid, tuple(in_run), first_pos)


# ---------------------------------------------------------------------------- the catalogue
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

    def patches(self) -> list[Patch]:
        return [Patch(self.component, self.layer, self.positions, self.value)]


def _minus(h: Tensor, d: Tensor) -> Tensor:
    return h - d


@dataclass(frozen=True)
class LocalSkip(Intervention):
    """Remove block ``layer``'s own contribution from the final residual only: ``h_L := h_L -
    d_s`` at the positions; later blocks keep their clean inputs (the "direct" effect)."""

    layer: int
    positions: Positions = None

    def patches(self) -> list[Patch]:
        return [Patch("resid", -1, self.positions, fn=_minus, read=("block", self.layer))]


@dataclass(frozen=True)
class ReplaceResidual(Intervention):
    """``h_boundary := value`` at the positions (boundary 0..L; L is the final residual)."""

    boundary: int
    value: Tensor
    positions: Positions = None

    def patches(self) -> list[Patch]:
        return [Patch("resid", self.boundary, self.positions, self.value)]


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
    """Remove only block ``layer``'s direct path to the output at ``positions``."""
    return LocalSkip(layer, positions)


def replace_residual(boundary: int, value: Tensor, positions: Positions = None) -> ReplaceResidual:
    """Overwrite the residual entering block ``boundary`` (``L``: the final residual)."""
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
    patches = [p.at(adapter) for spec in specs for p in spec.patches()]
    with adapter.hooks(patch_hooks(adapter, [(p, None) for p in patches])):
        yield model
