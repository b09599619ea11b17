"""The ``effective-depth`` command line.

Heavy libraries (torch, transformer_lens, plotly) are imported inside the commands, so that
``effective-depth --help`` answers instantly. Mistakes the user can fix (an unknown model, a bad
task parameter, a corrupt run directory) are :class:`~effective_depth.errors.EffectiveDepthError`
and are shown as one line, never as a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from .errors import EffectiveDepthError

log = logging.getLogger("effective_depth")


class _Group(click.Group):
    """A click group that turns the toolkit's own errors into one-line messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EffectiveDepthError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="effective_depth")
def main(verbose: int) -> None:
    """How many of a language model's layers does it really use?

    Measure residual contributions, layer-skip effects, the logit lens, residual erasure and
    integrated gradients, and turn them into effective-depth estimates with confidence intervals.
    """
    from rich.logging import RichHandler

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = RichHandler(console=_console(stderr=True), show_path=False, show_time=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("effective_depth").setLevel(max(level, logging.INFO) if verbose else level)


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, width=None if sys.stdout.isatty() else 120)


@main.command("models")
@click.option("--official", is_flag=True, help="Also list TransformerLens's official model names.")
def models_cmd(official: bool) -> None:
    """List the models that can be loaded: the bundled zoo (with accuracy) and, with
    --official, TransformerLens's official names. Any Hugging Face hub id of a supported
    architecture and any local checkpoint directory work too."""
    from rich.table import Table

    from .models.zoo import DEFAULT_ZOO_MODEL, zoo_entries

    console = _console()
    table = Table(title="Bundled zoo (load offline: --model zoo/NAME)")
    for col in ("model", "blocks", "d_model", "task", "format", "digits", "held-out accuracy",
                "params"):
        table.add_column(col)
    for name, entry in zoo_entries().items():
        card = entry.card
        arch, task = card.get("architecture", {}), card.get("task", {})
        acc = card.get("accuracy", {})
        acc_text = " ".join(f"{k}d:{100 * v:.1f}%" for k, v in acc.items())
        table.add_row(
            name + (" (default)" if name == DEFAULT_ZOO_MODEL else ""),
            str(arch.get("n_layers", "?")),
            str(arch.get("d_model", "?")),
            task.get("name", "?"),
            str(task.get("params", {}).get("format", "")),
            str(card.get("recipe", {}).get("digits", "")),
            acc_text,
            f"{card.get('n_params', 0):,}",
        )
    if zoo_entries():
        console.print(table)
    else:
        console.print("[yellow]No zoo models are bundled in this installation.[/yellow]")
    if official:
        from .models.loading import official_model_names

        names = official_model_names()
        console.print(f"\nTransformerLens official names ({len(names)}):")
        for name in names:
            console.print(f"  {name}")
    else:
        console.print(
            "\nAlso loadable: TransformerLens official names (list them with --official), "
            "Hugging Face hub ids of a supported architecture, local checkpoint directories."
        )


@main.command("tasks")
def tasks_cmd() -> None:
    """List the tasks and their parameters (set them with --param NAME=VALUE)."""
    from rich.table import Table

    from .tasks import list_tasks, task_info

    table = Table(title="Tasks", show_lines=True)
    for col in ("task", "description", "parameters"):
        table.add_column(col)
    for name in list_tasks():
        info = task_info(name)
        params = "\n".join(
            f"{k}{' (difficulty)' if k == info['difficulty_param'] else ''}: {p['spec']}"
            for k, p in info["params"].items()
        )
        table.add_row(name, info["description"], params)
    _console().print(table)


if __name__ == "__main__":  # pragma: no cover
    main()
