"""Real-shaped stand-ins for the paper's checkpoints, built offline.

``python -m benchmarks.paper_shapes [--cache DIR] [--shapes qwen2.5-0.5b,...]`` writes, into a
cache directory outside the repository (default ``~/.cache/effective_depth/paper_shapes``, or
``$EFFECTIVE_DEPTH_PAPER_SHAPES``):

* one Hugging Face ``save_pretrained`` directory per shape, with the architecture
  hyper-parameters of the public ``config.json`` of ``Qwen/Qwen2.5-0.5B``, ``Qwen/Qwen2.5-1.5B``
  and ``deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B`` (:data:`SHAPES`), seeded random weights
  (Hugging Face's own initialisation, normal(0, 0.02), saved in bfloat16), and a byte-level BPE
  tokenizer trained here with ``tokenizers``;
* ``data/gsm8k_test.jsonl`` and ``data/math_test.jsonl``: generated records in the data sets'
  own schemas (GSM8K: ``question``, ``answer`` with ``<<a*b=c>>`` annotations and a ``#### X``
  line; MATH: ``problem``, ``level``, ``type``, ``solution`` with a ``\\boxed{}``) whose question
  plus reference reasoning is 150-400 tokens, read by the ``gsm8k`` and ``math`` tasks through
  ``data_files``.

The tokenizer is what makes these shapes honest about the *path*, not about any finding: the
Qwen2 pre-tokenizer regex (digits split one by one, a space glued to the following word), NFC
normalisation, byte-level fallback so no character is ever unknown, and the special tokens at
their real ids — the BPE vocabulary is padded with never-produced filler entries up to 151,643 so
that ``<|endoftext|>`` is id 151,643 as in Qwen2.5, and the embedding has 151,936 rows, more than
the tokenizer's 151,665 ids, as in the real models. Qwen shapes add no BOS (``bos_token`` null,
tokenizer class ``Qwen2Tokenizer`` as the real ``tokenizer_config.json``); the R1-Distill shape
prepends ``<｜begin▁of▁sentence｜>`` (id 151,646) as its real tokenizer does.

The weights are random: numbers measured on these checkpoints say what the toolkit *costs* and
that it runs correctly at this shape, nothing about what Qwen does with its depth.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Architecture hyper-parameters from each checkpoint's public config.json (Hugging Face hub,
#: read 2026-11 through mirrors of the files; see docs/paper_protocol.md).
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {
        "hub_id": "Qwen/Qwen2.5-0.5B",
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 32768,
        "max_window_layers": 24, "bos": None,
    },
    "qwen2.5-1.5b": {
        "hub_id": "Qwen/Qwen2.5-1.5B",
        "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "max_position_embeddings": 131072,
        "max_window_layers": 28, "bos": None,
    },
    "r1-distill-qwen-1.5b": {
        "hub_id": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "max_position_embeddings": 131072,
        "max_window_layers": 21, "bos": "<｜begin▁of▁sentence｜>",
    },
}

VOCAB_SIZE = 151936  #: embedding rows of every Qwen2.5 / R1-Distill-Qwen checkpoint up to 7B
BPE_SIZE = 151643  #: ids below the special tokens in the real tokenizers

#: The Qwen2 pre-tokenizer: contractions, letters with one leading non-letter, single digits,
#: punctuation runs, newlines, spaces.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>",
)
#: R1-Distill's first added tokens (end of sentence at 151643, begin of sentence at 151646)
R1_SPECIALS = (
    "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜begin▁of▁sentence｜>", "<|EOT|>",
    "<think>", "</think>", *QWEN_SPECIALS[7:],
)


def default_cache() -> Path:
    env = os.environ.get("EFFECTIVE_DEPTH_PAPER_SHAPES")
    return Path(env) if env else Path.home() / ".cache" / "effective_depth" / "paper_shapes"


# ------------------------------------------------------------------------------------ tokenizer
def train_bpe(corpus: list[str], vocab_size: int = 4000, pad_to: int | None = BPE_SIZE,
              specials: tuple[str, ...] = QWEN_SPECIALS, bos: str | None = None,
              eos: str | None = None) -> Any:
    """A Qwen2-style byte-level BPE ``PreTrainedTokenizerFast`` trained on ``corpus``.

    ``pad_to`` pads the BPE vocabulary with filler entries (never produced: no merge builds
    them) so that the special tokens get the real ids; ``None`` keeps it small (tests). With
    ``bos`` the tokenizer prepends it (R1-Distill); without, it adds nothing (Qwen).
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers import trainers as tok_trainers
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = tok_trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainer)
    if pad_to is not None:
        data = json.loads(tok.to_str())
        vocab = data["model"]["vocab"]
        if len(vocab) > pad_to:
            raise ValueError(f"trained vocabulary {len(vocab)} exceeds {pad_to}")
        for i in range(len(vocab), pad_to):
            vocab[f"<|filler_{i}|>"] = i
        tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens(list(specials))
    eos = eos or specials[0]
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                   pad_token=eos, clean_up_tokenization_spaces=False,
                                   model_max_length=131072)


# ------------------------------------------------------------------------------------ data
NAMES = ("Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Ken", "Alexis", "Tina", "Mark",
         "Randy", "Joy", "Carla", "Marissa", "Brandon", "Zoë", "José", "Søren")
ITEMS = ("clips", "apples", "pages", "cupcakes", "marbles", "stickers", "tickets", "bottles",
         "pencils", "eggs", "books", "coins")
PLACES = ("the market", "school", "the bakery", "the fair", "the library", "the farm")
MATH_TYPES = ("Algebra", "Counting & Probability", "Geometry", "Intermediate Algebra",
              "Number Theory", "Prealgebra", "Precalculus")


def _gsm8k_record(rng: random.Random, n_steps: int) -> dict[str, str]:
    name, item, place = rng.choice(NAMES), rng.choice(ITEMS), rng.choice(PLACES)
    total = rng.randint(12, 90)
    q = [f"{name} went to {place} with {total} {item}."]
    lines = []
    for _ in range(n_steps):
        kind = rng.choice(("buy", "give", "double", "sell"))
        if kind == "buy":
            k = rng.randint(2, 40)
            q.append(f"Then {name} bought {k} more {item} because the first batch was not enough "
                     f"for everyone who was waiting at {place}.")
            lines.append(f"After buying more, {name} has {total}+{k} = <<{total}+{k}={total + k}>>"
                         f"{total + k} {item}.")
            total += k
        elif kind == "give" and total > 4:
            k = rng.randint(1, total // 2)
            friend = rng.choice(NAMES)
            q.append(f"{name} gave {k} of them to {friend}, who had asked for some the day before.")
            lines.append(f"After giving {k} to {friend}, {name} has {total}-{k} = "
                         f"<<{total}-{k}={total - k}>>{total - k} {item} left.")
            total -= k
        elif kind == "double" and total < 500:
            q.append(f"The next week the number of {item} {name} had doubled.")
            lines.append(f"Doubling gives {total}*2 = <<{total}*2={total * 2}>>{total * 2} {item}.")
            total *= 2
        else:
            price = rng.randint(2, 9)
            q.append(f"Each of the {item} costs ${price} at {place}.")
            lines.append(f"So the {item} are worth {total}*{price} = <<{total}*{price}="
                         f"{total * price}>>{total * price} dollars, but {name} keeps all of them.")
    q.append(f"How many {item} does {name} have at the end?")
    answer = "\n".join(lines) + f"\n#### {total}"
    return {"question": " ".join(q), "answer": answer}


def _math_record(rng: random.Random, n_steps: int) -> dict[str, Any]:
    a, b, c = rng.randint(2, 19), rng.randint(-30, 30), rng.randint(1, 99)
    level = rng.randint(1, 5)
    problem = (f"Let $f(x) = {a}x^2 + ({b})x + {c}$. For how many integers $n$ with "
               f"$0 \\le n \\le {10 * level}$ is $f(n)$ divisible by {level + 2}? Express your "
               "answer as an integer.")
    steps, count = [], 0
    for n in range(n_steps):
        value = a * n * n + b * n + c
        ok = value % (level + 2) == 0
        count += ok
        steps.append(f"For $n = {n}$ we get $f({n}) = {a}\\cdot {n}^2 + ({b})\\cdot {n} + {c} = "
                     f"{value}$, which is {'' if ok else 'not '}divisible by ${level + 2}$.")
    solution = (" ".join(steps) + f" The residues repeat with period ${level + 2}$, so counting "
                f"the cases above gives $\\boxed{{{count}}}$.")
    return {"problem": problem, "level": f"Level {level}", "type": rng.choice(MATH_TYPES),
            "solution": solution}


def generate_records(kind: str, n: int, seed: int = 0, tokenizer: Any = None,
                     lo: int = 150, hi: int = 400) -> list[dict[str, Any]]:
    """``n`` records of ``kind`` ("gsm8k" or "math"); with a tokenizer, only records whose
    question + reasoning is ``lo``-``hi`` tokens are kept (the step count is drawn per record)."""
    rng = random.Random(f"{kind}:{seed}")
    make = _gsm8k_record if kind == "gsm8k" else _math_record
    out: list[dict[str, Any]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 100:
            raise RuntimeError(f"cannot generate {kind} records of {lo}-{hi} tokens")
        rec = make(rng, rng.randint(4, 12) if kind == "gsm8k" else rng.randint(4, 10))
        if tokenizer is not None:
            text = " ".join(str(v) for k, v in rec.items() if k in ("question", "answer", "problem", "solution"))
            n_tok = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            if not lo <= n_tok <= hi:
                continue
        rec = {**rec, "unique_id": f"generated/{kind}/{len(out)}"} if kind == "math" else rec
        out.append(rec)
    return out


def corpus(n: int = 400, seed: int = 1) -> Iterator[str]:
    """Text to train the tokenizer on: generated problems (different seed from the data)."""
    rng = random.Random(seed)
    for _ in range(n):
        g = _gsm8k_record(rng, rng.randint(3, 10))
        m = _math_record(rng, rng.randint(3, 8))
        yield f"Question: {g['question']}\nAnswer: {g['answer']}"
        yield f"Problem: {m['problem']}\nSolution: {m['solution']}"


# ------------------------------------------------------------------------------------ checkpoints
def hf_config(shape: str, **overrides: Any) -> Any:
    """A ``Qwen2Config`` with the shape's hyper-parameters (``overrides`` e.g. for tiny tests)."""
    from transformers import Qwen2Config

    spec = {k: v for k, v in SHAPES[shape].items() if k not in ("hub_id", "bos")}
    bos_id = 151646 if SHAPES[shape]["bos"] else 151643
    spec.update(vocab_size=VOCAB_SIZE, bos_token_id=bos_id, eos_token_id=151643,
                hidden_act="silu", initializer_range=0.02, use_sliding_window=False,
                sliding_window=None, attention_dropout=0.0)
    spec.update(overrides)
    cfg = Qwen2Config(**spec)
    cfg.architectures = ["Qwen2ForCausalLM"]
    return cfg


def shape_tokenizer(shape: str, pad_to: int | None = BPE_SIZE, vocab_size: int = 4000) -> Any:
    bos = SHAPES[shape]["bos"]
    specials = R1_SPECIALS if bos else QWEN_SPECIALS
    return train_bpe(list(corpus()), vocab_size=vocab_size, pad_to=pad_to, specials=specials,
                     bos=bos, eos=specials[0])


def save_tokenizer(tokenizer: Any, path: Path, qwen_class: bool) -> None:
    """Save; Qwen shapes get the real checkpoints' tokenizer_config (class Qwen2Tokenizer,
    bos/unk null)."""
    tokenizer.save_pretrained(path)
    if qwen_class:
        cfg_path = path / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.update(tokenizer_class="Qwen2Tokenizer", bos_token=None, unk_token=None,
                   errors="replace", add_prefix_space=False, split_special_tokens=False)
        cfg_path.write_text(json.dumps(cfg, indent=2))


def build_checkpoint(shape: str, path: Path, seed: int = 0, tokenizer: Any = None,
                     dtype: str = "bfloat16", **overrides: Any) -> Path:
    """Write one shape's ``save_pretrained`` directory (random weights, seeded)."""
    import torch
    from transformers import Qwen2ForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(shape, **overrides)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM._from_config(cfg, dtype=getattr(torch, dtype))
    model.generation_config.bos_token_id = cfg.bos_token_id
    model.save_pretrained(path)
    del model
    gc.collect()
    tokenizer = tokenizer if tokenizer is not None else shape_tokenizer(shape)
    save_tokenizer(tokenizer, path, qwen_class=SHAPES[shape]["bos"] is None)
    (path / "SHAPE.json").write_text(json.dumps({"shape": shape, **SHAPES[shape], "seed": seed,
                                                 "weights": "random, normal(0, 0.02)"}, indent=2))
    return path


def build_data(root: Path, tokenizer: Any, n: int = 64, seed: int = 0) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind in ("gsm8k", "math"):
        path = root / f"{kind}_test.jsonl"
        rows = generate_records(kind, n, seed=seed, tokenizer=tokenizer)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        out[kind] = path
    return out


def build_all(cache: Path | None = None, shapes: list[str] | None = None, force: bool = False) -> dict[str, Path]:
    cache = cache or default_cache()
    out: dict[str, Path] = {}
    tokenizers: dict[bool, Any] = {}
    for shape in shapes or list(SHAPES):
        path = cache / shape
        has_bos = SHAPES[shape]["bos"] is not None
        if has_bos not in tokenizers:
            tokenizers[has_bos] = shape_tokenizer(shape)
        if force or not (path / "SHAPE.json").is_file():
            log.info("building %s in %s", shape, path)
            build_checkpoint(shape, path, tokenizer=tokenizers[has_bos])
        out[shape] = path
    data = cache / "data"
    if force or not (data / "math_test.jsonl").is_file():
        tok = tokenizers.get(False) or shape_tokenizer("qwen2.5-0.5b")
        build_data(data, tok)
    out["data"] = data
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = build_all(args.cache, [s for s in args.shapes.split(",") if s], force=args.force)
    for name, path in paths.items():
        log.info("%s: %s", name, path)


if __name__ == "__main__":
    main()
