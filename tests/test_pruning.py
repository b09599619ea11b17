"""Pruning criteria side by side and the pruned checkpoint's export (issue 31).

The criteria are checked on hand-built cases whose ranking is known (a block made the identity
is ranked first by every criterion that reads it; Gromov's run is the argmin of a given distance
matrix); the engine's pruned accuracy equals the ``behaviour`` measurement's; the exported
checkpoint's logits, read by plain ``transformers``, equal the toolkit's own forward of the
original model with those blocks skipped, to 1e-5 in float32, for Llama and Gemma-3 (whose
per-layer attention types must follow the kept blocks).
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from effective_depth.analysis.pruning import (
    CRITERIA,
    PruningComparison,
    Ranking,
    SetEvaluator,
    angular_sets,
    check_criteria,
    check_k_max,
    compare_criteria,
    greedy_sets,
    order_sets,
    pruned_logits,
    rank_blocks,
)
from effective_depth.engine.batch import encode_batch
from effective_depth.errors import ConfigError, ResultsError
from effective_depth.models.export import PRUNED_KEY, export_pruned, kept_blocks
from effective_depth.tasks import get_task
from tests.helpers import real_checkpoint, rebuilt_model, save_tiny_checkpoint

TOL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# --- pure parts ------------------------------------------------------------------------------

def test_unknown_criterion_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown pruning criterion 'influense'.*'influence'"
                                          r".*Valid criteria: angular, influence, output, future, "
                                          r"greedy, random"):
        check_criteria("angular,influense")
    assert check_criteria(None) == list(CRITERIA)
    assert check_criteria("greedy, random,greedy") == ["greedy", "random"]


def test_blocks_to_remove_out_of_range_say_the_range():
    assert check_k_max(None, 30) == 15 and check_k_max(None, 3) == 1
    with pytest.raises(ConfigError, match=r"within 1\.\.3 for a model of 4 blocks, got 4"):
        check_k_max(4, 4)
    with pytest.raises(ConfigError, match=r"within 1\.\.3 for a model of 4 blocks, got 0"):
        check_k_max(0, 4)
    with pytest.raises(ConfigError, match=r"blocks \[4\] outside 0\.\.3"):
        kept_blocks(4, [1, 4])
    with pytest.raises(ConfigError, match="leaves none"):
        kept_blocks(2, [0, 1])
    assert kept_blocks(5, [3, 1]) == [0, 2, 4]


def test_angular_run_is_the_argmin_of_the_boundary_distance():
    """d[l, l+n] hand-set: n=1 -> the run at l=2 (0.01); n=2 -> l=1 (0.05, below l=2's 0.07);
    n=3 -> l=0 and l=1 tie at 0.2: the lower block wins."""
    L = 5
    d = torch.full((L + 1, L + 1), 0.5)
    d.fill_diagonal_(0.0)
    for b, v in enumerate([0.3, 0.2, 0.01, 0.4, 0.3]):
        d[b, b + 1] = v
    d[0, 2], d[1, 3], d[2, 4], d[3, 5] = 0.3, 0.05, 0.07, 0.6
    d[0, 3], d[1, 4], d[2, 5] = 0.2, 0.2, 0.3
    sets, best = angular_sets(d, 3)
    assert sets == [[2], [1, 2], [0, 1, 2]]
    assert best == pytest.approx([0.01, 0.05, 0.2])


class _Evaluator(SetEvaluator):
    """A :class:`SetEvaluator` whose log-likelihood of a removal set is known, without a model:
    each block costs ``cost[b]``, and blocks 0 and 1 together cost 5 more (an interaction)."""

    cost = [0.1, 0.2, 0.3, 0.4]

    def __init__(self) -> None:  # no model, no batch
        import types

        self.adapter = types.SimpleNamespace(n_layers=4)
        self.batch = types.SimpleNamespace(size=3)

    def run(self, sets, progress=None):
        ll = [-(sum(self.cost[b] for b in s) + (5.0 if {0, 1} <= set(s) else 0.0)) for s in sets]
        ll = torch.tensor(ll, dtype=torch.float64)[:, None].expand(-1, 3)
        return ll > -1, ll


def test_greedy_removes_the_cheapest_block_given_those_already_removed():
    sets, losses, order = greedy_sets(_Evaluator(), 3)
    # 0 (0.1) first; then 1 would cost 0.2 + 5, so 2 (0.3) goes; then 3 (0.4) before 1 (5.2)
    assert order == [0, 2, 3] and sets == [[0], [0, 2], [0, 2, 3]]
    assert losses == pytest.approx([0.1, 0.4, 0.8])


def test_order_sets_nest():
    assert order_sets([3, 0, 2, 1], 3) == [[3], [0, 3], [0, 2, 3]]


def test_comparison_round_trips_through_the_store(tmp_path):
    from effective_depth.store.pruning import load_prune_run, write_prune_run

    P = 6
    correct = torch.zeros(2, 3, P, dtype=torch.bool)
    correct[:, 0] = True
    correct[0, 1, :4] = True
    comp = PruningComparison(
        {"influence": Ranking("influence", [[1], [1, 2]], [0.3, 0.0, 0.1], [1, 2, 0], "x"),
         "random": Ranking("random", [[0], [0, 2]], None, [0, 2, 1], "y")},
        correct, torch.randn(2, 3, P), {"future": "too short"}, {"n_layers": 3})
    assert comp.accuracy("influence").tolist() == pytest.approx([1.0, 4 / 6, 0.0])
    assert comp.best_at(1) == ["influence"]
    assert comp.removed("random", 2) == [0, 2]
    with pytest.raises(ConfigError, match=r"within 1\.\.2"):
        comp.removed("random", 3)
    curves = comp.curves(n_boot=50)
    lo, hi = curves["influence"]["accuracy_ci"][1]
    assert lo <= 4 / 6 <= hi and lo < hi
    write_prune_run(tmp_path / "p", {"config": {"model": "m"}}, comp)
    back = load_prune_run(tmp_path / "p")
    assert torch.equal(back.comparison.correct, comp.correct)
    assert back.comparison.rankings["influence"].order == [1, 2, 0]
    assert back.comparison.skipped == {"future": "too short"}
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "config.json").write_text("{}")
    with pytest.raises(ResultsError, match="study's run directory"):
        write_prune_run(tmp_path / "s", {}, comp)
    with pytest.raises(ResultsError, match="not a pruning run"):
        (tmp_path / "s" / "results.json").write_text("{}")
        load_prune_run(tmp_path / "s")


def test_calibration_and_evaluation_examples_are_disjoint(tmp_path):
    """The criteria are measured on the task's train split, the curves on its test split (the
    default split=all of capitals would hold the train countries); a task without a split gives
    its examples after the evaluation ones."""
    from effective_depth.study.prune import PruneConfig, prune_examples
    from effective_depth.tasks.fewshot import capitals_split

    task, ev, calib, info, warnings = prune_examples(
        PruneConfig(model="zoo/add-4l", task="capitals", n_examples=12, n_calib=10))
    assert task.values["split"] == "test" and info["source"] == "task train split"
    assert {capitals_split(e.meta["country"]) for e in ev} == {"test"}
    assert {capitals_split(e.meta["country"]) for e in calib} == {"train"}
    assert [w["code"] for w in warnings] == ["split_test"] and info["overlap"] == 0
    # the zoo model's own task: its card's split=test, calibrated on train
    task, ev, calib, info, warnings = prune_examples(
        PruneConfig(model="zoo/add-4l", n_examples=5, n_calib=5))
    assert task.values["split"] == "test" and info["params"]["split"] == "train" and not warnings
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n"
                            for i in range(9)))
    task, ev, calib, info, warnings = prune_examples(
        PruneConfig(model="zoo/add-4l", task="prompts", task_params={"path": str(path)},
                    n_examples=5, n_calib=6))
    assert [e.prompt for e in ev] == [f"{i}+1=" for i in range(5)]
    assert [e.prompt for e in calib] == [f"{i}+1=" for i in range(5, 9)]
    assert [w["code"] for w in warnings] == ["few_examples"]


# --- criteria on a model with a known answer ----------------------------------------------------

@pytest.fixture(scope="module")
def identity_block():
    """zoo/add-4l with a copy of its block 1, writing weights zeroed, inserted as block 2: five
    blocks computing exactly add-4l, block 2 the identity."""
    model = rebuilt_model("zoo/add-4l", [(0, 1.0), (1, 1.0), (1, 0.0), (2, 1.0), (3, 1.0)])
    task = get_task("addition", digits=3, format="direct", split="test", seed=3)
    examples = task.examples(12)
    calib = get_task("addition", digits=3, format="direct", split="train", seed=4).examples(8)
    return model, encode_batch(model.tokenizer, examples), encode_batch(model.tokenizer, calib)


def test_an_identity_block_ranks_first(identity_block):
    model, _, calib = identity_block
    rankings, skipped = rank_blocks(model, calib, ["angular", "influence", "output", "random"],
                                    2, seed=0)
    assert not skipped
    infl = rankings["influence"]
    assert infl.order[0] == 2 and infl.scores[2] == pytest.approx(0.0, abs=1e-6)
    assert min(s for b, s in enumerate(infl.scores) if b != 2) > 1e-3
    assert rankings["angular"].sets[0] == [2]
    assert rankings["angular"].scores_by_k[0] == pytest.approx(0.0, abs=1e-3)
    out = rankings["output"]
    assert out.order[0] == 2 and out.scores[2] == pytest.approx(0.0, abs=1e-6)
    assert sorted(rankings["random"].order) == [0, 1, 2, 3, 4]
    again, _ = rank_blocks(model, calib, ["random"], 2, seed=0)
    assert again["random"].order == rankings["random"].order


@pytest.mark.slow
def test_greedy_never_loses_more_than_the_identity_block_costs(identity_block):
    """Removing the identity block costs nothing, so greedy's first removal never costs more
    than the full model's calibration loss (it may gain), and its losses are its sets' own."""
    model, _, calib = identity_block
    rankings, _ = rank_blocks(model, calib, ["greedy"], 2)
    greedy = rankings["greedy"]
    ev = SetEvaluator(model, calib)
    _, ll = ev.run([[], *greedy.sets])
    assert greedy.scores_by_k[0] <= -float(ll[0].mean()) + 1e-6
    assert greedy.scores_by_k == pytest.approx((-ll[1:].mean(1)).tolist(), abs=1e-6)
    assert greedy.sets[0] == [greedy.order[0]] and len(greedy.sets[1]) == 2


def test_removing_the_identity_block_changes_nothing(identity_block):
    model, batch, calib = identity_block
    comp = compare_criteria(model, batch, calib, criteria=["influence", "random"], k_max=2,
                            seed=1)
    acc, ll = comp.accuracy("influence"), comp.mean_loglik("influence")
    assert acc[0] > 0.9 and acc[1] == acc[0]
    assert float(ll[1]) == pytest.approx(float(ll[0]), abs=1e-5)
    assert comp.rankings["influence"].sets[0] == [2]
    assert comp.meta["k_max"] == 2 and comp.correct.shape == (2, 3, 12)
    # row k = 0 is the full model for every criterion
    assert torch.equal(comp.correct[0, 0], comp.correct[1, 0])


def test_pruned_accuracy_equals_the_behaviour_measurement(identity_block):
    """The engine's removal sets, evaluated here, agree with ``behaviour``'s pruning prefixes."""
    from effective_depth.metrics.behaviour import behaviour

    model, batch, _ = identity_block
    order = [2, 0, 4, 1, 3]
    ref = behaviour(model, batch, order=order).correct_by_prune  # [prompt, k]
    correct, loglik = SetEvaluator(model, batch).run([[]] + order_sets(order, 5))
    assert torch.equal(correct.T, ref)
    assert bool((loglik <= 0).all())


def test_future_criterion_is_skipped_with_the_reason_when_prompts_are_too_short():
    model = rebuilt_model("zoo/add-2l", [(0, 1.0), (1, 1.0)])
    calib = encode_batch(model.tokenizer, [get_task("addition", digits=1).examples(4)[0]] * 2)
    rankings, skipped = rank_blocks(model, calib, ["future", "random"], 1)
    if "future" in skipped:
        assert "long enough" in skipped["future"] and "random" in rankings
    else:  # a cut fits: the last block's future effect is zero by construction
        assert rankings["future"].order[0] == 1


# --- export ------------------------------------------------------------------------------------

def _tiny_gemma3(path, n_layers: int = 6):
    """A tiny random Gemma-3 (sandwich norms, QK norm, sliding window 5 on the local layers,
    local and global rope bases, tied embeddings) saved as a Hugging Face checkpoint, and the
    same weights as a HookedTransformer."""
    from transformer_lens import HookedTransformer
    from transformer_lens.config import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from effective_depth.models.tokenizer import build_char_tokenizer

    vocab = len(build_char_tokenizer())
    types = ["sliding_attention", "sliding_attention", "full_attention"] * (n_layers // 3)
    hf_cfg = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, sliding_window=5,
        layer_types=types, query_pre_attn_scalar=16, rms_norm_eps=1e-6,
        max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, attn_logit_softcapping=None, final_logit_softcapping=None,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}})
    torch.manual_seed(0)
    hf = Gemma3ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(path)
    build_char_tokenizer().save_pretrained(path)
    cfg = HookedTransformerConfig(
        original_architecture="Gemma3ForCausalLM", d_model=64, d_head=16, n_heads=4,
        n_key_value_heads=1, d_mlp=128, n_layers=n_layers, d_vocab=vocab, n_ctx=256,
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=16,
        rotary_base=1_000_000, rotary_base_local=10_000, act_fn="gelu_pytorch_tanh",
        gated_mlp=True, use_qk_norm=True, use_normalization_before_and_after=True,
        use_local_attn=True, window_size=5,
        attn_types=["global" if t == "full_attention" else "local" for t in types],
        attn_scale=4.0, final_rms=True, eps=1e-6, device="cpu", dtype=torch.float32)
    tl = HookedTransformer(cfg).eval()
    tl.load_and_process_state_dict(convert_gemma_weights(hf, cfg), fold_ln=False,
                                   center_writing_weights=False, center_unembed=False,
                                   fold_value_biases=False)
    for p in tl.parameters():
        p.requires_grad_(False)
    return hf, tl


def _hf_logits(path, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                 dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens, use_cache=False).logits.float(), model


def test_export_of_a_llama_equals_the_pruned_forward(tmp_path):
    from effective_depth.models.loading import load_model

    src = save_tiny_checkpoint("llama", tmp_path / "tiny-src", n_layers=5)
    out = tmp_path / "tiny-pruned"
    info = export_pruned(src, [3, 1], out, record={"criterion": "test"})
    assert info["kept"] == [0, 2, 4] and info["removed"] == [1, 3] and info["n_layers"] == 3
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    assert config[PRUNED_KEY]["criterion"] == "test" and config[PRUNED_KEY]["removed"] == [1, 3]
    assert (out / "tokenizer.json").is_file()
    tokens = torch.randint(3, 24, (3, 17))
    exported, hf = _hf_logits(out, tokens)
    assert len(hf.model.layers) == 3
    original = load_model(src, device="cpu", precision="fp32")
    ours = pruned_logits(original, tokens, [1, 3])
    assert _rel(exported, ours) < TOL
    # removing different blocks is another model: the test can fail
    assert _rel(exported, pruned_logits(original, tokens, [1, 2])) > 1e-2
    # the toolkit loads the export too, and computes the same
    reloaded = load_model(out, device="cpu", precision="fp32")
    assert reloaded.cfg.n_layers == 3
    assert _rel(pruned_logits(reloaded, tokens, []), ours) < TOL
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export_pruned(src, [0], out)


def test_export_of_a_gemma3_slices_its_attention_pattern(tmp_path):
    """Removing a global (full-attention) block of a Gemma-3 with a sliding window shorter than
    the prompt: every kept block must keep its own attention type and rope base, and the tied
    unembedding must stay tied."""
    src = tmp_path / "gemma-src"
    _, tl = _tiny_gemma3(src, n_layers=6)
    out = tmp_path / "gemma-pruned"
    removed = [2, 3]  # the first global block and the local one after it
    export_pruned(src, removed, out)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 4
    assert config["layer_types"] == ["sliding_attention", "sliding_attention",
                                     "sliding_attention", "full_attention"]
    assert config["tie_word_embeddings"] is True
    assert not {"sliding_window_pattern", "_sliding_window_pattern"} & set(config)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as fh:
        names = set(fh.keys())  # noqa: SIM118 - safe_open is not iterable
    assert "lm_head.weight" not in names
    assert max(int(n.split(".")[2]) for n in names if n.startswith("model.layers.")) == 3
    tokens = torch.randint(3, 24, (2, 19))
    exported, hf = _hf_logits(out, tokens)
    assert [layer.self_attn.layer_type for layer in hf.model.layers] == config["layer_types"]
    ours = pruned_logits(tl, tokens, removed)
    assert _rel(exported, ours) < TOL
    # the same check on the unpruned model: the conversion itself is exact
    full, _ = _hf_logits(src, tokens)
    assert _rel(full, pruned_logits(tl, tokens, [])) < TOL
    # removing other blocks computes something else: the check can fail
    assert _rel(exported, pruned_logits(tl, tokens, [2, 0])) > 1e-3
    # so does the export with the pattern left unsliced (the first four types of the original)
    config["layer_types"] = ["sliding_attention", "sliding_attention", "full_attention",
                             "sliding_attention"]
    (out / "config.json").write_text(json.dumps(config))
    unsliced, _ = _hf_logits(out, tokens)
    assert _rel(unsliced, ours) > 1e-3


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("name, removed", [("real/smollm2-135m-instruct", [3, 27, 28]),
                                           ("real/gemma-3-270m", [5, 12, 13])])
def test_real_export_loads_everywhere_and_equals_the_pruned_forward(tmp_path, name, removed):
    """Both real models, with a global (full-attention) block of Gemma-3 among those removed:
    plain transformers and the toolkit load the export, and both equal the pruned forward."""
    from effective_depth.models.loading import load_model

    src = real_checkpoint(name)
    out = tmp_path / "pruned"
    export_pruned(src, removed, out)
    original = load_model(name, device="cpu", precision="fp32")
    L = original.cfg.n_layers
    text = "The capital of France is Paris. The capital of Spain is"
    tokens = torch.tensor([original.tokenizer(text)["input_ids"]])
    ours = pruned_logits(original, tokens, removed)
    exported, hf = _hf_logits(out, tokens)
    assert hf.config.num_hidden_layers == L - len(removed)
    assert _rel(exported, ours) < TOL
    reloaded = load_model(out, device="cpu", precision="fp32")
    assert reloaded.cfg.n_layers == L - len(removed)
    if getattr(original.cfg, "attn_types", None):
        kept = [b for b in range(L) if b not in removed]
        assert list(reloaded.cfg.attn_types) == [original.cfg.attn_types[b] for b in kept]
    assert _rel(pruned_logits(reloaded, tokens, []), ours) < TOL


# --- the command ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_prune_command_compares_exports_and_times(tmp_path):
    from effective_depth.cli import main

    run_dir, out = tmp_path / "run", tmp_path / "pruned"
    args = ["prune", "-m", "zoo/add-4l", "-n", "8", "--n-calib", "6", "--n-boot", "20",
            "--run-dir", str(run_dir), "--precision", "fp32", "-q", "--time-repeats", "2"]
    result = CliRunner().invoke(main, [*args, "--remove", "1", "--criterion", "influence",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Held-out exact-match accuracy" in result.output and "exported" in result.output
    data = json.loads((run_dir / "results.json").read_text())
    assert data["kind"] == "prune" and set(data["curves"]) <= set(CRITERIA)
    assert len(data["curves"]["greedy"]["accuracy"]) == 3  # k = 0, 1, 2
    export = data["export"]
    removed = data["comparison"]["rankings"]["influence"]["sets"][0]
    assert export["removed"] == removed and export["why"]["criterion"] == "influence"
    assert export["accuracy"]["exported"] == export["accuracy"]["pruned_by_skipping"]
    assert export["pruned"]["n_layers"] == 3 and export["original"]["n_layers"] == 4
    assert export["pruned"]["params"]["total"] < export["original"]["params"]["total"]
    assert export["speedup"] > 0
    assert (run_dir / "pruning.html").stat().st_size > 10_000
    # a second call reuses the comparison; errors name the fix
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "reused" in again.output
    bad = CliRunner().invoke(main, [*args, "--remove", "4", "--criterion", "influence", "--out",
                                    str(tmp_path / "x")])
    assert bad.exit_code != 0 and "within 1..3" in bad.output
    bad = CliRunner().invoke(main, [*args, "--criteria", "angular,shortgpt"])
    assert bad.exit_code != 0 and "Valid criteria: angular, influence" in bad.output
