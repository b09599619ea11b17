"""The five measurements of docs/methods.md §1–5 (and the behaviour behind ``ed_task``/``ed_prune``),
one module each. Contributions and the logit lens read one clean pass; skip effects, erasure,
integrated gradients and behaviour run their interventions through the sweep engine.

Each function takes a model (or an engine ``Adapter``) and a tokenized ``Batch`` and returns a
typed result object (tensors + metadata): no plotting, no files.
"""

from .base import MetricResult
from .behaviour import Behaviour, behaviour, prune_order
from .contributions import CONTRIBUTION_CURVES, Contributions, contributions
from .erasure import Erasure, mean_residuals, residual_erasure
from .integrated_gradients import IntegratedGradients, integrated_gradients
from .logit_lens import LogitLens, logit_lens
from .skip_effects import SKIP_COMPONENTS, SkipEffects, depth_score, draw_cuts, skip_effects
from .tuned_lens import Translators, TunedLens, train_tuned_lens, tuned_lens

__all__ = [
    "Behaviour",
    "behaviour",
    "prune_order",
    "CONTRIBUTION_CURVES",
    "Contributions",
    "Erasure",
    "IntegratedGradients",
    "LogitLens",
    "MetricResult",
    "SKIP_COMPONENTS",
    "SkipEffects",
    "Translators",
    "TunedLens",
    "contributions",
    "depth_score",
    "draw_cuts",
    "integrated_gradients",
    "logit_lens",
    "mean_residuals",
    "residual_erasure",
    "skip_effects",
    "train_tuned_lens",
    "tuned_lens",
]
