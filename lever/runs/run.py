"""`lever run`: train a plan's stages into its run directory (the recipe's steps up to selection).

A stage's key hashes everything its result depends on (the data files' contents, reward,
model, its own settings, the seed, the selection rule, and the key of the stage before
it), so two plans with the same RCE stage share one RCE result, and a changed spec never
touches an older run. Where the files go is `lever.runs.layout`'s business.

How a run ends is always recorded in its status.json: `trained`, `failed` (a guardrail, a
damaged file, a full disk: the message says which) or `interrupted` (Ctrl-C). The next
`lever run` of the plan resumes a run that did not finish.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lever import __version__
from lever.data.stats import FLAT, FLAT_SHARE
from lever.device import resolve_device
from lever.errors import DamagedState, LeverError, RunFailed
from lever.io import file_lock
from lever.keys import content_key
from lever.model import SelectorBase
from lever.spec import LoadedPlan, Workspace, load_plan
from lever.threads import thread_settings
from lever.train.checkpoint import State, load_into, load_weights, state_digest
from lever.train.original_ckpt import load_original
from lever.train.stage import (
    STAGE_METRICS,
    Reporter,
    SilentReporter,
    StageRunner,
    derive_seed,
    grpo_flags,
    handoff_checkpoint,
    read_result,
)

from .layout import RunDir, RunsFolder
from .recipe import Prepared, build_model, compile_stages, input_keys, make_groups, memo_file, prepare, stage_train_data
from .sources import resolve_train_sources


@dataclass
class RunOutcome:
    run: RunDir
    state: str  # "trained" | "already"
    selected: dict[str, Any]


# Where a run's provenance finds the job that ran it (set by a sweep's executor, or by Slurm).
JOB_ENV = {"sweep": "LEVER_SWEEP", "log": "LEVER_JOB_LOG", "slurm_job_id": "SLURM_JOB_ID"}


def run_dir_of(ws: Workspace, lp: LoadedPlan, seed: int) -> RunDir:
    """The run folder of a plan (its current spec hash) and seed."""
    return RunsFolder(ws.runs_dir).run(lp.name, lp.hash, seed)


# --------------------------------------------------------------------------- start point


def start_state(lp: LoadedPlan, ws: Workspace, seed: int, model: SelectorBase) -> tuple[State | None, str]:
    """Load the plan's start weights into `model` (none for a fresh seeded init); returns them and a key naming them."""
    st = lp.plan.start
    if st.kind == "scratch":
        return None, f"scratch:{seed}"
    if st.kind == "checkpoint":
        path = ws.path(st.checkpoint)
        if path.suffix == ".safetensors":
            state = load_weights(path)
        else:
            if lp.plan.model.arch != "lever-plus-v3":
                raise LeverError(
                    f"start.checkpoint = '{st.checkpoint}' is not a lever checkpoint (.safetensors); the original's "
                    f"checkpoints are of its architecture, and the plan's model.arch is '{lp.plan.model.arch}'",
                    hint="set model.arch = 'lever-plus-v3' with the checkpoint's hidden / layers / heads (docs/architecture.md)",
                )
            state, _ = load_original(path, st.trust_pickle)
    else:
        # A plan names its start plan like `extends`: next to itself first, then in the workspace's plans folder.
        here = lp.path.parent
        other = load_plan(st.plan, (), here if (here / f"{st.plan}.toml").is_file() else ws.plans_dir)
        other_run = run_dir_of(ws, other, seed)
        stages = other_run.stages()
        if not stages or other_run.state not in ("trained", "done"):
            raise LeverError(
                f"start.plan = '{st.plan}': that plan has no finished run for seed {seed}",
                hint=f"run it first: lever run {other.path}",
            )
        names = [s["stage"] for s in stages]
        name = st.stage or names[-1]
        if name not in names:
            raise LeverError(f"start.stage = '{name}': plan '{st.plan}' has stages {', '.join(names)}")
        entry = stages[names.index(name)]
        state = load_weights(entry["path"] / entry["checkpoint"])
    load_into(model, state, f"start ({st.kind})")  # fails here, clearly, before any run directory exists
    return state, f"weights:{state_digest(state)}"


# --------------------------------------------------------------------------- the run


def provenance(lp: LoadedPlan, seed: int, device: torch.device, prep: Prepared) -> dict[str, Any]:
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    import numpy
    import pydantic

    return {
        "lever": __version__,
        "git_commit": commit,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pydantic": pydantic.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "threads": thread_settings(),
        "job": {k: os.environ[v] for k, v in JOB_ENV.items() if os.environ.get(v)},  # a sweep's job: its log, Slurm's id
        "seed": seed,
        "seeds": list(lp.plan.seeds),
        "plan": lp.name,
        "description": lp.plan.description,
        "plan_file": str(lp.path),
        "overrides": lp.overrides,
        "spec_hash": lp.hash,
        "candidates_file": str(prep.sources.candidates),
        "features_file": str(prep.sources.features),
        "inputs": prep.inputs,
        **prep.inputs,
    }


def run_plan(
    lp: LoadedPlan,
    ws: Workspace,
    seed: int,
    reporter: Reporter | None = None,
    *,
    redo: bool = False,
    retrain_stage: str | None = None,
) -> RunOutcome:
    """Train every stage of `lp` for one seed into its run directory (resuming, reusing, never overwriting).

    A finished run is reused while its inputs are unchanged; `redo` rebuilds its record (reusing intact
    stages), `retrain_stage` also deletes that stage's folder first so it is trained again.
    """
    rep = reporter or SilentReporter()
    run = run_dir_of(ws, lp, seed)
    if retrain_stage is not None and retrain_stage not in [s.name for s, _ in compile_stages(lp.plan)]:
        names = ", ".join(s.name for s, _ in compile_stages(lp.plan))
        raise LeverError(f"--retrain-stage {retrain_stage}: the plan has no such stage", hint=f"its stages are {names}")
    # The lock sits beside the run directory, which is only created once the inputs have resolved.
    try:
        with file_lock(run.lock, wait=False, what=f"run {run.path}"):
            if not (redo or retrain_stage):
                done = _finished(run, lp, ws, rep)
                if done is not None:
                    rep.info(f"{lp.name} (seed {seed}) already trained in {run.path}; nothing to do")
                    return RunOutcome(run, "already", done)
            try:
                return _train(lp, ws, seed, run, rep, retrain_stage)
            except KeyboardInterrupt:
                end(run, "interrupted", "stopped by Ctrl-C; `lever run` on the plan resumes it")
                raise
            except LeverError as err:
                if isinstance(err, DamagedState) and not err.hint:
                    err.hint = run.fix
                end(run, "failed", str(err), ["guardrail" if isinstance(err, RunFailed) else "error"])
                raise
    except OSError as err:  # a full disk or a read-only folder, while training or even taking the lock
        raise write_failed(run, err) from None


def end(run: RunDir, state: str, message: str, flags: list[str] | None = None) -> None:
    """Record how a run that had started ended (a run whose inputs never resolved has no status to update)."""
    if run.status_file.is_file():
        try:
            run.set_status(state, flags, message)
        except OSError:
            pass  # the disk that failed the run may refuse this too; the error still reaches the user


def write_failed(run: RunDir, err: OSError) -> LeverError:
    """A failed write (a full disk, a read-only folder) as a one-screen error; the run is marked failed."""
    where = f" {err.filename}" if err.filename else ""
    message = f"could not write{where}: {err.strerror or err}"
    end(run, "failed", message, ["error"])
    return LeverError(message, hint="free some space (or fix the folder's permissions) and run the same command again")


def _finished(run: RunDir, lp: LoadedPlan, ws: Workspace, rep: Reporter) -> dict[str, Any] | None:
    """The run's selection when it finished with the inputs it would use now; None when it must (re)train."""
    status = run.status()
    if status is None or status["state"] not in ("trained", "done"):
        return None
    src = resolve_train_sources(ws, lp.plan.data.candidates, lp.plan.data.features, rep.info)
    recorded = (run.provenance() or {}).get("inputs")
    now = input_keys(src, memo_file(ws))
    if recorded is None:
        rep.info(
            f"{lp.name} (seed {run.seed}): its inputs were not recorded (an older lever); rebuilding it, reusing intact stages"
        )
        return None
    if recorded != now:
        changed = ", ".join(k for k in now if recorded.get(k) != now[k])
        rep.info(f"{lp.name} (seed {run.seed}): its {changed} changed since it was trained; training again")
        return None
    sel = run.selected()
    if sel is None:
        raise DamagedState(f"{run.selected_file} is missing but the run is marked {status['state']}", hint=run.fix)
    for entry in run.stages():
        if not entry["path"].is_dir():
            raise DamagedState(f"stage folder {entry['path']} of this run is missing", hint=run.fix)
    if not sel["path"].is_file():
        raise DamagedState(f"the selected checkpoint {sel['path']} is missing", hint=run.fix)
    return sel


def finished_run(lp: LoadedPlan, ws: Workspace, seed: int) -> bool:
    """Whether the seed run is done (trained and evaluated) on the inputs it would use now: a sweep skips it.

    Anything short of that (not started, stopped, damaged, stale) is not finished; its job finds out why."""
    run = run_dir_of(ws, lp, seed)
    try:
        if (run.status() or {}).get("state") != "done":
            return False
        return _finished(run, lp, ws, SilentReporter()) is not None
    except LeverError:
        return False


def check_select_metric(lp: LoadedPlan) -> None:
    """Fail before any work when select.metric is not logged by every stage of the plan."""
    kinds = {stage.kind for stage, _ in compile_stages(lp.plan)}
    logged = set.intersection(*(set(STAGE_METRICS[k]) for k in kinds))
    if lp.plan.select.metric not in logged:
        raise LeverError(
            f"{lp.path}: select.metric = '{lp.plan.select.metric}' is not logged by every stage of this plan",
            hint=f"choose one of: {', '.join(sorted(logged))}",
        )


def _train(lp: LoadedPlan, ws: Workspace, seed: int, run: RunDir, rep: Reporter, retrain: str | None) -> RunOutcome:
    plan = lp.plan
    check_select_metric(lp)
    device = resolve_device(plan.device)
    prep = prepare(plan, ws, rep.info)
    feats = prep.features.to(device)
    val_groups = make_groups(prep.split.val, plan, feats)
    torch.manual_seed(derive_seed(seed, "init"))
    model = build_model(plan, prep.features.shape[1], device)
    _, prev_key = start_state(lp, ws, seed, model)  # loads the start weights into the model
    # Inputs resolved: from here on the run directory exists and records what happens.
    run.write_start(lp.recipe(), provenance(lp, seed, device, prep))
    pre_rce = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    folder = run.folder
    entries: list[dict[str, Any]] = []
    all_rows: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    stages = compile_stages(plan)
    for i, (stage, flt) in enumerate(stages):
        last = i == len(stages) - 1
        train_d, _ = stage_train_data(prep.split.train, plan, flt)
        if train_d.num_queries == 0:
            raise LeverError(f"{lp.path}: stage '{stage.name}' has no training queries after its data filter")
        pin = plan.select.epoch if last else None
        key = content_key(
            prev_key,
            stage.kind,
            stage.epochs,
            stage.lr,
            stage.opt.model_dump(mode="json"),
            flt.model_dump(mode="json") if flt else None,
            plan.data.model_dump(mode="json"),
            plan.reward.model_dump(mode="json"),
            plan.model.model_dump(mode="json"),
            prep.inputs,
            seed,
            plan.select.metric,
            plan.select.mode,
            pin,
            plan.grpo.reference if stage.kind == "grpo" else None,
        )
        stage_dir = folder.stage(stage.name, key)
        retrain_fix = f"retrain it with `{run.command('run', '--retrain-stage', stage.name)}`"
        with file_lock(folder.stage_lock(stage.name, key), wait=True, what=f"stage {stage.name}-{key}", on_wait=rep.info):
            try:
                if retrain == stage.name and stage_dir.exists():
                    rep.info(f"{stage.name}: deleting {stage_dir} to train it again")
                    shutil.rmtree(stage_dir)
                result = read_result(stage_dir)
                if result is None:
                    ref = pre_rce if (stage.kind == "grpo" and plan.grpo.reference == "pre_rce") else None
                    groups = make_groups(train_d, plan, feats)
                    StageRunner(stage, stage_dir, model, groups, val_groups, seed, plan.select, rep, pin, ref).run()
                    result = read_result(stage_dir)
                else:
                    rep.info(f"{stage.name}: reusing the identical stage already trained in {stage_dir}")
                assert result is not None
                sel, rows = result
                # The next stage starts from this stage's selected epoch, or its last (grpo.handoff = "last").
                handoff = "selected" if last else getattr(stages[i + 1][0].opt, "handoff", "selected")
                weights = load_weights(stage_dir / handoff_checkpoint(sel, rows, handoff))  # damage here is the stage's
            except LeverError as err:
                if isinstance(err, DamagedState) or str(stage_dir) in str(err):
                    raise DamagedState(err.args[0], hint=err.hint or retrain_fix) from None
                raise
        model.load_state_dict(weights)
        entries.append({"stage": stage.name, "kind": stage.kind, "key": key, **sel, "path": stage_dir})
        all_rows += rows
        record = run.write_stages(entries, all_rows)
        prev_key = key

    final = {k: v for k, v in entries[-1].items() if k not in ("path", "checkpoint", "metrics")}
    last_dir = entries[-1]["path"]
    selected = {**final, "dir": folder.store(last_dir), "path": last_dir / entries[-1]["checkpoint"]}
    run.write_selected(selected)
    run.set_status("trained", _flags(all_rows, entries), None, metrics=record)
    return RunOutcome(run, "trained", selected)


def _flags(rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[str]:
    """Warnings a reader of the results should see: GRPO epochs (the selected ones) that carried little signal."""
    flags = []
    for e in entries:
        if e["kind"] != "grpo":
            continue
        row = next((r for r in rows if r["stage"] == e["stage"] and r["epoch"] == e["epoch"]), None)
        if row and row.get("adv/std", 1.0) < FLAT:
            flags.append(f"near-zero advantages in {e['stage']} (adv/std {row['adv/std']:.4f})")
        if row and row.get("adv/zero_frac", 0.0) > FLAT_SHARE:
            flags.append(f"{row['adv/zero_frac']:.0%} of {e['stage']} groups had all-zero advantages")
        flags += grpo_flags(e["stage"], [r for r in rows if r["stage"] == e["stage"]])
    return flags
