"""`lever run` and `lever evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lever.errors import BudgetSpent, LeverError
from lever.spec import LoadedPlan, load_plan

from ._common import OverrideOpt, plan_args, workspace, workspace_flag
from ._console import console, err_console, fit_width
from ._progress import CountProgress, RichReporter


def _plans(args: list[str], overrides: list[str] | None) -> list[LoadedPlan]:
    """Every plan named (all validated before any work), with the overrides applied to each."""
    return _plans_and_overrides(args, overrides)[0]


def _plans_and_overrides(args: list[str], overrides: list[str] | None) -> tuple[list[LoadedPlan], list[str]]:
    """Every plan named (all validated before any work), with the overrides applied to each; and the overrides."""
    refs, sets = plan_args(args, overrides)
    if not refs:
        raise LeverError("no plan given", hint="lever run plans/plan5.toml")
    return [load_plan(ref, sets, workspace().plans_dir) for ref in refs], sets


def _log(message: str) -> None:
    """Progress messages on stderr (rank 0 only under torchrun)."""
    from lever.eval.distributed import ranks

    if ranks().is_main:
        err_console.print(message, highlight=False)


def _eval_progress(lp: LoadedPlan, seed: int) -> CountProgress:
    """Evaluation progress in answers (questions x shot counts): a bar on a terminal, plain lines in a log; rank 0
    only under torchrun (which counts its own share of the answers, so the breakdown is left out there)."""
    from lever.eval.distributed import ranks

    r = ranks()
    groups = (len(lp.plan.eval.shots), "questions", "shot counts") if r.world == 1 else None
    return CountProgress(err_console, f"evaluating {lp.name} seed {seed}", enabled=r.is_main, groups=groups)


def _print_summary(lp: LoadedPlan, seed: int, summary: dict, out_dir: Path) -> None:
    from lever.eval.distributed import ranks
    from lever.report.results import evaluation_accuracies
    from lever.report.tables import fixed

    if not ranks().is_main:
        return
    exact = evaluation_accuracies(out_dir)  # why: summary.json's 2-decimal values would round a second time
    ck = summary["checkpoint"]
    picked = f"selector {ck['selector']}" if "selector" in ck else f"{ck['stage']} epoch {ck['epoch']}"  # a baseline: no epoch
    console.print(f"[bold]{lp.name}[/] seed {seed}: {picked} ({ck['reason']})", highlight=False)
    table = Table()
    splits = summary["splits"]
    table.add_column("shots")
    for split in splits:
        table.add_column(f"{split} acc %", justify="right")
    shots = sorted({int(s) for sp in splits.values() for s in sp})
    for s in shots:
        table.add_row(str(s), *[fixed(exact[sp][s]) if s in exact.get(sp, {}) else "" for sp in splits])
    console.print(table)
    failed = sum(c["failed"] for sp in splits.values() for c in sp.values())
    if failed:
        console.print(f"[yellow]{failed} question(s) failed and score 0; see {out_dir}[/]")
    err_console.print(f"results: {out_dir}", highlight=False)


def run(
    plan: list[str] = typer.Argument(
        ..., help="Plan files or names (several run in order), then optional key.path=value overrides"
    ),
    overrides: OverrideOpt = None,
    seed: int | None = typer.Option(None, "--seed", help="Run only this seed (default: every seed in the plan)"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate the selected checkpoint after training"),
    redo: bool = typer.Option(
        False, "--redo", help="Rebuild the run's record (status, stages, selection, metrics), reusing intact stages"
    ),
    retrain_stage: str | None = typer.Option(
        None, "--retrain-stage", metavar="NAME", help="Delete this stage's folder and train it again (implies --redo)"
    ),
    baseline: bool = typer.Option(
        True,
        "--baseline/--no-baseline",
        help="Also run the plans folder's baseline when its runs for these seeds and settings are missing "
        "(it shares the RCE stage: only its evaluation is new), for the comparison table",
    ),
    max_vlm_calls: int | None = typer.Option(
        None,
        "--max-vlm-calls",
        min=0,
        metavar="N",
        help="Stop training cleanly after N new VLM calls (online GRPO, refresh rounds, val/reward; cache hits are "
        "free): the run is left resumable and the command exits 75; the same command continues it",
    ),
) -> None:
    """Train a plan (RCE, GRPO, curriculum phases) into its run directory, then evaluate it and compare with the baseline.

    Re-running a finished plan does nothing (unless its data or features changed); a killed or
    interrupted run resumes from its last finished epoch; a changed spec gets a new run directory.
    A damaged run file is repaired with --redo, a damaged stage with --retrain-stage NAME.
    Stages shared with other plans (same data, settings, seed and start) are trained once and reused.
    The baseline of the plan's folder runs too when it has no evaluated runs for the same seeds and overrides
    (its grpo.*, phases and select.* overrides left out); --no-baseline skips it.

    Example: [bold]lever run plans/plan5.toml[/]   or, quicker: [bold]lever run plan5 grpo.epochs=3[/]
    Several plans: [bold]lever run baseline plan5 plan7 plan7_1[/] (one table at the end)
    A VLM call budget: [bold]lever run onpolicy/online8 --max-vlm-calls 20000[/] (exit 75 when it stops there)
    On several GPUs (rank 0 trains, every rank answers its share of the VLM's prompts, the same results):
    [bold]torchrun --nproc_per_node 4 -m lever_cli run onpolicy/online8[/]
    """
    from lever.eval.distributed import barrier, ranks
    from lever.eval.reward_cache import Budget
    from lever.recipe import preflight, run_order, train_and_evaluate

    main = ranks().is_main  # under torchrun: rank 0 trains, writes and speaks; every rank answers the VLM's prompts
    plans, sets = _plans_and_overrides(plan, overrides)
    order = run_order(plans, sets, workspace(), seed, evaluate=evaluate, with_baseline=baseline, log=_log)
    barrier(ranks())  # every rank has decided what to run before rank 0 writes anything
    for r in order.todo:
        if order.first_seed(r):
            preflight(r, evaluate)  # what would fail after training fails now
    reporter = RichReporter(err_console if main else Console(quiet=True))
    budget = Budget(max_vlm_calls) if max_vlm_calls is not None else None  # one budget for the whole command
    for r in order.todo:
        if order.first_seed(r):
            _log(f"[bold]{r.name}[/] [dim]{r.lp.hash}[/]  {r.plan.description}")
        mine = order.named(r)
        try:
            with _eval_progress(r.lp, r.seed) as bar:
                outcome, ev = train_and_evaluate(
                    r,
                    reporter,
                    evaluate_it=evaluate,
                    redo=redo and mine,
                    retrain_stage=retrain_stage if mine else None,
                    progress=bar.update,
                    budget=budget,
                )
        except BudgetSpent as err:
            again = _continue_command(plan, overrides, seed, evaluate, baseline)
            err_console.print(
                f"{r.name} seed {r.seed}: {err}.\nThe run is saved and resumable (marked interrupted; the VLM's answers "
                f"so far are in the reward cache, free to ask again). Continue with a larger budget, or none:\n  {again}",
                highlight=False,
                markup=False,
            )
            raise typer.Exit(BudgetSpent.exit_code) from None
        sel = outcome.selected
        picked = f"{sel.stage} epoch {sel.epoch}" if sel.epoch is not None else f"selector {sel.stage}"
        _log(f"selected: {picked} ({sel.reason})  run: {outcome.run.path}")
        if ev is not None:
            _print_summary(r.lp, r.seed, ev.summary, ev.eval_dir.path)
    others = [lp for lp in plans if lp.name != "baseline"]
    if not main:
        return
    if evaluate and others and order.base is None and not any(lp.plan.selector.trains for lp in plans):
        err_console.print(  # plans/baselines/* alone: no RCE baseline shares anything with them
            "no comparison table: these plans train nothing; `lever leaderboard` ranks them beside any other, "
            "`lever compare PLAN --baseline baselines/zero_shot` sets one against another",
            highlight=False,
        )
    elif evaluate and others:
        _baseline_table(others, *order.reference())


def _continue_command(plan: list[str], overrides: list[str] | None, seed: int | None, evaluate: bool, baseline: bool) -> str:
    """The `lever run` command that continues a run stopped at its VLM call budget (without --redo or
    --retrain-stage, which would train again what was done; without the budget, which the user sets anew)."""
    import shlex

    ws = workspace_flag()
    args = ["lever", *(["--workspace", ws] if ws else []), "run", *plan]
    args += [x for o in overrides or [] for x in ("-s", o)]
    args += [*(["--seed", str(seed)] if seed is not None else []), *([] if evaluate else ["--no-eval"])]
    args += [] if baseline else ["--no-baseline"]
    return shlex.join(args)


def _baseline_table(plans: list[LoadedPlan], base_name: str, base_hash: str | None) -> None:
    """The plans against the baseline, when evaluated (`lever.report.reports.run_comparisons`)."""
    from lever.report.reports import run_comparisons
    from lever.report.tables import render_rich

    ws = workspace()
    mine = [(lp.name, lp.hash, list(lp.plan.eval.splits)) for lp in plans]
    out = run_comparisons(mine, base_name, base_hash, ws.runs_dir, ws.plans_dir)
    if out.why:
        err_console.print(out.why, highlight=False)
    for cmp in out.tables:
        render_rich(cmp, console, fit_width(console))
    if out.tables and out.base is not None:
        _shot_figures(out.plans, out.base, out.tables[0].split)


def _shot_figures(plans: list, base, split: str) -> None:
    """Each plan's shot curve beside its baseline's, as a PNG next to the plan's runs (with the plot extra)."""
    from lever.report import figures
    from lever.runs.layout import RunDir

    if not figures.has_matplotlib():
        err_console.print(
            "no shot-curve figure: matplotlib is not installed (pip install 'lever[plot]')", highlight=False, markup=False
        )
        return
    for pr in plans:
        if pr.missing or pr.name == base.name or not any(split in r.splits() for r in pr.evaluated_runs):
            continue
        path = RunDir(pr.runs[0].path).report_dir / f"shots_{split}.png"
        figures.draw(figures.plan_shot_curves(pr, base, split), path)
        err_console.print(f"figure: {path}", highlight=False)


def evaluate(
    plan: list[str] = typer.Argument(..., help="A plan file or name, then optional key.path=value overrides"),
    overrides: OverrideOpt = None,
    seed: int | None = typer.Option(None, "--seed", help="Evaluate only this seed"),
    epoch: int | None = typer.Option(
        None, "--epoch", min=1, help="Use this epoch of the final stage instead of the selected one"
    ),
    redo: bool = typer.Option(False, "--redo", help="Discard a finished or damaged evaluation and answer again"),
    by: str | None = typer.Option(
        None, "--by", metavar="FIELD", help="Also the accuracy per answer_type (or question_type), as the official VQA evaluator"
    ),
) -> None:
    """Evaluate a trained plan: the selected checkpoint picks demonstrations for every shot count, the VLM answers.

    Per-question results go to the run's eval/ folder; a repeated evaluation with the same checkpoint,
    backend and settings is served from there instantly.

    Under torchrun, ranks share the questions and rank 0 writes the results:
    [bold]torchrun --nproc_per_node 4 -m lever_cli evaluate plan5[/]

    A cached evaluation is verified (row count, digest, value ranges) before it is shown; a damaged one
    is an error that names the file; --redo answers again.

    Example: [bold]lever evaluate plan5[/]   or   [bold]lever evaluate plan5 --epoch 2 --by answer_type[/]
    """
    from lever.recipe import evaluate as evaluate_recipe
    from lever.recipe import recipes
    from lever.report.breakdown import check_by

    if by is not None:
        check_by(by)
    for r in recipes(_plans(plan, overrides), workspace(), seed, _log):
        with _eval_progress(r.lp, r.seed) as bar:
            ev = evaluate_recipe(r, epoch=epoch, redo=redo, progress=bar.update)
        _print_summary(r.lp, r.seed, ev.summary, ev.eval_dir.path)
        if by is not None:
            _print_breakdown(ev.eval_dir, by)


def _print_breakdown(ev, by: str) -> None:
    """Accuracy per type (`lever.report.breakdown.by_type`): per split, a row per shot count, a column per type."""
    from lever.eval.distributed import ranks
    from lever.report.breakdown import by_type

    if not ranks().is_main:
        return
    table_data = by_type(ev.read()[1], by, str(ev.results))
    for split, per_shots in table_data.items():
        types = sorted({t for cells in per_shots.values() for t in cells})
        table = Table(title=f"{split} accuracy % by {by}")
        table.add_column("shots")
        for t in types:
            n = next(cells[t]["n"] for cells in per_shots.values() if t in cells)
            table.add_column(f"{t} (n={n})", justify="right")
        for shots, cells in per_shots.items():
            table.add_row(shots, *[f"{cells[t]['accuracy']:.2f}" if t in cells else "" for t in types])
        console.print(table)


def export(
    plan: list[str] = typer.Argument(..., help="A plan file or name, then optional key.path=value overrides"),
    overrides: OverrideOpt = None,
    fmt: str = typer.Option(
        "lever-plus-v2",
        "--format",
        help="Layout to write: lever-plus-v2 (the original's v2 inference) or lever-plus-v3 (its v3 loader)",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="File to write (e.g. selector_v2format.ckpt, selector_v3.pt)"),
    seed: int | None = typer.Option(None, "--seed", help="Seed run to export (default: the plan's first seed)"),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT when it exists"),
) -> None:
    """Write a trained plan's selected checkpoint in the original project's layout.

    lever-plus-v2: a Lightning checkpoint with `lever_lm.pointer_selector.*` keys, as the original's
    inference reads; only plans with model.arch = "lever-plus-v3" and one attention layer map onto it.
    lever-plus-v3: the original's v3 checkpoint (model_state_dict, epoch, phase, kl_beta), any number of layers.
    An existing OUT is refused unless --force.
    The reverse: a plan starts from an original checkpoint with [bold]start.checkpoint = "file.ckpt"[/].

    Example: [bold]lever export plans/original/plan5.toml --format lever-plus-v2 -o plan5_v2format.ckpt[/]
    or [bold]lever export original/plan5 --format lever-plus-v3 -o plan5_v3.pt[/]
    """
    from lever.recipe import Recipe, export_checkpoint

    (lp,) = _plans(plan, overrides)[:1]
    res = export_checkpoint(Recipe.build(lp, workspace(), lp.plan.seeds[0] if seed is None else seed, _log), fmt, out, force)
    console.print(f"wrote {res['out']} ({res['format']}: {lp.name} {res['stage']} epoch {res['epoch']})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("evaluate")(evaluate)
    app.command("export")(export)
