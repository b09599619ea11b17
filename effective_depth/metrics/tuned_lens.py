"""The tuned lens (docs/methods.md §3a; Belrose et al. 2023, "Eliciting Latent Predictions from
Transformers with the Tuned Lens").

The logit lens decodes ``h_l`` as if it were the last residual, ``lens(h_l)``. Earlier residuals
live in a basis the later blocks keep rotating, rescaling and shifting, so the logit lens can
read a layer as "not yet predicting" when the prediction is there in another basis. The tuned
lens learns, per block input ``l``, one affine *translator* and decodes through it:

    tuned(h_l) = lens(A_l h_l + b_l),   A_l, b_l  minimising  E_t KL(p ‖ tuned(h_l))

with the model frozen, ``p = lens(h_L)`` the model's own output, and ``(A_l, b_l)`` starting from
the identity (``A_l = I``, ``b_l = 0``: the logit lens). The translators are trained on the model's
own residuals of *training* text, never of the analysed prompts: the task's train split (or a
prompts file), text the model samples itself from neutral starts (``fit_on=sampled``), or a
plain-text file cut into chunks of its tokens (``fit_on=file:PATH``); the curves are then
exactly the logit lens's (``KL(tuned(h_l) ‖ p)`` and top-k overlap, token-weighted per prompt)
with ``lens`` replaced by ``tuned``.

Training streams: each step runs one clean pass on a few training prompts and fits every layer's
translator on their positions, one layer at a time, so memory stays at one minibatch's residuals
and a few ``positions × vocab`` tensors (never ``layers × positions × vocab``).

Trained translators record the model they were fitted on (``info["fitted_on"]``, saved with
them): a :func:`lens_fingerprint` of the parameters the lens reads (the final norm's and the
unembedding's), its name, backend and dtype. :func:`tuned_lens` refuses translators fitted on a
model with another fingerprint, however well the shapes match.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from ..engine.adapter import Adapter, get_adapter
from ..engine.batch import Batch, BatchLike, measured_mask
from ..errors import ConfigError
from ..progress import tqdm
from .base import check_skip_front, lens_rows
from .costs import MeasurementCost, Workload
from .logit_lens import LogitLensResult, lens_rule, logit_lens, overlap_at_chance
from .options import MetricOptions
from .registry import EstimatorSpec, FitSpec, MetricSpec, register_metric

__all__ = ["TunedLensResult", "Translators", "tuned_lens", "train_tuned_lens", "fit_translators",
           "least_squares_translators", "lens_kl_by_layer", "auto_steps", "heldout_check",
           "unfit_message", "tuned_lens_examples", "lens_fingerprint", "fitted_on",
           "sample_text", "text_file_batch", "text_sequences", "tuned_lens_text",
           "FIT_VERSION", "TOKENS_PER_STEP", "LEARNING_RATE", "RIDGE", "MAX_FIT_POSITIONS"]

log = logging.getLogger(__name__)

#: bumped whenever the training procedure changes: a cached lens of another version is retrained
FIT_VERSION = 2
#: positions (tokens) per KL fine-tuning step
TOKENS_PER_STEP = 1024
#: Adam's learning rate at step 0 of the fine-tuning, decayed linearly to 0 at the last step
LEARNING_RATE = 1e-3
#: the closed-form fit's ridge, relative to the mean second moment of the block input
RIDGE = 1e-2
#: at most this many training positions enter the closed-form fit (whole prompts, seeded order)
MAX_FIT_POSITIONS = 8192
#: share of the training prompts set aside for validation, and at most this many of their positions
VALIDATION_FRACTION = 0.2
VALIDATION_POSITIONS = 128
#: fine-tuning: at most this many steps, and (``tuned_lens.steps`` not given) at most this many
#: lens multiply-adds in all (:func:`auto_steps`)
MAX_STEPS = 250
FINE_TUNE_BUDGET = 2 * 10**11
#: validation every this many steps; stop after this many evaluations without improvement
EVAL_EVERY = 10
PATIENCE = 2
#: elements converted and hashed at a time by :func:`lens_fingerprint`
_HASH_CHUNK = 2**22
#: ``tuned_lens.fit_on``: the task's train split (or ``tuned_lens.data``), text the model samples
#: itself, or a plain-text file (``file:PATH``)
FIT_SOURCES = ("task", "sampled", "file:PATH")
#: the training text of ``fit_on=sampled`` and ``file:``: sequences of this many tokens (at most
#: the model's context), as many as give :data:`MAX_FIT_POSITIONS` fit positions once the
#: validation share is set aside (:func:`text_sequences`)
TEXT_LENGTH = 128
#: ``fit_on=sampled``: the neutral starts, in turn ("" is the tokenizer's BOS token alone), and
#: the sampling temperature
SAMPLE_STARTS = ("", "The", "In", "Once upon a time", "It is")
SAMPLE_TEMPERATURE = 1.0
#: sampled rows generated at a time, every start together (fixed: the same seed gives the same
#: text at any study batch size)
SAMPLE_BATCH = 80


def _lens_parameters(adapter: Adapter) -> list[tuple[str, Tensor]]:
    """The final norm's and the unembedding's floating-point parameters in one layout for both
    backends: matrices first, the unembedding as ``[d_vocab, d_model]`` (the hooked backend's
    ``W_U`` is its transpose), then vectors by name (a bias before a weight), all-zero biases
    left out (the bridge keeps one where the hooked backend has none, or the reverse)."""
    out = []
    for part in ("ln_final", "unembed"):
        module = getattr(adapter.model, part, None)
        if not isinstance(module, torch.nn.Module):
            continue
        state = [(name, t.detach()) for name, t in module.state_dict().items()
                 if torch.is_floating_point(t) and not (t.dim() == 1 and not torch.any(t))]
        for _, t in sorted(state, key=lambda item: (-item[1].dim(), item[0].lower())):
            if part == "unembed" and t.dim() == 2 and not adapter.is_bridge:
                t = t.T
            out.append((f"{part}.{'matrix' if t.dim() == 2 else 'vector'}", t))
    return out


def lens_fingerprint(model: Any) -> str:
    """sha256 of what the lens reads of ``model``: its final norm's and unembedding's parameters
    (shapes and values, in one layout for both backends) and its depth, width and vocabulary.

    The values are hashed as bfloat16 bits, whatever dtype the model holds them in, so a model
    loaded in float32 and in bfloat16 has one fingerprint (float16 rounds some values another
    way and counts as another model). The parameters are read as the loaded model holds them: a
    checkpoint whose weights were processed (TransformerLens folds the final norm into the
    unembedding) or whose backend stores a norm another way (Gemma's ``1 + w``) counts as
    another model — with processing its residual basis differs too. A 49k × 576 unembedding
    takes a fraction of a second."""
    adapter = get_adapter(model)
    cap = getattr(adapter.cfg, "output_logits_soft_cap", None)
    h = hashlib.sha256(f"L={adapter.n_layers} d={adapter.d_model} V={adapter.d_vocab} "
                       f"cap={cap}".encode())
    for name, t in _lens_parameters(adapter):
        h.update(f"|{name}{tuple(t.shape)}".encode())
        rows = t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(1, -1)
        step = max(1, _HASH_CHUNK // max(1, rows.shape[1]))
        for lo in range(0, rows.shape[0], step):
            piece = rows[lo:lo + step].to("cpu", torch.bfloat16).contiguous()
            h.update(piece.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def _model_name(adapter: Adapter) -> str:
    source = getattr(adapter.model, "effective_depth_source", None) or {}
    return str(source.get("name") or getattr(adapter.cfg, "model_name", None)
               or type(adapter.model).__name__)


def fitted_on(model: Any) -> dict[str, Any]:
    """What translators record of the model they are fitted on (``info["fitted_on"]``): its
    name, backend, dtype, shape and :func:`lens_fingerprint` (``lens_sha256``)."""
    adapter = get_adapter(model)
    return {"name": _model_name(adapter), "backend": "bridge" if adapter.is_bridge else "hooked",
            "dtype": str(adapter.dtype).removeprefix("torch."), "n_layers": adapter.n_layers,
            "d_model": adapter.d_model, "d_vocab": adapter.d_vocab,
            "lens_sha256": lens_fingerprint(adapter)}


def _describe(record: dict[str, Any]) -> str:
    return (f"{record.get('name', '?')} ({record.get('backend', '?')}, {record.get('dtype', '?')}, "
            f"lens fingerprint {str(record.get('lens_sha256', '?'))[:12]})")


def _check_fitted_on(model: Any, translators: Translators) -> None:
    """Refuse translators fitted on a model of another :func:`lens_fingerprint`; translators
    saved before fingerprints existed (no ``fitted_on``) are used with a logged warning."""
    info = translators.info
    if "fitted_on" not in info:
        log.warning("the tuned-lens translators carry no record of the model they were fitted "
                    "on (saved before translators recorded it, or built by hand): using them on "
                    "%s unchecked; retrain them to have them checked",
                    _model_name(get_adapter(model)))
        return
    trained = info["fitted_on"]
    if trained is None:  # the identity: the logit lens of any model of its shape
        return
    here = fitted_on(model)
    if trained.get("lens_sha256") != here["lens_sha256"]:
        raise ConfigError(
            f"the tuned-lens translators were fitted on {_describe(trained)}, but are being used "
            f"on {_describe(here)}: another model (its final norm or unembedding differs); "
            "train them on this model")


@dataclass
class Translators:
    """One affine map per block input, ``t_l(h) = A_l h + b_l`` (``weight[l] = A_l``), in float32.

    ``info`` is what training recorded (loss curve, steps, seconds, data): JSON-able.
    """

    weight: Float[Tensor, "layer d_model d_model"]
    bias: Float[Tensor, "layer d_model"]
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        L, d, d2 = self.weight.shape
        if d != d2 or tuple(self.bias.shape) != (L, d):
            raise ValueError(f"translator shapes {tuple(self.weight.shape)} and "
                             f"{tuple(self.bias.shape)} are not [L, d, d] and [L, d]")

    @classmethod
    def identity(cls, n_layers: int, d_model: int, device: Any = "cpu") -> Translators:
        """``A_l = I``, ``b_l = 0``: the tuned lens that *is* the logit lens."""
        eye = torch.eye(d_model, device=device).expand(n_layers, d_model, d_model).clone()
        return cls(eye, torch.zeros(n_layers, d_model, device=device),
                   {"steps": 0, "fitted_on": None})

    @property
    def n_layers(self) -> int:
        return int(self.weight.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.weight.shape[1])

    def __call__(self, layer: int, h: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
        w = self.weight[layer].to(h.device)
        return (h.float() @ w.T + self.bias[layer].to(h.device)).to(h.dtype)

    def tensors(self) -> dict[str, Tensor]:
        return {"weight": self.weight, "bias": self.bias}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor], info: dict[str, Any]) -> Translators:
        return cls(tensors["weight"].float(), tensors["bias"].float(), dict(info))


@dataclass
class TunedLensResult(LogitLensResult):
    """The logit lens's per-prompt KL and overlap sums, read through trained translators.

    ``meta["lens"]`` describes the translators: training steps, final loss, the training data and
    whether the cached translators were reused.
    """

    name: ClassVar[str] = "tuned_lens"


@torch.no_grad()
def tuned_lens(model: Any, batch: BatchLike, translators: Translators, **options: Any) -> TunedLensResult:
    """KL to the output and top-``k`` overlap of the tuned lens at every block input.

    The same computation, with the same ``options`` (``k``, ``skip_front``, ``include_front``,
    ``chunk``, ``batch_size``, ``include_final``, ``progress``), as
    :func:`~effective_depth.metrics.logit_lens.logit_lens`, with each tapped residual passed
    through its translator first (``h_L``, the output, is never translated: with
    ``include_final`` its row is the sanity row KL 0, overlap 1).

    Translators fitted on another model (another :func:`lens_fingerprint`, recorded in their
    ``info["fitted_on"]``) are a :class:`ConfigError` naming both models; translators without a
    record (saved before there were records) are used with a logged warning.
    """
    adapter = get_adapter(model)
    if (translators.n_layers, translators.d_model) != (adapter.n_layers, adapter.d_model):
        raise ConfigError(
            f"the tuned-lens translators are for {translators.n_layers} blocks of width "
            f"{translators.d_model}, the model has {adapter.n_layers} of width {adapter.d_model}; "
            "train them on this model")
    _check_fitted_on(model, translators)
    plain = logit_lens(model, batch, **options, translate=translators, desc="tuned lens")
    return TunedLensResult(plain.kl_sums, plain.overlap_sums, plain.counts,
                     meta={**plain.meta, "lens": _lens_summary(translators.info)})


def _lens_summary(info: dict[str, Any]) -> dict[str, Any]:
    """What ``results.json`` says of the translators. The loss curve and the training time stay
    in the cache file: a resumed run's results must equal an uninterrupted run's."""
    curve = info.get("loss", [])
    return {**{k: v for k, v in info.items() if k not in ("loss", "seconds", "cpu_seconds")},
            "initial_loss": curve[0] if curve else None, "final_loss": curve[-1] if curve else None}


# ---------------------------------------------------------------------------------- training
def _weighted_lens_target(adapter: Adapter, h_final: Tensor) -> Tensor:
    """Per-position weights ``w_t`` of the least-squares fit: ``1 / mean(h_L,t²)`` when the lens is
    invariant to the scale of its input (a final RMSNorm or LayerNorm: only the direction of
    ``h_L`` matters to it, so a position of large norm must not dominate the fit), else 1."""
    x = h_final[: min(8, h_final.shape[0])].float()
    if x.shape[0] and torch.allclose(adapter.lens_log_probs(x), adapter.lens_log_probs(3 * x),
                                     atol=1e-3, rtol=0):
        return 1.0 / h_final.double().pow(2).mean(-1).clamp(min=1e-12)
    return torch.ones(h_final.shape[0], dtype=torch.float64, device=h_final.device)


class _Moments:
    """Weighted sufficient statistics of the affine fits ``A_l x + b_l ≈ y`` (float64): per layer
    ``Σ w x̃ x̃ᵀ`` and ``Σ w x̃ yᵀ`` with ``x̃ = [x, 1]``, and ``Σ w ‖y‖²``."""

    def __init__(self, n_layers: int, d: int, device: Any) -> None:
        self.xx = torch.zeros(n_layers, d + 1, d + 1, dtype=torch.float64, device=device)
        self.xy = torch.zeros(n_layers, d + 1, d, dtype=torch.float64, device=device)
        self.yy = torch.zeros((), dtype=torch.float64, device=device)
        self.n = 0

    def add(self, adapter: Adapter, resid: Float[Tensor, "boundary n d_model"]) -> None:
        y = resid[-1].double()
        w = _weighted_lens_target(adapter, resid[-1])
        ones = torch.ones(y.shape[0], 1, dtype=torch.float64, device=y.device)
        wy = w[:, None] * y
        self.yy += (wy * y).sum()
        for layer in range(self.xx.shape[0]):
            x = torch.cat([resid[layer].double(), ones], dim=1)
            self.xx[layer] += (w[:, None] * x).T @ x
            self.xy[layer] += x.T @ wy
        self.n += int(y.shape[0])


def least_squares_translators(moments: _Moments, ridge: float) -> tuple[Translators, dict[str, Any]]:
    """The closed-form start: per layer, ``(A_l, b_l)`` minimising
    ``Σ_t w_t ‖A_l h_l,t + b_l − h_L,t‖² + λ_l ‖A_l − c_l I‖²_F`` — ridge regression of the final
    residual on the block input, shrunk towards ``c_l I`` (``c_l`` the best scalar multiple of the
    identity, i.e. the logit lens up to a scale the final norm removes), ``λ_l = ridge ×`` the mean
    diagonal of ``Σ w x xᵀ``. Solved in float64. Returns the translators and the fit's weighted
    mean squared errors (of ``c_l I`` and of the fit, mean over layers)."""
    L, d1, d = moments.xx.shape[0], moments.xx.shape[1], moments.xy.shape[2]
    weight = torch.empty(L, d, d, dtype=torch.float64)
    bias = torch.empty(L, d, dtype=torch.float64)
    penalty = torch.ones(d1, dtype=torch.float64, device=moments.xx.device)
    penalty[-1] = 0  # the bias is not shrunk
    eye = torch.eye(d, dtype=torch.float64, device=moments.xx.device)
    mse_anchor, mse_fit = [], []
    total = max(float(moments.xx[0, -1, -1]), 1e-300)  # Σ w
    for layer in range(L):
        xx, xy = moments.xx[layer], moments.xy[layer]
        c = float(torch.diagonal(xy[:d]).sum() / torch.diagonal(xx[:d, :d]).sum().clamp(min=1e-300))
        c = max(c, 1e-6)
        lam = ridge * float(torch.diagonal(xx[:d, :d]).mean())
        lam = max(lam, 1e-10 * float(torch.diagonal(xx[:d, :d]).mean()))  # keeps it solvable
        anchor = torch.cat([c * eye, torch.zeros(1, d, dtype=torch.float64, device=xx.device)])
        lhs = xx + torch.diag(lam * penalty)
        rhs = xy + lam * penalty[:, None] * anchor
        W = torch.linalg.solve(lhs, rhs)  # [d+1, d]: x̃ᵀ W = A x + b

        def mse(m: Tensor, xx: Tensor = xx, xy: Tensor = xy) -> float:
            return float((torch.einsum("ij,ik,kj->", m, xx, m) - 2 * (m * xy).sum()
                          + moments.yy) / total)

        mse_anchor.append(mse(anchor))
        mse_fit.append(mse(W))
        weight[layer], bias[layer] = W[:d].T.cpu(), W[d].cpu()
    losses = {"anchor": sum(mse_anchor) / L, "fit": sum(mse_fit) / L}
    return Translators(weight.float(), bias.float(), {}), losses


@torch.no_grad()
def lens_kl_by_layer(adapter: Adapter, resid: Float[Tensor, "boundary n d_model"],
                     translators: Translators | None, chunk: int | None = None) -> list[float]:
    """Mean ``KL(lens(t_l(h_l)) ‖ lens(h_L))`` per block input (the curves' direction, §3);
    without translators, the logit lens's."""
    L, n = resid.shape[0] - 1, resid.shape[1]
    chunk = lens_rows(adapter.d_vocab) if chunk is None else chunk
    sums = [0.0] * L
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        log_p = adapter.lens_log_probs(resid[-1, sl])
        for layer in range(L):
            h = resid[layer, sl]
            if translators is not None:
                h = translators(layer, h)
            log_q = adapter.lens_log_probs(h)
            sums[layer] += float((log_q.exp() * (log_q - log_p)).sum())
    return [s / max(n, 1) for s in sums]


def auto_steps(n_layers: int, d_model: int, d_vocab: int, positions: int) -> int:
    """KL fine-tuning steps when ``tuned_lens.steps`` is not given: at most
    :data:`MAX_STEPS`, and no more than keep the fine-tuning's lens work (forward and backward,
    ``3 × L × positions × d_model × d_vocab`` multiply-adds a step) within :data:`FINE_TUNE_BUDGET`.
    Zero for real vocabularies at 1024 positions a step: the closed-form fit alone."""
    per_step = 3 * n_layers * max(positions, 1) * d_model * d_vocab
    return int(min(MAX_STEPS, FINE_TUNE_BUDGET // per_step))


class _BestPerLayer:
    """Early stopping on validation residuals: each layer keeps its best translator so far (the
    start included) by validation KL; ``stale`` counts the evaluations in a row that improved no
    layer."""

    def __init__(self, adapter: Adapter, validation: Tensor, weight: Tensor, bias: Tensor) -> None:
        self.adapter, self.validation = adapter, validation
        self.weight, self.bias = weight.detach().clone(), bias.detach().clone()
        self.kl = lens_kl_by_layer(adapter, validation, Translators(self.weight, self.bias))
        self.curve = [round(sum(self.kl) / len(self.kl), 6)]
        self.stale = 0

    def update(self, weight: Tensor, bias: Tensor) -> None:
        now = lens_kl_by_layer(self.adapter, self.validation,
                               Translators(weight.detach(), bias.detach()))
        improved = False
        for layer, kl in enumerate(now):
            if kl < self.kl[layer] * (1 - 1e-4):
                self.kl[layer] = kl
                self.weight[layer] = weight[layer].detach().clone()
                self.bias[layer] = bias[layer].detach().clone()
                improved = True
        self.curve.append(round(sum(now) / len(now), 6))
        self.stale = 0 if improved else self.stale + 1


def _kl_backward(adapter: Adapter, resid: Tensor, weight: Tensor, bias: Tensor,
                 budget: int) -> float:
    """One step's loss, ``Σ_l KL(p ‖ lens(A_l h_l + b_l))`` over the position mean, backpropagated
    (divided by ``L``) a group of layers at a time, the group as large as ``budget`` bytes of
    ``layers × n × vocab`` log-probabilities allow; returns the mean over layers."""
    L, n = weight.shape[0], resid.shape[1]
    with torch.no_grad():
        log_p = adapter.lens_log_probs(resid[-1])  # [n, V]
        p = log_p.exp()
    group = max(1, budget // max(1, 4 * n * log_p.shape[-1]))
    total = torch.zeros((), device=weight.device)
    for lo in range(0, L, group):
        layers = slice(lo, min(lo + group, L))
        h = resid[layers].float()  # [g, n, d]
        t = torch.baddbmm(bias[layers, None, :], h, weight[layers].transpose(1, 2))
        log_q = adapter.lens_log_probs(t.to(resid.dtype))  # [g, n, V]
        kl = (p * (log_p - log_q)).sum(-1).mean(-1).sum()
        (kl / L).backward()
        total += kl.detach()
    return float(total) / L


def fit_translators(
    adapter: Adapter,
    draw: Callable[[torch.Generator], Float[Tensor, "boundary n d_model"]],
    *,
    steps: int = MAX_STEPS,
    lr: float = LEARNING_RATE,
    seed: int = 0,
    start: Translators | None = None,
    validation: Float[Tensor, "boundary n d_model"] | None = None,
    eval_every: int = EVAL_EVERY,
    patience: int = PATIENCE,
    progress: bool = False,
    budget: int = 64 * 2**20,
) -> Translators:
    """KL fine-tuning: fit each block input's translator to ``min KL(p ‖ lens(A_l h_l + b_l))``.

    ``draw(generator)`` returns one minibatch of residuals ``h_0..h_L`` at ``n`` positions; ``p``
    is the lens of its ``h_L`` (the model's output). The translators start at ``start`` (default
    the identity: the logit lens); Adam, learning rate ``lr`` decayed linearly to 0 over
    ``steps``. The model is frozen. The layers share no parameters, so their losses are summed
    and backpropagated a group of layers at a time, the group as large as ``budget`` bytes of
    ``layers × n × vocab`` log-probabilities allow (one layer at a time for real vocabularies).
    The recorded loss of a step is the mean over layers of the position-mean KL, before that
    step's update.

    With ``validation`` residuals (positions not trained on), every ``eval_every`` steps each
    layer's validation KL (the curves' direction) is measured; each layer keeps its best
    translator so far (the start included), and training stops once no layer has improved for
    ``patience`` evaluations in a row (``info["stopped"]``: ``"converged"`` or ``"max_steps"``).
    """
    if steps < 0:
        raise ConfigError(f"tuned-lens steps must be >= 0, got {steps}")
    init = start if start is not None else Translators.identity(adapter.n_layers, adapter.d_model)
    weight = init.weight.to(adapter.device).clone().requires_grad_(True)
    bias = init.bias.to(adapter.device).clone().requires_grad_(True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    best = None if validation is None else _BestPerLayer(adapter, validation, weight, bias)
    losses: list[float] = []
    stopped = "max_steps" if steps else "no_steps"
    t0, cpu0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=steps, desc="tuned lens: fine-tuning", disable=not progress)
    with adapter.grad_enabled_inputs():
        for step in range(steps):
            opt.zero_grad(set_to_none=True)
            losses.append(_kl_backward(adapter, draw(gen).detach(), weight, bias, budget))
            opt.step()
            sched.step()
            bar.update(1)
            if best is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
                best.update(weight, bias)
                if best.stale >= patience:
                    stopped = "converged"
                    break
    bar.close()
    w, b = (weight.detach(), bias.detach()) if best is None else (best.weight, best.bias)
    info = {"steps": len(losses), "max_steps": steps, "lr": lr, "stopped": stopped,
            "loss": [round(x, 6) for x in losses],
            "validation_curve": [] if best is None else best.curve,
            "fitted_on": fitted_on(adapter.model),
            "seconds": round(time.perf_counter() - t0, 3),
            "cpu_seconds": round(time.process_time() - cpu0, 3)}
    return Translators(w.cpu(), b.cpu(), info)


def _split_rows(n: int, seed: int) -> tuple[list[int], list[int]]:
    """Training prompts for the fit and for validation (every ``1/VALIDATION_FRACTION``-th of a
    seeded permutation, at least one when there are two or more prompts)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = 0 if n < 2 else max(1, round(n * VALIDATION_FRACTION))
    return sorted(order[n_val:]), sorted(order[:n_val])


def _take_until(rows: Sequence[int], positions: Sequence[int], limit: int) -> tuple[list[int], int]:
    """``rows`` in order while their positions so far are below ``limit``, and those positions."""
    chosen, total = [], 0
    for row in rows:
        if total >= limit:
            break
        chosen.append(row)
        total += int(positions[row])
    return chosen, total


def _choose_prompts(n: int, per_prompt: Sequence[int], seed: int, max_positions: int
                    ) -> tuple[list[int], list[int], int]:
    """Fit prompts (a seeded order until ``max_positions`` positions), validation prompts (enough
    for a spread of :data:`VALIDATION_POSITIONS` positions) and the fit's positions."""
    fit_rows, val_rows = _split_rows(n, seed)
    order = torch.randperm(len(fit_rows), generator=torch.Generator().manual_seed(seed + 1))
    chosen, n_fit = _take_until([fit_rows[i] for i in order.tolist()], per_prompt, max_positions)
    val_rows, _ = _take_until(val_rows, per_prompt, 4 * VALIDATION_POSITIONS)
    return sorted(chosen), val_rows, n_fit


def _identity_where_better(start: Translators, logit_kl: list[float], ls_kl: list[float]
                           ) -> list[int]:
    """Give back the identity to every layer whose closed-form translator has no lower
    validation KL than the logit lens (``ls_kl`` updated); those layers."""
    layers = [layer for layer in range(len(ls_kl)) if not ls_kl[layer] < logit_kl[layer]]
    ident = Translators.identity(start.n_layers, start.d_model)
    for layer in layers:
        start.weight[layer], start.bias[layer] = ident.weight[layer], ident.bias[layer]
        ls_kl[layer] = logit_kl[layer]
    return layers


def train_tuned_lens(
    model: Any,
    batch: Batch,
    *,
    steps: int | None = None,
    ridge: float = RIDGE,
    lr: float = LEARNING_RATE,
    tokens_per_step: int = TOKENS_PER_STEP,
    max_positions: int = MAX_FIT_POSITIONS,
    skip_front: int = 1,
    include_front: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
    budget: int | None = None,
) -> Translators:
    """Fit the translators on the model's own residuals of ``batch`` (training examples), at
    every position the lens will measure (``skip_front``/``include_front`` as in the measurement).

    1. A seeded fifth of the prompts is set aside for validation (at most
       :data:`VALIDATION_POSITIONS` positions of them); the rest are the fit prompts, taken in a
       seeded order until :data:`MAX_FIT_POSITIONS` positions (``max_positions``).
    2. **Closed form**: one clean pass over the fit prompts accumulates the weighted moments, and
       :func:`least_squares_translators` solves the ridge regression of ``h_L`` on each ``h_l``.
    3. **Per-layer choice**: a layer whose closed-form translator has a higher validation KL than
       the identity keeps the identity (``info["identity_layers"]``).
    4. **KL fine-tuning** (:func:`fit_translators`) from there, at most ``steps`` steps of
       ``tokens_per_step`` positions (``None``: :func:`auto_steps`), stopped when the validation
       KL stops falling. The fit residuals stay in memory when they fit in ``budget`` bytes (the
       sweep's budget by default); otherwise each step runs a clean pass on as many fit prompts
       as give ``tokens_per_step`` positions on average.

    ``info`` records the validation KL per block input of the logit lens and of the result
    (``validation``), the closed-form fit's loss (``ls_loss``: weighted MSE of ``c_l I`` and of
    the fit) and whether the training loss fell (``loss_fell``).
    """
    from ..engine.sweep import default_memory_budget
    from .base import prompt_chunks

    check_skip_front(skip_front)
    TunedLensOptions(steps=steps, ridge=ridge)  # the options' own checks
    if batch.size == 0:
        raise ConfigError("the tuned lens needs at least one training example")
    adapter = get_adapter(model)
    L, d = adapter.n_layers, adapter.d_model
    per_prompt = measured_mask(batch.lengths, batch.width, skip_front, include_front).sum(1).tolist()
    if sum(per_prompt) == 0:
        raise ConfigError(f"the tuned lens's {batch.size} training examples have no measured "
                          f"position (skip_front={skip_front}, include_front={include_front})")
    t0, cpu0 = time.perf_counter(), time.process_time()
    fit_rows, val_rows, n_fit = _choose_prompts(batch.size, per_prompt, seed, max_positions)
    fit = batch.select(fit_rows)

    def residuals(sub: Batch) -> Tensor:
        sub_mask = measured_mask(sub.lengths, sub.width, skip_front, include_front)
        clean = adapter.clean(sub.tokens)
        return clean.resid[:, sub_mask.to(clean.resid.device)]  # [L+1, positions, d_model]

    n_steps = auto_steps(L, d, adapter.d_vocab, min(tokens_per_step, n_fit)) if steps is None \
        else steps
    budget = default_memory_budget(adapter.device) if budget is None else budget
    keep = n_steps > 0 and (L + 1) * n_fit * d * (torch.finfo(adapter.dtype).bits // 8) <= budget
    # 2. closed form, keeping the fit residuals for the fine-tuning when they fit the budget
    moments, kept = _Moments(L, d, adapter.device), []
    bar = tqdm(total=fit.size, desc="tuned lens: least squares", disable=not progress)
    for rows, sub in prompt_chunks(fit, batch_size):
        resid = residuals(sub)
        moments.add(adapter, resid)
        kept += [resid] if keep else []
        bar.update(len(rows))
    bar.close()
    start, ls_loss = least_squares_translators(moments, ridge)
    del moments
    # 3. validation residuals (held-out training prompts, or with one prompt the fit ones)
    val = residuals(fit) if not val_rows else torch.cat(
        [residuals(sub) for _, sub in prompt_chunks(batch.select(val_rows), batch_size)], dim=1)
    if val.shape[1] > VALIDATION_POSITIONS:
        pick = torch.randperm(val.shape[1], generator=torch.Generator().manual_seed(seed + 2))
        val = val[:, pick[:VALIDATION_POSITIONS].sort().values.to(val.device)]
    logit_kl = lens_kl_by_layer(adapter, val, None)
    ls_kl = lens_kl_by_layer(adapter, val, start)
    identity_layers = _identity_where_better(start, logit_kl, ls_kl)
    # 4. KL fine-tuning from the closed form
    translators, tuned = start, {"steps": 0, "max_steps": n_steps, "stopped": "no_steps",
                                 "loss": [], "validation_curve": []}
    if n_steps > 0:
        translators = fit_translators(adapter, _draws(fit, kept, residuals, tokens_per_step, n_fit),
                                      steps=n_steps, lr=lr, seed=seed, start=start,
                                      validation=val, progress=progress)
        tuned = translators.info
    kept.clear()
    final_kl = lens_kl_by_layer(adapter, val, translators) if n_steps > 0 else ls_kl
    loss = tuned["loss"]
    translators.info = {
        **tuned, "method": "least squares + KL fine-tuning" if loss else "least squares",
        "ridge": ridge, "ls_loss": {k: round(v, 6) for k, v in ls_loss.items()},
        "loss_fell": bool(ls_loss["fit"] < ls_loss["anchor"] and (not loss or loss[-1] < loss[0])),
        "identity_layers": identity_layers,
        "validation": {"n_prompts": len(val_rows), "positions": int(val.shape[1]),
                       "logit_kl": [round(x, 6) for x in logit_kl],
                       "least_squares_kl": [round(x, 6) for x in ls_kl],
                       "tuned_kl": [round(x, 6) for x in final_kl]},
        "tokens_per_step": min(tokens_per_step, n_fit), "n_train": batch.size,
        "n_fit": fit.size, "fit_positions": n_fit, "train_positions": int(sum(per_prompt)),
        "cached_residuals": keep, "skip_front": skip_front, "include_front": include_front,
        "fitted_on": tuned.get("fitted_on") or fitted_on(model),
        "seconds": round(time.perf_counter() - t0, 3),
        "cpu_seconds": round(time.process_time() - cpu0, 3),
    }
    return translators


def _draws(fit: Batch, kept: list[Tensor], residuals: Callable[[Batch], Tensor],
           tokens_per_step: int, n_fit: int) -> Callable[[torch.Generator], Tensor]:
    """The fine-tuning's minibatches: ``tokens_per_step`` of the kept fit residuals, or (none
    kept) a clean pass on as many fit prompts as give that many positions on average."""
    if kept:
        store = torch.cat(kept, dim=1)
        take = _permuted(store.shape[1], min(tokens_per_step, store.shape[1]))
        return lambda gen: store[:, take(gen).to(store.device)]
    size = min(fit.size, max(1, round(tokens_per_step / max(n_fit / fit.size, 1))))
    take = _permuted(fit.size, size)
    return lambda gen: residuals(fit.select(take(gen).tolist()))


def _permuted(n: int, size: int) -> Callable[[torch.Generator], Tensor]:
    """Draws of ``size`` indices of ``0..n-1`` without replacement, a fresh permutation per epoch."""
    order = torch.empty(0, dtype=torch.long)

    def take(gen: torch.Generator) -> Tensor:
        nonlocal order
        if len(order) < size:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        out, order = order[:size], order[size:]
        return out

    return take


# ---------------------------------------------------------------------------------- training text
def text_sequences(length: int) -> int:
    """How many training sequences of ``length`` tokens ``fit_on=sampled`` and ``file:`` take: as
    many as give :data:`MAX_FIT_POSITIONS` fit positions once the validation share
    (:data:`VALIDATION_FRACTION`) is set aside — 80 of 128 tokens, the task fit's 8,192."""
    total = round(MAX_FIT_POSITIONS / (1 - VALIDATION_FRACTION))
    return -(-total // max(1, length))


def _text_length(adapter: Adapter) -> int:
    return int(min(TEXT_LENGTH, adapter.cfg.n_ctx))


def _rows_batch(tokenizer: Any, rows: Sequence[Sequence[int]], device: Any) -> Batch:
    """The training batch of token rows of one width (no answers: every position is text)."""
    from ..models.evaluate import decode_ids

    tokens = torch.tensor([list(r) for r in rows], dtype=torch.long)
    lengths = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)
    str_tokens = [[decode_ids(tokenizer, [i]) for i in row] for row in tokens.tolist()]
    return Batch(tokens.to(device), lengths, lengths.clone(), str_tokens)


def _start_ids(tokenizer: Any, starts: Sequence[str], length: int) -> list[tuple[str, list[int]]]:
    """The starts the tokenizer reads, with their ids: ``""`` is its BOS token alone (its EOS
    when it has no BOS, as GPT-2 separates documents; left out when it has neither); a text is
    read as a prompt is (``encode_example``: the BOS in front when the tokenizer adds one) and
    left out when its tokens do not stand for it (the zoo's 24-token vocabulary)."""
    from ..models.evaluate import encode_example
    from ..models.token_text import check_tokenization
    from ..tasks.base import Example

    out = []
    for text in starts:
        if text == "":
            bos = getattr(tokenizer, "bos_token_id", None)
            bos = getattr(tokenizer, "eos_token_id", None) if bos is None else bos
            ids = [] if bos is None else [int(bos)]
        elif check_tokenization(tokenizer, text).kind == "lossy":
            continue
        else:
            ids = encode_example(tokenizer, Example(text, ""))[0]
        if 0 < len(ids) < length:
            out.append((text, ids))
    return out


def _kv_cache_possible(adapter: Adapter) -> bool:
    return not adapter.is_bridge and adapter.cfg.positional_embedding_type in ("rotary", "standard")


def _sample_rows(adapter: Adapter, starts: Sequence[Sequence[int]], u: Tensor, length: int,
                 temperature: float, vocab: int, kv_cache: bool) -> Tensor:
    """Rows that begin with ``starts[r]``, continued to ``length`` tokens by sampling: token ``t``
    of row ``r`` is the inverse CDF of the model's distribution at ``u[r, t]`` (float64, on CPU).
    All rows step together from their shortest start: a row whose start is longer reads its own
    next start token instead of a sample (causal, so exactly as if it had been read first)."""
    model = adapter.model
    n_rows, first = len(starts), min(len(s) for s in starts)
    seq = torch.empty(n_rows, length, dtype=torch.long)
    seq[:, :first] = torch.tensor([list(s[:first]) for s in starts], dtype=torch.long)
    forced = [[(r, int(s[t])) for r, s in enumerate(starts) if t < len(s)] for t in range(length)]
    cache = None
    if kv_cache:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        cache = TransformerLensKeyValueCache.init_cache(adapter.cfg, adapter.device, n_rows)
    new = seq[:, :first]
    with adapter.compute():
        for t in range(first, length):
            if cache is not None:  # only the new tokens run through the blocks
                x = adapter.to_device(new)
                logits = model(x, return_type="logits", padding_side="right",
                               past_kv_cache=cache, attention_mask=torch.ones_like(x))
            elif adapter.is_bridge:
                logits = model(adapter.to_device(seq[:, :t]), return_type="logits")
            else:
                logits = model(adapter.to_device(seq[:, :t]), return_type="logits",
                               padding_side="right")
            last = logits[:, -1, :vocab].double().cpu() / temperature
            cdf = torch.softmax(last, dim=-1).cumsum(-1)
            draw = (u[:, t] * cdf[:, -1]).unsqueeze(1).contiguous()
            seq[:, t] = torch.searchsorted(cdf, draw).clamp(max=vocab - 1)[:, 0]
            for r, token in forced[t]:
                seq[r, t] = token
            new = seq[:, t:t + 1]
    return seq


@torch.no_grad()
def sample_text(
    model: Any,
    *,
    seed: int = 0,
    sequences: int | None = None,
    length: int | None = None,
    starts: Sequence[str] = SAMPLE_STARTS,
    temperature: float = SAMPLE_TEMPERATURE,
    kv_cache: bool | None = None,
    progress: bool = False,
) -> tuple[Batch, dict[str, Any]]:
    """Text the model writes itself, to fit the tuned lens on (``fit_on=sampled``).

    ``sequences`` rows (default :func:`text_sequences`) of exactly ``length`` tokens (default
    ``min(TEXT_LENGTH, n_ctx)``): row ``r`` begins with the ``r mod n``-th of the ``n`` starts the
    tokenizer reads (:func:`_start_ids`), and every further token is sampled from the model's
    next-token distribution at ``temperature`` over every id the tokenizer spells (no top-k, no
    top-p); an EOS is a token like another and the text goes on after it. Deterministic given
    ``seed``: row ``r``'s token ``t`` is the inverse CDF at ``u[r, t]``, the uniforms drawn at once
    from one seeded generator, whatever the device (the logits aside). Rows run
    :data:`SAMPLE_BATCH` at a time, all starts together (a row whose start is longer reads it
    while the others sample); with the KV cache (a HookedTransformer with rotary or learned
    positions; ``kv_cache=None``: whenever possible) each step runs only the new token through the
    blocks, otherwise the whole prefix again. Returns the batch and what it is (``info``).
    """
    adapter = get_adapter(model)
    tokenizer = adapter.model.tokenizer
    length = _text_length(adapter) if length is None else int(length)
    sequences = text_sequences(length) if sequences is None else int(sequences)
    found = _start_ids(tokenizer, starts, length)
    if not found:
        raise ConfigError(
            f"tuned_lens.fit_on=sampled: the tokenizer of {_model_name(adapter)} reads none of "
            f"the starts {list(starts)} (no BOS or EOS token, no text it spells); fit on a text "
            "file with tuned_lens.fit_on=file:PATH")
    use_cache = _kv_cache_possible(adapter) if kv_cache is None else bool(kv_cache)
    vocab = min(adapter.d_vocab, len(tokenizer))  # ids past the tokenizer's are padding
    u = torch.rand(sequences, length, generator=torch.Generator().manual_seed(seed),
                   dtype=torch.float64)
    tokens = torch.empty(sequences, length, dtype=torch.long)
    t0 = time.perf_counter()
    bar = tqdm(total=sequences, desc="tuned lens: sampling text", disable=not progress)
    for lo in range(0, sequences, SAMPLE_BATCH):
        rows = range(lo, min(lo + SAMPLE_BATCH, sequences))
        tokens[lo:rows.stop] = _sample_rows(adapter, [found[r % len(found)][1] for r in rows],
                                            u[lo:rows.stop], length, temperature, vocab,
                                            use_cache)
        bar.update(len(rows))
    bar.close()
    from ..models.evaluate import decode_ids

    info = {"fit_on": "sampled", "source": "sampled", "seed": seed, "temperature": temperature,
            "sequences": sequences, "tokens_per_sequence": length,
            "positions": sequences * length, "starts": [text for text, _ in found],
            "start_tokens": [ids for _, ids in found], "kv_cache": use_cache,
            "first_sequence": decode_ids(tokenizer, tokens[0].tolist())}
    # the time is logged, not recorded: a resumed run's results equal an uninterrupted run's
    log.info("tuned lens: sampled %d sequences of %d tokens in %.1f s", sequences, length,
             time.perf_counter() - t0)
    return _rows_batch(tokenizer, tokens.tolist(), adapter.device), info


def _read_text_file(path: str) -> tuple[bytes, str]:
    """The bytes of ``fit_on=file:PATH`` and their sha256; a missing or unreadable file is a
    :class:`ConfigError` naming the path."""
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"tuned_lens.fit_on=file:{path}: no such file ({p.resolve()})")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"tuned_lens.fit_on=file:{path}: cannot read it ({exc})") from None
    return raw, hashlib.sha256(raw).hexdigest()


def text_file_batch(model: Any, path: str, *, sequences: int | None = None,
                    length: int | None = None) -> tuple[Batch, dict[str, Any]]:
    """A plain-text file (UTF-8) cut into training sequences (``fit_on=file:PATH``).

    The text is tokenized whole, without special tokens; its first tokens are cut into
    ``sequences`` consecutive chunks (default :func:`text_sequences`), each with the special tokens
    the tokenizer puts in front of any text (its BOS, when it adds one) and ``length`` tokens in
    all (default ``min(TEXT_LENGTH, n_ctx)``); the rest of the file is not read. A file with fewer
    tokens is a :class:`ConfigError` saying how many it needs."""
    from ..models.evaluate import special_prefix

    adapter = get_adapter(model)
    tokenizer = adapter.model.tokenizer
    raw, digest = _read_text_file(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"tuned_lens.fit_on=file:{path} is not UTF-8 text ({exc})") from None
    length = _text_length(adapter) if length is None else int(length)
    sequences = text_sequences(length) if sequences is None else int(sequences)
    head = text[:256]
    prefix = special_prefix(tokenizer, head, tokenizer(head, add_special_tokens=False)["input_ids"])
    per = length - len(prefix)
    need = sequences * per
    # enough characters for `need` tokens of any tokenizer (fewer than 64 characters a token)
    ids = tokenizer(text[:64 * need], add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < need:
        per_char = len(ids) / max(1, len(text))
        raise ConfigError(
            f"tuned_lens.fit_on=file:{path} holds {len(ids)} tokens of {_model_name(adapter)}'s "
            f"tokenizer ({len(text)} characters); the fit needs at least {need} ({sequences} "
            f"chunks of {per} tokens, about {round(need / max(per_char, 1e-9))} characters of "
            "such text): give a longer file")
    rows = [prefix + list(ids[i * per:(i + 1) * per]) for i in range(sequences)]
    info = {"fit_on": "file", "source": "text_file", "path": str(path), "sha256": digest,
            "bytes": len(raw), "sequences": sequences, "tokens_per_sequence": length,
            "positions": sequences * length, "file_tokens_used": need}
    return _rows_batch(tokenizer, rows, adapter.device), info


# ---------------------------------------------------------------------------------- study hooks
@dataclass(frozen=True)
class TunedLensOptions(MetricOptions):
    """The tuned lens's options (``--set tuned_lens.steps=500``); its top-k is the logit lens's
    ``logit_lens.k``."""

    steps: int | None = field(default=None, metadata={
        "help": "fine-tuning steps after the closed-form fit; 0: the closed-form fit alone; "
                "none: as many as the fine-tuning budget allows"})
    ridge: float = field(default=RIDGE, metadata={"help": "ridge of the closed-form fit"})
    examples: int = field(default=1000, metadata={"help": "training examples drawn"})
    data: str | None = field(default=None, metadata={
        "help": "a prompts file (.txt/.jsonl) to train on; none: the task's train split"})
    fit_on: str = field(default="task", metadata={
        "help": "the text the translators are fitted on: task (the task's train split, or "
                "tuned_lens.data), sampled (text the model samples itself from neutral starts, "
                "seeded by seed), file:PATH (a plain-text file cut into chunks of its tokens)"})

    def validate(self) -> None:
        self.require_positive("examples")
        kind, _ = self.source
        if kind != "task" and self.data:
            raise ConfigError(f"{self.qualified('data')} is a prompts file read with "
                              f"{self.qualified('fit_on')}=task; with fit_on={self.fit_on} leave "
                              "it unset")
        if self.steps is not None and self.steps < 0:
            raise ConfigError(f"{self.qualified('steps')} must be >= 0 (0: the closed-form fit "
                              f"alone; unset: as many as the fine-tuning budget allows), got "
                              f"{self.steps}")
        if self.ridge < 0:
            raise ConfigError(f"{self.qualified('ridge')} must be >= 0, got {self.ridge}")

    @property
    def source(self) -> tuple[str, str | None]:
        """``fit_on`` read: ``("task", None)``, ``("sampled", None)`` or ``("file", PATH)``."""
        if self.fit_on in ("task", "sampled"):
            return self.fit_on, None
        if self.fit_on.startswith("file:") and self.fit_on[len("file:"):].strip():
            return "file", self.fit_on[len("file:"):]
        raise ConfigError(f"{self.qualified('fit_on')} must be one of {', '.join(FIT_SOURCES)}, "
                          f"got {self.fit_on!r}")


def tuned_lens_examples(task: Any, examples: Sequence[Any], config: Any) -> tuple[list[Any], dict[str, Any]]:
    """The training examples of ``fit_on=task``: the prompts file ``tuned_lens.data`` when given,
    else the task's ``train`` split (tasks with a train/test ``split`` parameter); anything else is
    an error that says what to give. ``fit_on=sampled`` and ``file:PATH`` give no examples (the
    text is made once the model is loaded: :func:`tuned_lens_text`), only what it will be; a
    missing file is an error naming it."""
    from ..tasks import get_task

    opts = config.options[TunedLensResult.name]
    kind, path = opts.source
    if kind == "sampled":
        return [], {"fit_on": "sampled", "source": "sampled", "seed": config.seed}
    if kind == "file":
        assert path is not None
        raw, digest = _read_text_file(path)
        return [], {"fit_on": "file", "source": "text_file", "path": path, "sha256": digest}
    n = opts.examples
    if opts.data:
        source = get_task("prompts", path=opts.data)
        out = source.examples(n)
        return out, {"fit_on": "task", "source": "file", "path": str(opts.data), "n": len(out)}
    split = type(task).params.get("split")
    if split is None or not split.choices or "train" not in split.choices:
        raise ConfigError(
            f"the tuned lens trains on held-out examples, and task {task.name!r} has no train "
            "split; give a prompts file of training text with --set tuned_lens.data=FILE "
            "(.txt or .jsonl), fit it on text the model samples itself (--set "
            "tuned_lens.fit_on=sampled) or on a text file (--set tuned_lens.fit_on=file:PATH), "
            "or leave tuned_lens out of --metrics")
    params = {**task.values, "split": "train"}
    out = type(task)(**params).examples(n)
    return out, {"fit_on": "task", "source": "task", "task": task.name, "params": params,
                 "n": len(out)}


def tuned_lens_text(model: Any, info: dict[str, Any], config: Any,
                    progress: bool = False) -> tuple[Batch, dict[str, Any]]:
    """The training batch of ``fit_on=sampled`` (:func:`sample_text`, seeded by the study's
    ``seed``) or ``file:PATH`` (:func:`text_file_batch`), made with the loaded model, and ``info``
    completed with what it is (sequences, tokens, starts, the file's sha256, ...)."""
    kind, path = config.options[TunedLensResult.name].source
    if kind == "sampled":
        batch, more = sample_text(model, seed=config.seed, progress=progress)
    elif kind == "file":
        assert path is not None
        batch, more = text_file_batch(model, path)
    else:
        raise ConfigError(f"tuned_lens.fit_on={kind} fits on examples, not on the model's text")
    return batch, {**info, **more}


def _settings(config: Any) -> dict[str, Any]:
    """What the cached translators depend on besides the model and the training token ids: the
    fit's settings and its text's source (``fit_on``; a file's sha256, the sampling recipe)."""
    opts = config.options[TunedLensResult.name]
    kind, path = opts.source
    source: dict[str, Any] = {"kind": kind}
    if kind == "file":
        assert path is not None
        source["sha256"] = _read_text_file(path)[1]
    if kind != "task":
        source["length"] = TEXT_LENGTH
    if kind == "sampled":
        source.update(starts=list(SAMPLE_STARTS), temperature=SAMPLE_TEMPERATURE)
    return {"version": FIT_VERSION, "steps": opts.steps, "ridge": opts.ridge,
            "lr": LEARNING_RATE, "tokens_per_step": TOKENS_PER_STEP,
            "max_positions": MAX_FIT_POSITIONS, "seed": config.seed,
            "skip_front": config.skip_front, "include_front": config.include_front,
            "fit_on": source}


def _fit(ctx: Any) -> Translators:
    cfg = ctx.config
    return train_tuned_lens(ctx.model, ctx.train, steps=ctx.options.steps,
                            ridge=ctx.options.ridge, skip_front=cfg.skip_front,
                            include_front=cfg.include_front, seed=cfg.seed,
                            batch_size=cfg.batch_size, progress=ctx.progress)


def heldout_check(tuned: TunedLensResult, plain: LogitLensResult, info: dict[str, Any]) -> dict[str, Any]:
    """The tuned lens against the logit lens on the analysed prompts (never trained on: the study
    warns with ``train_overlap`` otherwise), per block input: ``tuned_kl`` and ``logit_kl``, the
    blocks where the tuned lens is worse, and whether the training loss fell. ``unfit`` when
    either fails."""
    L = int(tuned.meta["n_layers"])
    t_kl, l_kl = tuned.kl[:L].tolist(), plain.kl[:L].tolist()
    worse = [layer for layer in range(L) if t_kl[layer] > l_kl[layer] * (1 + 1e-6) + 1e-9]
    fell = bool(info.get("loss_fell", True))
    return {"prompts": "analysed", "n_prompts": tuned.n_prompts,
            "tuned_kl": [round(x, 6) for x in t_kl], "logit_kl": [round(x, 6) for x in l_kl],
            "worse_blocks": worse, "loss_fell": fell, "unfit": bool(worse) or not fell}


def _same_positions(a: Any, b: Any) -> bool:
    keys = ("n_prompts", "n_layers", "skip_front", "include_front", "positions")
    return all(a.meta.get(k) == b.meta.get(k) for k in keys)


def _run(ctx: Any) -> TunedLensResult:
    cfg = ctx.config
    # its top-k is the logit lens's option
    options = dict(**cfg.options[LogitLensResult.name].to_dict(), skip_front=cfg.skip_front,
                   include_front=cfg.include_front, positions=cfg.positions,
                   batch_size=cfg.batch_size,
                   progress=ctx.progress)
    result = tuned_lens(ctx.model, ctx.batch, ctx.fitted, **options)
    result.meta["lens"]["data"] = dict(ctx.train_info or {})
    plain = ctx.done.get("logit_lens")
    if plain is None or not _same_positions(plain, result):
        plain = logit_lens(ctx.model, ctx.batch, **options)
    result.meta["heldout"] = check = heldout_check(result, plain, ctx.fitted.info)
    if check["unfit"]:
        log.warning("%s", unfit_message(result))
    return result


def unfit_message(result: TunedLensResult) -> str:
    """The ``tuned_lens_unfit`` warning's text, or "" when the held-out check passed."""
    check = result.meta.get("heldout") or {}
    if not check.get("unfit"):
        return ""
    why = []
    if check.get("worse_blocks"):
        blocks = check["worse_blocks"]
        shown = ", ".join(map(str, blocks[:8])) + (" ..." if len(blocks) > 8 else "")
        why.append(f"its held-out KL is above the logit lens's at block input(s) {shown}")
    if not check.get("loss_fell", True):
        why.append("its training loss did not fall")
    return ("tuned_lens_unfit: the tuned lens is not trustworthy here (" + "; ".join(why)
            + "); ed_tuned_kl and ed_tuned_overlap read its curves: compare them with the logit "
            "lens (meta.heldout), or train on more data (tuned_lens_examples, tuned_lens_data)")


def _unfit_check(result: TunedLensResult, tau: float | None, d_vocab: int | None) -> list[tuple[str, str]]:
    message = unfit_message(result)
    return [("tuned_lens_unfit", message)] if message else []


def _overlap_checks(result: TunedLensResult, tau: float | None, d_vocab: int | None) -> list[tuple[str, str]]:
    return overlap_at_chance("ed_tuned_overlap")(result, tau, d_vocab) + _unfit_check(result, tau, d_vocab)


def _toolkit_rule(kind: str, curve_of: str) -> Any:
    """``ed_kl``/``ed_overlap``'s toolkit rule on the tuned curves, under either rule set: the seed
    notebook that ``rules: reference`` reproduces has no tuned lens to copy."""
    rule = lens_rule(kind, curve_of)
    return lambda result, tau, rules: rule(result, tau, "toolkit")


def _cost(w: Workload) -> MeasurementCost:
    """Training (nothing when a stored fit of the same fingerprint will be read:
    ``Workload.reused_fits``), with training prompts taken to be as long as the
    analysed ones on average: clean passes over the fit prompts (at most ``MAX_FIT_POSITIONS``
    positions) and the validation prompts; the closed-form moments in float64, counted as lens-row
    equivalents (``2 (d+1)²`` multiply-adds per position and layer, float64 at half speed); the
    validation KLs (``L+1`` lens rows per validation position and evaluation); the fine-tuning
    steps, ``TOKENS_PER_STEP`` positions at every block input, forward and backward (three lens
    rows each). ``fit_on=sampled`` and ``file:``: :func:`text_sequences` sequences of
    :data:`TEXT_LENGTH` tokens; ``sampled`` also generates them, one token a row and step through
    the KV cache and one lens row each (also when the fit is reused: the text is fingerprinted).
    Measuring: the logit lens's work, twice when the logit lens is not also measured (the held-out
    check needs its curve)."""
    s, L, cfg, opts = w.shape, w.L, w.config, w.options(TunedLensResult.name)
    kind, _ = opts.source
    gen_tokens = gen_calls = 0
    if kind == "task":
        mean_t = max(1.0, sum(w.lengths) / max(1, len(w.lengths)))
        n_train = opts.examples
    else:  # sequences of TEXT_LENGTH tokens (fewer on a model of a shorter context)
        mean_t, n_train = float(TEXT_LENGTH), text_sequences(TEXT_LENGTH)
        if kind == "sampled":  # one token a row and step, through the KV cache
            gen_tokens = n_train * TEXT_LENGTH
            gen_calls = TEXT_LENGTH * -(-n_train // SAMPLE_BATCH)
    n_val = 0 if n_train < 2 else max(1, round(n_train * VALIDATION_FRACTION))
    fit_tokens = min(int((n_train - n_val) * mean_t), MAX_FIT_POSITIONS)
    val_tokens = min(int(n_val * mean_t), 4 * VALIDATION_POSITIONS) or fit_tokens
    val_pos = min(val_tokens, VALIDATION_POSITIONS)
    per_step = min(TOKENS_PER_STEP, fit_tokens)
    steps = opts.steps
    if steps is None:
        steps = auto_steps(L, s.d_model, s.d_vocab, per_step)
    evaluations = 3 + -(-steps // EVAL_EVERY)
    reused = TunedLensResult.name in w.reused_fits
    if reused:  # a stored fit of this fingerprint is read instead (store.fitted.find_fit)
        fit_tokens = val_tokens = val_pos = per_step = steps = evaluations = 0
    moments = 4 * L * fit_tokens * (s.d_model + 1) ** 2 // max(1, s.d_model * s.d_vocab)
    measure = sum((L + 2) * w.measured_tokens(b) for b in w.every)
    times = 1 if "logit_lens" in tuple(cfg.metrics) else 2
    fit_prompts = -(-fit_tokens // int(mean_t)) + -(-val_tokens // int(mean_t))
    return MeasurementCost(
        "tuned_lens",
        block_tokens=times * w.clean(w.every) + L * (fit_tokens + val_tokens + gen_tokens),
        block_calls=times * w.clean_calls(w.every) + L * -(-fit_prompts // cfg.batch_size)
        + L * gen_calls,
        lens_rows=times * measure + moments + evaluations * (L + 1) * val_pos
        + 3 * steps * per_step * (L + 1) + gen_tokens,
        lens_stat_rows=times * measure + evaluations * (L + 1) * val_pos,
        note=("no training: a fitted lens of this model, data and settings is stored"
              + (" (the text is still sampled)" if kind == "sampled" else "")) if reused else
        f"training: {fit_tokens} fit positions, {steps} fine-tuning steps ("
             + ("counted with training prompts as long as the analysed ones" if kind == "task"
                else f"fit_on={kind}: {n_train} sequences of {TEXT_LENGTH} tokens"
                + (", sampled first" if kind == "sampled" else ""))
             + ")")


register_metric(MetricSpec(
    name=TunedLensResult.name,
    cost=_cost,
    result_type=TunedLensResult,
    options=TunedLensOptions,
    description="the tuned lens: the logit lens through affine translators trained to match the output",
    run=_run,
    fit=FitSpec("tuned_lens", examples=tuned_lens_examples, settings=_settings, fit=_fit,
                load=Translators.from_tensors, text=tuned_lens_text),
    estimators=(
        EstimatorSpec("ed_tuned_kl", TunedLensResult.name, _toolkit_rule("ed_kl", "kl_of"), 0.5,
                      "the first block input whose tuned-lens KL falls below tau x its maximum",
                      checks=_unfit_check),
        EstimatorSpec("ed_tuned_overlap", TunedLensResult.name, _toolkit_rule("ed_overlap", "overlap_of"), 0.3,
                      "the first block input whose tuned-lens top-k overlap exceeds tau",
                      checks=_overlap_checks),
    ),
))
