"""The five measurements of docs/methods.md §1–5 (and the behaviour behind ``ed_task``/``ed_prune``),
one module each. Contributions and the logit lens read one clean pass; skip effects, erasure,
integrated gradients and behaviour run their interventions through the sweep engine.

Each function takes a model (or an engine ``Adapter``) and a tokenized ``Batch`` and returns a
typed result object (tensors + metadata): no plotting, no files.
"""

# isort: off
# Registration order is the study order of measurements that do not require one another
# (``MetricSpec.requires`` decides the rest): contributions, the lenses, skip effects, behaviour
# (which reads skip effects), then the per-token maps.
from . import contributions as _contributions  # noqa: F401
from . import logit_lens as _logit_lens  # noqa: F401
from . import tuned_lens as _tuned_lens  # noqa: F401
from . import skip_effects as _skip_effects  # noqa: F401
from . import behaviour as _behaviour  # noqa: F401
from . import erasure as _erasure  # noqa: F401
from . import integrated_gradients as _integrated_gradients  # noqa: F401
# isort: on
from .base import MetricResult
from .behaviour import Behaviour, behaviour, prune_order
from .contributions import CONTRIBUTION_CURVES, Contributions, contributions
from .erasure import Erasure, ErasureOptions, erasure, mean_residuals
from .integrated_gradients import (
    IntegratedGradients,
    IntegratedGradientsOptions,
    integrated_gradients,
)
from .logit_lens import LogitLensOptions, LogitLensResult, logit_lens
from .skip_effects import (
    SKIP_COMPONENTS,
    SkipEffects,
    SkipEffectsOptions,
    depth_score,
    draw_cuts,
    skip_effects,
)
from .tuned_lens import Translators, TunedLensOptions, TunedLensResult, train_tuned_lens, tuned_lens

__all__ = [
    "Behaviour",
    "behaviour",
    "prune_order",
    "CONTRIBUTION_CURVES",
    "Contributions",
    "Erasure",
    "ErasureOptions",
    "IntegratedGradientsOptions",
    "LogitLensOptions",
    "SkipEffectsOptions",
    "TunedLensOptions",
    "IntegratedGradients",
    "LogitLensResult",
    "MetricResult",
    "SKIP_COMPONENTS",
    "SkipEffects",
    "Translators",
    "TunedLensResult",
    "contributions",
    "depth_score",
    "draw_cuts",
    "integrated_gradients",
    "logit_lens",
    "mean_residuals",
    "erasure",
    "skip_effects",
    "train_tuned_lens",
    "tuned_lens",
]
