"""The tuned lens (docs/methods.md §3a): fitted against known answers, equal to the logit lens at
its identity initialisation, better than it on held-out prompts, cached and retrained honestly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import effective_depth as ed
from effective_depth.engine import get_adapter
from effective_depth.engine.batch import encode_batch
from effective_depth.errors import ConfigError
from effective_depth.metrics.logit_lens import logit_lens
from effective_depth.metrics.tuned_lens import (
    Translators,
    TunedLens,
    fit_translators,
    train_tuned_lens,
    tuned_lens,
)
from effective_depth.models.zoo import zoo_entry
from effective_depth.registry import estimator_specs, get_metric
from effective_depth.study import StudyConfig, run_study


@pytest.fixture(scope="module")
def add4l():
    return ed.load_model("zoo/add-4l")


def _kl(log_p, log_q):
    """KL(p ‖ q) per row, written out (independent of the lens code)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def test_translators_recover_an_exact_affine_map_of_the_final_residual(add4l):
    # residuals built by hand: h_l = M_l h_L + c_l with random, well-conditioned M_l, h_L the
    # model's real final residuals; A_l = M_l^-1, b_l = -M_l^-1 c_l decodes every layer exactly
    adapter = get_adapter(add4l)
    examples = ed.get_task("addition", digits=3, split="train").examples(200)
    batch = encode_batch(add4l.tokenizer, examples)
    h_final = adapter.clean(batch.tokens).resid[-1].reshape(-1, adapter.d_model)
    gen = torch.Generator().manual_seed(0)
    L, d = adapter.n_layers, adapter.d_model
    maps = 3 * (torch.eye(d) + 0.7 * torch.randn(L, d, d, generator=gen) / d**0.5)
    shifts = 3 * torch.randn(L, d, generator=gen)
    resid = torch.cat([torch.einsum("lde,ne->lnd", maps, h_final) + shifts[:, None], h_final[None]])

    def draw(g):
        return resid[:, torch.randint(resid.shape[1], (1024,), generator=g)]

    fitted = fit_translators(adapter, draw, steps=250, seed=0)
    loss = fitted.info["loss"]
    assert len(loss) == 250 and loss[-1] < loss[0] / 100
    with torch.no_grad():
        log_p = adapter.lens_log_probs(h_final)
        for layer in range(L):
            tuned = _kl(log_p, adapter.lens_log_probs(fitted(layer, resid[layer]))).mean()
            plain = _kl(log_p, adapter.lens_log_probs(resid[layer])).mean()
            assert plain > 0.05, (layer, plain)  # the map is far from the identity
            assert tuned < 1e-3 and tuned < plain / 100, (layer, float(tuned), float(plain))


@pytest.mark.parametrize("include_final", [False, True])
def test_identity_translators_reproduce_the_logit_lens(add4l, include_final):
    examples = ed.get_task("addition", digits=3, split="test").examples(10)
    batch = encode_batch(add4l.tokenizer, examples)
    adapter = get_adapter(add4l)
    identity = Translators.identity(adapter.n_layers, adapter.d_model)
    plain = logit_lens(add4l, batch, k=2, include_final=include_final, batch_size=4)
    tuned = tuned_lens(add4l, batch, identity, k=2, include_final=include_final, batch_size=4)
    assert isinstance(tuned, TunedLens) and tuned.kl.shape == plain.kl.shape
    torch.testing.assert_close(tuned.kl_sums, plain.kl_sums, rtol=0, atol=1e-6)
    torch.testing.assert_close(tuned.overlap_sums, plain.overlap_sums, rtol=0, atol=0)
    torch.testing.assert_close(tuned.counts, plain.counts, rtol=0, atol=0)
    # and the tuned estimators read those curves with the logit lens's rules
    specs = estimator_specs()
    for tuned_name, plain_name in (("ed_tuned_kl", "ed_kl"), ("ed_tuned_overlap", "ed_overlap")):
        rule_t = specs[tuned_name].rule(tuned, specs[tuned_name].threshold, "toolkit")
        rule_p = specs[plain_name].rule(plain, specs[plain_name].threshold, "toolkit")
        assert rule_t(None) == rule_p(None) and rule_t([0, 0, 3]) == rule_p([0, 0, 3])
    # the notebook's rule set has no tuned lens: the tuned estimators keep the toolkit rules
    hand = TunedLens(torch.tensor([[4.0, 3.0, 2.5, 1.0]]), torch.tensor([[0.0, 0.1, 0.2, 0.9]]),
                     torch.ones(1), meta={"n_layers": 4, "k": 1, "n_prompts": 1})
    for name in ("ed_tuned_kl", "ed_tuned_overlap"):
        spec = specs[name]
        assert spec.rule(hand, spec.threshold, "reference")(None) == (3, None)


def test_translators_for_another_model_are_refused(add4l):
    batch = encode_batch(add4l.tokenizer, ed.get_task("addition", digits=3).examples(2))
    with pytest.raises(ConfigError, match="for 3 blocks of width 128.*train them on this model"):
        tuned_lens(add4l, batch, Translators.identity(3, 128))


def test_held_out_tuned_kl_is_at_most_the_logit_lens_kl_at_every_layer(add4l):
    train = encode_batch(add4l.tokenizer, ed.get_task("addition", digits=3, split="train").examples(400))
    test_examples = ed.get_task("addition", digits=3, split="test").examples(60)
    held_out = encode_batch(add4l.tokenizer, test_examples)
    assert not {e.text for e in test_examples} & {e.text for e in train.examples}
    fitted = train_tuned_lens(add4l, train, steps=150, seed=0)
    assert fitted.info["cached_residuals"] and fitted.info["n_train"] == 400
    plain = logit_lens(add4l, held_out, k=1)
    tuned = tuned_lens(add4l, held_out, fitted, k=1)
    assert (tuned.kl <= plain.kl).all(), (tuned.kl.tolist(), plain.kl.tolist())
    # by a margin, not by rounding: the translators learned something at every block input
    assert (tuned.kl < 0.9 * plain.kl).all(), (tuned.kl.tolist(), plain.kl.tolist())
    # streaming (a clean pass per step, no residual cache) fits the same objective
    streamed = train_tuned_lens(add4l, train.select(list(range(100))), steps=30, seed=0, budget=0)
    assert not streamed.info["cached_residuals"] and streamed.info["tokens_per_step"] == 1024
    assert streamed.info["loss"][-1] < 0.8 * streamed.info["loss"][0]
    assert tuned_lens(add4l, held_out, streamed, k=1).kl.mean() < plain.kl.mean()


def _study(tmp_path, out, force=True, **kw):
    base = dict(model="zoo/add-2l", metrics=("logit_lens", "tuned_lens"), n_examples=6, n_boot=20,
                tuned_lens_steps=15, tuned_lens_examples=64)
    base.update(kw)
    return run_study(StudyConfig(**base), tmp_path / out, progress=False, dashboard=False,
                     force=force)


def _lens_file(path):
    return json.loads((path / "fitted" / "tuned_lens.json").read_text())


def test_study_stores_curves_estimates_and_the_cached_lens(tmp_path):
    res = _study(tmp_path, "run")
    L = res.results["model"]["n_layers"]
    entry = res.results["metrics"]["tuned_lens"]
    assert len(entry["curves"]["kl"]) == len(entry["curves"]["overlap"]) == L
    lens = entry["meta"]["lens"]
    assert lens["reused"] is False and lens["steps"] == 15 and lens["data"]["source"] == "task"
    assert lens["data"]["params"]["split"] == "train" and lens["data"]["overlap"] == 0
    assert set(lens["fingerprint"]) == {"model", "data", "settings"}
    for name in ("ed_tuned_kl", "ed_tuned_overlap"):
        est = res.results["depth"][name]
        assert est["ratio"] is None or est["ratio"] == (est["layer"] + 1) / L
    # the per-prompt curves are stored and load back
    run = ed.load_run(res.path)
    loaded = run.metric("tuned_lens")
    assert isinstance(loaded, TunedLens) and loaded.kl_sums.shape == (6, L)
    torch.testing.assert_close(loaded.kl, torch.tensor(entry["curves"]["kl"]))
    # the cache: safetensors + JSON with the loss curve and the fingerprints
    stored = _lens_file(res.path)
    assert len(stored["info"]["loss"]) == 15 and stored["fingerprint"] == lens["fingerprint"]
    assert lens["final_loss"] == stored["info"]["loss"][-1]
    raw = (res.path / "fitted" / "tuned_lens.safetensors").read_bytes()
    assert raw[:2] not in (b"\x80\x02", b"\x80\x04", b"PK")


def test_cached_lens_is_reused_and_retrained_when_a_fingerprint_changes(tmp_path):
    first = _study(tmp_path, "run")
    w0 = ed.load_run(first.path).path / "fitted" / "tuned_lens.safetensors"
    from safetensors.torch import load_file

    weights = load_file(str(w0))
    # other analysed examples (a forced rerun): same model, data and settings -> reused
    second = _study(tmp_path, "run", n_examples=5)
    lens = second.results["metrics"]["tuned_lens"]["meta"]["lens"]
    assert lens["reused"] is True
    torch.testing.assert_close(load_file(str(w0))["weight"], weights["weight"], rtol=0, atol=0)
    # other settings -> retrained
    third = _study(tmp_path, "run", n_examples=5, tuned_lens_steps=10)
    assert third.results["metrics"]["tuned_lens"]["meta"]["lens"]["reused"] is False
    assert len(_lens_file(third.path)["info"]["loss"]) == 10
    # a corrupt cache is retrained, not trusted and not a crash
    w0.write_bytes(b"not a safetensors file")
    fourth = _study(tmp_path, "run", n_examples=5, tuned_lens_steps=10)
    assert fourth.results["metrics"]["tuned_lens"]["meta"]["lens"]["reused"] is False
    assert load_file(str(w0))["weight"].shape == weights["weight"].shape


def test_changed_model_files_or_training_data_retrain_the_lens(tmp_path):
    model = tmp_path / "add-2l"
    shutil.copytree(zoo_entry("zoo/add-2l").path, model)
    data = tmp_path / "train.txt"
    data.write_text("".join(f"{a}+{b}={a + b}\n" for a, b in [(12, 34), (56, 78), (90, 11)]))
    kw = dict(model=str(model), task="addition", task_params={"digits": 2, "split": "test"},
              tuned_lens_data=str(data))
    first = _study(tmp_path, "run", **kw)
    lens = first.results["metrics"]["tuned_lens"]["meta"]["lens"]
    assert lens["data"] == {"source": "file", "path": str(data), "n": 3, "overlap": 0}
    before = _lens_file(first.path)["fingerprint"]
    # the same config and files, run again without --force: everything reused
    again = _study(tmp_path, "run", force=False, **kw)
    assert again.reused == ["logit_lens", "tuned_lens"]
    # edited training data: the run's inputs changed, and the lens is retrained on the new data
    data.write_text(data.read_text() + "23+45=68\n")
    edited = _study(tmp_path, "run", **kw)
    lens = edited.results["metrics"]["tuned_lens"]["meta"]["lens"]
    assert lens["reused"] is False and lens["data"]["n"] == 4
    after = _lens_file(edited.path)["fingerprint"]
    assert after["data"] != before["data"] and after["model"] == before["model"]
    # edited model files (here only the card, which the fingerprint covers): retrained
    card = model / "card.json"
    card.write_text(card.read_text() + "\n")
    changed = _study(tmp_path, "run", **kw)
    assert changed.results["metrics"]["tuned_lens"]["meta"]["lens"]["reused"] is False
    assert _lens_file(changed.path)["fingerprint"]["model"] != after["model"]


def test_training_data_must_exist_and_be_held_out(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("12+34=\n56+78=\n")
    # asked for explicitly with no train split: an error naming the fix, nothing written
    with pytest.raises(ConfigError, match="has no train split.*tuned_lens_data"):
        run_study(StudyConfig(model="zoo/add-2l", task="prompts", task_params={"path": str(prompts)},
                              metrics=("tuned_lens",)), tmp_path / "a", progress=False, dashboard=False)
    assert not (tmp_path / "a" / "config.json").exists()
    # analysed examples that are also training examples (split=all): a warning says how many
    res = _study(tmp_path, "b", task="addition", task_params={"digits": 3, "split": "all"})
    overlap = res.results["metrics"]["tuned_lens"]["meta"]["lens"]["data"]["overlap"]
    assert overlap > 0
    warnings = [w for w in res.results["warnings"] if w["code"] == "train_overlap"]
    assert len(warnings) == 1 and f"{overlap} of the 6 analysed examples" in warnings[0]["message"]
    with pytest.raises(ConfigError, match="tuned_lens_steps must be >= 1"):
        StudyConfig(tuned_lens_steps=0)


def test_default_metrics_skip_the_tuned_lens_without_training_data(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n"
                               for a, b in [(12, 34), (56, 78), (90, 11), (23, 45), (67, 89)]))
    cfg = StudyConfig(model="zoo/add-2l", task="prompts", task_params={"path": str(prompts)},
                      n_examples=5, n_boot=10, ig_steps=4, map_examples=1, n_reference=2)
    assert "tuned_lens" in cfg.metrics
    res = run_study(cfg, tmp_path / "run", progress=False, dashboard=False)
    assert "tuned_lens" not in res.results["completed"] and "logit_lens" in res.results["completed"]
    assert res.results["settings"]["skipped_metrics"] == ["tuned_lens"]
    assert any(w["code"] == "no_train_data" and "tuned_lens" in w["message"]
               for w in res.results["warnings"])


def test_overlap_at_chance_names_the_tuned_estimator():
    spec = estimator_specs()["ed_tuned_overlap"]
    result = TunedLens(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2), meta={"k": 5})
    (code, message), = spec.checks(result, 0.3, 24)
    assert code == "overlap_at_chance" and message.startswith("ed_tuned_overlap:")
    assert spec.checks(result, 0.3, 1000) == []
    assert get_metric("tuned_lens").fit.name == "tuned_lens"
