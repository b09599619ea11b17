"""Train the zoo: tiny Qwen2-style decoders on generated arithmetic.

The reference papers study Qwen2.5 and its R1-Distill variants: pre-norm decoders with RMSNorm,
rotary positions and a gated (SwiGLU) MLP. The zoo models are the same family in miniature
(``transformers.Qwen2ForCausalLM``), trained from scratch on the arithmetic tasks of
:mod:`effective_depth.tasks.arithmetic`, with the character tokenizer of
:mod:`effective_depth.models.tokenizer`.

A :class:`Recipe` is the whole training run as data; ``ZOO_RECIPES`` holds the recipe of every
bundled model, and ``effective-depth zoo train NAME`` reproduces it. Training samples fresh problems
from the task's *train* split at every step (the 10% test split, chosen by a hash of the prompt,
is never seen), and stops early once held-out exact match reaches ``target_accuracy`` at every
difficulty level. The output is a standard ``save_pretrained`` directory plus ``card.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, close_matches
from ..frozen import from_dict
from ..tasks import get_task
from ..tasks.arithmetic import in_split
from ..tasks.base import Example
from .evaluate import accuracy_by_difficulty, encode_example, exact_match
from .tokenizer import build_char_tokenizer, check_text

__all__ = ["Recipe", "ZOO_RECIPES", "get_recipe", "train", "TrainResult"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a zoo model: architecture, task, data, optimisation."""

    name: str
    description: str = ""
    task: str = "addition"
    format: str = "direct"
    digits: tuple[int, ...] = (3,)
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    n_kv_heads: int = 4
    d_mlp: int = 256
    steps: int = 6000
    batch_size: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 250
    eval_examples: int = 200
    target_accuracy: float | None = 0.995
    #: weights are stored in this dtype (float16 halves the files; accuracy is measured after)
    save_dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError("n_heads must be a multiple of n_kv_heads")
        if not self.digits:
            raise ConfigError("a recipe needs at least one difficulty level in `digits`")
        object.__setattr__(self, "digits", tuple(int(d) for d in self.digits))

    def task_spec(self, digits: int, split: str) -> dict[str, Any]:
        key = "steps" if self.task == "multistep" else "digits"
        return {"name": self.task, "params": {key: digits, "format": self.format, "split": split}}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["digits"] = list(self.digits)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        return from_dict(cls, data, "recipe fields", tuples=("digits",))


def _family(n_layers: int) -> Recipe:
    return Recipe(
        name=f"add-{n_layers}l",
        description=f"{n_layers}-block decoder, 3-digit addition, direct answer (depth family)",
        n_layers=n_layers,
        digits=(3,),
        lr=3e-3 if n_layers <= 4 else 2e-3,
    )


def _spare(n_layers: int) -> Recipe:
    """The 'depth to spare' family: one narrow width, 2-digit addition (far below capacity)."""
    return Recipe(
        name=f"spare-{n_layers}l",
        description=f"{n_layers}-block decoder (d_model 64), 2-digit addition, direct answer "
        "(depth-to-spare family)",
        n_layers=n_layers,
        digits=(2,),
        d_model=64,
        d_mlp=256,
        steps=6000,
        eval_every=100,
        # stop on a 500-problem probe: a 200-problem one stopped add-2l at 98% on the card's 500
        eval_examples=500,
        lr=3e-3 if n_layers <= 4 else 2e-3,
    )


ZOO_RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        _family(2),
        _family(4),
        _family(8),
        _family(12),
        Recipe(
            name="add-4l-scratch",
            description="4 blocks, 3-digit addition with a digit-by-digit scratchpad "
            "(the 'long chain-of-thought' twin of add-4l)",
            format="scratchpad",
            n_layers=4,
            digits=(3,),
        ),
        Recipe(
            name="add-mixed-6l",
            description="6 blocks, addition of 1-4 digits with the digit-by-digit scratchpad "
            "(difficulty study)",
            format="scratchpad",
            n_layers=6,
            digits=(1, 2, 3, 4),
            steps=12000,
            lr=2e-3,
        ),
        *(_spare(n) for n in (2, 4, 8, 12, 16)),
    ]
}


def get_recipe(name: str) -> Recipe:
    key = name.removeprefix("zoo/")
    if key not in ZOO_RECIPES:
        raise ConfigError(
            f"no zoo recipe named {name!r}{close_matches(key, ZOO_RECIPES)} "
            f"Recipes: {', '.join(ZOO_RECIPES)}"
        )
    return ZOO_RECIPES[key]


def build_model(recipe: Recipe, vocab_size: int, max_len: int) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=recipe.d_model,
        intermediate_size=recipe.d_mlp,
        num_hidden_layers=recipe.n_layers,
        num_attention_heads=recipe.n_heads,
        num_key_value_heads=recipe.n_kv_heads,
        max_position_embeddings=max(64, 2 ** math.ceil(math.log2(max_len + 1))),
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        use_sliding_window=False,
    )
    return Qwen2ForCausalLM(config)


class _Sampler:
    """Fresh training problems from the train split, uniformly over difficulty levels."""

    def __init__(self, recipe: Recipe, tokenizer: Any) -> None:
        self.rng = random.Random(f"train:{recipe.seed}")
        self.tasks = [
            get_task(recipe.task, **recipe.task_spec(d, "train")["params"]) for d in recipe.digits
        ]
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id

    def example(self) -> Example:
        task = self.rng.choice(self.tasks)
        while True:
            prompt, answer, meta = task.problem(self.rng)
            if in_split(prompt, "train"):
                return Example(prompt, answer, meta)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, attention mask and labels (-100 except on answer tokens and the EOS)."""
        rows, starts = [], []
        for _ in range(size):
            ids, n_prompt = encode_example(self.tokenizer, self.example())
            rows.append([*ids, self.eos])
            starts.append(n_prompt)
        width = max(map(len, rows))
        tokens = torch.full((size, width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((size, width), dtype=torch.long)
        labels = torch.full((size, width), -100, dtype=torch.long)
        for i, (row, start) in enumerate(zip(rows, starts)):
            tokens[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            labels[i, start : len(row)] = tokens[i, start : len(row)]
        return tokens, mask, labels


@dataclass
class TrainResult:
    path: Path
    card: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def held_out_examples(recipe: Recipe, n_per_level: int) -> list[Example]:
    out: list[Example] = []
    for d in recipe.digits:
        spec = recipe.task_spec(d, "test")
        out += get_task(spec["name"], **spec["params"], seed=1000 + recipe.seed).examples(n_per_level)
    return out


def evaluate_recipe_model(model: Any, tokenizer: Any, recipe: Recipe, n_per_level: int) -> dict[str, float]:
    examples = held_out_examples(recipe, n_per_level)
    model.eval()
    correct = exact_match(model, examples, tokenizer=tokenizer, batch_size=256)
    return {str(k): v for k, v in accuracy_by_difficulty(examples, correct).items()}


def _lr_at(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cosine)


def train(
    recipe: Recipe,
    out: str | os.PathLike[str],
    *,
    steps: int | None = None,
    card_eval_examples: int = 500,
    progress: bool = True,
) -> TrainResult:
    """Train ``recipe`` and write a checkpoint directory with ``card.json`` to ``out``.

    ``steps`` overrides the recipe's step budget (the tests train a micro model for a few steps).
    """
    from tqdm.auto import tqdm

    if steps is not None:
        from dataclasses import replace

        recipe = replace(recipe, steps=steps)
    out = Path(out)
    torch.manual_seed(recipe.seed)
    tokenizer = build_char_tokenizer()
    sampler = _Sampler(recipe, tokenizer)
    probe = held_out_examples(recipe, 1)
    for ex in probe:
        check_text(ex.prompt + ex.answer)
    max_len = max(len(encode_example(tokenizer, ex)[0]) for ex in probe) + 8
    model = build_model(recipe, len(tokenizer), max_len)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.98),
    )
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    steps_done = 0
    bar = tqdm(range(recipe.steps), desc=f"train {recipe.name}", disable=not progress)
    loss_ema = None
    for step in bar:
        model.train()
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, recipe)
        tokens, mask, labels = sampler.batch(recipe.batch_size)
        loss = model(input_ids=tokens, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        steps_done = step + 1
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.4f}")
        if steps_done % recipe.eval_every == 0 or steps_done == recipe.steps:
            acc = evaluate_recipe_model(model, tokenizer, recipe, recipe.eval_examples)
            history.append({"step": steps_done, "loss": round(loss_ema, 5), "accuracy": acc,
                            "seconds": round(time.perf_counter() - start, 1)})
            log.info("%s step %d loss %.4f accuracy %s", recipe.name, steps_done, loss_ema, acc)
            if recipe.target_accuracy is not None and min(acc.values()) >= recipe.target_accuracy:
                break
    train_seconds = time.perf_counter() - start
    bar.close()

    model.eval()
    save_dtype = getattr(torch, recipe.save_dtype)
    model = model.to(save_dtype)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # The card's accuracy is measured on the weights as saved, loaded back in float32.
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    accuracy = evaluate_recipe_model(reloaded, tokenizer, recipe, card_eval_examples)
    default_level = recipe.digits[len(recipe.digits) // 2] if len(recipe.digits) > 1 else recipe.digits[0]
    card = {
        "name": recipe.name,
        "description": recipe.description,
        "recipe": recipe.to_dict(),
        "architecture": {
            "class": "Qwen2ForCausalLM",
            "n_layers": recipe.n_layers,
            "d_model": recipe.d_model,
            "n_heads": recipe.n_heads,
            "n_kv_heads": recipe.n_kv_heads,
            "d_mlp": recipe.d_mlp,
            "vocab_size": len(tokenizer),
        },
        "task": recipe.task_spec(default_level, "test"),
        "difficulty_levels": list(recipe.digits),
        "training": {
            "steps": steps_done,
            "seconds": round(train_seconds, 1),
            "final_loss": round(loss_ema or float("nan"), 5),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "accuracy": accuracy,
        "accuracy_examples_per_level": card_eval_examples,
        "accuracy_split": "test (held out: never sampled in training)",
        "n_params": sum(p.numel() for p in reloaded.parameters()),
        "weights_dtype": recipe.save_dtype,
        "history": history,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return TrainResult(out, card, history)
