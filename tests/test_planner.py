"""The cost planner counts the work the engine really does (block-token forwards counted by hooks
on every block), and the `plan` command prints it."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

import effective_depth as ed
from benchmarks.paper_scale import WorkCounter
from effective_depth import metrics as M
from effective_depth.engine import encode_batch
from effective_depth.metrics.skip_effects import draw_cuts
from effective_depth.study import StudyConfig
from effective_depth.study.planner import count_work


@pytest.fixture(scope="module")
def setup():
    model = ed.load_model("zoo/add-4l", device="cpu")
    batch = encode_batch(model.tokenizer, ed.get_task("addition", digits=4).examples(5))
    return model, batch


def _shared_runs(model, batch, sub, cuts):
    """The measurements both work-count tests run: name -> (batch, study options, measure)."""
    return {
        "contributions": (batch, {}, lambda: M.contributions(model, batch)),
        "logit_lens": (batch, {}, lambda: M.logit_lens(model, batch)),
        "skip_effects": (batch, {"options": {"skip_effects": {"n_cuts": 2}}}, lambda: M.skip_effects(model, batch, cuts=cuts)),
        "erasure": (sub, {"options": {"erasure": {"map_examples": 2, "n_reference": 2}}},
                    lambda: M.erasure(model, sub, reference=sub)),
    }


@pytest.mark.slow
def test_planned_block_tokens_equal_the_engine_count(setup):
    model, batch = setup
    lengths = batch.lengths.tolist()
    cuts = [draw_cuts(int(n), 2, f"0:{b}", 4, 4, 2) for b, n in enumerate(lengths)]
    sub = batch.select([0, 1])
    runs = {
        **_shared_runs(model, batch, sub, cuts),
        "integrated_gradients": (sub, {"options": {"integrated_gradients": {"map_examples": 2,
                                                                            "steps": 3}}},
                                 lambda: M.integrated_gradients(model, sub, steps=3)),
        "behaviour": (batch, {}, lambda: M.behaviour(model, batch, order=[3, 2, 1, 0])),
    }
    counter = WorkCounter(model)
    seen = {}
    try:
        for name, (b, options, fn) in runs.items():
            counter.reset()
            fn()
            seen[name] = counter.block_tokens
            config = StudyConfig(metrics=(name,), **options)
            planned = count_work(model.cfg, b.lengths.tolist(), b.answer_start.tolist(),
                                 cuts if name == "skip_effects" else [], config)[name]
            total = planned.block_tokens + planned.grad_block_tokens
            if name == "behaviour":  # an upper bound: the pruning order is unknown before
                assert counter.block_tokens <= total, name
            else:
                assert counter.block_tokens == total, (name, counter.block_tokens, total)
    finally:
        counter.close()
    # the counter really counted (0 == 0 would pass otherwise): contributions is one clean pass,
    # every block over every padded position of the 5 prompts
    assert seen["contributions"] == model.cfg.n_layers * batch.size * batch.width
    assert all(seen[name] > 0 for name in runs)


@pytest.mark.slow
def test_plan_command_prints_the_planned_numbers(monkeypatch):
    """`plan` prints, per measurement and in total, the numbers the planner computes for the
    configuration the options build (here without the timing calibration)."""
    from effective_depth.cli import main
    from effective_depth.study import planner

    real = planner.plan_study
    seen = {}

    def plan_without_timing(config, calibration=True):
        seen["config"] = config
        return real(config, calibration=False)

    monkeypatch.setattr(planner, "plan_study", plan_without_timing)
    result = CliRunner().invoke(main, ["plan", "--model", "zoo/add-4l", "-n", "4", "--set",
                                       "integrated_gradients.steps=4"])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.n_examples == 4 and config.options["integrated_gradients"].steps == 4
    plan = real(config, calibration=False)
    names = ["contributions", "logit_lens", "tuned_lens", "skip_effects", "behaviour",
             "erasure", "integrated_gradients"]
    assert [m.name for m in plan.measurements] == [n for n in names if n in config.metrics]
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines()
            if line.count("│") > 2}
    for m in [*plan.measurements, plan.total]:
        cells = [c.strip() for c in rows[m.name].split("│")[2:5]]
        assert cells == [f"{m.block_tokens:,}", f"{m.grad_block_tokens:,}", f"{m.lens_rows:,}"], m.name
    assert plan.total.block_tokens == sum(m.block_tokens for m in plan.measurements) > 0


def test_a_measurement_without_a_cost_model_is_not_projected_as_free():
    from types import SimpleNamespace

    from effective_depth.metrics.registry import MetricSpec, registered

    spec = MetricSpec(name="uncosted", result_type=object, run=lambda ctx: None)
    cfg = SimpleNamespace(n_layers=2, d_model=8, n_heads=2, d_head=4, d_vocab=10, d_mlp=32)
    with registered(spec):
        work = count_work(cfg, [5], [3], [[]], StudyConfig(metrics=("uncosted", "logit_lens")))
    assert "not modelled" in work["uncosted"].note and work["uncosted"].block_tokens == 0
    # every position (include_front): taps 0..L and the output once more as the reference
    assert work["logit_lens"].block_tokens == 2 * 5 and work["logit_lens"].lens_rows == 4 * 5


@pytest.mark.slow
def test_planned_block_calls_follow_the_engine(setup):
    """Short rows cost calls, not tokens: the planned block calls (forward calls; the backward
    ones of integrated gradients are not hooked) equal the engine's where its chunking is
    deterministic, and stay within 25% for behaviour, whose order is known only when measured."""
    model, batch = setup
    cuts = [draw_cuts(int(n), 2, f"0:{b}", 4, 4, 2) for b, n in enumerate(batch.lengths.tolist())]
    sub = batch.select([0, 1])
    runs = {
        **_shared_runs(model, batch, sub, cuts),
        "behaviour": (batch, {"metrics": ("skip_effects", "behaviour"),
                              "options": {"skip_effects": {"mode": "current"}}},
                      lambda: M.behaviour(model, batch, order=[1, 2, 3, 0])),
    }
    counter = WorkCounter(model)
    seen = {}
    try:
        for name, (b, options, fn) in runs.items():
            counter.reset()
            fn()
            seen[name] = counter.block_tokens
            config = StudyConfig(**{"metrics": (name,), **options})
            planned = count_work(model.cfg, b.lengths.tolist(), b.answer_start.tolist(),
                                 cuts if name == "skip_effects" else [], config)[name]
            if name == "behaviour":
                assert abs(planned.block_calls / counter.block_calls - 1) <= 0.25, \
                    (name, counter.block_calls, planned.block_calls)
            else:
                assert counter.block_calls == planned.block_calls, \
                    (name, counter.block_calls, planned.block_calls)
    finally:
        counter.close()


def _count_lens_rows(monkeypatch):
    """A one-element list counting the rows the adapter projects onto the vocabulary from now on."""
    from effective_depth.engine.adapter import Adapter

    rows = [0]
    plain = Adapter.lens_logits

    def counting(self, x):
        rows[0] += x.numel() // x.shape[-1]
        return plain(self, x)

    monkeypatch.setattr(Adapter, "lens_logits", counting)
    return rows


@pytest.mark.slow
def test_planned_lens_rows_equal_the_rows_unembedded(setup, monkeypatch):
    """Skip effects and erasure unembed every intervened row once and each clean reference
    position once (CleanLensProbs): the planner's lens rows equal the rows the adapter really
    projects onto the vocabulary."""
    model, batch = setup
    cuts = [draw_cuts(int(n), 2, f"0:{b}", 4, 4, 2) for b, n in enumerate(batch.lengths.tolist())]
    sub = batch.select([0, 1])
    rows = _count_lens_rows(monkeypatch)
    for name, (b, options, fn) in _shared_runs(model, batch, sub, cuts).items():
        if name not in ("skip_effects", "erasure"):
            continue
        rows[0] = 0
        fn()
        planned = count_work(model.cfg, b.lengths.tolist(), b.answer_start.tolist(),
                             cuts if name == "skip_effects" else [],
                             StudyConfig(metrics=(name,), **options))[name]
        assert rows[0] == planned.lens_rows > 0, (name, rows[0], planned.lens_rows)


def test_a_calibration_beside_other_work_says_so(monkeypatch):
    """Other ready tasks beside the calibration (``runnable_beside``, read from /proc/stat): a
    warning naming them and the CPUs the study's threads get; fewer than half a task, or on a
    GPU: nothing. Without that count, the load average: at least the CPUs + 1 warns."""
    from effective_depth.study.planner import busy_note

    beside = {"runnable_beside": 2.0, "cpus": 2.0, "cpus_available": 1.0, "torch_threads": 2,
              "load_average": 0.3}  # the load average, a minute late, has not seen them yet
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert busy_note(beside, "cpu").startswith(
        "calibrated beside 2.0 other ready tasks on 2 CPUs; its 2 threads get about 1.0: the "
        "projection is for a study beside the same work")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert "OMP_WAIT_POLICY is not PASSIVE" in busy_note(beside, "cpu")
    assert busy_note({**beside, "runnable_beside": 0.2, "load_average": 4.2}, "cpu") == ""
    assert busy_note(beside, "cuda:0") == ""
    busy = busy_note({"load_average": 4.2, "cpus": 2.0}, "cpu")
    assert busy.startswith("calibrated while the machine was busy (load average 4.2 on 2 CPUs)")
    assert busy_note({"load_average": 2.9, "cpus": 2.0}, "cpu") == ""
    assert busy_note({"load_average": 40.0, "cpus": 2.0}, "cuda:0") == ""
    assert busy_note({}, "cpu") == ""


def test_the_cpus_a_study_gets_beside_other_work():
    """Every ready task gets an equal share: 2 threads beside 2 busy tasks on 2 CPUs get one CPU,
    one thread beside them two thirds of one; never more than its own threads."""
    from effective_depth.study.planner import cpus_available

    assert cpus_available(2.0, 2, 2.0) == pytest.approx(1.0)
    assert cpus_available(2.0, 1, 2.0) == pytest.approx(2 / 3)
    assert cpus_available(0.0, 2, 2.0) == pytest.approx(2.0)
    assert cpus_available(0.0, 4, 16.0) == pytest.approx(4.0)
    assert cpus_available(4.0, 16, 16.0) == pytest.approx(12.8)


def test_ready_tasks_beside_this_process_are_counted():
    """A busy process beside the reader is one more ready task than without it (read from
    /proc/stat, where Linux has one)."""
    import subprocess
    import sys

    from effective_depth.study.planner import runnable_beside

    if runnable_beside(samples=1) is None:
        pytest.skip("no /proc/stat procs_running on this OS")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        beside = runnable_beside(samples=40)
    finally:
        spin.kill()
        spin.wait()
    assert beside is not None and beside >= 0.5


def test_a_proc_stat_that_does_not_count_ready_tasks_is_not_a_count(monkeypatch):
    """No ``procs_running`` line, or one that is not a number: ``None`` (the calibration then
    times wall time, and the load average decides the warning), never an exception."""
    import builtins
    import io

    from effective_depth.study.planner import runnable_beside

    real_open = builtins.open
    for text in ("cpu 1 2 3\n", "procs_running\n", "procs_running many\n"):
        def fake(path, *args, _text=text, **kw):
            return io.StringIO(_text) if path == "/proc/stat" else real_open(path, *args, **kw)

        monkeypatch.setattr(builtins, "open", fake)
        assert runnable_beside(samples=2, gap_s=0.0) is None
    monkeypatch.setattr(builtins, "open", lambda path, *a, **kw: io.StringIO("procs_running 3\n"))
    assert runnable_beside(samples=2, gap_s=0.0) == 2.0


@pytest.mark.slow
def test_a_busy_cpu_is_timed_in_cpu_time_over_the_cpus_the_study_gets(monkeypatch):
    """Beside other ready tasks the calibration times CPU time, which a wait for a descheduled
    thread (simulated: every clean pass sleeps 10 ms per row) does not inflate, and divides it
    by the CPUs the study gets beside them."""
    import time

    from effective_depth.engine.adapter import get_adapter
    from effective_depth.study import planner
    from effective_depth.study.planner import calibrate, cpus_available

    model = ed.load_model("zoo/add-2l", device="cpu")
    tokens = encode_batch(model.tokenizer, ed.get_task("addition", digits=2).examples(1)).tokens
    T = tokens.shape[1]
    monkeypatch.setattr(planner, "runnable_beside", lambda *a, **kw: 0.0)
    quiet = calibrate(model, tokens, repeats=3, wide_tokens=1024)
    assert "cpus_available" not in quiet and quiet["runnable_beside"] == 0.0

    adapter = type(get_adapter(model))
    clean = adapter.clean

    def stalled(self, tokens, *args, **kw):
        time.sleep(0.01 * tokens.shape[0])
        return clean(self, tokens, *args, **kw)

    monkeypatch.setattr(adapter, "clean", stalled)
    monkeypatch.setattr(planner, "runnable_beside", lambda *a, **kw: 2.0)
    busy = calibrate(model, tokens, repeats=3, wide_tokens=1024)
    share = cpus_available(2.0, busy["torch_threads"], busy["cpus"])
    assert busy["runnable_beside"] == 2.0 and busy["cpus_available"] == pytest.approx(share)
    stall_rate = 0.01 / (model.cfg.n_layers * T)  # what the sleep alone would give
    assert stall_rate > 10 * quiet["s_per_block_token"] / share
    assert busy["s_per_block_token"] < 3 * quiet["s_per_block_token"] * 2 / share


@pytest.mark.slow
def test_a_calibration_held_up_by_a_stalled_thread_keeps_the_single_thread_rate(monkeypatch):
    """A multi-thread timing that waits for descheduled threads (simulated: a clean pass on
    more than one thread sleeps 10 ms per row, ~100x its work) does not become the projection:
    the single-thread timing bounds it."""
    import time

    from effective_depth.engine.adapter import get_adapter
    from effective_depth.study import planner
    from effective_depth.study.planner import calibrate

    model = ed.load_model("zoo/add-2l", device="cpu")
    tokens = encode_batch(model.tokenizer, ed.get_task("addition", digits=2).examples(1)).tokens
    adapter = type(get_adapter(model))
    clean = adapter.clean
    threads = torch.get_num_threads()
    monkeypatch.setattr(planner, "runnable_beside", lambda *a, **kw: 0.0)  # a quiet machine
    torch.set_num_threads(1)
    try:
        quiet = calibrate(model, tokens, wide_tokens=512)["s_per_block_token"]

        def stalled(self, tokens, *args, **kw):
            if torch.get_num_threads() > 1:
                time.sleep(0.01 * tokens.shape[0])
            return clean(self, tokens, *args, **kw)

        monkeypatch.setattr(adapter, "clean", stalled)
        torch.set_num_threads(2)
        busy = calibrate(model, tokens, repeats=3, wide_tokens=512)
    finally:
        torch.set_num_threads(threads)
    stall_rate = 0.01 / (model.cfg.n_layers * tokens.shape[1])  # what the stall alone gives
    assert busy["torch_threads"] == 2 and stall_rate > 10 * quiet
    assert busy["s_per_block_token"] < 3 * quiet


@pytest.mark.slow
def test_backward_block_tokens_are_priced_at_their_own_rate_timed_under_the_grad_policy(monkeypatch):
    """Integrated gradients differentiate in float32 under bf16-mixed (ComputePolicy.for_grad), so
    their block-tokens are not "3 forward block-tokens" at the bf16 forward rate: the calibration
    times one block with its backward, as wide as the clean pass, under the float32 policy, and
    the plan prices the backward block-tokens at that rate."""
    from effective_depth.engine.adapter import get_adapter
    from effective_depth.study import planner
    from effective_depth.study.planner import calibrate, plan_study

    model = ed.load_model("zoo/add-2l", device="cpu", precision="bf16-mixed")
    tokens = encode_batch(model.tokenizer, ed.get_task("addition", digits=2).examples(1)).tokens
    adapter = type(get_adapter(model))
    block, differentiated = adapter.block, []

    def recording(self, layer, x, *args, **kw):
        if x.requires_grad:
            differentiated.append((self._policy_for(x).name, x.shape[0]))
        return block(self, layer, x, *args, **kw)

    monkeypatch.setattr(adapter, "block", recording)
    calib = calibrate(model, tokens, repeats=3)
    monkeypatch.setattr(adapter, "block", block)
    assert calib["calibration_rows"] > 1 and calib["s_per_grad_block_token"] > 0
    assert ("fp32", calib["calibration_rows"]) in differentiated  # the wide backward, in float32
    assert {name for name, _ in differentiated} == {"fp32"}

    fixed = {"s_per_block_token": 1e-6, "s_per_grad_block_token": 7e-6, "s_per_block_call": 1e-4,
             "s_per_grad_block_call": 5e-4, "s_per_lens_row": 2e-6, "s_per_lens_stat_row": 3e-6}
    monkeypatch.setattr(planner, "calibrate", lambda *a, **kw: dict(fixed))
    config = StudyConfig.from_dict({"model": "zoo/add-2l", "n_examples": 3, "n_boot": 0,
                                    "metrics": ("contributions", "integrated_gradients"),
                                    "integrated_gradients.map_examples": 2})
    ig, contributions = (next(m for m in plan_study(config).measurements if m.name == name)
                         for name in ("integrated_gradients", "contributions"))
    assert ig.grad_block_tokens > 0 and contributions.grad_block_tokens == 0
    assert ig.seconds == pytest.approx(
        1e-6 * ig.block_tokens + 7e-6 * ig.grad_block_tokens + 1e-4 * ig.block_calls
        + 5e-4 * ig.grad_block_calls + 2e-6 * ig.lens_rows + 3e-6 * ig.lens_stat_rows)


@pytest.mark.slow
def test_integrated_gradients_is_planned_at_the_evaluations_a_run_of_the_model_used(
        monkeypatch, tmp_path):
    """The adaptive rule's evaluations per path are known only once run: a plan before any run
    assumes the typical count and says so; a run records its mean (store.observed) and the next
    plan of the same model and options uses it; other options are not priced by it."""
    from effective_depth.metrics.integrated_gradients import ADAPTIVE_TYPICAL_EVALS
    from effective_depth.study import run_study
    from effective_depth.study.planner import plan_study

    monkeypatch.setenv("EFFECTIVE_DEPTH_FIT_CACHE", str(tmp_path / "fits"))
    base = {"model": "zoo/add-2l", "metrics": ("integrated_gradients",), "n_examples": 3,
            "n_boot": 0, "integrated_gradients.map_examples": 2}
    config = StudyConfig.from_dict(base)

    def planned(cfg):
        return next(m for m in plan_study(cfg, calibration=False).measurements
                    if m.name == "integrated_gradients")

    (tmp_path / "fits").mkdir()
    (tmp_path / "fits" / "observed.json").write_text("{truncated")  # unreadable: ignored
    before = planned(config)
    assert before.note.startswith(f"adaptive rule: {ADAPTIVE_TYPICAL_EVALS} evaluations per path "
                                  "assumed")
    run = run_study(config, tmp_path / "run", progress=False, dashboard=False)
    from safetensors.torch import load_file

    evals = load_file(str(run.path / "tensors.safetensors"))["metrics.integrated_gradients.evals"]
    mean = float(evals.double().mean())
    after = planned(config)
    L = evals.shape[-1]
    above = torch.arange(L - 1, -1, -1, dtype=torch.float64)  # the blocks each path runs
    deep = float((evals.double() @ above).mean() / above.sum())
    assert after.note == (f"adaptive rule: {round(mean)} evaluations per path ({deep:.0f} weighted "
                          "by the blocks each path runs), the mean of 1 earlier run(s) of this "
                          "model with these options")
    # the backward block-tokens scale with the depth-weighted count, the lens rows with the mean
    assert after.grad_block_tokens == pytest.approx(
        before.grad_block_tokens * deep / ADAPTIVE_TYPICAL_EVALS, rel=1e-3)
    assert after.lens_rows == pytest.approx(
        before.lens_rows * round(mean) / ADAPTIVE_TYPICAL_EVALS)
    other = planned(StudyConfig.from_dict({**base, "integrated_gradients.steps": 128}))
    assert "assumed" in other.note


def test_integrated_gradients_records_its_evaluations_weighted_by_the_blocks_each_path_runs():
    """Block l's path runs the L - 1 - l blocks above it: with 10, 4 and 7 evaluations on a
    3-block model's paths, the block-tokens are those of (10*2 + 4*1 + 7*0) / 3 = 8 evaluations
    on every path, while the mean (lens rows, calls) is 7."""
    from effective_depth.metrics.integrated_gradients import IntegratedGradients
    from effective_depth.metrics.registry import get_metric

    result = IntegratedGradients([torch.zeros(3, 2)] * 2, [["a", "b"]] * 2, torch.ones(2),
                                 evals=torch.tensor([[10, 4, 7], [10, 4, 7]]))
    assert get_metric("integrated_gradients").observe(result) == {"evals": 7.0, "depth_evals": 8.0}


def test_damaged_observations_are_passed_over_not_raised(monkeypatch, tmp_path):
    """A hand-edited observed.json (a string among the counts, a NaN, an entry that is not an
    object) costs the plan nothing but those values: the numbers left are averaged, the rest is
    dropped, and the next record rewrites the entry."""
    import json

    from effective_depth.store import observed as O

    monkeypatch.setenv("EFFECTIVE_DEPTH_FIT_CACHE", str(tmp_path))
    fp, opts = {"files": "x"}, {"steps": 256}
    O.record_observed(fp, "integrated_gradients", opts, {"evals": 40.0})
    data = json.loads((tmp_path / "observed.json").read_text())
    (key, entry), = data.items()
    entry["evals"] += ["many", float("nan"), True]
    entry["depth_evals"] = "fifty"
    (tmp_path / "observed.json").write_text(json.dumps(data))
    assert O.observed(fp, "integrated_gradients", opts) == {"evals": (40.0, 1)}
    O.record_observed(fp, "integrated_gradients", opts, {"evals": 50.0, "depth_evals": float("nan")})
    assert O.observed(fp, "integrated_gradients", opts) == {"evals": (45.0, 2)}
    data[key] = "damaged"
    (tmp_path / "observed.json").write_text(json.dumps(data))
    assert O.observed(fp, "integrated_gradients", opts) == {}
    O.record_observed(fp, "integrated_gradients", opts, {"evals": 30.0})
    assert O.observed(fp, "integrated_gradients", opts) == {"evals": (30.0, 1)}


@pytest.mark.slow
def test_planned_lens_rows_follow_positions_query(monkeypatch):
    """Under positions="query" the logit lens projects the asked example's positions only: the
    planner counts the same share of the rows the adapter really projects as the lens does."""
    model = ed.load_model("zoo/add-4l", device="cpu")
    examples = ed.get_task("fewshot_addition", digits=1, shots=3).examples(4)
    batch = encode_batch(model.tokenizer, examples, allow_lossy=True)  # '\n' unknown to it
    rows = _count_lens_rows(monkeypatch)
    counted = {}
    for positions in ("all", "query"):
        rows[0] = 0
        M.logit_lens(model, batch, positions=positions)
        planned = count_work(model.cfg, batch.lengths.tolist(), batch.answer_start.tolist(), [],
                             StudyConfig(metrics=("logit_lens",), positions=positions),
                             query_starts=batch.query_start.tolist())["logit_lens"]
        counted[positions] = (rows[0], planned.lens_rows)
    # the planner's rows per position (L + 2) include the output's reference projection, which
    # the adapter makes through another method: the share of positions is what must match
    (all_real, all_planned), (query_real, query_planned) = counted["all"], counted["query"]
    assert 0 < query_real < all_real / 2
    assert query_planned / all_planned == pytest.approx(query_real / all_real), counted
