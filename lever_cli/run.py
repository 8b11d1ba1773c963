"""`lever run` and `lever evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lever.errors import LeverError
from lever.spec import LoadedPlan, load_plan

from ._common import OverrideOpt, plan_args, workspace
from ._console import console, err_console
from ._progress import RichReporter


def _plans(args: list[str], overrides: list[str] | None) -> list[LoadedPlan]:
    """Every plan named (all validated before any work), with the overrides applied to each."""
    refs, sets = plan_args(args, overrides)
    if not refs:
        raise LeverError("no plan given", hint="lever run plans/plan5.toml")
    return [load_plan(ref, sets, workspace().plans_dir) for ref in refs]


def _seeds(lp: LoadedPlan, seed: int | None) -> list[int]:
    return [seed] if seed is not None else list(lp.plan.seeds)


def _evaluate(lp: LoadedPlan, seed: int, epoch: int | None) -> dict:
    from lever.eval.distributed import ranks
    from lever.eval.evaluate import evaluate_run
    from lever.runs.run import run_dir_of

    ws = workspace()
    run_dir = run_dir_of(ws, lp, seed)
    main = ranks().is_main  # under torchrun only rank 0 speaks
    with Progress(
        TextColumn(f"evaluating {lp.name} seed {seed}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not main,
    ) as bar:
        task = bar.add_task("eval", total=None)
        out_dir, summary = evaluate_run(
            run_dir,
            lp.plan,
            ws,
            seed,
            epoch=epoch,
            log=err_console.print if main else lambda m: None,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if main:
        _print_summary(lp, seed, summary, out_dir)
    return summary


def _print_summary(lp: LoadedPlan, seed: int, summary: dict, out_dir: Path) -> None:
    ck = summary["checkpoint"]
    console.print(f"[bold]{lp.name}[/] seed {seed}: {ck['stage']} epoch {ck['epoch']} ({ck['reason']})", highlight=False)
    table = Table()
    splits = summary["splits"]
    table.add_column("shots")
    for split in splits:
        table.add_column(f"{split} acc %", justify="right")
    shots = sorted({int(s) for sp in splits.values() for s in sp})
    for s in shots:
        table.add_row(str(s), *[f"{splits[sp][str(s)]['accuracy']:.2f}" if str(s) in splits[sp] else "" for sp in splits])
    console.print(table)
    failed = sum(c["failed"] for sp in splits.values() for c in sp.values())
    if failed:
        console.print(f"[yellow]{failed} question(s) failed and score 0; see {out_dir / 'results.jsonl'}[/]")
    err_console.print(f"results: {out_dir}", highlight=False)


def run(
    plan: list[str] = typer.Argument(
        ..., help="Plan files or names (several run in order), then optional key.path=value overrides"
    ),
    overrides: OverrideOpt = None,
    seed: int | None = typer.Option(None, "--seed", help="Run only this seed (default: every seed in the plan)"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate the selected checkpoint after training"),
) -> None:
    """Train a plan (RCE, GRPO, curriculum phases) into its run directory, then evaluate it and compare with the baseline.

    Re-running a finished plan does nothing; a killed run resumes from its last finished epoch;
    a changed spec gets a new run directory. Stages shared with other plans (same data, settings,
    seed and start) are trained once and reused.

    Example: [bold]lever run plans/plan5.toml[/]   or, quicker: [bold]lever run plan5 grpo.epochs=3[/]
    Several plans: [bold]lever run baseline plan5 plan7 plan7_1[/] (one table at the end)
    """
    from lever.eval.preflight import preflight
    from lever.runs.run import run_plan

    plans = _plans(plan, overrides)
    ws = workspace()
    for lp in plans:
        preflight(lp, ws, evaluate, err_console.print)  # what would fail after training fails now
    reporter = RichReporter(err_console)
    for lp in plans:
        err_console.print(f"[bold]{lp.name}[/] [dim]{lp.hash}[/]  {lp.plan.description}", highlight=False)
        for s in _seeds(lp, seed):
            outcome = run_plan(lp, ws, s, reporter)
            sel = outcome.selected
            err_console.print(
                f"selected: {sel.get('stage')} epoch {sel.get('epoch')} ({sel.get('reason')})  run: {outcome.run_dir}",
                highlight=False,
            )
            if evaluate:
                _evaluate(lp, s, None)
    others = [lp for lp in plans if lp.name != "baseline"]
    if evaluate and others:
        _baseline_table(others)


def _baseline_table(plans: list[LoadedPlan]) -> None:
    """The plans against the baseline, when the baseline has been run and evaluated."""
    from lever.report.tables import build_comparison, render_rich

    from .report import plan_runs

    root = workspace().runs_dir
    base = plan_runs("baseline", root)
    if base.missing:
        err_console.print("no evaluated baseline yet: [bold]lever run plans/baseline.toml[/] gives the comparison table")
        return
    mine = [plan_runs(lp.name, root, lp.hash) for lp in plans]
    for split in dict.fromkeys(sp for lp in plans for sp in lp.plan.eval.splits):
        render_rich(build_comparison(mine, base, split=split, n_resamples=2000), console)


def evaluate(
    plan: list[str] = typer.Argument(..., help="A plan file or name, then optional key.path=value overrides"),
    overrides: OverrideOpt = None,
    seed: int | None = typer.Option(None, "--seed", help="Evaluate only this seed"),
    epoch: int | None = typer.Option(
        None, "--epoch", min=1, help="Use this epoch of the final stage instead of the selected one"
    ),
) -> None:
    """Evaluate a trained plan: the selected checkpoint picks demonstrations for every shot count, the VLM answers.

    Per-question results go to the run's eval/ folder; a repeated evaluation with the same checkpoint,
    backend and settings is served from there instantly.

    Under torchrun, ranks share the questions and rank 0 writes the results:
    [bold]torchrun --nproc_per_node 4 -m lever_cli evaluate plan5[/]

    Example: [bold]lever evaluate plan5[/]   or   [bold]lever evaluate plan5 --epoch 2[/]
    """
    for lp in _plans(plan, overrides):
        for s in _seeds(lp, seed):
            _evaluate(lp, s, epoch)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("evaluate")(evaluate)
