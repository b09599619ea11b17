"""Shared fixtures. Tests never touch the network: the offline switches are set before any
Hugging Face library is imported."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# as the CLI and CI set it: idle OpenMP threads sleep instead of spinning (the planner's busy-CPU
# calibration reads CPU time, which spinning threads inflate)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# no fit is shared between tests through ~/.cache (tests that share one set this themselves)
os.environ["EFFECTIVE_DEPTH_FIT_CACHE"] = "off"

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers import ARCHS, save_tiny_checkpoint  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory):
    # "llama" and "gemma" in the path trip TransformerLens's name-based architecture check.
    return tmp_path_factory.mktemp("llama_gemma_checkpoints")


@pytest.fixture(scope="session")
def tiny_checkpoints(checkpoint_root):
    """One tiny random checkpoint per architecture, saved with save_pretrained."""
    return {arch: save_tiny_checkpoint(arch, checkpoint_root / f"tiny-{arch}") for arch in ARCHS}
