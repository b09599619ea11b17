"""``effective-depth dashboard RUN_DIR... --out FILE.html``: the dashboard as a command.

plotly and the toolkit's heavy modules are imported inside the command, so that registering it
in ``cli.py`` keeps ``effective-depth --help`` instant.
"""

from __future__ import annotations

import json
import webbrowser
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError, EffectiveDepthError

__all__ = ["dashboard_cmd"]


def _read_comparison(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the comparison file {path}: {exc}") from None
    if not isinstance(data, dict) or not {"scale", "training", "difficulty"} & set(data):
        raise ConfigError(f"{path} is not a comparison (expected the JSON written by "
                          "'effective-depth compare', with scale/training/difficulty tables)")
    return data


def _build(run_dirs: tuple[Path, ...], out: Path, fmt: str, comparison: dict[str, Any] | None) -> str:
    if fmt == "html":
        from .dashboard import write_dashboard

        path = write_dashboard(list(run_dirs), out, comparison)
        size = path.stat().st_size / 1024
        click.echo(f"wrote {path} ({size:,.0f} KB, {len(run_dirs)} run(s); open it in any browser, "
                   "it works offline)")
        return path.resolve().as_uri()
    from .export import export_runs, require_kaleido

    require_kaleido()  # before loading runs: fail fast with the install hint
    if out.suffix == ".html":  # the default name: the images go into "dashboard/"
        out = out.with_suffix("")
    written = export_runs(list(run_dirs), out, fmt, comparison)
    click.echo(f"wrote {len(written)} {fmt} files to {out}")
    return out.resolve().as_uri()


@click.command("dashboard")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("dashboard.html"),
              show_default=True,
              help="The HTML file to write; with --format png/svg, a directory for the images.")
@click.option("--format", "fmt", type=click.Choice(["html", "png", "svg"]), default="html",
              show_default=True,
              help="html: one self-contained file; png/svg: one image per figure (needs kaleido).")
@click.option("--comparison", "comparison_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="A comparison.json from 'effective-depth compare' (default: computed from "
                   "the runs).")
@click.option("--open", "open_browser", is_flag=True, help="Open the result in a web browser.")
def dashboard_cmd(run_dirs: tuple[Path, ...], out: Path, fmt: str, comparison_file: Path | None,
                  open_browser: bool) -> None:
    """Build one self-contained HTML dashboard from one or more RUN_DIRs (run directories,
    sweep output directories or a glob's mix; non-runs and incomplete runs are skipped with a
    note).

    The file embeds plotly.js and every figure, needs no network, and shows for each run its
    configuration, the effective-depth table with confidence intervals and every figure; with
    several runs, a selector switches between them and comparison figures (scale, training
    type, difficulty) are added.
    """
    from ..store.results import find_runs

    try:
        found, notes = find_runs(run_dirs)
        for note in notes:
            click.echo(f"note: {note}", err=True)
        if not found:
            raise ConfigError(f"no complete run directory among {', '.join(map(str, run_dirs))}")
        target = _build(tuple(found), out, fmt, _read_comparison(comparison_file))
    except EffectiveDepthError as exc:  # one line, also when the command runs on its own
        raise click.ClickException(str(exc)) from None
    if open_browser:
        webbrowser.open(target)
