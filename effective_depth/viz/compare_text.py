"""The comparison in the terminal (``effective-depth compare``, ``grid``, ``agreement``).

Laid out as the dashboard reads: one row per estimator, one column per run (per level, per
family), each cell a number with its CI; a cell without a number holds a footnote mark, and the
reason (not run, skipped, rule undefined, too few prompts) is written once below the table, not
in every cell. Nothing here computes: the numbers are those of
:func:`effective_depth.store.compare.compare_runs`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

__all__ = ["Footnotes", "comparison_renderables", "RUNS_PER_TABLE"]

#: run columns per scale table: more runs continue in a further table (the terminal is ~120 wide)
RUNS_PER_TABLE = 5

Row = Mapping[str, Any]


class Footnotes:
    """Numbered reasons of one table: the same text gets the same number."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str | None) -> str:
        text = str(text or "no value and no reason stored")
        if text not in self.texts:
            self.texts.append(text)
        return f"({self.texts.index(text) + 1})"

    def lines(self) -> list[str]:
        return [f"({i + 1}) {t}" for i, t in enumerate(self.texts)]


def _num(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def _ci(ci: Sequence[Any] | None) -> str:
    if not ci or len(ci) != 2 or ci[0] is None:
        return ""
    return f" [{float(ci[0]):.2f}, {float(ci[1]):.2f}]"


def _cell(value: Any, ci: Sequence[Any] | None, reason: str | None, notes: Footnotes,
          digits: int = 3, suffix: str = "") -> str:
    """A number with its CI, or "—" and the footnote mark of why there is none."""
    if value is None:
        return "— " + notes.mark(reason)
    return _num(value, digits) + _ci(ci) + suffix


def _label(v: Any) -> str:
    return "-" if v is None else str(v)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """``items`` in the fewest parts of at most ``size``, of even length (6 -> 3 + 3)."""
    parts = max(1, -(-len(items) // size))
    step = -(-len(items) // parts)
    for i in range(0, len(items), step):
        yield items[i:i + step]


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _scale(comparison: Mapping[str, Any]) -> list[Any]:
    """Rows: estimators; columns: runs, ordered by family, task, difficulty and depth."""
    runs = list(comparison.get("runs") or [])
    scale = {(r.get("run"), r.get("estimator")): r for r in comparison.get("scale") or []}
    if not runs or not scale:
        return []
    ests = list(dict.fromkeys([*comparison.get("estimators", []),
                               *(e for _, e in scale)]))
    runs = sorted(runs, key=lambda r: (_label(r.get("family")), _label(r.get("task")),
                                       _label(r.get("difficulty")), r.get("n_layers") or 0,
                                       _label(r.get("model"))))
    vary_task = len({_label(r.get("task")) for r in runs}) > 1
    vary_level = len({_label(r.get("difficulty")) for r in runs}) > 1
    models = [r.get("model") for r in runs]
    twice = {m for m in models if models.count(m) > 1}  # the run directory tells them apart
    notes = Footnotes()
    out: list[Any] = []
    numbered = list(enumerate(runs, 1))
    parts = list(_chunks(numbered, RUNS_PER_TABLE))
    for part in parts:
        headers = []
        for i, r in part:
            lines = [f"{i}. {r.get('model')}", f"{r.get('n_layers')} blocks · {r.get('family')}"]
            if vary_task:
                lines.append(_label(r.get("task")))
            if vary_level:
                lines.append(f"difficulty {_label(r.get('difficulty'))}")
            if r.get("model") in twice:
                lines.append(str(r.get("path")))
            headers.append("\n".join(lines))
        rows = []
        for e in ests:
            cells = []
            for _, r in part:
                row = scale.get((r.get("path"), e))
                cells.append("-" if row is None else
                             _cell(row.get("ratio"), row.get("ci"), row.get("reason"), notes))
            rows.append([e, *cells])
        title = "Scale: effective-depth ratio (e + 1) / L per run"
        if len(parts) > 1:
            title += f" (runs {part[0][0]}-{part[-1][0]} of {len(runs)})"
        out.append(_table(title, ["estimator", *headers], rows))
    out += notes.lines()
    return out


def _scale_trend(comparison: Mapping[str, Any]) -> list[Any]:
    """Rows: estimators; columns: families (per task and difficulty); ρ between blocks and
    ratio within each family. Runs of different families are never joined: said below."""
    rows = list(comparison.get("scale_trend") or [])
    if not rows:
        return []
    depths = {d for r in rows for d in r.get("depths", [])}
    out: list[Any] = []
    if len(depths) >= 2:
        keys = list(dict.fromkeys((r.get("family"), r.get("task"), r.get("difficulty"))
                                  for r in rows))
        vary = len({(t, d) for _, t, d in keys}) > 1
        by = {(r.get("family"), r.get("task"), r.get("difficulty"), r.get("estimator")): r
              for r in rows}
        ests = list(dict.fromkeys(r.get("estimator") for r in rows))
        notes = Footnotes()
        headers = []
        for fam, task, level in keys:
            first = by[(fam, task, level, ests[0])]
            shown = ", ".join(str(d) for d in first.get("depths", []))
            head = f"{fam}\n{shown} blocks"
            if vary:
                head += f"\n{task}" + ("" if level is None else f" difficulty {level}")
            headers.append(head)
        table_rows = []
        for e in ests:
            cells = []
            for fam, task, level in keys:
                r = by.get((fam, task, level, e))
                cells.append("-" if r is None else
                             _cell(r.get("rho"), r.get("rho_ci"), r.get("rho_reason"), notes, 2))
            table_rows.append([e, *cells])
        out.append(_table("Scale trend within a family: Spearman's rho of blocks and ratio",
                          ["estimator", *headers], table_rows))
        out += notes.lines()
    out += [f"scale trend {why}" for why in comparison.get("scale_reasons") or []]
    return out


def _level_header(levels: Sequence[Any], runs: Sequence[Any] | None) -> list[str]:
    """``level 1``; with two runs at one level, the run too."""
    twice = {lv for lv in levels if list(levels).count(lv) > 1}
    return [f"level {lv}" + (f"\n{runs[i]}" if lv in twice and runs else "")
            for i, lv in enumerate(levels)]


def _groups(rows: Sequence[Row]) -> dict[tuple[Any, Any], list[Row]]:
    out: dict[tuple[Any, Any], list[Row]] = {}
    for r in rows:
        out.setdefault((r.get("model"), r.get("task")), []).append(r)
    return out


def _difficulty(comparison: Mapping[str, Any]) -> list[Any]:
    rows = list(comparison.get("difficulty") or [])
    lead = "left out of the difficulty table" if rows else "no difficulty table"
    out: list[Any] = [f"{lead}: {why}" for why in comparison.get("difficulty_reasons") or []]
    for (model, task), members in _groups(rows).items():
        levels = list(members[0].get("levels", []))
        notes = Footnotes()
        body = []
        for r in members:
            reasons = list(r.get("reasons") or [None] * len(levels))
            cis = list(r.get("cis") or [None] * len(levels))
            cells = [_cell(v, c, why, notes) for v, c, why in zip(r.get("ratios", []), cis, reasons)]
            body.append([str(r.get("estimator")), *cells,
                         _cell(r.get("rho"), r.get("rho_ci"), r.get("rho_reason"), notes, 2)])
        out.append(_table(f"Difficulty: ratio per level and Spearman's rho — {model} on {task}",
                          ["estimator", *_level_header(levels, members[0].get("runs")),
                           "rho (level, ratio)"], body))
        out += notes.lines()
    return out


def _prompt_difficulty(comparison: Mapping[str, Any]) -> list[Any]:
    out: list[Any] = []
    for (model, task), members in _groups(comparison.get("prompt_difficulty") or []).items():
        levels = list(members[0].get("levels", []))
        notes = Footnotes()
        body = []
        for r in members:
            cells = []
            for m, d, n in zip(r.get("medians", []), r.get("n_defined", []), r.get("n_prompts", [])):
                cells.append(_cell(m, None, f"no prompt with a per-prompt depth ({d}/{n})", notes,
                                   suffix=f" ({d}/{n})"))
            body.append([str(r.get("estimator")), *cells,
                         _cell(r.get("rho"), r.get("rho_ci"), r.get("rho_reason"), notes, 2)])
        out.append(_table("Difficulty per prompt: median per-prompt ratio (defined/prompts) and "
                          f"Spearman's rho of each prompt's level and depth — {model} on {task}",
                          ["estimator", *_level_header(levels, None), "rho (per prompt)"], body))
        out += notes.lines()
    return out


def _by_correctness(comparison: Mapping[str, Any]) -> list[Any]:
    """Rows: estimator × (correct, failed); columns: levels, then the per-prompt ρ within the
    part; n is the part's prompts at the level (for ρ: those with a per-prompt depth)."""
    out: list[Any] = []
    for (model, task), members in _groups(comparison.get("difficulty_by_correctness") or []).items():
        levels = list(members[0].get("levels", []))
        notes = Footnotes()
        body = []
        for r in members:
            cells = []
            for v, c, why, n in zip(r.get("ratios", []), r.get("cis", []), r.get("reasons", []),
                                    r.get("n_subset", [])):
                cells.append(_cell(v, c, why, notes, suffix="" if n is None else f" n={n}"))
            body.append([str(r.get("estimator")), str(r.get("subset")), *cells,
                         _cell(r.get("rho"), r.get("rho_ci"), r.get("rho_reason"), notes, 2,
                               suffix=f" n={r.get('rho_n')}")])
        out.append(_table("Difficulty by correctness: ratio per level on the prompts the model "
                          f"answers (correct) and fails (failed) — {model} on {task}",
                          ["estimator", "prompts", *_level_header(levels, members[0].get("runs")),
                           "rho (per prompt, within)"], body))
        out += notes.lines()
    out += [f"difficulty by correctness: {why}"
            for why in comparison.get("difficulty_by_correctness_reasons") or []]
    return out


def _training(comparison: Mapping[str, Any]) -> list[Any]:
    rows = list(comparison.get("training") or [])
    if not rows:
        return []
    notes = Footnotes()
    body = []
    for r in rows:
        diff, why = r.get("diff"), r.get("reason")
        cell = _cell(diff, r.get("diff_ci"), why, notes)
        if diff is not None and why:  # a difference without a CI: why not
            cell += " " + notes.mark(why)
        body.append([str(r.get("base")), str(r.get("trained")), _label(r.get("task")),
                     _label(r.get("difficulty")), str(r.get("estimator")),
                     _num(r.get("ratio_base")), _num(r.get("ratio_trained")), cell])
    out: list[Any] = [_table("Training type: trained - base",
                             ["base", "trained", "task", "difficulty", "estimator", "ratio base",
                              "ratio trained", "diff [CI]"], body)]
    return out + notes.lines()


def _agreement(comparison: Mapping[str, Any], every_run: bool) -> list[Any]:
    rows = [r for r in comparison.get("agreement") or []
            if every_run or r.get("scope") == "models"]
    if not rows:
        return []
    notes = Footnotes()
    body = [[str(r.get("scope")), str(r.get("over")), str(r.get("a")), str(r.get("b")),
             _label(r.get("n")), _cell(r.get("rho"), r.get("ci"), r.get("reason"), notes, 2)]
            for r in rows]
    return [_table("Estimator agreement: Spearman's rho between estimators",
                   ["scope", "over", "a", "b", "n", "rho [CI]"], body), *notes.lines()]


def comparison_renderables(comparison: Mapping[str, Any], every_run: bool = False) -> list[Any]:
    """The comparison's tables (rich tables) and lines (str: footnotes, reasons), in order: scale,
    scale trend, training type, difficulty, difficulty per prompt, difficulty by correctness,
    agreement (over each run's prompts only with ``every_run``)."""
    return [*_scale(comparison), *_scale_trend(comparison), *_training(comparison),
            *_difficulty(comparison), *_prompt_difficulty(comparison),
            *_by_correctness(comparison), *_agreement(comparison, every_run)]
