"""Old import paths and old public names keep working, deprecated (effective_depth/_moved.py).

The flat modules moved into layer packages (docs/architecture.md): an old path gives *the same
module object* as the new one, so patching either patches both, and warns naming the new path.
Renamed public names resolve to the renamed objects with a warning."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

import effective_depth
from effective_depth._moved import MOVED, MovedModuleFinder

PACKAGE = Path(effective_depth.__file__).resolve().parent


def _fresh(monkeypatch: pytest.MonkeyPatch, old: str) -> None:
    """Forget an earlier import of the old name, so the finder is asked again."""
    monkeypatch.delitem(sys.modules, old, raising=False)
    parent, _, leaf = old.rpartition(".")
    if leaf in vars(sys.modules[parent]):
        monkeypatch.delattr(sys.modules[parent], leaf)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_old_path_is_the_new_module_and_warns(monkeypatch, old):
    new = MOVED[old]
    _fresh(monkeypatch, old)
    with pytest.warns(DeprecationWarning) as record:
        module = importlib.import_module(old)
    assert module is importlib.import_module(new) is sys.modules[old] is sys.modules[new]
    assert module.__name__ == new and module.__spec__.name == new  # its own identity, not the alias
    messages = [str(w.message) for w in record]
    assert f"{old} moved to {new}; import {new} instead (the old path will be removed)" in messages
    # the new path exists as a file, the old one no more
    assert (PACKAGE / (new.split(".", 1)[1].replace(".", "/") + ".py")).is_file()
    assert not (PACKAGE / (old.split(".", 1)[1] + ".py")).exists()


def test_from_imports_and_monkeypatching_through_either_path(monkeypatch):
    _fresh(monkeypatch, "effective_depth.planner")
    with pytest.warns(DeprecationWarning):
        from effective_depth.planner import CostPlan, plan_study

        from effective_depth import planner as old
    from effective_depth.study import planner as new

    assert old is new and CostPlan is new.CostPlan and plan_study is new.plan_study
    monkeypatch.setattr("effective_depth.planner.plan_study", lambda *a, **k: "patched")
    assert new.plan_study() == "patched"


def test_an_unknown_name_is_still_not_found():
    with pytest.raises(ModuleNotFoundError, match="effective_depth.no_such_module"):
        importlib.import_module("effective_depth.no_such_module")
    assert MovedModuleFinder().find_spec("effective_depth.no_such_module") is None
    assert MovedModuleFinder().find_spec("effective_depth.study") is None  # now a package
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = effective_depth.no_such_name


def test_the_finder_is_installed_once_and_first():
    finders = [f for f in sys.meta_path if isinstance(f, MovedModuleFinder)]
    assert len(finders) == 1
    from effective_depth import _moved

    _moved.install()
    assert [f for f in sys.meta_path if isinstance(f, MovedModuleFinder)] == finders
    assert sys.meta_path.index(finders[0]) < next(
        i for i, f in enumerate(sys.meta_path) if getattr(f, "__name__", "") == "PathFinder")


def test_old_paths_work_in_a_fresh_interpreter():
    """Without anything imported before (importing the old name imports the package); the
    warning points at the line that imported the old path."""
    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            "    import effective_depth.results as a\n"
            "import effective_depth.store.results as b\n"
            "[w] = [w for w in seen if 'effective_depth' in str(w.message)]\n"
            "print(w.category.__name__, w.filename, w.lineno)\n"
            "print(w.message)\n"
            "print(a is b)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.splitlines() == [
        "DeprecationWarning <string> 4",
        "effective_depth.results moved to effective_depth.store.results; import "
        "effective_depth.store.results instead (the old path will be removed)", "True"]


def test_the_study_package_exports_what_the_study_module_did():
    import effective_depth.study as study
    from effective_depth.study import METRICS, StudyConfig, run
    from effective_depth.study import run_study as via_package

    assert study.__all__ == ["StudyConfig", "run_study", "resolve_task", "default_out_dir",
                             "StudyResult", "config_differences"]
    for name in study.__all__:
        assert getattr(study, name) is getattr(run, name), name
    assert via_package is run.run_study and StudyConfig is run.StudyConfig
    assert METRICS == run.METRICS and "skip_effects" in METRICS
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = study.no_such_name


@pytest.mark.parametrize("module, old, new", [
    ("effective_depth", "LogitLens", "LogitLensResult"),
    ("effective_depth", "TunedLens", "TunedLensResult"),
    ("effective_depth", "residual_erasure", "erasure"),
    ("effective_depth.metrics", "LogitLens", "LogitLensResult"),
    ("effective_depth.metrics", "TunedLens", "TunedLensResult"),
    ("effective_depth.metrics", "residual_erasure", "erasure"),
    ("effective_depth.metrics.logit_lens", "LogitLens", "LogitLensResult"),
    ("effective_depth.metrics.tuned_lens", "TunedLens", "TunedLensResult"),
    ("effective_depth.metrics.erasure", "residual_erasure", "erasure"),
    ("effective_depth.engine", "Plan", "ResumePlan"),
    ("effective_depth.engine.interventions", "Plan", "ResumePlan"),
    ("effective_depth.study.planner", "Plan", "CostPlan"),
])
def test_renamed_names_resolve_with_a_warning(module, old, new):
    mod = importlib.import_module(module)
    message = f"{module}.{old} is deprecated: use {module}.{new}"
    with pytest.warns(DeprecationWarning, match=re.escape(message)):
        value = getattr(mod, old)
    assert value is getattr(mod, new)
    assert old not in getattr(mod, "__all__", ()) and new in getattr(mod, "__all__", (new,))


def test_the_renamed_objects_are_the_ones_the_package_uses():
    from effective_depth.engine.sweep import Row
    from effective_depth.metrics import LogitLensResult, TunedLensResult, erasure
    from effective_depth.metrics.registry import get_metric

    assert get_metric("logit_lens").result_type is LogitLensResult
    assert get_metric("tuned_lens").result_type is TunedLensResult
    assert issubclass(TunedLensResult, LogitLensResult)
    assert LogitLensResult.name == "logit_lens" and TunedLensResult.name == "tuned_lens"
    assert erasure.__module__ == "effective_depth.metrics.erasure"
    assert Row.__annotations__["plan"] == "ResumePlan"


def test_the_grid_command_and_its_hidden_old_name():
    from effective_depth.cli import main

    listing = CliRunner().invoke(main, ["--help"]).output
    assert "  grid " in listing and "sweep" not in listing
    args = ["--config", "/no/such/grid.yaml"]
    new = CliRunner().invoke(main, ["grid", *args])
    old = CliRunner().invoke(main, ["sweep", *args])
    assert new.exit_code == old.exit_code == 1
    assert "config file '/no/such/grid.yaml' does not exist" in new.stderr
    assert old.stderr == ("note: `effective-depth sweep` is now `effective-depth grid` (the old "
                          "name will be removed)\n" + new.stderr)
    assert "note:" not in new.stderr
    assert CliRunner().invoke(main, ["sweep", "--help"]).output.replace("sweep", "grid") == \
        CliRunner().invoke(main, ["grid", "--help"]).output


def test_no_module_of_the_package_uses_an_old_path_or_name():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        import effective_depth.cli  # noqa: F401
    text = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "_moved.py")
    for old, new in MOVED.items():
        assert re.search(rf"{re.escape(old)}\b", text.replace(new, "")) is None, old
    assert re.search(r"effective_depth\.store\.results\b", text)  # the search does find paths
