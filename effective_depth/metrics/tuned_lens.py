"""The tuned lens (docs/methods.md §3a; Belrose et al. 2023, "Eliciting Latent Predictions from
Transformers with the Tuned Lens").

The logit lens decodes ``h_l`` as if it were the last residual, ``lens(h_l)``. Earlier residuals
live in a basis the later blocks keep rotating, rescaling and shifting, so the logit lens can
read a layer as "not yet predicting" when the prediction is there in another basis. The tuned
lens learns, per block input ``l``, one affine *translator* and decodes through it:

    tuned(h_l) = lens(A_l h_l + b_l),   A_l, b_l  minimising  E_t KL(p ‖ tuned(h_l))

with the model frozen, ``p = lens(h_L)`` the model's own output, and ``(A_l, b_l)`` starting from
the identity (``A_l = I``, ``b_l = 0``: the logit lens). The translators are trained on the model's
own residuals of *training* examples (the task's train split, or a prompts file), never on the
analysed ones; the curves are then exactly the logit lens's (``KL(tuned(h_l) ‖ p)`` and top-k
overlap, token-weighted per prompt) with ``lens`` replaced by ``tuned``.

Training streams: each step runs one clean pass on a few training prompts and fits every layer's
translator on their positions, one layer at a time, so memory stays at one minibatch's residuals
and a few ``positions × vocab`` tensors (never ``layers × positions × vocab``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from ..costs import MeasurementCost, Workload
from ..engine.adapter import Adapter, get_adapter
from ..engine.batch import Batch, BatchLike, measured_mask
from ..errors import ConfigError
from ..progress import tqdm
from ..registry import EstimatorSpec, FitSpec, MetricSpec, register_metric
from .base import check_skip_front
from .logit_lens import LogitLens, lens_k_of, lens_rule, logit_lens, overlap_at_chance

__all__ = ["TunedLens", "Translators", "tuned_lens", "train_tuned_lens", "fit_translators",
           "tuned_lens_examples", "FIT_VERSION", "TOKENS_PER_STEP", "LEARNING_RATE"]

log = logging.getLogger(__name__)

#: bumped whenever the training procedure changes: a cached lens of another version is retrained
FIT_VERSION = 1
#: positions (tokens) the translators are fitted on per step
TOKENS_PER_STEP = 1024
#: Adam's learning rate at step 0, decayed linearly to 0 at the last step
LEARNING_RATE = 3e-3


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
        return cls(eye, torch.zeros(n_layers, d_model, device=device), {"steps": 0})

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
class TunedLens(LogitLens):
    """The logit lens's per-prompt KL and overlap sums, read through trained translators.

    ``meta["lens"]`` describes the translators: training steps, final loss, the training data and
    whether the cached translators were reused.
    """

    name: ClassVar[str] = "tuned_lens"


@torch.no_grad()
def tuned_lens(model: Any, batch: BatchLike, translators: Translators, **options: Any) -> TunedLens:
    """KL to the output and top-``k`` overlap of the tuned lens at every block input.

    The same computation, with the same ``options`` (``k``, ``skip_front``, ``include_front``,
    ``chunk``, ``batch_size``, ``include_final``, ``progress``), as
    :func:`~effective_depth.metrics.logit_lens.logit_lens`, with each tapped residual passed
    through its translator first (``h_L``, the output, is never translated: with
    ``include_final`` its row is the sanity row KL 0, overlap 1).
    """
    adapter = get_adapter(model)
    if (translators.n_layers, translators.d_model) != (adapter.n_layers, adapter.d_model):
        raise ConfigError(
            f"the tuned-lens translators are for {translators.n_layers} blocks of width "
            f"{translators.d_model}, the model has {adapter.n_layers} of width {adapter.d_model}; "
            "train them on this model")
    plain = logit_lens(model, batch, **options, translate=translators, desc="tuned lens")
    return TunedLens(plain.kl_sums, plain.overlap_sums, plain.counts,
                     meta={**plain.meta, "lens": _lens_summary(translators.info)})


def _lens_summary(info: dict[str, Any]) -> dict[str, Any]:
    """What ``results.json`` says of the translators. The loss curve and the training time stay
    in the cache file: a resumed run's results must equal an uninterrupted run's."""
    curve = info.get("loss", [])
    return {**{k: v for k, v in info.items() if k not in ("loss", "seconds", "cpu_seconds")},
            "initial_loss": curve[0] if curve else None, "final_loss": curve[-1] if curve else None}


# ---------------------------------------------------------------------------------- training
def fit_translators(
    adapter: Adapter,
    draw: Callable[[torch.Generator], Float[Tensor, "boundary n d_model"]],
    *,
    steps: int = 250,
    lr: float = LEARNING_RATE,
    seed: int = 0,
    progress: bool = False,
    budget: int = 64 * 2**20,
) -> Translators:
    """Fit one affine translator per block input to ``min KL(p ‖ lens(A_l h_l + b_l))``.

    ``draw(generator)`` returns one minibatch of residuals ``h_0..h_L`` at ``n`` positions; ``p``
    is the lens of its ``h_L`` (the model's output). ``A_l = I + W_l`` with ``W_l = 0``,
    ``b_l = 0`` at the start (the logit lens); Adam, learning rate ``lr`` decayed linearly to 0.
    The model is frozen. The layers share no parameters, so their losses are summed and
    backpropagated a group of layers at a time, the group as large as ``budget`` bytes of
    ``layers × n × vocab`` log-probabilities allow (one layer at a time for real vocabularies).
    The recorded loss of a step is the mean over layers of the position-mean KL, before that
    step's update.
    """
    if steps < 0:
        raise ConfigError(f"tuned-lens steps must be >= 0, got {steps}")
    L, d = adapter.n_layers, adapter.d_model
    device = adapter.device
    delta = torch.zeros(L, d, d, device=device, requires_grad=True)
    bias = torch.zeros(L, d, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta, bias], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    eye = torch.eye(d, device=device)
    losses: list[float] = []
    start, cpu0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=steps, desc="tuned lens: training", disable=not progress)
    with adapter.grad_enabled_inputs():
        for _ in range(steps):
            resid = draw(gen).detach()
            n = resid.shape[1]
            with torch.no_grad():
                log_p = adapter.lens_log_probs(resid[-1])  # [n, V]
                p = log_p.exp()
            group = max(1, budget // max(1, 4 * n * log_p.shape[-1]))
            opt.zero_grad(set_to_none=True)
            total = torch.zeros((), device=device)
            for lo in range(0, L, group):
                layers = slice(lo, min(lo + group, L))
                h = resid[layers].float()  # [g, n, d]
                t = torch.baddbmm(bias[layers, None, :], h, (eye + delta[layers]).transpose(1, 2))
                log_q = adapter.lens_log_probs(t.to(resid.dtype))  # [g, n, V]
                kl = (p * (log_p - log_q)).sum(-1).mean(-1).sum()
                (kl / L).backward()
                total += kl.detach()
            losses.append(float(total) / L)
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    weight = (eye + delta.detach()).cpu()
    info = {"steps": steps, "lr": lr, "loss": [round(x, 6) for x in losses],
            "seconds": round(time.perf_counter() - start, 3),
            "cpu_seconds": round(time.process_time() - cpu0, 3)}
    return Translators(weight, bias.detach().cpu(), info)


def train_tuned_lens(
    model: Any,
    batch: Batch,
    *,
    steps: int = 250,
    lr: float = LEARNING_RATE,
    tokens_per_step: int = TOKENS_PER_STEP,
    skip_front: int = 1,
    include_front: bool = True,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
    budget: int | None = None,
) -> Translators:
    """Train the translators on the model's own residuals of ``batch`` (training examples), at
    every position the lens will measure (``skip_front``/``include_front`` as in the measurement).

    Each step fits on ``tokens_per_step`` positions (all of them when there are fewer). When the
    residuals of every training position fit in ``budget`` bytes (default: the sweep's memory
    budget, half the free GPU memory or 1 GiB on CPU) one clean pass caches them and each step
    draws positions without replacement (a fresh permutation per epoch); otherwise each step runs
    a clean pass on as many prompts, drawn the same way, as make ``tokens_per_step`` positions
    on average.
    """
    from ..engine.sweep import default_memory_budget
    from .base import prompt_chunks

    check_skip_front(skip_front)
    if batch.size == 0:
        raise ConfigError("the tuned lens needs at least one training example")
    adapter = get_adapter(model)
    mask = measured_mask(batch.lengths, batch.width, skip_front, include_front)
    n_positions = int(mask.sum())
    if n_positions == 0:
        raise ConfigError(f"the tuned lens's {batch.size} training examples have no measured "
                          f"position (skip_front={skip_front}, include_front={include_front})")
    budget = default_memory_budget(adapter.device) if budget is None else budget
    elem = torch.finfo(adapter.dtype).bits // 8
    cached = (adapter.n_layers + 1) * n_positions * adapter.d_model * elem <= budget

    def permuted(n: int, size: int) -> Callable[[torch.Generator], Tensor]:
        order = torch.empty(0, dtype=torch.long)

        def take(gen: torch.Generator) -> Tensor:
            nonlocal order
            if len(order) < size:
                order = torch.cat([order, torch.randperm(n, generator=gen)])
            out, order = order[:size], order[size:]
            return out

        return take

    def residuals(sub: Batch) -> Tensor:
        sub_mask = measured_mask(sub.lengths, sub.width, skip_front, include_front)
        clean = adapter.clean(sub.tokens)
        return clean.resid[:, sub_mask.to(clean.resid.device)]  # [L+1, positions, d_model]

    if cached:
        store = torch.cat([residuals(sub) for _, sub in prompt_chunks(batch, batch_size)], dim=1)
        take = permuted(n_positions, min(tokens_per_step, n_positions))

        def draw(gen: torch.Generator) -> Tensor:
            return store[:, take(gen).to(store.device)]
    else:
        per_prompt = n_positions / batch.size
        size = min(batch.size, max(1, round(tokens_per_step / per_prompt)))
        take = permuted(batch.size, size)

        def draw(gen: torch.Generator) -> Tensor:
            return residuals(batch.select(take(gen).tolist()))

    translators = fit_translators(adapter, draw, steps=steps, lr=lr, seed=seed, progress=progress)
    translators.info.update({"tokens_per_step": min(tokens_per_step, n_positions),
                             "n_train": batch.size, "train_positions": n_positions,
                             "cached_residuals": cached, "skip_front": skip_front,
                             "include_front": include_front})
    return translators


# ---------------------------------------------------------------------------------- study hooks
def tuned_lens_examples(task: Any, examples: Sequence[Any], config: Any) -> tuple[list[Any], dict[str, Any]]:
    """The training examples: the prompts file ``tuned_lens_data`` when given, else the task's
    ``train`` split (tasks with a train/test ``split`` parameter); anything else is an error that
    says what to give."""
    from ..tasks import get_task

    n = config.tuned_lens_examples
    if config.tuned_lens_data:
        source = get_task("prompts", path=config.tuned_lens_data)
        out = source.examples(n)
        return out, {"source": "file", "path": str(config.tuned_lens_data), "n": len(out)}
    split = type(task).params.get("split")
    if split is None or not split.choices or "train" not in split.choices:
        raise ConfigError(
            f"the tuned lens trains on held-out examples, and task {task.name!r} has no train "
            "split; give a prompts file of training text with --set tuned_lens_data=FILE "
            "(.txt or .jsonl), or leave tuned_lens out of --metrics")
    params = {**task.values, "split": "train"}
    out = type(task)(**params).examples(n)
    return out, {"source": "task", "task": task.name, "params": params, "n": len(out)}


def _settings(config: Any) -> dict[str, Any]:
    return {"version": FIT_VERSION, "steps": config.tuned_lens_steps, "lr": LEARNING_RATE,
            "tokens_per_step": TOKENS_PER_STEP, "seed": config.seed, "skip_front": config.skip_front,
            "include_front": config.include_front}


def _fit(ctx: Any) -> Translators:
    cfg = ctx.config
    return train_tuned_lens(ctx.model, ctx.train, steps=cfg.tuned_lens_steps, skip_front=cfg.skip_front,
                            include_front=cfg.include_front, seed=cfg.seed,
                            batch_size=cfg.batch_size, progress=ctx.progress)


def _run(ctx: Any) -> TunedLens:
    result = tuned_lens(ctx.model, ctx.batch, ctx.fitted, k=lens_k_of(ctx), skip_front=ctx.config.skip_front,
                        include_front=ctx.config.include_front, batch_size=ctx.config.batch_size,
                        progress=ctx.progress)
    result.meta["lens"]["data"] = dict(ctx.train_info or {})
    return result


def _toolkit_rule(kind: str, curve_of: str) -> Any:
    """``ed_kl``/``ed_overlap``'s toolkit rule on the tuned curves, under either rule set: the seed
    notebook that ``rules: reference`` reproduces has no tuned lens to copy."""
    rule = lens_rule(kind, curve_of)
    return lambda result, tau, rules: rule(result, tau, "toolkit")


def _cost(w: Workload) -> MeasurementCost:
    """Training (when no cached lens is reused): a clean pass over ``tuned_lens_examples``
    training prompts, taken to be as long as the analysed ones on average, then per step
    ``TOKENS_PER_STEP`` positions projected at every block input, forward and backward (counted
    as three lens rows each). Measuring: the logit lens's work (a clean pass and ``L+1`` lens rows
    per measured position)."""
    L, n_train = w.L, w.config.tuned_lens_examples
    mean_t = sum(w.lengths) / max(1, len(w.lengths))
    train_tokens = int(n_train * mean_t)
    per_step = min(TOKENS_PER_STEP, train_tokens)
    measured = sum((L + 2) * w.measured_tokens(b) for b in w.every)
    return MeasurementCost(
        "tuned_lens", block_tokens=w.clean(w.every) + L * train_tokens,
        block_calls=w.clean_calls(w.every) + L * -(-n_train // w.config.batch_size),
        lens_rows=measured + 3 * w.config.tuned_lens_steps * per_step * (L + 1),
        lens_stat_rows=measured,
        note="training counted with training prompts as long as the analysed ones; "
             "nothing when the run directory holds a matching fitted lens")


register_metric(MetricSpec(
    name=TunedLens.name,
    cost=_cost,
    result_type=TunedLens,
    order=25,
    description="the tuned lens: the logit lens through affine translators trained to match the output",
    run=_run,
    fit=FitSpec("tuned_lens", examples=tuned_lens_examples, settings=_settings, fit=_fit,
                load=Translators.from_tensors),
    estimators=(
        EstimatorSpec("ed_tuned_kl", TunedLens.name, _toolkit_rule("ed_kl", "kl_of"), 0.5,
                      "the first block input whose tuned-lens KL falls below tau x its maximum"),
        EstimatorSpec("ed_tuned_overlap", TunedLens.name, _toolkit_rule("ed_overlap", "overlap_of"), 0.3,
                      "the first block input whose tuned-lens top-k overlap exceeds tau",
                      checks=overlap_at_chance("ed_tuned_overlap")),
    ),
))
