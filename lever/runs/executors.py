"""Executors: how a sweep's jobs run. Each runs the same `lever run` command per job.

- local (`--jobs N`): N subprocesses at once on this machine, one device each: a GPU of
  its own (`CUDA_VISIBLE_DEVICES`), or on CPU an equal share of the cores (`LEVER_THREADS`),
  so N jobs never oversubscribe them;
- submitit (the `slurm` extra): a Slurm job array (partition, time, GPUs per job, array
  parallelism), or submitit's local executor, the same path on this machine;
- print: the commands, for any other scheduler.

Every job writes its own log; the sweep's record links each job's log to its run folder. A job whose run
another process is running (a second sweep over the same runs folder) is skipped, not failed. A job that
`lever run --max-vlm-calls` stopped at its budget (exit 75) is stopped, not failed: its run is resumable, and
the same sweep continues it.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lever.errors import BudgetSpent, LeverError
from lever.io import lock_holder
from lever.threads import THREADS_ENV, available_cores

from .layout import RunsFolder
from .sweep import Job

LEVER = [sys.executable, "-m", "lever_cli"]  # this interpreter's lever, whatever is on PATH


@dataclass
class Outcome:
    """How one job ended: `ok`, its log file and, when it failed or was skipped, why."""

    job: Job
    ok: bool
    log: Path | None
    detail: str = ""
    job_id: str | None = None
    skipped: bool = False  # its run is being run by another process: not failed, the same sweep later runs it
    stopped: bool = False  # stopped at its VLM call budget (exit 75): not failed, resumable, the same sweep continues it


STOPPED = "stopped at budget (resumable)"


def _stopped(job: Job, log: Path | None, job_id: str | None = None) -> Outcome:
    return Outcome(job, True, log, STOPPED, job_id, stopped=True)


# `lever run` refusing a run another process holds (lever.io.file_lock's message)
_BUSY = re.compile(r"is being run by (.+?); wait for it to finish")


def busy(job: Job, runs_root: Path) -> Outcome | None:
    """A skipped Outcome when another process holds the lock of `job`'s run (another sweep, a `lever run`), else None."""
    lp = job.member.plan
    holder = lock_holder(RunsFolder(runs_root).run(lp.name, lp.hash, job.seed).lock)
    return None if holder is None else _skipped(job, holder)


def _skipped(job: Job, holder: str, log: Path | None = None) -> Outcome:
    why = f"being run by {holder} (another sweep or `lever run`); skipped: run the same sweep again when it finishes"
    return Outcome(job, True, log, why, skipped=True)


def _say(o: Outcome, say: Callable[[str], None]) -> None:
    """One line per finished job: done, skipped (and why) or FAILED, with its log."""
    if o.skipped:
        say(f"{o.job.name}: {o.detail}")
        return
    where = f"  job {o.job_id}" if o.job_id else ""
    if o.stopped:
        say(f"{STOPPED} {o.job.name}{where}  log {o.log}")
        return
    say(f"{'done' if o.ok else 'FAILED'} {o.job.name}{where}  log {o.log}" + (f" ({o.detail})" if o.detail else ""))


@dataclass
class SlurmOptions:
    """What a Slurm job array asks for (submitit's parameters)."""

    partition: str | None = None
    time_min: int = 240
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    parallelism: int | None = None  # runs at once (default: every run of the sweep; the scheduler queues them)


def visible_gpus() -> list[str]:
    """The GPUs jobs may use: `CUDA_VISIBLE_DEVICES` when set, else every CUDA device torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def slot_envs(n: int) -> list[dict[str, str]]:
    """The environment of each of `n` concurrent jobs: a GPU each (when there are GPUs), and an equal share of the
    cores, so that N jobs never oversubscribe them."""
    gpus, cores = visible_gpus(), available_cores()
    if gpus and n > len(gpus):
        raise LeverError(
            f"--jobs {n} but {len(gpus)} GPU(s) are visible", hint=f"use --jobs {len(gpus)} or fewer: one GPU per run"
        )
    if n > cores:
        raise LeverError(f"--jobs {n} on {cores} core(s) would oversubscribe them", hint=f"use --jobs {cores} or fewer")
    share = {THREADS_ENV: str(cores // n)}
    return [{"CUDA_VISIBLE_DEVICES": g, **share} for g in gpus[:n]] if gpus else [share] * n


def run_command(argv: list[str], env: dict[str, str], runs_root: str | None = None) -> int:
    """Run one job's command with extra environment; returns 0, or 75 when it stopped at its VLM call budget; any
    other non-zero exit raises (so a scheduler marks the job failed).

    Under submitit, the job's own log (relative to the runs folder) is handed to the run's provenance."""
    extra = dict(env)
    if runs_root is not None:
        import submitit

        log = Path(submitit.JobEnvironment().paths.stdout).resolve()
        root = Path(runs_root).resolve()
        extra["LEVER_JOB_LOG"] = str(log.relative_to(root) if log.is_relative_to(root) else log)
    sys.stdout.flush()
    code = subprocess.run(argv, env={**os.environ, **extra}, stdin=subprocess.DEVNULL).returncode
    if code not in (0, BudgetSpent.exit_code):
        raise RuntimeError(f"`{' '.join(argv[2:])}` exited with {code}")
    return code


def run_local(
    jobs: list[Job], n: int, workspace: str | None, logs: Path, runs_root: Path, sweep: str, say: Callable[[str], None]
) -> list[Outcome]:
    """Run `jobs` as subprocesses, `n` at once, each in a slot of its own (a GPU, or a share of the cores).

    Ctrl-C starts no further job and interrupts the running ones (their runs are marked interrupted;
    the same sweep resumes them)."""
    slots: queue.Queue[dict[str, str]] = queue.Queue()
    for env in slot_envs(min(n, len(jobs)) or 1):
        slots.put(env)
    logs.mkdir(parents=True, exist_ok=True)
    running: set[subprocess.Popen] = set()

    def one(job: Job) -> Outcome:
        env = slots.get()
        log = logs / f"{job.member.spec_hash}-seed-{job.seed}.log"
        try:
            if (skip := busy(job, runs_root)) is not None:  # probed when its turn comes, just before it would start
                return skip
            say(f"start {job.name}  ({', '.join(f'{k}={v}' for k, v in env.items())})")
            extra = {**env, "LEVER_SWEEP": sweep, "LEVER_JOB_LOG": log.relative_to(runs_root).as_posix()}
            with open(log, "w", encoding="utf-8") as fh:
                cmd = [*LEVER, *job.args(workspace)]
                proc = subprocess.Popen(
                    cmd, env={**os.environ, **extra}, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
                running.add(proc)
                code = proc.wait()
                running.discard(proc)
        finally:
            slots.put(env)
        if code == 1 and (taken := _BUSY.search(log.read_text(encoding="utf-8", errors="replace"))):
            return _skipped(job, taken.group(1), log)  # the lock was taken between the probe and the start
        if code == BudgetSpent.exit_code:
            return _stopped(job, log)
        return Outcome(job, code == 0, log, "" if code == 0 else f"exit {code}")

    out = []
    pool = ThreadPoolExecutor(max_workers=max(1, n))
    try:
        for fut in as_completed([pool.submit(one, j) for j in jobs]):
            o = fut.result()
            _say(o, say)
            out.append(o)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in list(running):
            proc.send_signal(signal.SIGINT)
        raise
    finally:
        pool.shutdown(wait=True)
    return out


def run_submitit(
    jobs: list[Job],
    cluster: str,
    opts: SlurmOptions,
    workspace: str | None,
    folder: Path,
    runs_root: Path,
    sweep: str,
    say: Callable[[str], None],
) -> list[Outcome]:
    """Submit `jobs` through submitit as one array: `cluster="slurm"`, or `"local"` (submitit's local executor)."""
    try:
        import submitit
    except ImportError:
        raise LeverError(
            "--executor slurm needs submitit, which is not installed", hint="pip install 'lever[slurm]' (or pip install submitit)"
        ) from None
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as err:  # no srun/sbatch on this machine
        raise LeverError(
            f"--executor slurm: {err}", hint="run the sweep on a machine that submits to Slurm, or use --print"
        ) from None
    skipped = [o for o in (busy(j, runs_root) for j in jobs) if o is not None]  # checked once, at submission
    for o in skipped:
        _say(o, say)
    jobs = [j for j in jobs if all(o.job is not j for o in skipped)]
    if not jobs:
        return skipped
    params: dict[str, Any] = {"timeout_min": opts.time_min, "name": f"lever-{sweep}"}
    env = {"LEVER_SWEEP": sweep}
    at_once = min(opts.parallelism or len(jobs), len(jobs))
    if cluster == "slurm":
        params.update(gpus_per_node=opts.gpus_per_job, slurm_array_parallelism=at_once, tasks_per_node=1)
        if opts.partition:
            params["slurm_partition"] = opts.partition
        if opts.cpus_per_job:
            params["cpus_per_task"] = opts.cpus_per_job
        batches = [jobs]
    else:  # submitit's local executor starts what it is given at once: batches of `at_once`, the cores shared
        env[THREADS_ENV] = str(max(1, available_cores() // at_once))
        batches = [jobs[i : i + at_once] for i in range(0, len(jobs), at_once)]
    executor.update_parameters(**params)
    out = skipped
    for batch in batches:
        out += _submit(executor, batch, env, workspace, runs_root, f"{cluster} ({folder})", say)
    return out


def _submit(
    executor: Any,
    jobs: list[Job],
    env: dict[str, str],
    workspace: str | None,
    runs_root: Path,
    where: str,
    say: Callable[[str], None],
) -> list[Outcome]:
    """One submitit job array; waits for every job and reports how each ended, with its log."""
    argvs = [[*LEVER, *j.args(workspace)] for j in jobs]
    try:
        handles = executor.map_array(run_command, argvs, [env] * len(jobs), [str(runs_root)] * len(jobs))
    except (OSError, subprocess.CalledProcessError) as err:  # the scheduler refused (a bad partition, a limit)
        raise LeverError(f"submitting {len(jobs)} job(s) to {where} failed: {err}", hint="check the Slurm options") from None
    say(f"submitted {len(handles)} job(s) to {where}: {', '.join(h.job_id for h in handles)}")
    out = []
    for job, handle in zip(jobs, handles):
        try:
            code = handle.result()
            ok, detail = True, ""
        except Exception as err:  # a failed job: the scheduler's own message, the log has the rest
            code, ok, detail = None, False, str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        if code == BudgetSpent.exit_code:
            o = _stopped(job, Path(handle.paths.stdout), str(handle.job_id))
        else:
            o = Outcome(job, ok, Path(handle.paths.stdout), detail, str(handle.job_id))
        _say(o, say)
        out.append(o)
    return out
