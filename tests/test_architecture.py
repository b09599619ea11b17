"""Dependencies point down and hook names have one owner: checked on the import graph (a fresh
interpreter) and on the source (every import statement, also the lazy ones inside functions)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import effective_depth

PACKAGE = Path(effective_depth.__file__).resolve().parent
# what the engine and the measurements must never pull in (ARCHITECTURE.md: engine <- metrics <-
# analysis <- viz <- cli)
UPWARD = ("effective_depth.viz", "effective_depth.study", "effective_depth.cli",
          "effective_depth.compare", "effective_depth.grid", "plotly", "click")
HOOK_WORDS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_resid_mid")


def _imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, wherever the import statement is."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def _is_under(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == r or name.startswith(r + ".") for r in roots)


def test_import_scan_resolves_relative_imports():
    # the scanner itself: figures.py imports the metrics relatively (..metrics.behaviour)
    got = _imports(PACKAGE / "viz" / "figures.py")
    assert "effective_depth.metrics.behaviour" in got and "plotly.graph_objects" in got
    assert _is_under("effective_depth.viz.figures", UPWARD)
    assert not _is_under("effective_depth.vizier", UPWARD)


@pytest.mark.parametrize("package", ["metrics", "engine"])
def test_engine_and_metrics_never_import_upward_statically(package):
    bad = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        hits = sorted(n for n in _imports(path) if _is_under(n, UPWARD))
        if package == "engine":
            hits += sorted(n for n in _imports(path) if _is_under(n, ("effective_depth.metrics",)))
        if hits:
            bad[str(path.relative_to(PACKAGE))] = hits
    assert bad == {}


def test_importing_engine_and_metrics_loads_nothing_above_them():
    code = ("import json, sys; import effective_depth.engine, effective_depth.metrics; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    loaded = json.loads(out.stdout)
    assert "effective_depth.metrics.skip_effects" in loaded  # the import did happen
    assert [m for m in loaded if _is_under(m, UPWARD)] == []


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """String constants of a module other than docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            docstrings.add(id(body[0].value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_only_the_adapter_spells_hook_names():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "engine" / "adapter.py":
            continue
        for line, text in _strings(ast.parse(path.read_text())):
            if any(w in text for w in HOOK_WORDS):
                bad.append(f"{path.relative_to(PACKAGE)}:{line}")
    assert bad == []
    # the scan sees f-string pieces too: the adapter itself is caught
    adapter = _strings(ast.parse((PACKAGE / "engine" / "adapter.py").read_text()))
    assert any("hook_resid_post" in text for _, text in adapter)


def test_the_public_api_is_one_list_and_every_name_resolves():
    import effective_depth as ed
    from effective_depth import engine, metrics

    assert sorted(dir(ed)) == sorted(ed.__all__) and len(set(ed.__all__)) == len(ed.__all__)
    for name in ed.__all__:
        assert getattr(ed, name) is not None, name
    # every intervention, the helper for custom ones, and every result type
    for name in ("skip_block", "skip_attn", "skip_mlp", "local_skip", "replace_residual", "ablate",
                 "intervene", "where", "Patch", "Intervention", "compile_plan", "sweep"):
        assert getattr(ed, name) is getattr(engine, name), name
    for name in ("Contributions", "LogitLens", "SkipEffects", "Behaviour", "Erasure",
                 "IntegratedGradients"):
        assert issubclass(getattr(ed, name), ed.MetricResult) and getattr(ed, name) is getattr(metrics, name)


def test_importing_the_package_is_lazy():
    code = "import json, sys, effective_depth; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    loaded = json.loads(out.stdout)
    assert "torch" not in loaded and "effective_depth.engine" not in loaded
