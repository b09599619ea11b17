"""The bundled zoo: every model loads offline, matches its Hugging Face checkpoint, and still has
the held-out accuracy its card claims; the trainer and tokenizer work."""

from __future__ import annotations

import json

import pytest
import torch

from effective_depth import load_model
from effective_depth.errors import TaskError
from effective_depth.models.evaluate import accuracy_by_difficulty, exact_match
from effective_depth.models.tokenizer import ALPHABET, build_char_tokenizer, check_text
from effective_depth.models.trainer import ZOO_RECIPES, Recipe, held_out_examples, train
from effective_depth.models.zoo import ZOO_DIR, zoo_entries
from effective_depth.tasks import get_task

ZOO = sorted(zoo_entries())


def test_zoo_is_bundled_and_small():
    assert "zoo/add-4l" in ZOO
    total = 0
    for name, entry in zoo_entries().items():
        size = sum(f.stat().st_size for f in entry.path.iterdir())
        total += size
        assert size <= 6 * 2**20, (name, size)
        card = entry.card
        for key in ("recipe", "training", "accuracy", "n_params", "task", "architecture"):
            assert key in card, (name, key)
        assert Recipe.from_dict(card["recipe"]) == ZOO_RECIPES[entry.name.removeprefix("zoo/")]
    assert total <= 40 * 2**20
    assert ZOO_DIR.is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_matches_hf_and_its_card(name):
    from transformers import AutoModelForCausalLM

    entry = zoo_entries()[name]
    model = load_model(name, device="cpu")
    assert type(model).__name__ == "HookedTransformer"
    assert model.cfg.n_layers == entry.card["architecture"]["n_layers"]
    hf = AutoModelForCausalLM.from_pretrained(entry.path, dtype=torch.float32).eval()
    recipe = Recipe.from_dict(entry.card["recipe"])
    examples = held_out_examples(recipe, entry.card["accuracy_examples_per_level"])
    tokens = torch.tensor([[1] + model.tokenizer(examples[0].text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        diff = (model(tokens).log_softmax(-1) - hf(tokens).logits.log_softmax(-1)).abs().max()
    assert diff <= 1e-4
    correct = exact_match(model, examples, batch_size=256)
    measured = accuracy_by_difficulty(examples, correct)
    for level, claimed in entry.card["accuracy"].items():
        assert abs(measured[int(level)] - claimed) <= 0.01, (name, level, measured, claimed)


@pytest.mark.slow
def test_trainer_loss_goes_down_and_writes_a_loadable_checkpoint(tmp_path):
    recipe = Recipe(name="micro", n_layers=1, d_model=32, n_heads=2, n_kv_heads=2, d_mlp=64,
                    digits=(1,), steps=60, batch_size=32, lr=3e-3, warmup=5, eval_every=30,
                    eval_examples=8, target_accuracy=None)
    result = train(recipe, tmp_path / "micro", card_eval_examples=8, progress=False)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    card = json.loads((tmp_path / "micro" / "card.json").read_text())
    assert card["training"]["steps"] == 60
    assert Recipe.from_dict(card["recipe"]) == recipe
    model = load_model(tmp_path / "micro", device="cpu")
    assert model.cfg.n_layers == 1 and model.cfg.d_model == 32


def test_recipe_round_trip_and_errors():
    for recipe in ZOO_RECIPES.values():
        assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    with pytest.raises(Exception, match="unknown recipe fields"):
        Recipe.from_dict({"name": "x", "depth": 3})
    with pytest.raises(Exception, match="not divisible"):
        Recipe(name="x", d_model=30, n_heads=4)


def test_tokenizer_round_trips_every_task_string():
    tok = build_char_tokenizer()
    strings = []
    for fmt in ("direct", "reversed", "scratchpad"):
        for task in ("addition", "multiplication"):
            for d in (1, 3, 5):
                strings += [e.text for e in get_task(task, digits=d, format=fmt).examples(20)]
    strings += [e.text for e in get_task("multistep", steps=6, format="scratchpad").examples(20)]
    for s in strings:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(s)
        assert tok.decode(ids) == s
        assert tok.unk_token_id not in ids
    assert len(tok) == 4 + len(ALPHABET)


def test_unknown_characters_are_a_clear_error():
    with pytest.raises(TaskError, match="character 'x' at position 2"):
        check_text("12x3")
    from effective_depth.engine import encode_batch
    from effective_depth.tasks import Example

    with pytest.raises(TaskError, match="character 'a' at position 0 of 'a\\+1=2' is unknown"):
        encode_batch(build_char_tokenizer(), [Example("a+1=", "2")])
