"""Sweeps: every job of a grid of derived plans x seeds that is not done yet, through one executor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from lever.errors import DamagedState, LeverError
from lever.io import read_state, write_json
from lever.runs.executors import Outcome, SlurmOptions, run_local, run_submitit
from lever.runs.layout import RunDir, RunsFolder
from lever.runs.sweep import Job, Sweep, save_record
from lever.spec import Workspace

from .preflight import preflight
from .recipe import Recipe
from .train import finished

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

    @property
    def stopped(self) -> list[Outcome]:
        """The jobs stopped at their VLM call budget: resumable, continued by the same sweep."""
        return [o for o in self.outcomes if o.stopped]


def run_sweep(
    sweep: Sweep,
    ws: Workspace,
    *,
    executor: str = "local",
    jobs: int = 1,
    slurm: SlurmOptions | None = None,
    workspace_flag: str | None = None,
    max_vlm_calls: int | None = None,
    log: Callable[[str], None] = print,
) -> SweepRun:
    """Run every job of a sweep that is not done yet through one executor, then link each job's log to its run.

    Every derived plan is checked first (preflight), so a bad grid value fails before any job starts; the
    record is written before the jobs, so a killed sweep is listed too and the same command resumes it.
    `max_vlm_calls`: each job's own budget of new VLM calls (`lever run --max-vlm-calls`); a job that spends it
    stops resumably, and the same sweep continues it with a budget as large again."""
    if executor not in EXECUTORS:
        raise LeverError(f"--executor {executor!r} is not an executor", hint=f"use one of: {', '.join(EXECUTORS)}")
    for m in sweep.distinct:
        preflight(Recipe.build(m.plan, ws, m.plan.plan.seeds[0], log), True)
    folder = RunsFolder(ws.runs_dir)
    record = save_record(sweep, ws)
    todo = [j for j in sweep.jobs if not finished(Recipe.build(j.member.plan, ws, j.seed, log))]
    skipped = [j for j in sweep.jobs if j not in todo]
    log(f"sweep {sweep.key}: {len(sweep.jobs)} run(s), {len(skipped)} already done, {len(todo)} to run ({executor})")
    if max_vlm_calls is not None:
        log(f"each run may make at most {max_vlm_calls:,} new VLM calls (--max-vlm-calls; cache hits are free)")
        todo = [replace(j, max_vlm_calls=max_vlm_calls) for j in todo]
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
        run = RunsFolder(ws.runs_dir).run(job.member.plan.name, job.member.plan.hash, job.seed)
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
            **({"stopped": o.detail} if o and o.stopped else {}),
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
