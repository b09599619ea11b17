"""The few-shot tasks for pretrained models (docs/tasks.md): correct answers, the documented
format, disjoint held-out splits, seeded generation, and a clean prompt/answer token boundary."""

from __future__ import annotations

import re

import pytest

from effective_depth.errors import TaskError
from effective_depth.models.evaluate import encode_example
from effective_depth.tasks import get_task, list_tasks
from effective_depth.tasks.fewshot import CAPITALS, DEFAULT_SHOTS, capitals_split
from tests.helpers import real_checkpoint

LINE = re.compile(r"^(\d+) \+ (\d+) = (\d+)$")


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_fewshot_addition_shows_solved_examples_then_the_query(digits):
    examples = get_task("fewshot_addition", digits=digits, seed=3).examples(40)
    assert len(examples) == 40 and len({e.prompt for e in examples}) == 40
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    for ex in examples:
        *shots, query = ex.prompt.split("\n")
        assert len(shots) == DEFAULT_SHOTS == ex.meta["shots"]
        pairs = []
        for line in shots:
            a, b, c = map(int, LINE.match(line).groups())
            assert a + b == c and lo <= a < 10**digits and lo <= b < 10**digits
            pairs.append((a, b))
        assert query.endswith(" = ") and ex.meta["query"] == query[:-3]
        a, b = map(int, query[:-3].split(" + "))
        assert ex.answer == str(a + b) and (a, b) not in pairs
        assert ex.difficulty == digits and ex.meta["digits"] == digits


def test_fewshot_addition_splits_seeds_and_ranges():
    train = get_task("fewshot_addition", digits=2, split="train").examples(300)
    test = get_task("fewshot_addition", digits=2, split="test").examples(60)
    assert len(test) == 60 and not {e.prompt for e in train} & {e.prompt for e in test}
    again = get_task("fewshot_addition", digits=2, split="test").examples(60)
    assert [e.prompt for e in again] == [e.prompt for e in test]
    other = get_task("fewshot_addition", digits=2, split="test", seed=1).examples(60)
    assert [e.prompt for e in other] != [e.prompt for e in test]
    zero = get_task("fewshot_addition", shots=0).examples(5)
    assert all("\n" not in e.prompt for e in zero)
    with pytest.raises(TaskError, match="digits.*1..5"):
        get_task("fewshot_addition", digits=0)
    with pytest.raises(TaskError, match="shots.*0..32"):
        get_task("fewshot_addition", shots=40)
    assert {"fewshot_addition", "capitals"} <= set(list_tasks())


def test_capitals_table_split_and_format():
    assert len(CAPITALS) >= 100
    test_countries = {c for c in CAPITALS if capitals_split(c) == "test"}
    assert 0.2 < len(test_countries) / len(CAPITALS) < 0.4
    examples = get_task("capitals", split="test", shots=4).examples(80)
    assert len({e.prompt for e in examples}) == 80
    assert {e.meta["country"] for e in examples} == test_countries  # every one asked
    for ex in examples:
        *shots, query = ex.prompt.split("\n")
        assert len(shots) == 4 and query == f"The capital of {ex.meta['country']} is"
        assert ex.answer == " " + CAPITALS[ex.meta["country"]]
        for line in shots:
            country, capital = re.match(r"^The capital of (.+) is (.+)\.$", line).groups()
            assert CAPITALS[country] == capital and capitals_split(country) == "train"
            assert country != ex.meta["country"]
    train = get_task("capitals", split="train").examples(None)
    assert {e.meta["country"] for e in train} == set(CAPITALS) - test_countries
    assert len(get_task("capitals").examples(None)) == len(CAPITALS)


@pytest.mark.slow
@pytest.mark.real
@pytest.mark.parametrize("name", ["real/smollm2-135m-instruct", "real/gemma-3-270m"],
                         ids=["smollm2", "gemma3"])
def test_answers_start_on_a_clean_token_boundary_for_real_tokenizers(name):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(real_checkpoint(name))
    examples = (get_task("fewshot_addition", digits=2).examples(20)
                + get_task("capitals").examples(20))
    for ex in examples:
        ids, n_prompt = encode_example(tok, ex)
        prompt_ids = tok(ex.prompt, add_special_tokens=False)["input_ids"]
        # the prompt's own tokens come first, unchanged: no token straddles the boundary
        assert ids[n_prompt - len(prompt_ids):n_prompt] == prompt_ids
        assert tok.decode(ids[n_prompt:]) == ex.answer
