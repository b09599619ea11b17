"""Device and dtype defaults: CUDA and bfloat16 when a GPU is present, else CPU and float32."""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError

__all__ = ["default_device", "default_dtype", "parse_dtype", "DTYPES", "set_threads",
           "threads_info"]

#: the thread count a command asked for (``--threads``); None: torch's own choice
_requested: dict[str, int | None] = {"threads": None}

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float64": torch.float64,
    "fp64": torch.float64,
}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bfloat16 on CUDA (the reference papers run their models in bf16), float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def parse_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(DTYPES))}")
    return DTYPES[key]


def set_threads(n: int | None) -> None:
    """Use ``n`` CPU threads for torch's intra-op parallelism (``--threads``); None leaves torch's
    choice. On a shared or small machine fewer threads can be much faster (no oversubscription)."""
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"threads must be a whole number >= 1, got {n!r} (omit it for torch's "
                          "default)")
    torch.set_num_threads(n)
    _requested["threads"] = n


def threads_info() -> dict[str, object]:
    """What ``config.json``'s environment records: the threads torch uses and who chose them."""
    n = _requested["threads"]
    return {"torch_threads": torch.get_num_threads(),
            "threads_source": f"--threads {n}" if n is not None else "torch's default",
            "cpu_count": os.cpu_count()}
