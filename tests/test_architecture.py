"""The layers of the package, checked on its whole import graph (docs/architecture.md).

Every module of ``effective_depth`` belongs to one layer; a module may import its own layer and
the layers below it, never one above. The graph holds *every* import statement of every module,
at module level and inside functions (the lazy ones too), read with ``ast``; the check follows
the transitive closure from every module, so a path of any length that climbs is reported with
the whole path, as is a cycle whose modules lie in different layers. Hook names have one owner,
and the public API is one list.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path

import pytest

import effective_depth

PACKAGE = Path(effective_depth.__file__).resolve().parent
ROOT = PACKAGE.name  # "effective_depth"
DOC = "docs/architecture.md"

#: the layers, lowest first: module names (relative to the package) or packages (``name.*``).
#: A module may import its own layer and the ones below. docs/architecture.md says what each holds.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("_version", "errors", "progress", "frozen", "display", "resources")),
    ("numerics", ("stats",)),
    ("models", ("models", "models.*", "tasks", "tasks.*")),
    ("engine", ("engine", "engine.*")),
    ("metrics", ("metrics", "metrics.*")),
    ("analysis", ("analysis", "analysis.*")),
    ("store", ("store", "store.*")),
    ("present", ("viz", "viz.*")),
    ("orchestration", ("study", "study.*")),
    ("interface", ("cli", "viz.cli_dashboard")),
    # the public API: imports lazily from every layer; no module of the package imports it
    ("api", ("",)),
]

HOOK_WORDS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_resid_mid")


# --- the import graph ---------------------------------------------------------------------------

def modules_of(package_dir: Path) -> dict[str, Path]:
    """Every module of the package under ``package_dir``, by its name relative to the package
    (``""`` for the package's ``__init__``, ``"metrics"`` for ``metrics/__init__.py``)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _absolute(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute dotted name an ``ImportFrom`` names (relative to the package root)."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [p for p in [ROOT, *package] if p]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _own(dotted: str, modules: Mapping[str, Path]) -> str | None:
    """The package module a dotted name lands in (its longest prefix that is a module)."""
    if dotted != ROOT and not dotted.startswith(ROOT + "."):
        return None
    rel = dotted[len(ROOT) + 1:] if dotted != ROOT else ""
    while rel not in modules:
        if not rel:
            return None
        rel = rel.rpartition(".")[0]
    return rel


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports, from every import statement in its source
    (module level, inside functions and classes, under ``if TYPE_CHECKING``). ``from .x import
    y`` counts ``x.y`` when that is a module, else ``x``. A module's implicit import of its
    parent packages is not an edge (Python runs them first whatever the module imports)."""
    modules = modules_of(package_dir)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, path, node)
                targets = [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                own = _own(t, modules)
                if own is not None and own != name:
                    edges.add(own)
        graph[name] = edges
    return graph


# --- the layer check ----------------------------------------------------------------------------

def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> int | None:
    """The index of the layer ``module`` belongs to; an exact name wins over a ``pkg.*``."""
    for exact in (True, False):
        for i, (_, patterns) in enumerate(layers):
            for p in patterns:
                if exact and p == module:
                    return i
                if not exact and p.endswith(".*") and module.startswith(p[:-1]):
                    return i
    return None


def _show(module: str) -> str:
    return f"{ROOT}.{module}" if module else ROOT


def _path_text(path: list[str], layers: list[tuple[str, tuple[str, ...]]]) -> str:
    return " -> ".join(f"{_show(m)} [{layers[layer_of(m, layers)][0]}]" for m in path)


def _sccs(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative), each of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph.get(nxt, ())))))
                    break
                if nxt in on:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _shortest(graph: Mapping[str, set[str]], start: str, goal: str, within: set[str] | None = None
              ) -> list[str] | None:
    prev: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if within is not None and nxt not in within:
                continue
            if nxt == goal:
                path = [goal, node]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])  # type: ignore[arg-type]
                return path[::-1]
            if nxt not in prev:
                prev[nxt] = node
                queue.append(nxt)
    return None


def layer_violations(graph: Mapping[str, set[str]],
                     layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> list[str]:
    """What breaks the layering, one line each, naming the modules and the whole path:

    * a module assigned to no layer;
    * an upward path: from a module, following imports (transitively), to a module of a higher
      layer (the shortest such path, once per pair of start module and highest layer reached);
    * a cycle through modules of different layers.
    """
    out = [f"{_show(m)} is in no layer: add it to LAYERS (tests/test_architecture.py) and to "
           f"{DOC}" for m in sorted(graph) if layer_of(m, layers) is None]
    if out:
        return out
    for start in sorted(graph):
        mine = layer_of(start, layers)
        seen = {start}
        queue = deque([start])
        reached: dict[int, str] = {}
        while queue:
            node = queue.popleft()
            for nxt in sorted(graph.get(node, ())):
                if nxt in seen:
                    continue
                seen.add(nxt)
                queue.append(nxt)
                lay = layer_of(nxt, layers)
                if lay > mine and lay not in reached:  # type: ignore[operator]
                    reached[lay] = nxt  # type: ignore[index]
        for _, target in sorted(reached.items()):
            path = _shortest(graph, start, target)
            out.append(f"upward: {_path_text(path, layers)}")  # type: ignore[arg-type]
    for comp in _sccs(graph):
        if len({layer_of(m, layers) for m in comp}) > 1:
            members = set(comp)
            low = min(comp, key=lambda m: (layer_of(m, layers), m))
            back = next(m for m in sorted(graph[low]) if m in members)
            cycle = [low, *(_shortest(graph, back, low, members) or [back, low])]
            out.append(f"cycle across layers: {_path_text(cycle, layers)}")
    return out


def _report(problems: list[str]) -> str:
    return (f"the import graph breaks the layers ({len(problems)}); read {DOC} for what each "
            "layer holds and how to move code to the layer that owns it (not a lazy import: "
            "imports inside functions count too):\n  " + "\n  ".join(problems))


# --- tests --------------------------------------------------------------------------------------

def test_every_module_has_a_layer_and_no_import_climbs():
    problems = layer_violations(import_graph(PACKAGE))
    assert problems == [], _report(problems)


def test_no_import_cycle_but_the_plugin_packages():
    """Modules import one another one way; the only cycles are a plugin package's ``__init__``
    importing its plugins, which import its registry (tasks, measurements). The store reads
    results <- compare <- frames, and metrics.options imports no registry."""
    cycles = [c for c in _sccs(import_graph(PACKAGE)) if len(c) > 1]
    assert all(m.split(".")[0] in ("tasks", "metrics") for c in cycles for m in c), cycles
    assert not [c for c in cycles if "metrics.options" in c], cycles


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph(PACKAGE)
    # relative, two levels up (viz/figures.py: from ..metrics.behaviour import ...)
    assert "metrics.behaviour" in graph["viz.figures"]
    # inside a function (metrics/registry._load_builtin: from .. import metrics)
    assert "metrics" in graph["metrics.registry"]
    # "from .pkg import name" where the name is a module (effective_depth/__init__: from .viz
    # import reprs)
    assert "viz.reprs" in graph[""]
    # from a package's __init__ (metrics/__init__.py: from .base import ...)
    assert "metrics.base" in graph["metrics"]
    assert all(not m.startswith(ROOT) for targets in graph.values() for m in targets)


def test_the_check_names_a_two_step_upward_path_and_a_cross_layer_cycle():
    """On a synthetic graph: engine -> metrics.base -> viz.figures climbs twice (once through
    a module that is itself only one step too high); study <-> stats is a cycle across layers."""
    graph = {"engine.sweep": {"metrics.base"}, "metrics.base": {"errors"}, "errors": set(),
             "viz.figures": set(), "stats": {"study"}, "study": {"stats"}}
    assert layer_violations(graph) == [
        "upward: effective_depth.engine.sweep [engine] -> effective_depth.metrics.base [metrics]",
        "upward: effective_depth.stats [numerics] -> effective_depth.study [orchestration]",
        "cycle across layers: effective_depth.stats [numerics] -> effective_depth.study "
        "[orchestration] -> effective_depth.stats [numerics]",
    ]
    graph["metrics.base"] = {"errors", "viz.figures"}
    found = layer_violations(graph)
    assert ("upward: effective_depth.engine.sweep [engine] -> effective_depth.metrics.base "
            "[metrics] -> effective_depth.viz.figures [present]") in found
    assert layer_violations({"brand_new": set()}) == [
        f"effective_depth.brand_new is in no layer: add it to LAYERS "
        f"(tests/test_architecture.py) and to {DOC}"]


def test_a_planted_upward_import_inside_a_function_fails(tmp_path):
    """A copy of the package with one lazy import planted in metrics/base.py (metrics ->
    interface) fails the check, and the message names the whole path and the doc."""
    copy = tmp_path / ROOT
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("zoo", "__pycache__", "*.json"))
    assert layer_violations(import_graph(copy)) == []
    base = copy / "metrics" / "base.py"
    base.write_text(base.read_text() + "\n\ndef _planted():\n    from ..cli import main\n"
                    "    return main\n")
    problems = layer_violations(import_graph(copy))
    assert ("upward: effective_depth.metrics.base [metrics] -> effective_depth.cli [interface]"
            in problems)
    # every module that reaches metrics.base from below climbs through it: the path says so
    assert any(p.startswith("upward: effective_depth.engine") for p in problems) is False
    assert any("effective_depth.metrics.contributions [metrics] -> effective_depth.metrics.base "
               "[metrics] -> effective_depth.cli [interface]" in p for p in problems)
    assert DOC in _report(problems)


def test_layer_assignment_is_exact_before_package_wide():
    assert LAYERS[layer_of("viz.cli_dashboard")][0] == "interface"
    assert LAYERS[layer_of("viz.figures")][0] == "present"
    assert LAYERS[layer_of("")][0] == "api"
    assert layer_of("vizier") is None and layer_of("metricsx.base") is None


@pytest.mark.slow
def test_importing_engine_and_metrics_loads_nothing_above_them():
    """At run time too: importing the engine and every measurement loads no module of a layer
    above the measurements' (nor plotly or click)."""
    code = ("import json, sys; import effective_depth.engine, effective_depth.metrics; "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    loaded = json.loads(out.stdout)
    assert "effective_depth.metrics.skip_effects" in loaded  # the import did happen
    metrics_layer = [n for n, _ in LAYERS].index("metrics")
    above = [m for m in loaded if m.startswith(ROOT + ".")
             and layer_of(m[len(ROOT) + 1:]) > metrics_layer]
    # the public API's __init__ registers the notebook views (viz.reprs, and so its package's
    # __init__, which imports nothing: plotly is lazy); nothing else above metrics
    assert above == [f"{ROOT}.viz", f"{ROOT}.viz.reprs"]
    assert not [m for m in loaded if m.split(".")[0] in ("plotly", "click")]


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
    for name in ("Contributions", "LogitLensResult", "SkipEffects", "Behaviour", "Erasure",
                 "IntegratedGradients"):
        assert issubclass(getattr(ed, name), ed.MetricResult) and getattr(ed, name) is getattr(metrics, name)


def test_importing_the_package_is_lazy():
    code = "import json, sys, effective_depth; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    loaded = json.loads(out.stdout)
    assert "torch" not in loaded and "effective_depth.engine" not in loaded


@pytest.mark.parametrize("kind", ["result", "estimate", "run"])
def test_lower_layers_show_themselves_through_the_display_registry(kind):
    """Results, estimates and runs render their notebook views without importing reprs: the
    views are registered in effective_depth.display when the package is imported."""
    from effective_depth.display import html_kinds, render_html

    assert kind in html_kinds()
    assert render_html("no such kind", "<x>") == "<pre>&#x27;&lt;x&gt;&#x27;</pre>"


def test_the_doc_lists_the_layers_of_the_test_in_order():
    """docs/architecture.md's table has one row per layer of LAYERS, lowest first, and names
    every top-level module and package of each layer."""
    doc = (PACKAGE.parent / DOC).read_text()
    rows = [line.split("|")[1:3] for line in doc.splitlines()
            if line.startswith("| ") and not line.startswith(("| layer", "| ---"))]
    assert [name.strip() for name, _ in rows] == [name for name, _ in LAYERS]
    for (_, modules), (_, patterns) in zip(rows, LAYERS):
        for p in patterns:
            top = p.removesuffix(".*").replace(".", "/")
            shown = "`effective_depth/__init__.py`" if top == "" else f"`{top}"
            assert shown in modules, (p, modules)


#: modules outside metrics/ and viz/ that may spell a measurement's name: the public API table
#: (function names)
MAY_NAME_MEASUREMENTS = {""}


def _registered_names() -> set[str]:
    from effective_depth.metrics.registry import estimator_specs, metric_names, score_specs

    return set(metric_names()) | set(estimator_specs()) | set(score_specs())


def named_measurements(package_dir: Path, names: set[str]) -> list[str]:
    """``module:line 'name'`` for every string constant (docstrings aside) equal to a registered
    measurement, estimator or score name in a module outside ``metrics/`` and ``viz/``."""
    out = []
    for module, path in modules_of(package_dir).items():
        top = module.split(".")[0]
        if top in ("metrics", "viz") or module in MAY_NAME_MEASUREMENTS:
            continue
        tree = ast.parse(path.read_text())
        exported = {id(c) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
                    for c in ast.walk(node.value)}  # re-exported function names
        strings = set(_strings(tree))  # docstrings aside
        out += [f"{module}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and n.value in names and id(n) not in exported and (n.lineno, n.value) in strings]
    return out


def test_no_module_outside_metrics_and_the_figures_names_a_measurement(tmp_path):
    """Measurements, estimators and scores are named by their own module (and drawn by the
    figures); everything else reads the registry. A planted name is found."""
    names = _registered_names()
    assert {"skip_effects", "ed_kl", "depth_score"} <= names
    assert named_measurements(PACKAGE, names) == []
    copy = tmp_path / "effective_depth"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    planted = copy / "study" / "run.py"
    planted.write_text(planted.read_text() + '\n\nSPECIAL = "ed_kl"\n')
    found = named_measurements(copy, names)
    assert len(found) == 1 and found[0].startswith("study.run:") and found[0].endswith("'ed_kl'")
