"""Effective-depth estimators, bootstrap confidence intervals and trend tests (METHODS.md §6–7).

An estimator turns a per-layer curve into a block index ``e`` (0-based) and the ratio
``(e + 1) / L`` — or into *undefined*, with the reason (never a crash, never a silent ``-1``):

=============  ==============================================================================
``ed_cos``     ``c[l]`` = mean of ``cos_attn``, ``cos_mlp``, ``cos_block``; the **last** ``l`` with
               ``c[l] < 0`` and ``c[l+1] ≥ 0`` (Hu et al. 2025)
``ed_kl``      the **first** ``l`` with ``kl[l] < τ · max(kl)``, τ = 0.5 (Hu et al. 2025)
``ed_overlap`` the **first** ``l`` with ``overlap[l] > τ``, τ = 0.3 (Hu et al. 2025)
``ed_skip``    the **last** block whose skip changes the output by more than ``τ`` times the
               largest output effect (τ = 0.1; from §2's output effects)
``ed_task``    early exit: the fewest leading blocks whose logit-lens answer reaches the full
               model's exact-match accuracy within ``ε`` (ε = 0.01); ``e`` = that number − 1
``ed_prune``   blocks sorted by increasing output effect; the most of them (a prefix of that
               order) that can be skipped together with accuracy within ``ε``; ``e = L − k − 1``
=============  ==============================================================================

Every estimate comes with a percentile bootstrap CI over prompts: resample prompts with
replacement, recompute the curve from the per-prompt data, re-apply the rule. Resamples in which
the rule is undefined are counted (``undefined_fraction``) and left out of the interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError

__all__ = [
    "Estimate",
    "Rule",
    "ed_cos",
    "ed_kl",
    "ed_overlap",
    "ed_skip",
    "ed_task",
    "ed_prune",
    "bootstrap_indices",
    "bootstrap_estimate",
    "percentile_ci",
    "spearman",
    "spearman_bootstrap",
    "DEFAULT_THRESHOLDS",
    "RULE_SETS",
]

#: the published thresholds, and this toolkit's defaults for its own estimators
DEFAULT_THRESHOLDS: dict[str, float] = {
    "ed_kl": 0.5,
    "ed_overlap": 0.3,
    "ed_skip": 0.1,
    "ed_task": 0.01,
    "ed_prune": 0.01,
}

#: ``toolkit``: the rules above over every lens tap 0..L-1; ``reference``: as the seed notebook of
#: Hu et al. 2025 — ``ed_kl``/``ed_overlap`` search taps 0..L-2 only and return -1 (ratio 0) when
#: no tap meets the rule
RULE_SETS = ("toolkit", "reference")

REFERENCE_NOTE = ("reference rules (seed notebook): only lens taps 0..L-2 are searched; none met "
                  "the rule, so the block is -1 and the ratio 0, as the notebook reports")

#: a rule's answer: the block index, or None and the reason it is undefined
Rule = tuple[int | None, str | None]


def _as_curve(name: str, curve: Any) -> Tensor:
    t = torch.as_tensor(curve, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ConfigError(f"{name}: the curve is empty")
    bad = torch.isnan(t).nonzero().flatten().tolist()
    if bad:
        raise ConfigError(f"{name}: the curve has NaN at layers {bad}; cannot estimate a depth")
    return t


def ed_cos(cos_attn: Any, cos_mlp: Any, cos_block: Any) -> Rule:
    """The last ``l`` with ``c[l] < 0 ≤ c[l+1]``, ``c`` the mean of the three cosine curves."""
    a, m, b = (_as_curve("ed_cos", x) for x in (cos_attn, cos_mlp, cos_block))
    if not a.shape == m.shape == b.shape:
        raise ConfigError("ed_cos: the three cosine curves differ in length")
    c = (a + m + b) / 3
    hits = [layer for layer in range(len(c) - 1) if c[layer] < 0 <= c[layer + 1]]
    if not hits:
        if bool((c >= 0).all()):
            return None, "the mean cosine is never negative: no block erases the residual stream"
        return None, "the mean cosine never crosses from negative to non-negative"
    return hits[-1], None


def ed_kl(kl: Any, tau: float = 0.5) -> Rule:
    """The first ``l`` with ``kl[l] < τ · max(kl)``."""
    _check_tau("ed_kl", tau)
    k = _as_curve("ed_kl", kl)
    top = float(k.max())
    if top <= 0:
        return None, "the KL is 0 at every layer: the lens equals the output from the embedding on"
    hits = (k < tau * top).nonzero().flatten()
    if len(hits) == 0:
        return None, f"the KL never falls below {tau} x its maximum"
    return int(hits[0]), None


def ed_overlap(overlap: Any, tau: float = 0.3) -> Rule:
    """The first ``l`` with ``overlap[l] > τ``."""
    _check_tau("ed_overlap", tau)
    o = _as_curve("ed_overlap", overlap)
    hits = (o > tau).nonzero().flatten()
    if len(hits) == 0:
        return None, f"the top-k overlap never exceeds {tau}"
    return int(hits[0]), None


def ed_skip(output_effect: Any, tau: float = 0.1) -> Rule:
    """The last block whose output effect exceeds ``τ`` times the largest one."""
    _check_tau("ed_skip", tau)
    e = _as_curve("ed_skip", output_effect)
    top = float(e.max())
    if top <= 0:
        return None, "skipping any block leaves the output unchanged"
    hits = (e > tau * top).nonzero().flatten()
    return int(hits[-1]), None


def ed_task(accuracy_by_exit: Any, full_accuracy: float, eps: float = 0.01) -> Rule:
    """``accuracy_by_exit[n]`` is the accuracy after the first ``n`` blocks (n = 0..L); the
    answer is the smallest ``n`` within ``eps`` of the full model, as block index ``n − 1``
    (at least 0)."""
    acc = _as_curve("ed_task", accuracy_by_exit)
    if full_accuracy <= 0:
        return None, "the full model solves none of the examples"
    hits = (acc >= full_accuracy - eps - 1e-12).nonzero().flatten()
    if len(hits) == 0:  # cannot happen when acc[-1] is the full model; kept for hand-built curves
        return None, f"no exit depth reaches the full accuracy within {eps}"
    return max(int(hits[0]) - 1, 0), None


def ed_prune(accuracy_by_pruned: Any, full_accuracy: float, eps: float = 0.01) -> Rule:
    """``accuracy_by_pruned[k]`` is the accuracy with the first ``k`` blocks of the pruning order
    skipped together (k = 0..L); the answer is ``L − k* − 1`` for the largest admissible ``k*``."""
    acc = _as_curve("ed_prune", accuracy_by_pruned)
    L = len(acc) - 1
    if full_accuracy <= 0:
        return None, "the full model solves none of the examples"
    ok = (acc >= full_accuracy - eps - 1e-12).nonzero().flatten()
    k = int(ok.max()) if len(ok) else 0
    if k >= L:
        return None, "every block can be skipped without losing accuracy"
    return L - k - 1, None


def _check_tau(name: str, tau: float) -> None:
    if not (0 < tau < 1) or math.isnan(tau):
        raise ConfigError(f"{name}: threshold must be in (0, 1), got {tau}")


@dataclass
class Estimate:
    """One effective-depth estimate: ``layer`` and ``ratio = (layer + 1) / n_layers`` with a
    bootstrap CI of the ratio, or ``layer = None`` and the ``reason``."""

    name: str
    n_layers: int
    layer: int | None
    reason: str | None = None
    ci: tuple[float, float] | None = None
    layer_ci: tuple[float, float] | None = None
    undefined_fraction: float | None = None
    n_boot: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return None if self.layer is None else (self.layer + 1) / self.n_layers

    @property
    def defined(self) -> bool:
        return self.layer is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        for key in ("ci", "layer_ci"):
            if d[key] is not None:
                d[key] = [float(v) for v in d[key]]
        if self.layer is None:
            d = {"layer": None, "reason": self.reason, **{k: v for k, v in d.items()
                                                           if k not in ("layer", "reason")}}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Estimate:
        keys = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in keys}
        for key in ("ci", "layer_ci"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` prompt indices drawn with replacement from a private generator."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def percentile_ci(
    values: Sequence[Any], level: float = 0.95, discrete: bool = False
) -> tuple[float, float] | None:
    """Percentile interval of ``values`` (None and NaN ignored). ``discrete`` keeps the bounds
    on observed values (block indices), instead of interpolating between them."""
    vals = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(vals) == 0:
        return None
    alpha = (1 - level) / 2
    method = "inverted_cdf" if discrete else "linear"
    return (float(np.quantile(vals, alpha, method=method)),
            float(np.quantile(vals, 1 - alpha, method=method)))


def bootstrap_estimate(
    name: str,
    rule: Callable[[Sequence[int] | None], Rule],
    n_prompts: int,
    n_layers: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    params: dict[str, Any] | None = None,
) -> Estimate:
    """Point estimate on all prompts plus a percentile CI over ``n_boot`` prompt resamples.

    ``rule(idx)`` recomputes the curve from the prompts ``idx`` (None: all) and applies the rule.
    """
    layer, reason = rule(None)
    est = Estimate(name, n_layers, layer, reason, params=dict(params or {}), n_boot=n_boot)
    if n_boot <= 0 or n_prompts == 0:
        return est
    layers: list[float] = []
    undefined = 0
    for idx in bootstrap_indices(n_prompts, n_boot, seed):
        lay, _ = rule(idx.tolist())
        if lay is None:
            undefined += 1
        else:
            layers.append(float(lay))
    est.undefined_fraction = undefined / n_boot
    if layer is not None and layers:
        lo, hi = percentile_ci(layers, level, discrete=True)  # type: ignore[misc]
        est.layer_ci = (lo, hi)
        est.ci = ((lo + 1) / n_layers, (hi + 1) / n_layers)
    return est


def _rank(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank)."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x: Sequence[Any], y: Sequence[Any]) -> float:
    """Spearman's rank correlation; NaN when either side is constant or has < 2 points."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(xa) | np.isnan(ya))
    xa, ya = xa[keep], ya[keep]
    if len(xa) < 2:
        return float("nan")
    rx, ry = _rank(xa), _rank(ya)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_bootstrap(
    levels: Sequence[Any],
    ratio_fns: Sequence[Callable[[Sequence[int] | None], float | None]],
    n_prompts: Sequence[int],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Spearman's ρ between difficulty ``levels`` and the ratio at each level, with a CI from
    resampling prompts *within* every level (``ratio_fns[i](idx)`` recomputes level ``i``)."""
    point = [fn(None) for fn in ratio_fns]
    rho = spearman(levels, [np.nan if r is None else r for r in point])
    rhos = []
    rngs = [bootstrap_indices(n, n_boot, seed + 7919 * i) if n else None for i, n in enumerate(n_prompts)]
    for b in range(n_boot):
        ratios = []
        for i, fn in enumerate(ratio_fns):
            r = fn(rngs[i][b].tolist()) if rngs[i] is not None else None
            ratios.append(np.nan if r is None else r)
        rhos.append(spearman(levels, ratios))
    # no interval around an undefined rho (a constant ratio): resamples that happen to vary would
    # suggest a trend the data do not show
    ci = None if math.isnan(rho) else percentile_ci(rhos, level)
    return {
        "rho": None if math.isnan(rho) else rho,
        "ci": None if ci is None else list(ci),
        "n_boot": n_boot,
        "levels": list(levels),
        "ratios": point,
        "undefined_fraction": float(np.mean([math.isnan(r) for r in rhos])) if rhos else None,
    }


#: which measurement each estimator needs
ESTIMATOR_INPUTS: dict[str, str] = {
    "ed_cos": "contributions",
    "ed_kl": "logit_lens",
    "ed_overlap": "logit_lens",
    "ed_skip": "skip_effects",
    "ed_task": "behaviour",
    "ed_prune": "behaviour",
}


def _first_hit_reference(curve: Tensor, tau: float, kind: str) -> Rule:
    c = _as_curve(kind, curve)
    searched = c[:-1]
    if kind == "ed_kl":
        hits = (searched < tau * float(c.max())).nonzero().flatten()
    else:
        hits = (searched > tau).nonzero().flatten()
    return (int(hits[0]), None) if len(hits) else (-1, None)


def _rules(metrics: Mapping[str, Any], thresholds: Mapping[str, float],
           rules_set: str = "toolkit") -> dict[str, Callable[[Any], Rule]]:
    if rules_set not in RULE_SETS:
        raise ConfigError(f"rules must be one of {', '.join(RULE_SETS)}, got {rules_set!r}")
    kl_rule: Callable[[Any, float], Rule] = ed_kl
    overlap_rule: Callable[[Any, float], Rule] = ed_overlap
    if rules_set == "reference":
        def kl_rule(curve: Any, tau: float) -> Rule:
            return _first_hit_reference(curve, tau, "ed_kl")

        def overlap_rule(curve: Any, tau: float) -> Rule:
            return _first_hit_reference(curve, tau, "ed_overlap")
    rules: dict[str, Callable[[Any], Rule]] = {}
    c = metrics.get("contributions")
    if c is not None:
        rules["ed_cos"] = lambda idx: ed_cos(c.curve("cos_attn", idx), c.curve("cos_mlp", idx),
                                             c.curve("cos_block", idx))
    lens = metrics.get("logit_lens")
    if lens is not None:
        rules["ed_kl"] = lambda idx: kl_rule(lens.kl_of(idx)[: lens.meta["n_layers"]],
                                             thresholds["ed_kl"])
        rules["ed_overlap"] = lambda idx: overlap_rule(lens.overlap_of(idx)[: lens.meta["n_layers"]],
                                                       thresholds["ed_overlap"])
    skips = metrics.get("skip_effects")
    if skips is not None:
        def _skip(idx: Any) -> Rule:
            effect = skips.output_effect_of(idx)
            if bool(torch.isnan(effect).any()):
                return None, "no prompt in the sample has a cut position"
            return ed_skip(effect, thresholds["ed_skip"])

        rules["ed_skip"] = _skip
    beh = metrics.get("behaviour")
    if beh is not None:
        rules["ed_task"] = lambda idx: ed_task(beh.accuracy_by_exit(idx), beh.accuracy(idx),
                                               thresholds["ed_task"])
        rules["ed_prune"] = lambda idx: ed_prune(beh.accuracy_by_prune(idx), beh.accuracy(idx),
                                                 thresholds["ed_prune"])
    return rules


def estimate_all(
    metrics: Mapping[str, Any],
    *,
    thresholds: Mapping[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    rules: str = "toolkit",
) -> dict[str, Estimate]:
    """Every estimator whose measurement is present in ``metrics`` (name -> result object).

    ``rules="reference"`` applies ``ed_kl`` and ``ed_overlap`` as the seed notebook of Hu et al.
    2025 does (see :data:`RULE_SETS`); such an estimate says so in its ``params`` and, when it
    is -1, in its ``notes``.
    """
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    out: dict[str, Estimate] = {}
    for name, rule in _rules(metrics, th, rules).items():
        source = metrics[ESTIMATOR_INPUTS[name]]
        L = int(source.meta["n_layers"])
        params = {"threshold": th[name]} if name in th else {}
        if rules == "reference" and name in ("ed_kl", "ed_overlap"):
            params["rules"] = "reference"
        est = bootstrap_estimate(name, rule, source.n_prompts, L, n_boot=n_boot, seed=seed,
                                 level=level, params=params)
        if est.layer == -1:
            est.notes.append(REFERENCE_NOTE)
        out[name] = est
    return out


def depth_score_estimate(skips: Any, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Csordás's depth score (centre of mass of future effects) with a bootstrap CI."""
    from .metrics.skip_effects import depth_score

    point = depth_score(skips.layer_effect)
    values = [depth_score(skips.layer_effect_of(idx.tolist()))
              for idx in bootstrap_indices(skips.n_prompts, n_boot, seed)] if n_boot else []
    ci = percentile_ci(values, level)
    return {"value": None if math.isnan(point) else point, "ci": None if ci is None else list(ci),
            "n_boot": n_boot, "n_layers": skips.n_layers}


#: fewer prompts than this make a bootstrap CI a statement about a handful of examples
MIN_PROMPTS = 5


def reliability_warnings(
    metrics: Mapping[str, Any],
    estimates: Mapping[str, Estimate],
    *,
    thresholds: Mapping[str, float] | None = None,
    n_boot: int = 1000,
    d_vocab: int | None = None,
) -> list[dict[str, Any]]:
    """Conditions under which an estimate is decided by chance or by too few prompts.

    Each warning is also added to the estimate's ``notes``. Checked: the top-k overlap threshold
    against the overlap two unrelated top-k sets have by chance (``k / V``: a warning when ``τ <
    2 k / V``); future skip effects where fewer than half of the prompts have a cut position;
    fewer than :data:`MIN_PROMPTS` prompts; ``n_boot = 0`` (no interval at all).
    """
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    out: list[dict[str, Any]] = []

    def warn(code: str, message: str, names: Sequence[str]) -> None:
        names = [n for n in names if n in estimates]
        out.append({"code": code, "estimators": names, "message": message})
        for n in names:
            estimates[n].notes.append(message)

    lens = metrics.get("logit_lens")
    if lens is not None and d_vocab and "ed_overlap" in estimates:
        k = int(lens.meta.get("k", 5))
        chance = k / d_vocab
        if th["ed_overlap"] < 2 * chance:
            warn("overlap_at_chance",
                 f"ed_overlap: threshold {th['ed_overlap']} is below twice the chance overlap of "
                 f"unrelated top-{k} sets ({k}/{d_vocab} = {chance:.3f}); use a smaller lens_k",
                 ["ed_overlap"])
    skips = metrics.get("skip_effects")
    if skips is not None and skips.meta.get("mode") == "future":
        with_cut = sum(1 for c in skips.cuts if c)
        if with_cut < skips.n_prompts / 2:
            warn("few_cuts",
                 f"future skip effects: only {with_cut} of {skips.n_prompts} prompts are long "
                 "enough for a cut position; ed_skip and the depth score rest on those",
                 ["ed_skip"])
    for name in estimates:
        source = metrics.get(ESTIMATOR_INPUTS.get(name, ""))
        n = getattr(source, "n_prompts", None)
        if n is not None and n < MIN_PROMPTS:
            warn("few_prompts", f"{name}: estimated from {n} prompts (fewer than {MIN_PROMPTS}); "
                 "its CI describes those prompts, not the task", [name])
    if n_boot <= 0 and estimates:
        warn("no_bootstrap", "n_boot = 0: no confidence intervals were computed",
             list(estimates))
    return out
