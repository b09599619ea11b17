"""Tidy tables of runs (effective_depth.store.frames): values and CIs against independent
computations from the stored tensors, a measurement registered here appearing without changes
to the frames code, comparison CSVs with numeric CI columns, and `effective-depth export`."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import effective_depth as ed
from effective_depth.cli import main
from effective_depth.errors import ConfigError
from effective_depth.metrics.registry import EstimatorSpec, MetricSpec, registered
from effective_depth.stats import bootstrap_indices
from effective_depth.store.compare import compare_runs, tidy_comparison, write_comparison
from effective_depth.store.frames import runs_to_frame
from tests.test_registry import TOY, LastTokenNorm, _largest_norm, _toy_run

N_BOOT = 40


@dataclass
class ResampledNorm(LastTokenNorm):
    """The toy measurement of test_registry, with per-prompt resampling (``curves_of``)."""

    name: ClassVar[str] = "toy_band"

    def curves_of(self, idx=None):
        return {"norm": self.norm_of(idx)}


def _band_run(ctx):
    toy = _toy_run(ctx)
    return ResampledNorm(toy.norms, meta=toy.meta)


BAND = MetricSpec(name="toy_band", result_type=ResampledNorm, run=_band_run,
                  estimators=(EstimatorSpec("ed_band", "toy_band", _largest_norm),))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("frames") / "run"
    with registered(TOY), registered(BAND):
        cfg = ed.StudyConfig(model="zoo/add-2l", metrics=("logit_lens", "skip_effects", "behaviour",
                                                          "toy_norm", "toy_band"),
                             n_examples=6, n_boot=N_BOOT, seed=3)
        ed.run_study(cfg, out, progress=False, dashboard=False)
        yield out


@pytest.mark.slow
def test_curves_frame_values_and_bootstrap_bands(run_dir):
    run = ed.load_run(run_dir)  # the fixture keeps the toy measurements registered
    frame = run.to_frame("curves")
    L, P = 2, 6
    # one row per measurement x curve x layer: lens 2 curves x L, skips 3 x L, behaviour
    # 2 x (L+1), each toy 1 x L
    assert len(frame) == 2 * L + 3 * L + 2 * (L + 1) + L + L
    assert not frame.duplicated(["measurement", "curve", "layer"]).any()
    stored = run.results["metrics"]
    for (measurement, curve), rows in frame.groupby(["measurement", "curve"]):
        np.testing.assert_allclose(rows.sort_values("layer")["value"].to_numpy(),
                                   stored[measurement]["curves"][curve], rtol=1e-6, atol=1e-7)
    # the band, recomputed here from the per-prompt sums in tensors.safetensors
    kl_sums = run.tensors["metrics.logit_lens.kl_sums"].double()
    counts = run.tensors["metrics.logit_lens.counts"].double()
    curves = np.stack([(kl_sums[idx].sum(0) / counts[idx].sum()).numpy()
                       for idx in map(torch.as_tensor, bootstrap_indices(P, N_BOOT, 3))])
    lo, hi = np.quantile(curves, [0.025, 0.975], axis=0)
    kl = frame[(frame.measurement == "logit_lens") & (frame.curve == "kl")].sort_values("layer")
    np.testing.assert_allclose(kl["ci_lo"], lo, rtol=1e-5)
    np.testing.assert_allclose(kl["ci_hi"], hi, rtol=1e-5)
    assert (kl["ci_lo"] < kl["ci_hi"]).all() and set(kl["n_boot"]) == {N_BOOT}
    # accuracy after all L blocks is the full model's accuracy
    exit_acc = frame[(frame.curve == "accuracy_by_exit") & (frame.layer == L)]
    assert exit_acc["value"].item() == pytest.approx(run.results["accuracy"])
    # a measurement registered in this file: its curve is there; a band only where the result
    # can resample prompts (curves_of), never a made-up one
    toy = frame[frame.measurement == "toy_norm"]
    assert list(toy["layer"]) == [0, 1] and toy["ci_lo"].isna().all() and set(toy["n_boot"]) == {0}
    band = frame[frame.measurement == "toy_band"].sort_values("layer")
    norms = run.tensors["metrics.toy_band.norms"].double()
    boots = np.stack([norms[torch.as_tensor(i)].mean(0).numpy()
                      for i in bootstrap_indices(P, N_BOOT, 3)])
    np.testing.assert_allclose(band["ci_hi"], np.quantile(boots, 0.975, axis=0), rtol=1e-5)
    assert frame["ci_lo"].dtype == float and frame["value"].dtype == float


@pytest.mark.slow
def test_estimates_frame_has_numeric_intervals(run_dir):
    run = ed.load_run(run_dir)
    frame = run.to_frame("estimates")
    depth = run.results["depth"]
    assert set(frame["estimator"]) == set(depth)
    assert {"ed_toy", "ed_band"} <= set(frame["estimator"])
    assert frame.set_index("estimator").loc["ed_band", "measurement"] == "toy_band"
    for col in ("layer", "ratio", "ci_lo", "ci_hi", "layer_ci_lo", "threshold"):
        assert frame[col].dtype == float, col
    for _, row in frame.iterrows():
        entry = depth[row["estimator"]]
        ci = entry.get("ci")
        if ci:
            assert (row["ci_lo"], row["ci_hi"]) == pytest.approx(tuple(ci))
        else:
            assert math.isnan(row["ci_lo"]) and math.isnan(row["ci_hi"])
        if row["kind"] == "estimator":
            assert row["ratio"] == pytest.approx(entry["ratio"]) if entry["layer"] is not None \
                else math.isnan(row["ratio"]) and row["reason"] == entry["reason"]
    score = frame.set_index("estimator").loc["depth_score"]
    assert score["kind"] == "score" and score["measurement"] == "skip_effects"


@pytest.mark.slow
def test_comparison_csvs_have_numeric_intervals_one_row_per_level(tmp_path):
    runs = []
    for digits in (2, 3):
        cfg = ed.StudyConfig(model="zoo/add-2l", metrics=("logit_lens",), n_examples=5, n_boot=20,
                             task="addition", task_params={"digits": digits})
        runs.append(ed.run_study(cfg, tmp_path / f"d{digits}", progress=False,
                                 dashboard=False).path)
    comparison = compare_runs(runs, n_boot=20)
    write_comparison(comparison, tmp_path / "cmp")
    for name in ("scale", "difficulty"):
        text = (tmp_path / "cmp" / f"{name}.csv").read_text()
        assert "[" not in text, f"{name}.csv holds a list: {text[:300]}"
        rows = list(csv.DictReader(io.StringIO(text)))
        for row in rows:
            for key in row:
                if key.endswith(("_lo", "_hi")) and row[key]:
                    float(row[key])
    difficulty = list(csv.DictReader(io.StringIO((tmp_path / "cmp" / "difficulty.csv").read_text())))
    n_estimators = len([r for r in comparison["difficulty"]])
    assert len(difficulty) == 2 * n_estimators  # one row per level
    first = comparison["difficulty"][0]
    got = [r for r in difficulty if r["estimator"] == first["estimator"]]
    assert [int(r["level"]) for r in got] == first["levels"] == [2, 3]
    for r, ratio, ci in zip(got, first["ratios"], first["cis"]):
        assert (float(r["ratio"]) if r["ratio"] else None) == (None if ratio is None
                                                               else pytest.approx(ratio, rel=1e-3))
        if ci:
            assert float(r["ci_lo"]) == pytest.approx(ci[0], rel=1e-3)
    # the frame of the same table
    frame = runs_to_frame(runs, "comparison", table="difficulty", n_boot=20)
    assert list(frame.columns) == list(tidy_comparison("difficulty", comparison["difficulty"])[0])
    assert frame["rho_ci_lo"].dtype == float and len(frame) == len(difficulty)


def test_tidy_comparison_splits_every_interval():
    rows = [{"model": "m", "levels": [1, 2], "ratios": [0.5, None], "cis": [[0.25, 0.75], None],
             "runs": ["a", "b"], "rho": 1.0, "rho_ci": [0.5, 1.0]}]
    assert tidy_comparison("difficulty", rows) == [
        {"model": "m", "level": 1, "ratio": 0.5, "ci_lo": 0.25, "ci_hi": 0.75, "run": "a",
         "rho": 1.0, "rho_ci_lo": 0.5, "rho_ci_hi": 1.0},
        {"model": "m", "level": 2, "ratio": None, "ci_lo": pytest.approx(float("nan"), nan_ok=True),
         "ci_hi": pytest.approx(float("nan"), nan_ok=True), "run": "b", "rho": 1.0,
         "rho_ci_lo": 0.5, "rho_ci_hi": 1.0}]
    training = tidy_comparison("training", [{"diff": 0.25, "diff_ci": [0.0, 0.5]}])
    assert training == [{"diff": 0.25, "diff_ci_lo": 0.0, "diff_ci_hi": 0.5}]


@pytest.mark.slow
def test_export_command_writes_what_runs_to_frame_builds(run_dir, tmp_path):
    want = runs_to_frame([run_dir], "estimates")
    runner = CliRunner()
    # a directory of runs (a sweep's output) is taken as compare takes it
    res = runner.invoke(main, ["export", str(run_dir.parent), "-f", "csv",
                               "-o", str(tmp_path / "e.csv")])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(tmp_path / "e.csv")
    pd.testing.assert_series_equal(got["ci_lo"], want["ci_lo"], check_dtype=False)
    res = runner.invoke(main, ["export", str(run_dir), "--kind", "curves", "-f", "parquet",
                               "-o", str(tmp_path / "c.parquet"), "--n-boot", "10"])
    assert res.exit_code == 0, res.output
    curves = pd.read_parquet(tmp_path / "c.parquet")
    assert set(curves["n_boot"]) == {0, 10} and len(curves) == 20
    res = runner.invoke(main, ["export", str(run_dir), "-f", "json"])
    records = json.loads(res.output)
    assert [r["estimator"] for r in records] == list(want["estimator"])
    res = runner.invoke(main, ["export", str(run_dir), "-f", "parquet"])
    assert res.exit_code != 0 and "give a file with -o" in res.output
    res = runner.invoke(main, ["export", str(run_dir), "--table", "difficulty"])
    assert res.exit_code != 0 and "--kind comparison" in res.output


@pytest.mark.slow
def test_frames_without_pandas_name_the_extra(run_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    run = ed.load_run(run_dir)
    with pytest.raises(ConfigError, match=r"effective_depth\[frames\]"):
        run.to_frame("estimates")
    with pytest.raises(ConfigError, match="unknown table kind 'curve'"):
        runs_to_frame([run], "curve")
