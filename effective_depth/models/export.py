"""Export a checkpoint with some of its blocks removed, as a plain Hugging Face directory.

:func:`export_pruned` reads a ``save_pretrained`` directory (config.json, ``*.safetensors``,
tokenizer files) and writes another one whose model has the blocks ``removed`` left out:

* the weights of the kept blocks, renumbered ``0..K-1`` in their original order
  (``model.layers.N.``, ``transformer.h.N.``, ``gpt_neox.layers.N.``, ...), every other tensor
  as it was; a tied unembedding stays tied (no ``lm_head.weight`` is written when the source
  has none);
* config.json with the number of layers set to the blocks kept and every per-layer list
  (``layer_types``: Gemma-3's sliding-window pattern, Qwen2's and Mistral's per-layer attention)
  sliced to the kept layers; a ``sliding_window_pattern`` the slice no longer follows is
  dropped (``layer_types`` is then the whole truth), and the config records what was removed
  and why under ``effective_depth_pruned``;
* the tokenizer and generation files copied as they are.

Removing block ``s`` is what the toolkit's ``skip_block(s)`` does to the residual stream
(``h_{s+1} := h_s``), so the exported model computes exactly the original model with those
blocks skipped: the test holds the two to 1e-5 in float32. Nothing is instantiated here: the
tensors are read one at a time and written once.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelError

__all__ = ["export_pruned", "layer_count", "kept_blocks", "forward_time", "time_checkpoints",
           "LAYER_PREFIXES", "PRUNED_KEY"]

#: the config keys that hold the number of blocks, by the first that a config has
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
#: the weight-name prefixes of block ``N`` (the number follows the prefix)
LAYER_PREFIXES = ("model.layers.", "transformer.h.", "gpt_neox.layers.", "model.decoder.layers.",
                  "transformer.layers.", "model.language_model.layers.")
#: config.json's record of an export
PRUNED_KEY = "effective_depth_pruned"
#: config keys of a repeating layer pattern that a slice of ``layer_types`` no longer follows
PATTERN_KEYS = ("sliding_window_pattern", "_sliding_window_pattern")
#: files copied beside the weights (everything but config.json, weights and indexes)
_SKIP = re.compile(r"(^config\.json$|\.safetensors$|\.safetensors\.index\.json$|\.bin$|"
                   r"^pytorch_model.*\.json$|^effective_depth_.*\.json$|^card\.json$)")


def layer_count(config: dict[str, Any]) -> tuple[str, int]:
    """The config key that holds the number of blocks, and that number."""
    for key in LAYER_COUNT_KEYS:
        if isinstance(config.get(key), int):
            return key, int(config[key])
    text = config.get("text_config")
    if isinstance(text, dict):
        raise ModelError("a multimodal config (text_config) is not supported by export; export "
                         "the text model's checkpoint")
    raise ModelError(f"config.json names no number of layers (looked for "
                     f"{', '.join(LAYER_COUNT_KEYS)})")


def kept_blocks(n_layers: int, removed: Sequence[int]) -> list[int]:
    """The blocks left when ``removed`` go (checked: each in ``0..L-1``, once, at least one
    block left)."""
    removed = [int(b) for b in removed]
    bad = [b for b in removed if not 0 <= b < n_layers]
    if bad:
        raise ConfigError(f"blocks {bad} outside 0..{n_layers - 1}")
    if len(set(removed)) != len(removed):
        raise ConfigError(f"blocks to remove listed twice: {removed}")
    if len(removed) >= n_layers:
        raise ConfigError(f"removing {len(removed)} of {n_layers} blocks leaves none; remove "
                          f"1..{n_layers - 1}")
    gone = set(removed)
    return [b for b in range(n_layers) if b not in gone]


def _weight_files(src: Path) -> list[Path]:
    files = sorted(src.glob("*.safetensors"))
    if not files:
        if any(src.glob("*.bin")):
            raise ModelError(f"{src} holds PyTorch .bin weights; export reads safetensors only "
                             "(re-save the model with save_pretrained(safe_serialization=True))")
        raise ModelError(f"{src} holds no *.safetensors weights")
    return files


def _rename(name: str, new_index: dict[int, int]) -> str | None:
    """The tensor's name in the exported model: block numbers renumbered, None for a removed
    block's tensor; other tensors keep their names."""
    for prefix in LAYER_PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix):]
            number, dot, tail = rest.partition(".")
            if number.isdigit() and dot:
                new = new_index.get(int(number))
                return None if new is None else f"{prefix}{new}.{tail}"
    return name


def export_pruned(src: str | Path, removed: Sequence[int], out: str | Path, *,
                  record: dict[str, Any] | None = None, force: bool = False) -> dict[str, Any]:
    """Write the checkpoint in ``src`` with the blocks ``removed`` left out to ``out`` (see the
    module docstring); returns what was written: the blocks kept and removed, the new number of
    layers, the tensors dropped and the tensor elements of the weight files before and after (a
    tied matrix is stored, and counted, once)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src, out = Path(src), Path(out)
    if not (src / "config.json").is_file():
        raise ModelError(f"{src} has no config.json; export needs a save_pretrained directory")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"{out} exists and is not empty; choose another --out or remove it")
        shutil.rmtree(out)
    if out.resolve() == src.resolve():
        raise ConfigError("the export must not overwrite its source checkpoint")
    config = json.loads((src / "config.json").read_text())
    key, L = layer_count(config)
    kept = kept_blocks(L, removed)
    new_index = {old: new for new, old in enumerate(kept)}
    tensors: dict[str, torch.Tensor] = {}
    seen_blocks: set[int] = set()
    dropped = 0
    before = after = 0
    metadata: dict[str, str] = {"format": "pt"}
    for file in _weight_files(src):
        with safe_open(str(file), framework="pt") as fh:
            meta = fh.metadata() or {}
            metadata.update({k: v for k, v in meta.items() if k == "format"})
            for name in list(fh.keys()):  # noqa: SIM118 - safe_open is not iterable
                t = fh.get_tensor(name)
                before += t.numel()
                new = _rename(name, new_index)
                block = _block_number(name)
                if block >= 0:
                    seen_blocks.add(block)
                if new is None:
                    dropped += 1
                    continue
                tensors[new] = t.contiguous()
                after += t.numel()
    if seen_blocks != set(range(L)):
        raise ModelError(f"the weights of {src} do not name blocks 0..{L - 1} under a known "
                         f"prefix ({', '.join(LAYER_PREFIXES)}); found blocks "
                         f"{sorted(seen_blocks)[:8]}")
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata=metadata)
    new_config = dict(config)
    new_config[key] = len(kept)
    sliced = []
    for name, value in config.items():
        if isinstance(value, list) and len(value) == L and name.endswith("layer_types"):
            new_config[name] = [value[b] for b in kept]
            sliced.append(name)
    if sliced:
        for name in PATTERN_KEYS:
            new_config.pop(name, None)
    info = {"source": str(src), "n_layers_before": L, "n_layers": len(kept),
            "removed": sorted(int(b) for b in removed), "kept": kept,
            "sliced_config": sliced, "tensors_dropped": dropped,
            "tensor_elements_before": int(before), "tensor_elements_after": int(after),
            **(record or {})}
    new_config[PRUNED_KEY] = info
    (out / "config.json").write_text(json.dumps(new_config, indent=2) + "\n")
    for file in sorted(src.iterdir()):
        if file.is_file() and not _SKIP.search(file.name):
            shutil.copy2(file, out / file.name)
    return info


def _block_number(name: str) -> int:
    for prefix in LAYER_PREFIXES:
        if name.startswith(prefix):
            number = name[len(prefix):].partition(".")[0]
            if number.isdigit():
                return int(number)
    return -1


def forward_time(model: Any, tokens: torch.Tensor) -> float:
    """Seconds of one ``model(tokens)`` (a Hugging Face causal LM; no cache, no gradients; CUDA
    synchronised before and after)."""
    cuda = tokens.device.type == "cuda"
    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize(tokens.device)
        start = time.perf_counter()
        model(tokens, use_cache=False)
        if cuda:
            torch.cuda.synchronize(tokens.device)
    return time.perf_counter() - start


def time_checkpoints(original: str | Path, pruned: str | Path, tokens: torch.Tensor, *,
                     device: str = "cpu", dtype: torch.dtype | None = None, repeats: int = 5,
                     warmup: int = 1) -> dict[str, Any]:
    """The forward time of both checkpoints on the same ``tokens`` (plain ``transformers``
    models, loaded in the dtype their files hold unless ``dtype``), measured in alternation
    (``warmup`` uncounted calls each, then ``repeats`` each: original, pruned, original, ...)
    so that a change of machine load falls on both; the median, min and max seconds, and the
    parameter counts (``num_parameters()``: tied matrices once)."""
    from transformers import AutoModelForCausalLM

    from .params import hf_parameter_counts
    from .real import quiet_transformers

    if repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")
    models = {}
    for name, path in (("original", original), ("pruned", pruned)):
        with quiet_transformers():
            models[name] = AutoModelForCausalLM.from_pretrained(
                str(path), local_files_only=True, **({"dtype": dtype} if dtype else {})
            ).to(device).eval()
    tokens = tokens.to(device)
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(warmup + repeats):
        for name, model in models.items():
            t = forward_time(model, tokens)
            if i >= warmup:
                times[name].append(t)
    out: dict[str, Any] = {"tokens": [int(n) for n in tokens.shape], "device": device,
                           "repeats": repeats, "warmup": warmup}
    for name, model in models.items():
        ts = times[name]
        out[name] = {"forward_s": statistics.median(ts), "forward_min_s": min(ts),
                     "forward_max_s": max(ts), "params": hf_parameter_counts(model),
                     "n_layers": int(model.config.num_hidden_layers),
                     "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    out["speedup"] = out["original"]["forward_s"] / max(out["pruned"]["forward_s"], 1e-12)
    out["params_ratio"] = (out["pruned"]["params"]["total"]
                           / max(out["original"]["params"]["total"], 1))
    return out
