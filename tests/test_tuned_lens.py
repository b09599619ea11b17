"""The tuned lens (docs/methods.md §3a): fitted against known answers, equal to the logit lens at
its identity initialisation, better than it on held-out prompts, cached and retrained honestly."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

import effective_depth as ed
from effective_depth.engine import get_adapter
from effective_depth.engine.batch import encode_batch, measured_mask
from effective_depth.errors import ConfigError
from effective_depth.metrics.logit_lens import logit_lens
from effective_depth.metrics.registry import estimator_specs, get_metric
from effective_depth.metrics.tuned_lens import (
    Translators,
    TunedLensResult,
    _Moments,
    auto_steps,
    fit_translators,
    heldout_check,
    least_squares_translators,
    lens_fingerprint,
    train_tuned_lens,
    tuned_lens,
)
from effective_depth.models.zoo import zoo_entry
from effective_depth.study import StudyConfig, run_study
from tests.helpers import save_tiny_checkpoint


@pytest.fixture(scope="module")
def add4l():
    return ed.load_model("zoo/add-4l")


def _kl(log_p, log_q):
    """KL(p ‖ q) per row, written out (independent of the lens code)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@pytest.mark.slow
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

    # the closed form (no ridge) solves it exactly; KL fine-tuning from the identity gets there too
    moments = _Moments(L, d, "cpu")
    moments.add(adapter, resid)
    closed, losses = least_squares_translators(moments, ridge=0.0)
    assert losses["fit"] < 1e-6 * losses["anchor"]
    torch.testing.assert_close(closed.weight, torch.linalg.inv(maps), rtol=0, atol=1e-3)
    fitted = fit_translators(adapter, draw, steps=250, lr=3e-3, seed=0)
    loss = fitted.info["loss"]
    assert len(loss) == 250 and loss[-1] < loss[0] / 100
    with torch.no_grad():
        log_p = adapter.lens_log_probs(h_final)
        for layer in range(L):
            plain = _kl(log_p, adapter.lens_log_probs(resid[layer])).mean()
            assert plain > 0.05, (layer, plain)  # the map is far from the identity
            for lens in (closed, fitted):
                tuned = _kl(log_p, adapter.lens_log_probs(lens(layer, resid[layer]))).mean()
                assert tuned < 1e-3 and tuned < plain / 100, (layer, float(tuned), float(plain))


@pytest.mark.slow
@pytest.mark.parametrize("include_final", [False, True])
def test_identity_translators_reproduce_the_logit_lens(add4l, include_final):
    examples = ed.get_task("addition", digits=3, split="test").examples(10)
    batch = encode_batch(add4l.tokenizer, examples)
    adapter = get_adapter(add4l)
    identity = Translators.identity(adapter.n_layers, adapter.d_model)
    plain = logit_lens(add4l, batch, k=2, include_final=include_final, batch_size=4)
    tuned = tuned_lens(add4l, batch, identity, k=2, include_final=include_final, batch_size=4)
    assert isinstance(tuned, TunedLensResult) and tuned.kl.shape == plain.kl.shape
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
    hand = TunedLensResult(torch.tensor([[4.0, 3.0, 2.5, 1.0]]), torch.tensor([[0.0, 0.1, 0.2, 0.9]]),
                     torch.ones(1), meta={"n_layers": 4, "k": 1, "n_prompts": 1})
    for name in ("ed_tuned_kl", "ed_tuned_overlap"):
        spec = specs[name]
        assert spec.rule(hand, spec.threshold, "reference")(None) == (3, None)


@pytest.mark.slow
def test_translators_for_another_model_are_refused(add4l):
    batch = encode_batch(add4l.tokenizer, ed.get_task("addition", digits=3).examples(2))
    with pytest.raises(ConfigError, match="for 3 blocks of width 128.*train them on this model"):
        tuned_lens(add4l, batch, Translators.identity(3, 128))


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Two tiny Llamas of one shape and other weights (seeds 0 and 1), saved and loaded, with a
    training batch; the first also in bfloat16 and under the bridge backend."""
    root = tmp_path_factory.mktemp("twins")
    one = save_tiny_checkpoint("llama", root / "one", n_layers=3, seed=0)
    two = save_tiny_checkpoint("llama", root / "two", n_layers=3, seed=1)
    models = {"one": ed.load_model(one, device="cpu"), "two": ed.load_model(two, device="cpu"),
              "one-bf16": ed.load_model(one, device="cpu", dtype="bfloat16"),
              "one-bridge": ed.load_model(one, device="cpu", backend="bridge")}
    examples = ed.get_task("addition", digits=2, split="train").examples(24)
    return models, encode_batch(models["one"].tokenizer, examples)


def test_translators_record_the_model_they_were_fitted_on(twins, caplog):
    from safetensors.torch import load, save

    models, batch = twins
    one, two = models["one"], models["two"]
    fingerprint = lens_fingerprint(one)
    assert fingerprint != lens_fingerprint(two)  # same shapes, other weights
    # the lens reads the same numbers in bfloat16 and under the other backend: same fingerprint
    assert lens_fingerprint(models["one-bf16"]) == lens_fingerprint(models["one-bridge"]) \
        == fingerprint
    fitted = train_tuned_lens(one, batch, steps=2, seed=0)
    record = fitted.info["fitted_on"]
    assert record == {"name": one.effective_depth_source["name"], "backend": "hooked",
                      "dtype": "float32", "n_layers": 3, "d_model": 64,
                      "d_vocab": get_adapter(one).d_vocab, "lens_sha256": fingerprint}
    # saved as the study saves them (safetensors + JSON info) and loaded back: the record stays
    saved = Translators.from_tensors(load(save(fitted.tensors())),
                                     json.loads(json.dumps(fitted.info)))
    for translators in (fitted, saved):
        with pytest.raises(ConfigError) as err:
            tuned_lens(two, batch, translators, k=1)
        text = str(err.value)
        name_one, name_two = (m.effective_depth_source["name"] for m in (one, two))
        assert name_one != name_two
        assert (f"fitted on {name_one} (hooked, float32, lens fingerprint {fingerprint[:12]}), "
                f"but are being used on {name_two} (hooked, float32, lens fingerprint "
                f"{lens_fingerprint(two)[:12]})") in text
        assert text.endswith("train them on this model")
        caplog.clear()
        want = tuned_lens(one, batch, translators, k=1)
        for other in ("one-bf16", "one-bridge"):
            tuned_lens(models[other], batch, translators, k=1)
        assert "carry no record" not in caplog.text
    # translators saved before the record existed: used, with a warning
    old = Translators(saved.weight, saved.bias,
                      {k: v for k, v in saved.info.items() if k != "fitted_on"})
    caplog.clear()
    with caplog.at_level("WARNING", logger="effective_depth"):
        got = tuned_lens(two, batch, old, k=1)
    assert "carry no record of the model they were fitted on" in caplog.text
    assert one.effective_depth_source["name"] not in caplog.text  # it cannot know
    assert got.kl.shape == want.kl.shape
    # the identity is the logit lens of every model of its shape: no record, no warning
    caplog.clear()
    with caplog.at_level("WARNING", logger="effective_depth"):
        tuned_lens(two, batch, Translators.identity(3, 64), k=1)
    assert caplog.text == ""


@pytest.mark.slow
def test_held_out_tuned_kl_is_at_most_the_logit_lens_kl_at_every_layer(add4l):
    train = encode_batch(add4l.tokenizer, ed.get_task("addition", digits=3, split="train").examples(400))
    test_examples = ed.get_task("addition", digits=3, split="test").examples(60)
    held_out = encode_batch(add4l.tokenizer, test_examples)
    assert not {e.text for e in test_examples} & {e.text for e in train.examples}
    plain = logit_lens(add4l, held_out, k=1)
    closed = train_tuned_lens(add4l, train, steps=0, seed=0)  # the closed-form fit alone
    fitted = train_tuned_lens(add4l, train, steps=150, seed=0)
    assert fitted.info["cached_residuals"] and fitted.info["n_train"] == 400
    # a fifth of the prompts set aside for validation, of which enough for 4 x 128 positions read
    assert fitted.info["n_fit"] == 320 and fitted.info["validation"]["positions"] == 128
    assert 128 / 12 < fitted.info["validation"]["n_prompts"] <= 80
    assert closed.info["steps"] == 0 and closed.info["method"] == "least squares"
    for lens in (closed, fitted):
        assert lens.info["loss_fell"] and lens.info["identity_layers"] == []
        tuned = tuned_lens(add4l, held_out, lens, k=1)
        assert (tuned.kl <= plain.kl).all(), (tuned.kl.tolist(), plain.kl.tolist())
        # by a margin, not by rounding: the translators learned something at every block input
        assert (tuned.kl < 0.9 * plain.kl).all(), (tuned.kl.tolist(), plain.kl.tolist())
    # fine-tuning improves on its start at every block input (validation prompts)
    val = fitted.info["validation"]
    assert all(t < s for t, s in zip(val["tuned_kl"], val["least_squares_kl"])), val
    assert all(s < lg for s, lg in zip(val["least_squares_kl"], val["logit_kl"])), val
    # streaming (a clean pass per step, no residual cache) fits the same objective
    streamed = train_tuned_lens(add4l, train.select(list(range(100))), steps=30, seed=0, budget=0)
    assert not streamed.info["cached_residuals"]
    assert streamed.info["tokens_per_step"] == min(1024, streamed.info["fit_positions"])
    assert streamed.info["loss"][-1] < streamed.info["loss"][0]
    assert tuned_lens(add4l, held_out, streamed, k=1).kl.mean() < plain.kl.mean()


@pytest.mark.slow
def test_fine_tuning_stops_when_the_validation_kl_stops_falling(add4l):
    adapter = get_adapter(add4l)
    train = encode_batch(add4l.tokenizer, ed.get_task("addition", digits=3, split="train").examples(60))
    resid = adapter.clean(train.tokens).resid[:, measured_mask(train.lengths, train.width)]
    # validation on the training positions themselves, a learning rate of 0: nothing improves
    fitted = fit_translators(adapter, lambda g: resid, steps=200, lr=0.0, validation=resid,
                             eval_every=5, patience=2)
    assert fitted.info["stopped"] == "converged" and fitted.info["steps"] == 10
    torch.testing.assert_close(fitted.weight, Translators.identity(4, adapter.d_model).weight)
    # the budget: real vocabularies get the closed form alone, the zoo the full 250 steps
    assert auto_steps(30, 576, 49152, 1024) == 0 and auto_steps(18, 640, 262144, 1024) == 0
    assert auto_steps(4, adapter.d_model, adapter.d_vocab, 1024) == 250


def _study(tmp_path, out, force=True, **kw):
    base = {"model": "zoo/add-2l", "metrics": ("logit_lens", "tuned_lens"), "n_examples": 6,
            "n_boot": 20, "tuned_lens.steps": 15, "tuned_lens.examples": 64, **kw}
    return run_study(StudyConfig.from_dict(base), tmp_path / out, progress=False, dashboard=False,
                     force=force)


def _lens_file(path):
    return json.loads((path / "fitted" / "tuned_lens.json").read_text())


@pytest.mark.slow
def test_study_stores_curves_estimates_and_the_cached_lens(tmp_path):
    res = _study(tmp_path, "run")
    L = res.results["model"]["n_layers"]
    entry = res.results["metrics"]["tuned_lens"]
    assert len(entry["curves"]["kl"]) == len(entry["curves"]["overlap"]) == L
    lens = entry["meta"]["lens"]
    assert lens["reused"] is False and lens["max_steps"] == 15 and lens["data"]["source"] == "task"
    assert 1 <= lens["steps"] <= 15 and lens["ridge"] == 0.01
    # the held-out check: both lenses' KL per block input on the analysed prompts
    heldout = entry["meta"]["heldout"]
    assert len(heldout["tuned_kl"]) == len(heldout["logit_kl"]) == L and heldout["n_prompts"] == 6
    torch.testing.assert_close(torch.tensor(heldout["logit_kl"]),
                               torch.tensor(res.results["metrics"]["logit_lens"]["curves"]["kl"][:L]),
                               rtol=0, atol=1e-5)
    assert heldout["unfit"] == bool(heldout["worse_blocks"])
    assert lens["data"]["params"]["split"] == "train" and lens["data"]["overlap"] == 0
    assert set(lens["fingerprint"]) == {"model", "data", "settings"}
    assert lens["fitted_on"]["name"] == "zoo/add-2l" and len(lens["fitted_on"]["lens_sha256"]) == 64
    for name in ("ed_tuned_kl", "ed_tuned_overlap"):
        est = res.results["depth"][name]
        assert est["ratio"] is None or est["ratio"] == (est["layer"] + 1) / L
    # the per-prompt curves are stored and load back
    run = ed.load_run(res.path)
    loaded = run.metric("tuned_lens")
    assert isinstance(loaded, TunedLensResult) and loaded.kl_sums.shape == (6, L)
    torch.testing.assert_close(loaded.kl, torch.tensor(entry["curves"]["kl"]))
    # the cache: safetensors + JSON with the loss curve and the fingerprints
    stored = _lens_file(res.path)
    assert len(stored["info"]["loss"]) == lens["steps"] and stored["fingerprint"] == lens["fingerprint"]
    assert stored["info"]["fitted_on"] == lens["fitted_on"]
    assert lens["final_loss"] == stored["info"]["loss"][-1]
    raw = (res.path / "fitted" / "tuned_lens.safetensors").read_bytes()
    assert raw[:2] not in (b"\x80\x02", b"\x80\x04", b"PK")


@pytest.mark.slow
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
    third = _study(tmp_path, "run", n_examples=5, **{"tuned_lens.steps": 10})
    assert third.results["metrics"]["tuned_lens"]["meta"]["lens"]["reused"] is False
    assert _lens_file(third.path)["info"]["max_steps"] == 10
    # a corrupt cache is retrained, not trusted and not a crash
    w0.write_bytes(b"not a safetensors file")
    fourth = _study(tmp_path, "run", n_examples=5, **{"tuned_lens.steps": 10})
    assert fourth.results["metrics"]["tuned_lens"]["meta"]["lens"]["reused"] is False
    assert load_file(str(w0))["weight"].shape == weights["weight"].shape


@pytest.mark.slow
def test_changed_model_files_or_training_data_retrain_the_lens(tmp_path):
    model = tmp_path / "add-2l"
    shutil.copytree(zoo_entry("zoo/add-2l").path, model)
    data = tmp_path / "train.txt"
    data.write_text("".join(f"{a}+{b}={a + b}\n" for a, b in [(12, 34), (56, 78), (90, 11)]))
    kw = dict(model=str(model), task="addition", task_params={"digits": 2, "split": "test"},
              **{"tuned_lens.data": str(data)})
    first = _study(tmp_path, "run", **kw)
    lens = first.results["metrics"]["tuned_lens"]["meta"]["lens"]
    assert lens["data"] == {"fit_on": "task", "source": "file", "path": str(data), "n": 3,
                            "overlap": 0}
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


@pytest.mark.slow
def test_training_data_must_exist_and_be_held_out(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("12+34=\n56+78=\n")
    # asked for explicitly with no train split: an error naming the fix, nothing written
    with pytest.raises(ConfigError, match="has no train split.*tuned_lens.data"):
        run_study(StudyConfig(model="zoo/add-2l", task="prompts", task_params={"path": str(prompts)},
                              metrics=("tuned_lens",)), tmp_path / "a", progress=False, dashboard=False)
    assert not (tmp_path / "a" / "config.json").exists()
    # analysed examples that are also training examples (split=all): a warning says how many
    res = _study(tmp_path, "b", task="addition", task_params={"digits": 3, "split": "all"})
    overlap = res.results["metrics"]["tuned_lens"]["meta"]["lens"]["data"]["overlap"]
    assert overlap > 0
    warnings = [w for w in res.results["warnings"] if w["code"] == "train_overlap"]
    assert len(warnings) == 1 and f"{overlap} of the 6 analysed examples" in warnings[0]["message"]
    with pytest.raises(ConfigError, match="tuned_lens.steps must be >= 0"):
        StudyConfig(options={"tuned_lens": {"steps": -1}})
    with pytest.raises(ConfigError, match="tuned_lens.ridge must be >= 0"):
        StudyConfig(options={"tuned_lens": {"ridge": -0.1}})


@pytest.mark.slow
def test_default_metrics_skip_the_tuned_lens_without_training_data(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n"
                               for a, b in [(12, 34), (56, 78), (90, 11), (23, 45), (67, 89)]))
    cfg = StudyConfig(model="zoo/add-2l", task="prompts", task_params={"path": str(prompts)},
                      n_examples=5, n_boot=10,
                      options={"integrated_gradients": {"steps": 4, "map_examples": 1},
                               "erasure": {"map_examples": 1, "n_reference": 2}})
    assert "tuned_lens" in cfg.metrics
    res = run_study(cfg, tmp_path / "run", progress=False, dashboard=False)
    assert "tuned_lens" not in res.results["completed"] and "logit_lens" in res.results["completed"]
    assert res.results["settings"]["skipped_metrics"] == ["tuned_lens"]
    assert any(w["code"] == "no_train_data" and "tuned_lens" in w["message"]
               for w in res.results["warnings"])


def test_overlap_at_chance_names_the_tuned_estimator():
    spec = estimator_specs()["ed_tuned_overlap"]
    result = TunedLensResult(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2), meta={"k": 5})
    (code, message), = spec.checks(result, 0.3, 24)
    assert code == "overlap_at_chance" and message.startswith("ed_tuned_overlap:")
    assert spec.checks(result, 0.3, 1000) == []
    assert get_metric("tuned_lens").fit.name == "tuned_lens"


def test_heldout_check_flags_a_worse_lens_or_a_loss_that_did_not_fall():
    meta = {"n_layers": 3, "n_prompts": 2, "k": 1}
    plain = TunedLensResult(torch.tensor([[3.0, 2.0, 1.0, 0.0]] * 2), torch.zeros(2, 4), torch.ones(2),
                      meta=meta)
    better = TunedLensResult(torch.tensor([[2.0, 1.0, 0.5, 0.0]] * 2), torch.zeros(2, 4), torch.ones(2),
                       meta=meta)
    worse = TunedLensResult(torch.tensor([[2.0, 2.5, 0.5, 9.0]] * 2), torch.zeros(2, 4), torch.ones(2),
                      meta=meta)
    ok = heldout_check(better, plain, {"loss_fell": True})
    assert ok["unfit"] is False and ok["worse_blocks"] == [] and ok["tuned_kl"] == [2.0, 1.0, 0.5]
    assert ok["logit_kl"] == [3.0, 2.0, 1.0]  # block inputs only: h_L's row is not compared
    bad = heldout_check(worse, plain, {"loss_fell": True})
    assert bad["unfit"] is True and bad["worse_blocks"] == [1]
    stalled = heldout_check(better, plain, {"loss_fell": False})
    assert stalled["unfit"] is True and stalled["worse_blocks"] == []
    specs = estimator_specs()
    for check, text in ((bad, "block input(s) 1"), (stalled, "training loss did not fall")):
        better.meta["heldout"] = check
        for name in ("ed_tuned_kl", "ed_tuned_overlap"):
            found = [c for c in specs[name].checks(better, 0.5, 1000) if c[0] == "tuned_lens_unfit"]
            assert len(found) == 1 and text in found[0][1], found
    better.meta["heldout"] = ok
    assert specs["ed_tuned_kl"].checks(better, 0.5, 1000) == []


@pytest.mark.slow
def test_a_study_warns_when_the_tuned_lens_is_worse_than_the_logit_lens(tmp_path, monkeypatch):
    def scrambled(model, batch, **kw):  # translators that destroy the residual
        adapter = get_adapter(model)
        gen = torch.Generator().manual_seed(0)
        L, d = adapter.n_layers, adapter.d_model
        return Translators(torch.randn(L, d, d, generator=gen), torch.zeros(L, d),
                           {"steps": 0, "loss": [], "loss_fell": True})

    # the module, not the function `tuned_lens` that effective_depth.metrics exports by that name
    monkeypatch.setattr(sys.modules["effective_depth.metrics.tuned_lens"], "train_tuned_lens",
                        scrambled)
    res = _study(tmp_path, "run")
    heldout = res.results["metrics"]["tuned_lens"]["meta"]["heldout"]
    L = res.results["model"]["n_layers"]
    worse = [b for b in range(L) if heldout["tuned_kl"][b] > heldout["logit_kl"][b]]
    assert heldout["unfit"] and worse and heldout["worse_blocks"] == worse
    found = [w for w in res.results["warnings"] if w["code"] == "tuned_lens_unfit"]
    assert len(found) == 1, res.results["warnings"]
    assert sorted(found[0]["estimators"]) == ["ed_tuned_kl", "ed_tuned_overlap"]
    for name in ("ed_tuned_kl", "ed_tuned_overlap"):
        assert found[0]["message"] in res.results["depth"][name]["notes"]


@pytest.mark.slow
def test_the_planner_projects_a_bounded_training_on_a_real_vocabulary():
    from types import SimpleNamespace

    from effective_depth.study.planner import count_work

    # SmolLM2-135M's shape, 20 analysed prompts of 40 tokens
    cfg = SimpleNamespace(n_layers=30, d_model=576, n_heads=9, d_head=64, d_vocab=49152, d_mlp=1536)
    lengths, starts = [40] * 20, [39] * 20

    def work(**options):
        config = StudyConfig(metrics=("logit_lens", "tuned_lens"), options={"tuned_lens": options})
        return count_work(cfg, lengths, starts, [[]] * 20, config)

    default = work()
    lens, plain = default["tuned_lens"], default["logit_lens"]
    assert "0 fine-tuning steps" in lens.note and "8192 fit positions" in lens.note
    # training: 8192 fit positions and 512 validation positions through the blocks
    assert lens.block_tokens == plain.block_tokens + 30 * (8192 + 512)
    # the lens work beyond measuring: moments and validation KLs, well under the measurement's
    assert plain.lens_rows < lens.lens_rows < 2 * plain.lens_rows
    tuned = work(steps=10)["tuned_lens"]
    assert tuned.lens_rows - lens.lens_rows >= 3 * 10 * 1024 * 31  # fine-tuning, projected
    # without the logit lens in the study, the held-out check measures it too
    alone = count_work(cfg, lengths, starts, [[]] * 20, StudyConfig(metrics=("tuned_lens",)))
    assert alone["tuned_lens"].block_tokens == lens.block_tokens + plain.block_tokens
