"""``positions="query"`` (docs/methods.md, "Positions"): the position-averaged measurements read
only the asked example of a few-shot prompt. Where it starts, in tokens; that the masks hold
exactly those positions; that it can change an estimate; and the errors when prompts do not say."""

from __future__ import annotations

import random

import pytest
import torch

from effective_depth.analysis.estimation import estimate_all
from effective_depth.engine.batch import encode_batch, measured_mask, query_starts
from effective_depth.errors import ConfigError
from effective_depth.metrics.contributions import contributions
from effective_depth.metrics.logit_lens import logit_lens
from effective_depth.metrics.skip_effects import skip_effects
from effective_depth.models import load_model
from effective_depth.models.tokenizer import build_char_tokenizer
from effective_depth.study import StudyConfig
from effective_depth.tasks import get_task
from effective_depth.tasks.base import Example


@pytest.fixture(scope="module")
def add4():
    return load_model("zoo/add-4l")


def _junk_then_sum(n: int, seed: int = 0) -> list[Example]:
    """Digit noise (the 'context'), then a sum the zoo model was trained on (the query)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ctx = "".join(str(rng.randint(0, 9)) for _ in range(30))
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        out.append(Example(ctx + f"{a}+{b}=", str(a + b), {"query_start": len(ctx)}))
    return out


def test_query_start_is_the_first_token_of_the_asked_example():
    tok = build_char_tokenizer()  # one token per character ('\n' unknown: accepted as lossy)
    examples = get_task("fewshot_addition", digits=2, shots=2, seed=1).examples(4)
    batch = encode_batch(tok, examples, allow_lossy=True)
    front = 1  # the char tokenizer's BOS
    for b, ex in enumerate(examples):
        q = int(batch.query_start[b])
        assert q == front + ex.meta["query_start"]
        assert "".join(batch.str_tokens[b][q:]) == ex.prompt[ex.meta["query_start"]:] + ex.answer
    # a sub-batch keeps its rows' starts
    assert batch.select([2, 0]).query_start.tolist() == [int(batch.query_start[2]),
                                                         int(batch.query_start[0])]


def test_measured_mask_keeps_the_query_positions_only():
    lengths, starts = torch.tensor([6, 4]), torch.tensor([3, 1])
    mask = measured_mask(lengths, 7, skip_front=1, include_front=False, query_start=starts)
    assert mask.tolist() == [[False, False, False, True, True, True, False],
                             [False, True, True, True, False, False, False]]
    assert measured_mask(lengths, 7, 1, False).sum().item() == 5 + 3


def test_prompts_that_do_not_mark_their_query_are_an_error(add4):
    plain = encode_batch(add4.tokenizer, get_task("addition", digits=2).examples(3))
    assert plain.query_start is None
    assert query_starts(plain, "all") is None
    with pytest.raises(ConfigError, match="query_start.*positions='all'"):
        logit_lens(add4, plain, positions="query")
    with pytest.raises(ConfigError, match="positions must be one of all, query"):
        contributions(add4, plain, positions="answer")
    with pytest.raises(ConfigError, match="positions must be one of all, query"):
        StudyConfig(model="zoo/add-4l", positions="prompt")


def test_query_positions_are_what_every_aggregation_counts(add4):
    batch = encode_batch(add4.tokenizer, _junk_then_sum(4))
    n_query = (batch.lengths - batch.query_start).float()
    lens = logit_lens(add4, batch, positions="query")
    assert torch.equal(lens.counts, n_query) and lens.meta["positions"] == "query"
    contrib = contributions(add4, batch, positions="query")
    assert torch.equal(contrib.counts, n_query)
    cur = skip_effects(add4, batch, positions="query", mode="current")
    assert torch.equal(cur.counts, n_query[:, None].expand(-1, 4))
    # future mode: measured at positions >= max(cut, query start)
    cuts = [[8, 35]] * 4
    fut = skip_effects(add4, batch, positions="query", cuts=cuts)
    want = sum((batch.lengths - torch.clamp(batch.query_start, min=t)).float() for t in (8, 35))
    assert torch.equal(fut.counts[:, 0], want)
    # a query that starts at 0 is the whole prompt: the same numbers as positions="all"
    whole = [Example(e.prompt, e.answer, {"query_start": 0}) for e in _junk_then_sum(4)]
    batch0 = encode_batch(add4.tokenizer, whole)
    a, q = logit_lens(add4, batch0), logit_lens(add4, batch0, positions="query")
    assert torch.equal(a.kl_sums, q.kl_sums) and torch.equal(a.counts, q.counts)


def test_the_restriction_can_change_an_estimate(add4):
    # digit noise dominates the positions; on the sum alone the top-5 overlap of the lens
    # reaches 0.5 one block later: ed_overlap 1 -> 2 of 4 blocks (ed_kl, ed_skip unchanged)
    batch = encode_batch(add4.tokenizer, _junk_then_sum(8))
    est = {}
    for pos in ("all", "query"):
        res = {"logit_lens": logit_lens(add4, batch, positions=pos),
               "skip_effects": skip_effects(add4, batch, positions=pos, mode="current")}
        est[pos] = {k: v.layer for k, v in estimate_all(res, n_boot=50).items()}
    assert est["all"] == {"ed_kl": 3, "ed_overlap": 1, "ed_skip": 3}
    assert est["query"] == {"ed_kl": 3, "ed_overlap": 2, "ed_skip": 3}


def test_a_study_records_the_positions_it_measured(tmp_path):
    import json

    from effective_depth.errors import ResultsError
    from effective_depth.store.results import load_run
    from effective_depth.study import run_study

    config = StudyConfig(model="zoo/add-2l", task="fewshot_addition", task_params={"shots": 2},
                         metrics=("logit_lens",), n_examples=4, n_boot=20,
                         allow_lossy_tokenization=True, positions="query")
    run_study(config, tmp_path / "q", progress=False, dashboard=False)
    stored = json.loads((tmp_path / "q" / "results.json").read_text())
    assert stored["metrics"]["logit_lens"]["meta"]["positions"] == "query"
    assert json.loads((tmp_path / "q" / "config.json").read_text())["config"]["positions"] == "query"
    inputs = json.loads((tmp_path / "q" / "inputs.json").read_text())["examples"]
    counts = load_run(tmp_path / "q").metric("logit_lens").counts.tolist()
    assert counts == [len(e["tokens"]) - e["query_start"] for e in inputs]
    # the same directory under positions="all" is another config, never reused silently
    with pytest.raises(ResultsError, match="positions"):
        run_study(StudyConfig(**{**config.__dict__, "positions": "all"}), tmp_path / "q",
                  progress=False, dashboard=False)
    # a task whose prompts do not mark their query fails before anything is written
    with pytest.raises(ConfigError, match="query_start"):
        run_study(StudyConfig(model="zoo/add-2l", metrics=("logit_lens",), n_examples=2,
                              positions="query"), tmp_path / "plain", progress=False,
                  dashboard=False)
    assert not (tmp_path / "plain" / "results.json").exists()
