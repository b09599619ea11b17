"""The engine: backend adapter, interventions and the sweep. Only its adapter knows hook
names; metrics ask it for residuals, resumed runs and lens distributions."""

from .adapter import Adapter, Clean, get_adapter
from .batch import Batch, encode_batch, measured_mask
from .interventions import (
    Intervention,
    LocalSkip,
    Patch,
    PatchContribution,
    ReplaceResidual,
    ResumePlan,
    ablate,
    compile_plan,
    intervene,
    local_skip,
    position_mask,
    replace_residual,
    skip_attn,
    skip_block,
    skip_mlp,
    where,
)
from .sweep import Chunk, Row, sweep

__all__ = [
    "Adapter",
    "Batch",
    "Chunk",
    "Clean",
    "Intervention",
    "LocalSkip",
    "Patch",
    "PatchContribution",
    "ResumePlan",
    "ReplaceResidual",
    "Row",
    "ablate",
    "compile_plan",
    "encode_batch",
    "get_adapter",
    "intervene",
    "local_skip",
    "measured_mask",
    "position_mask",
    "replace_residual",
    "skip_attn",
    "skip_block",
    "skip_mlp",
    "sweep",
    "where",
]
