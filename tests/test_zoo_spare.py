"""The zoo's depth-to-spare family: one width, 2-16 blocks, 2-digit addition, each at >= 99% on
the *whole* held-out test split (a probe the early stop never saw: training stopped on a
500-problem sample of it)."""

from __future__ import annotations

import pytest
import torch

from effective_depth.models.evaluate import exact_match
from effective_depth.models.tokenizer import build_char_tokenizer
from effective_depth.models.trainer import ZOO_RECIPES
from effective_depth.models.zoo import zoo_entries
from effective_depth.tasks import get_task

SPARE = [name for name in ZOO_RECIPES if name.startswith("spare-")]
BUNDLED = [f"zoo/{n}" for n in SPARE if f"zoo/{n}" in zoo_entries()]


def test_the_family_is_one_width_and_one_easy_task():
    depths = sorted(ZOO_RECIPES[n].n_layers for n in SPARE)
    assert depths == [2, 4, 8, 12, 16]
    recipes = [ZOO_RECIPES[n] for n in SPARE]
    assert {(r.d_model, r.d_mlp, r.n_heads, r.digits, r.format, r.task) for r in recipes} == \
        {(64, 256, 4, (2,), "direct", "addition")}


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLED)
def test_spare_model_is_small_and_solves_the_whole_test_split(name):
    from transformers import AutoModelForCausalLM

    entry = zoo_entries()[name]
    assert sum(f.stat().st_size for f in entry.path.iterdir()) <= 6 * 2**20
    assert entry.card["accuracy"]["2"] >= 0.99
    examples = get_task("addition", digits=2, format="direct", split="test").examples(10_000)
    assert len(examples) == 869  # every 2-digit test problem
    model = AutoModelForCausalLM.from_pretrained(entry.path, dtype=torch.float32).eval()
    correct = exact_match(model, examples, tokenizer=build_char_tokenizer(), batch_size=512)
    assert sum(correct) / len(correct) >= 0.99, (name, sum(correct), len(correct))
