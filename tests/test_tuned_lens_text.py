"""The tuned lens fitted on text independent of the task (docs/methods.md §3a, ``fit_on``): text the
model samples itself (seeded, the model's own distribution) or a plain-text file cut into its
tokens; the source is recorded, distinguishes cached fits, and a missing or short file is an
error that says so."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch

import effective_depth as ed
from effective_depth.engine import get_adapter
from effective_depth.errors import ConfigError
from effective_depth.metrics.registry import parse_setting
from effective_depth.metrics.tuned_lens import (
    MAX_FIT_POSITIONS,
    _sample_rows,
    sample_text,
    text_file_batch,
    text_sequences,
)
from effective_depth.study import StudyConfig, run_study


@pytest.fixture(scope="module")
def add2l():
    return ed.load_model("zoo/add-2l")


def _sums(n: int, seed: int = 0) -> str:
    r = random.Random(seed)
    return "".join(f"{a}+{b}={a + b} " for a, b in ((r.randrange(1000), r.randrange(1000))
                                                    for _ in range(n)))


def test_sampled_text_is_seeded_and_drawn_from_the_models_own_distribution(add2l):
    batch, info = sample_text(add2l, seed=0)
    # the zoo's context is 64 tokens: 160 sequences give 8,192 fit positions after validation
    assert text_sequences(128) == 80 and text_sequences(64) == 160
    assert tuple(batch.tokens.shape) == (160, 64) and batch.lengths.tolist() == [64] * 160
    assert MAX_FIT_POSITIONS == 0.8 * 160 * 64
    # the zoo's 24-token vocabulary spells none of the text starts: every sequence starts at BOS
    assert info["starts"] == [""] and info["start_tokens"] == [[add2l.tokenizer.bos_token_id]]
    assert (batch.tokens[:, 0] == add2l.tokenizer.bos_token_id).all()
    assert info["fit_on"] == "sampled" and info["seed"] == 0 and info["positions"] == 160 * 64
    # deterministic under a seed; another seed, other text
    again, _ = sample_text(add2l, seed=0)
    assert torch.equal(again.tokens, batch.tokens)
    other, _ = sample_text(add2l, seed=1)
    assert (other.tokens != batch.tokens).float().mean() > 0.3
    # the KV cache changes nothing
    plain, _ = sample_text(add2l, seed=0, kv_cache=False)
    assert torch.equal(plain.tokens, batch.tokens)
    # token t is the inverse CDF of the model's next-token distribution at the seeded uniform,
    # recomputed here with a full forward per prefix
    u = torch.rand(160, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = [0, 7, 99]
    for t in (1, 2, 30, 63):
        with torch.no_grad():
            logits = add2l(batch.tokens[rows, :t], return_type="logits")[:, -1].double()
        cdf = torch.softmax(logits, -1).cumsum(-1)
        want = [int((cdf[i] < u[r, t] * cdf[i, -1]).sum()) for i, r in enumerate(rows)]
        assert batch.tokens[rows, t].tolist() == want
    # at a temperature near 0 the samples are the greedy continuation
    cold, _ = sample_text(add2l, seed=3, sequences=2, length=12, temperature=1e-4)
    seq = cold.tokens[:, :1]
    with torch.no_grad():
        for _ in range(11):
            seq = torch.cat([seq, add2l(seq, return_type="logits")[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(seq, cold.tokens)


def test_rows_with_longer_starts_read_them_while_the_others_sample(add2l):
    adapter = get_adapter(add2l)
    u = torch.rand(3, 20, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    starts = [[1], [1, 5, 6], [1, 7]]
    together = _sample_rows(adapter, starts, u, 20, 1.0, 24, True)
    alone = torch.cat([_sample_rows(adapter, [s], u[i:i + 1], 20, 1.0, 24, True)
                       for i, s in enumerate(starts)])
    assert torch.equal(together, alone)
    assert together[1, :3].tolist() == [1, 5, 6] and together[2, :2].tolist() == [1, 7]


def test_a_text_file_is_cut_into_consecutive_chunks_of_the_models_tokens(add2l, tmp_path):
    path = tmp_path / "sums.txt"
    path.write_text(_sums(1500))
    batch, info = text_file_batch(add2l, str(path))
    ids = add2l.tokenizer(path.read_text(), add_special_tokens=False)["input_ids"]
    bos = add2l.tokenizer.bos_token_id  # the zoo's tokenizer puts its BOS in front of any text
    assert tuple(batch.tokens.shape) == (160, 64)
    assert batch.tokens[0].tolist() == [bos] + ids[:63]
    assert batch.tokens[1].tolist() == [bos] + ids[63:126]
    assert batch.tokens[159].tolist() == [bos] + ids[159 * 63:160 * 63]
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["file_tokens_used"] == 160 * 63 and info["fit_on"] == "file"
    # too little text: how much is needed
    short = tmp_path / "short.txt"
    short.write_text(_sums(100))
    with pytest.raises(ConfigError, match=r"short.txt holds \d+ tokens .* needs at least 10080 "
                                          r"\(160 chunks of 63 tokens"):
        text_file_batch(add2l, str(short))
    with pytest.raises(ConfigError, match="file:.*missing.txt: no such file"):
        text_file_batch(add2l, str(tmp_path / "missing.txt"))


def test_the_option_its_values_and_the_command_line():
    assert StudyConfig().options["tuned_lens"].fit_on == "task"
    assert parse_setting("tuned_lens.fit_on", "sampled") == ("tuned_lens", "fit_on", "sampled")
    assert parse_setting("tuned_lens.fit_on", "file:a=b.txt")[2] == "file:a=b.txt"
    cfg = StudyConfig.from_dict({"tuned_lens.fit_on": "file:corpus.txt"})
    assert cfg.options["tuned_lens"].source == ("file", "corpus.txt")
    for bad in ("smapled", "file:", "file: ", "tasks"):
        with pytest.raises(ConfigError, match="tuned_lens.fit_on must be one of task, sampled, "
                                              "file:PATH"):
            StudyConfig.from_dict({"tuned_lens.fit_on": bad})
    with pytest.raises(ConfigError, match="tuned_lens.data is a prompts file read with "
                                          "tuned_lens.fit_on=task"):
        StudyConfig.from_dict({"tuned_lens.fit_on": "sampled", "tuned_lens.data": "p.txt"})


def test_the_planner_counts_the_sampling():
    from types import SimpleNamespace

    from effective_depth.study.planner import count_work

    cfg = SimpleNamespace(n_layers=30, d_model=576, n_heads=9, d_head=64, d_vocab=49152, d_mlp=1536)

    def work(fit_on):
        config = StudyConfig(metrics=("logit_lens", "tuned_lens"),
                             options={"tuned_lens": {"fit_on": fit_on}})
        return count_work(cfg, [40] * 20, [39] * 20, [[]] * 20, config)["tuned_lens"]

    task, sampled, text = work("task"), work("sampled"), work("file:x.txt")
    # 80 sequences of 128 tokens: 64 fit (8,192 positions), validation capped at 512 positions
    assert "fit_on=sampled: 80 sequences of 128 tokens, sampled first" in sampled.note
    assert text.block_tokens == task.block_tokens  # 8192 + 512 positions either way
    assert sampled.block_tokens == text.block_tokens + 30 * 80 * 128  # one token a row and step
    assert sampled.lens_rows == text.lens_rows + 80 * 128


def _study(tmp_path, out, force=True, **kw):
    base = {"model": "zoo/add-2l", "metrics": ("logit_lens", "tuned_lens"), "n_examples": 6,
            "n_boot": 20, "tuned_lens.steps": 5, "tuned_lens.examples": 64, **kw}
    return run_study(StudyConfig.from_dict(base), tmp_path / out, progress=False, dashboard=False,
                     force=force)


def _lens(res):
    return res.results["metrics"]["tuned_lens"]["meta"]["lens"]


def _weights(res):
    from safetensors.torch import load_file

    return load_file(str(res.path / "fitted" / "tuned_lens.safetensors"))["weight"]


@pytest.mark.slow
def test_a_sampled_fit_is_recorded_and_never_mistaken_for_the_task_fit(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFECTIVE_DEPTH_FIT_CACHE", "off")  # this run directory's cache only
    task = _study(tmp_path, "run")
    task_w = _weights(task)
    sampled = _study(tmp_path, "run", **{"tuned_lens.fit_on": "sampled"})
    lens = _lens(sampled)
    assert lens["reused"] is False
    data = lens["data"]
    assert data["fit_on"] == "sampled" and data["seed"] == 0 and data["sequences"] == 160
    assert data["tokens_per_sequence"] == 64 and data["starts"] == [""] and data["overlap"] == 0
    # the fit took the sampled text: 128 of its 160 sequences, 8,192 positions (the task fit's cap)
    assert lens["n_train"] == 160 and lens["n_fit"] == 128 and lens["fit_positions"] == 8192
    assert lens["fingerprint"]["settings"]["fit_on"]["kind"] == "sampled"
    assert _lens(task)["fingerprint"]["settings"]["fit_on"] == {"kind": "task"}
    assert lens["fingerprint"]["data"] != _lens(task)["fingerprint"]["data"]
    assert not torch.allclose(_weights(sampled), task_w)
    config = json.loads((sampled.path / "config.json").read_text())
    assert config["config"]["options"]["tuned_lens"]["fit_on"] == "sampled"
    # the same source again: the text is the same, the fit is reused, the translators identical
    again = _study(tmp_path, "run", n_examples=5, **{"tuned_lens.fit_on": "sampled"})
    assert _lens(again)["reused"] is True and torch.equal(_weights(again), _weights(sampled))
    # back to the task: the sampled fit is not taken for it
    back = _study(tmp_path, "run", n_examples=5)
    assert _lens(back)["reused"] is False and _lens(back)["data"]["fit_on"] == "task"
    torch.testing.assert_close(_weights(back), task_w)


@pytest.mark.slow
def test_a_file_fit_needs_the_file_and_runs_on_a_task_without_train_split(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFECTIVE_DEPTH_FIT_CACHE", "off")
    prompts = tmp_path / "p.txt"
    prompts.write_text("12+34=\n56+78=\n90+11=\n")
    kw = {"task": "prompts", "task_params": {"path": str(prompts)}, "n_examples": 3}
    missing = tmp_path / "corpus.txt"
    with pytest.raises(ConfigError, match=f"file:{missing}: no such file"):
        _study(tmp_path, "a", **kw, **{"tuned_lens.fit_on": f"file:{missing}"})
    assert not (tmp_path / "a" / "config.json").exists()
    missing.write_text(_sums(100))
    with pytest.raises(ConfigError, match="needs at least 10080"):
        _study(tmp_path, "a", **kw, **{"tuned_lens.fit_on": f"file:{missing}"})
    assert not (tmp_path / "a" / "config.json").exists()
    missing.write_text(_sums(1500))
    res = _study(tmp_path, "a", **kw, **{"tuned_lens.fit_on": f"file:{missing}"})
    data = _lens(res)["data"]
    digest = hashlib.sha256(missing.read_bytes()).hexdigest()
    assert data["fit_on"] == "file" and data["path"] == str(missing) and data["sha256"] == digest
    assert _lens(res)["fingerprint"]["settings"]["fit_on"] == {"kind": "file", "sha256": digest,
                                                               "length": 128}
    # another text in the file: its hash changes, the fit is redone
    missing.write_text(_sums(1500, seed=1))
    edited = _study(tmp_path, "a", **kw, **{"tuned_lens.fit_on": f"file:{missing}"})
    assert _lens(edited)["reused"] is False and _lens(edited)["data"]["sha256"] != digest
