"""The whole recipe, one call per command: train a plan's seed (lever.runs), then evaluate it (lever.eval).

`lever run` calls `train_and_evaluate`, `lever evaluate` calls `evaluate_plan`; the CLI only
parses and renders. This module lives in the eval layer because it is the lowest layer that
sees both training and evaluation: `lever.runs` stays free of evaluation, so every arrow of
the house points one way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lever.errors import DamagedState, LeverError
from lever.io import read_state, write_json
from lever.runs.executors import Outcome, SlurmOptions, run_local, run_submitit
from lever.runs.layout import EvalDir, RunDir, RunsFolder
from lever.runs.recipe import input_keys, memo_file
from lever.runs.run import RunOutcome, end, finished_run, run_dir_of, run_plan, write_failed
from lever.runs.sources import resolve_train_sources
from lever.runs.sweep import Job, Sweep, save_record
from lever.runs.trackers import Trackers
from lever.spec import LoadedPlan, Workspace
from lever.train.stage import Reporter, SilentReporter

from .distributed import ranks
from .evaluate import Progress, checkpoint_for, evaluate_run
from .preflight import preflight


@dataclass
class Evaluated:
    """One seed's evaluation: where it lives and its verified summary."""

    run: RunDir
    eval_dir: EvalDir
    summary: dict[str, Any]


def evaluate_plan(
    lp: LoadedPlan,
    ws: Workspace,
    seed: int,
    *,
    epoch: int | None = None,
    redo: bool = False,
    log: Callable[[str], None] = print,
    progress: Progress | None = None,
) -> Evaluated:
    """Evaluate a trained seed run (its selected checkpoint, or `epoch` of its final stage); the run becomes `done`.

    Ctrl-C marks the run `interrupted` and a failed write marks it `failed` (the next `lever run`
    resumes the evaluation from its partial answers); other errors (bad input, damaged results) leave
    its status alone."""
    run = run_dir_of(ws, lp, seed)
    checkpoint_for(run, epoch)  # a run that never trained fails here, before any data is read or generated
    src = resolve_train_sources(ws, lp.plan.data.candidates, lp.plan.data.features, log)
    trained_on = (run.provenance() or {}).get("inputs")
    if trained_on is not None and trained_on != input_keys(src, memo_file(ws)):  # stale, not failed: the status stays
        raise LeverError(
            f"{run.path} was trained on other candidate data or features than the plan's files hold now",
            hint=f"train it again first: {run.command('run')}",
        )
    try:
        ev, summary = evaluate_run(
            run, lp.plan, ws, seed, epoch=epoch, features_path=src.features, redo=redo, log=log, progress=progress
        )
    except KeyboardInterrupt:
        if epoch is None:  # an extra --epoch evaluation says nothing about the run itself
            end(run, "interrupted", "evaluation stopped by Ctrl-C; `lever run` on the plan resumes it")
        raise
    except OSError as err:
        raise write_failed(run, err) from None
    if epoch is None and ranks().is_main:
        run.set_state("done")
    return Evaluated(run, ev, summary)


def train_and_evaluate(
    lp: LoadedPlan,
    ws: Workspace,
    seed: int,
    reporter: Reporter | None = None,
    *,
    evaluate: bool = True,
    redo: bool = False,
    retrain_stage: str | None = None,
    progress: Progress | None = None,
) -> tuple[RunOutcome, Evaluated | None]:
    """The recipe for one seed: prepare data, build the model, train the stages, select, then evaluate."""
    rep = reporter or SilentReporter()
    trackers = Trackers(ws.loggers, run_dir_of(ws, lp, seed), lp) if ws.loggers and ranks().is_main else None
    try:
        outcome = run_plan(lp, ws, seed, trackers.wrap(rep) if trackers else rep, redo=redo, retrain_stage=retrain_stage)
        fresh = trackers is not None and outcome.state != "already"  # a finished run was logged when it ran
        if fresh:
            trackers.backfill(outcome.run.metrics() or [])
        if not evaluate:
            return outcome, None
        # A finished evaluation is verified before it is reused; redoing it is `lever evaluate PLAN --redo`'s job.
        ev = evaluate_plan(lp, ws, seed, log=rep.info, progress=progress)
        if fresh:
            trackers.evaluation(ev.summary)
        return outcome, ev
    finally:
        if trackers is not None:
            trackers.close()


EXECUTORS = ("local", "slurm", "submitit-local")


@dataclass
class SweepRun:
    """What a sweep did: its record, the jobs it skipped (done before), and how the others ended."""

    record: str
    skipped: list[Job]
    outcomes: list[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


def run_sweep(
    sweep: Sweep,
    ws: Workspace,
    *,
    executor: str = "local",
    jobs: int = 1,
    slurm: SlurmOptions | None = None,
    workspace_flag: str | None = None,
    log: Callable[[str], None] = print,
) -> SweepRun:
    """Run every job of a sweep that is not done yet through one executor, then link each job's log to its run.

    Every derived plan is checked first (preflight), so a bad grid value fails before any job starts; the
    record is written before the jobs, so a killed sweep is listed too and the same command resumes it."""
    if executor not in EXECUTORS:
        raise LeverError(f"--executor {executor!r} is not an executor", hint=f"use one of: {', '.join(EXECUTORS)}")
    for m in sweep.distinct:
        preflight(m.plan, ws, True, log)
    folder = RunsFolder(ws.runs_dir)
    record = save_record(sweep, ws)
    todo = [j for j in sweep.jobs if not finished_run(j.member.plan, ws, j.seed)]
    skipped = [j for j in sweep.jobs if j not in todo]
    log(f"sweep {sweep.key}: {len(sweep.jobs)} run(s), {len(skipped)} already done, {len(todo)} to run ({executor})")
    outcomes: list[Outcome] = []
    if todo and executor == "local":
        outcomes = run_local(todo, jobs, workspace_flag, folder.job_dir(sweep.key), ws.runs_dir, sweep.key, log)
    elif todo:
        cluster = "slurm" if executor == "slurm" else "local"
        opts = slurm or SlurmOptions(parallelism=jobs if executor == "submitit-local" else None)
        outcomes = run_submitit(
            todo, cluster, opts, workspace_flag, folder.job_dir(sweep.key) / "submitit", ws.runs_dir, sweep.key, log
        )
    _link_jobs(record, sweep, outcomes, ws)
    return SweepRun(str(record), skipped, outcomes)


def _link_jobs(record_file: Path, sweep: Sweep, outcomes: list[Outcome], ws: Workspace) -> None:
    """The record's `jobs` table: every run of the sweep with its folder, state, log and scheduler id.

    Rebuilt from the runs each time (their provenance names the job's log), so the runs a killed sweep
    finished are linked too; a job that failed before its run started keeps its log from `outcomes`."""
    folder = RunsFolder(ws.runs_dir)
    ended = {(o.job.member.spec_hash, o.job.seed): o for o in outcomes}
    linked = {}
    for job in sweep.jobs:
        run = run_dir_of(ws, job.member.plan, job.seed)
        prov = (run.provenance(strict=False) or {}) if run.exists() else {}
        o = ended.get((job.member.spec_hash, job.seed))
        log = (prov.get("job") or {}).get("log") or (_stored(o.log, ws) if o and o.log else None)
        linked[f"{job.member.spec_hash}/seed-{job.seed}"] = {
            "name": job.name,
            "run": folder.store(run.path) if run.exists() else None,
            "state": _state(run),
            "log": log,
            "job_id": (o.job_id if o else None) or (prov.get("job") or {}).get("slurm_job_id"),
            "error": o.detail if o and not o.ok else None,
        }
    write_json(record_file, {**(read_state(record_file, "") or {}), "jobs": linked})


def _state(run: RunDir) -> str | None:
    """The run's state for the record: None when it never started, "damaged" when its status cannot be read."""
    try:
        return run.state
    except DamagedState:
        return "damaged"


def _stored(path: Path, ws: Workspace) -> str:
    """A log's path as the record stores it: relative to the runs folder when inside it."""
    full, root = path.resolve(), ws.runs_dir.resolve()
    return full.relative_to(root).as_posix() if full.is_relative_to(root) else str(full)


EXPORT_FORMATS = ("lever-plus-v2",)


def export_checkpoint(lp: LoadedPlan, ws: Workspace, seed: int, fmt: str, out: Path) -> dict[str, Any]:
    """Write a trained plan's selected checkpoint in another project's layout; returns what was written.

    lever-plus-v2: the original's v2 Lightning checkpoint (lever.train.original_ckpt.save_v2), which its
    inference reads. Only model.arch = "lever-plus-v3" maps (its weights are the original's, name for name),
    with one attention layer (v2 has one).
    """
    from lever.train.checkpoint import load_weights
    from lever.train.original_ckpt import save_v2

    if fmt not in EXPORT_FORMATS:
        raise LeverError(f"--format {fmt!r} is not known", hint=f"use one of {', '.join(EXPORT_FORMATS)}")
    if lp.plan.model.arch != "lever-plus-v3":
        raise LeverError(
            f"plan {lp.name} has model.arch = '{lp.plan.model.arch}': lever's selector has other layers than the "
            "original's (docs/architecture.md), so its weights cannot be written in the original's layout",
            hint="train with model.arch = 'lever-plus-v3' (plans/original/) to export to the original",
        )
    ckpt = checkpoint_for(run_dir_of(ws, lp, seed), None)
    save_v2(out, load_weights(ckpt["path"]), ckpt.get("epoch") or 0)
    return {"out": str(out), "stage": ckpt["stage"], "epoch": ckpt["epoch"], "format": fmt}
