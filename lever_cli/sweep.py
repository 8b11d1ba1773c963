"""`lever sweep`: a grid of overrides over one plan, several seeds, through one executor; then the family table."""

from __future__ import annotations

from dataclasses import replace

import typer

from lever.errors import BudgetSpent, LeverError
from lever.runs.sweep import Sweep, expand, parse_grid, parse_seeds

from ._common import OverrideOpt, plan_args, workspace, workspace_flag
from ._console import console, err_console, fit_width


def _log(message: str) -> None:
    err_console.print(message, highlight=False, markup=False)


def family_table(sweep: Sweep, split: str) -> None:
    """Every derived plan against the base plan (`lever.report.reports.sweep_comparison`)."""
    from lever.report.reports import sweep_comparison
    from lever.report.tables import render_rich

    ws = workspace()
    members = [(m.name, m.plan.name, m.spec_hash) for m in sweep.distinct]  # a grid point equal to the base is its column
    render_rich(sweep_comparison(members, list(sweep.seeds), ws.runs_dir, ws.plans_dir, split), console, fit_width(console))


def sweep(
    plan: list[str] = typer.Argument(..., help="A plan file or name, then optional key.path=value overrides shared by every run"),
    overrides: OverrideOpt = None,
    grid: list[str] = typer.Option(
        [], "--grid", "-g", metavar="KEY=V1,V2", help="A plan key and its values (TOML, like overrides); repeat for more keys"
    ),
    seeds: str | None = typer.Option(None, "--seeds", metavar="0,1,2", help="Seeds of every derived plan (default: the plan's)"),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Runs at once: one GPU each, or on CPU an equal share of the cores"),
    executor: str = typer.Option("local", "--executor", help="local (subprocesses here), slurm, or submitit-local"),
    partition: str | None = typer.Option(None, "--partition", help="Slurm partition"),
    time_min: int = typer.Option(240, "--time", min=1, help="Slurm time limit per run, in minutes"),
    gpus: int = typer.Option(1, "--gpus-per-job", min=0, help="Slurm GPUs per run"),
    cpus: int | None = typer.Option(None, "--cpus-per-job", min=1, help="Slurm CPUs per run"),
    parallelism: int | None = typer.Option(
        None, "--array-parallelism", min=1, help="Slurm runs at once (default: all; the scheduler queues them)"
    ),
    print_only: bool = typer.Option(False, "--print", help="Only print one `lever run` command per run, for another scheduler"),
    split: str = typer.Option("val", "--split", help="The split of the family table"),
    max_vlm_calls: int | None = typer.Option(
        None,
        "--max-vlm-calls",
        min=0,
        metavar="N",
        help="Each run's budget of new VLM calls (lever run --max-vlm-calls; cache hits are free): a run that spends "
        "it stops resumably; the sweep then exits 75 and the same command continues it",
    ),
) -> None:
    """Run a plan over a grid of overrides and several seeds; then one table of the family against the plan.

    Each grid point is a derived plan named readably (plan5@grpo.lr=1e-5) with its own spec hash;
    `lever compare 'plan5@grpo.lr=1e-5'` and `lever runs` know them by those names. The table shows
    the mean ± std over seeds and paired bootstrap intervals against the base plan (run too, same
    seeds). Finished runs are skipped, so the same command resumes a killed sweep.

    Executors: --jobs N runs N at once here (one GPU each via CUDA_VISIBLE_DEVICES, or on CPU the
    cores split between them); --executor slurm submits a job array through submitit (pip install
    'lever\\[slurm]'); --print writes the commands instead.

    --max-vlm-calls N gives every run its own budget of N new VLM calls (on-policy training on the real
    path): a run that spends it is reported "stopped at budget (resumable)", not failed; the sweep then
    exits 75 (unless a run failed: 1), and the same command continues those runs, each with N more.

    Example: [bold]lever sweep plan5 --grid grpo.lr=1e-5,5e-5 --grid grpo.kl.beta=0,0.1 --seeds 0,1,2 --jobs 2[/]
    On-policy, bounded: [bold]lever sweep onpolicy/online8 --grid grpo.lr=1e-5,5e-5 --max-vlm-calls 20000[/]
    """
    from lever.recipe import run_sweep
    from lever.runs.executors import SlurmOptions

    refs, sets = plan_args(plan, overrides)
    if len(refs) != 1:
        raise LeverError(
            f"a sweep takes one plan, got {len(refs)}: {' '.join(refs) or '(none)'}",
            hint="lever sweep plan5 --grid grpo.lr=1e-5,5e-5",
        )
    if not grid:
        raise LeverError("no --grid given: a sweep needs at least one key and its values", hint="--grid grpo.lr=1e-5,5e-5")
    ws = workspace()
    sw = expand(refs[0], sets, parse_grid(grid), parse_seeds(seeds) if seeds else None, ws.plans_dir)
    if print_only:
        for job in sw.jobs:
            typer.echo(replace(job, max_vlm_calls=max_vlm_calls).command(workspace_flag()))
        return
    opts = SlurmOptions(partition, time_min, gpus, cpus, parallelism or (jobs if executor == "submitit-local" else None))
    names = ", ".join(m.name for m in sw.members)
    _log(f"{len(sw.members)} plan(s) x {len(sw.seeds)} seed(s): {names}")
    done = run_sweep(
        sw, ws, executor=executor, jobs=jobs, slurm=opts, workspace_flag=workspace_flag(), max_vlm_calls=max_vlm_calls, log=_log
    )
    family_table(sw, split)
    _log(f"sweep record: {done.record}")
    if done.failed:
        raise LeverError(
            f"{len(done.failed)} run(s) failed: " + "; ".join(f"{o.job.name} (log {o.log})" for o in done.failed),
            hint="fix the cause and run the same command again: finished runs are skipped",
            exit_code=1,
        )
    if done.stopped:
        _log(
            f"{len(done.stopped)} run(s) stopped at their budget of {max_vlm_calls:,} new VLM calls (resumable): "
            + ", ".join(o.job.name for o in done.stopped)
            + ". The same command continues them (each with that budget again); without --max-vlm-calls they finish."
        )
        raise typer.Exit(BudgetSpent.exit_code)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
