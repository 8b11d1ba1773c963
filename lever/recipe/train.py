"""Training a recipe: every stage into its (shared) stage folder, then the run's record of them.

A stage's key hashes everything its result depends on (the data files' contents, reward,
model, its own settings, the seed, the selection rule, and the key of the stage before
it), so two plans with the same RCE stage share one RCE result, and a changed spec never
touches an older run. Where the files go is `lever.runs.layout`'s business.

How a run ends is always recorded in its status.json: `trained`, `failed` (a guardrail, a
damaged file, a full disk: the message says which) or `interrupted` (Ctrl-C, SIGTERM, or the VLM call
budget of `lever run --max-vlm-calls` spent). The next `lever run` of the plan resumes a run that did not finish.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lever import __version__
from lever.data.candidates import CandidateData
from lever.data.filters import stage_filter
from lever.data.stats import FLAT, FLAT_SHARE
from lever.device import resolve_device
from lever.errors import BudgetSpent, DamagedState, LeverError, RunFailed
from lever.eval.reward_cache import Budget
from lever.eval.rollout import RewardValidator
from lever.io import file_lock
from lever.keys import content_key
from lever.model import SelectorBase
from lever.records import SelectorChoice, StageEntry, selector_key
from lever.runs.layout import RunDir
from lever.spec import load_plan
from lever.spec.schema import ModelSpec, Stage
from lever.threads import thread_settings
from lever.train.checkpoint import State, load_into, load_verified, load_weights, state_digest
from lever.train.folder import checkpoint_path, handoff_checkpoint, read_result
from lever.train.groups import derive_seed
from lever.train.grpo import grpo_flags
from lever.train.original_ckpt import head_settings, load_original
from lever.train.plandata import make_groups, stage_train_data
from lever.train.stage import Reporter, SilentReporter, StageRunner

from .onpolicy import online_source, refresh_round, refresh_settings
from .recipe import Recipe


@dataclass
class RunOutcome:
    run: RunDir
    state: str  # "trained" | "already"
    selected: StageEntry | SelectorChoice  # a baseline selector for a plan that trains nothing


# Where a run's provenance finds the job that ran it (set by a sweep's executor, or by Slurm).
JOB_ENV = {"sweep": "LEVER_SWEEP", "log": "LEVER_JOB_LOG", "slurm_job_id": "SLURM_JOB_ID"}


# --------------------------------------------------------------------------- start point


def start_state(r: Recipe, model: SelectorBase) -> tuple[State | None, str]:
    """Load the plan's start weights into `model` (none for a fresh seeded init); returns them and a key naming them."""
    st, ws, seed = r.plan.start, r.ws, r.seed
    if st.kind == "scratch":
        return None, f"scratch:{seed}"
    if st.kind == "checkpoint":
        path = ws.path(st.checkpoint)
        if path.suffix == ".safetensors":
            state = load_weights(path)
        else:
            if r.plan.model.arch != "lever-plus-v3":
                raise LeverError(
                    f"start.checkpoint = '{st.checkpoint}' is not a lever checkpoint (.safetensors); the original's "
                    f"checkpoints are of its architecture, and the plan's model.arch is '{r.plan.model.arch}'",
                    hint="set model.arch = 'lever-plus-v3' with the checkpoint's hidden / layers / heads (docs/architecture.md)",
                )
            state, _ = load_original(path, st.trust_pickle)
            check_heads(state, r.plan.model, st.checkpoint)
    else:
        # A plan names its start plan like `extends`: next to itself first, then in the workspace's plans folder.
        here = r.lp.path.parent
        other = load_plan(st.plan, (), here if (here / f"{st.plan}.toml").is_file() else ws.plans_dir)
        other_run = Recipe.build(other, ws, seed, r.log).run
        stages = other_run.stages()
        if not stages or other_run.state not in ("trained", "done"):
            raise LeverError(
                f"start.plan = '{st.plan}': that plan has no finished run for seed {seed}",
                hint=f"run it first: lever run {other.path}",
            )
        names = [s.stage for s in stages]
        name = st.stage or names[-1]
        if name not in names:
            raise LeverError(f"start.stage = '{name}': plan '{st.plan}' has stages {', '.join(names)}")
        entry = stages[names.index(name)]
        state = load_verified(other_run.path_of(entry.checkpoint), entry.sha256, other_run.retrain_fix(name))
    load_into(model, state, f"start ({st.kind})")  # fails here, clearly, before any run directory exists
    return state, f"weights:{state_digest(state)}"


def check_heads(state: State, model: ModelSpec, name: str) -> None:
    """An original checkpoint's V4 heads (read from its key names) must be the plan's model.* head settings."""
    wrong = {k: v for k, v in head_settings(state).items() if getattr(model, k) != v}
    if wrong:
        sets = ", ".join(f"model.{k} = {json.dumps(v)}" for k, v in wrong.items())
        have = ", ".join(f"model.{k} = {json.dumps(getattr(model, k))}" for k in wrong)
        raise LeverError(
            f"start.checkpoint = '{name}' holds a selector with {sets}; the plan has {have}",
            hint="set the plan's model section to the checkpoint's heads (docs/selector.md)",
        )


# --------------------------------------------------------------------------- the run


def provenance(r: Recipe, device: torch.device) -> dict[str, Any]:
    """What made the run: versions, machine, job, plan and overrides, the input files and their content keys."""
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
        "seed": r.seed,
        "seeds": list(r.plan.seeds),
        "plan": r.name,
        "description": r.plan.description,
        "plan_file": str(r.lp.path),
        "overrides": r.lp.overrides,
        "spec_hash": r.lp.hash,
        "candidates_file": str(r.sources.candidates) if r.trains else None,  # a baseline selector reads none
        "features_file": str(r.features_file),
        "inputs": r.inputs,
        **r.inputs,
    }


def train(
    r: Recipe,
    reporter: Reporter | None = None,
    *,
    redo: bool = False,
    retrain_stage: str | None = None,
    budget: Budget | None = None,
) -> RunOutcome:
    """Train every stage of the recipe into its run directory (resuming, reusing, never overwriting).

    A finished run is reused while its inputs are unchanged; `redo` rebuilds its record (reusing intact
    stages), `retrain_stage` also deletes that stage's folder first so it is trained again. `budget` bounds the
    new VLM calls training makes (online GRPO, refresh rounds, val/reward): spent, it stops with `BudgetSpent`
    at the last saved epoch, the run marked interrupted (resumable).
    """
    rep = reporter or SilentReporter()
    run = r.run
    if retrain_stage is not None and retrain_stage not in [s.name for s in r.stages]:
        names = ", ".join(s.name for s in r.stages)
        raise LeverError(f"--retrain-stage {retrain_stage}: the plan has no such stage", hint=f"its stages are {names}")
    # The lock sits beside the run directory, which is only created once the inputs have resolved.
    try:
        with file_lock(run.lock, wait=False, what=f"run {run.path}"):
            if not (redo or retrain_stage):
                done = finished_selection(r, rep)
                if done is not None:
                    rep.info(f"{r.name} (seed {r.seed}) already trained in {run.path}; nothing to do")
                    return RunOutcome(run, "already", done)
            if budget is not None and r.trains and asks_vlm(r.plan):
                r.scoring.backend.budget = budget
            try:
                return _train(r, rep, retrain_stage) if r.trains else _choose(r, rep)
            except KeyboardInterrupt:
                end(run, "interrupted", "stopped by Ctrl-C or SIGTERM; `lever run` on the plan resumes it")
                raise
            except BudgetSpent as err:  # a clean stop: resumable, not failed
                end(run, "interrupted", f"{err}; `lever run` on the plan resumes it")
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


def finished_selection(r: Recipe, rep: Reporter | None = None) -> StageEntry | SelectorChoice | None:
    """The run's verified selection when it finished with the inputs it would use now; None when it must (re)train."""
    rep = rep or SilentReporter()
    run = r.run
    status = run.status()
    if status is None or status.state not in ("trained", "done"):
        return None
    if (run.provenance() or {}).get("inputs") is None:
        rep.info(f"{r.name} (seed {r.seed}): its inputs were not recorded (an older lever); rebuilding it, reusing intact stages")
        return None
    changed = r.stale()
    if changed:
        rep.info(f"{r.name} (seed {r.seed}): its {', '.join(changed)} changed since it was trained; training again")
        return None
    sel = run.selected()  # cross-checked against stages.json and the stage's own record
    if sel is None:
        raise DamagedState(f"{run.selected_file} is missing but the run is marked {status.state}", hint=run.fix)
    return sel


def finished(r: Recipe) -> bool:
    """Whether the seed run is done (trained and evaluated) on the inputs it would use now: a sweep skips it.

    Anything short of that (not started, stopped, damaged, stale) is not finished; its job finds out why."""
    try:
        if r.run.state != "done":
            return False
        sel = finished_selection(r)
        return sel is not None and r.run.selected_eval(sel) is not None
    except LeverError:
        return False


def stage_key(
    r: Recipe, stage: Stage, prev_key: str, pin: int | None, refresh: dict[str, Any] | None = None, online: bool = False
) -> str:
    """The content key of a stage: everything its result depends on, including the stage before it (and, when its
    rows hold the VLM-scored validation metrics, the VLM's identity and the plan's metric; for a refresh round,
    what its groups depend on: `lever.recipe.onpolicy.refresh_settings`; for online GRPO, the rollout settings and
    the VLM's identity)."""
    plan = r.plan
    extra: list[Any] = [{"val_reward": r.scoring.identity, "metric": r.scoring.metric}] if plan.select.logs_reward else []
    if refresh is not None:
        extra.append({"refresh": refresh})
    if online:  # the groups are sampled and scored as the stage goes: the sampling settings and the VLM shape it
        extra.append({"rollout": plan.rollout.model_dump(mode="json"), "scoring": r.scoring.identity, "metric": r.scoring.metric})
    return content_key(
        prev_key,
        stage.kind,
        stage.epochs,
        stage.opt.lr,
        stage.opt.model_dump(mode="json"),
        # a phase's effective filter (the plan's with the phase's changes), as stage keys always held it
        stage_filter(plan.data, stage.data).model_dump(mode="json") if stage.data is not None else None,
        plan.data.model_dump(mode="json"),
        plan.reward.model_dump(mode="json"),
        plan.model.model_dump(mode="json"),
        r.inputs,
        r.seed,
        plan.select.metric,
        plan.select.mode,
        pin,
        plan.grpo.reference if stage.kind == "grpo" else None,
        *extra,
    )


def _train(r: Recipe, rep: Reporter, retrain: str | None) -> RunOutcome:
    plan, run, seed = r.plan, r.run, r.seed
    device = resolve_device(plan.device)
    split = r.split
    feats = r.loaded.features.to(device)
    val_groups = make_groups(split.val, plan, feats)
    validate = reward_validator(r, split.val, feats) if plan.select.logs_reward else None
    torch.manual_seed(derive_seed(seed, "init"))
    model = r.model(device)
    _, prev_key = start_state(r, model)  # loads the start weights into the model
    # Inputs resolved: from here on the run directory exists and records what happens.
    run.write_start(r.lp.spec_dict(), provenance(r, device))
    pre_rce = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    folder = run.folder
    entries: list[StageEntry] = []
    all_rows: list[dict[str, Any]] = []
    record = None
    for i, stage in enumerate(r.stages):
        last = i == len(r.stages) - 1
        train_d, _ = stage_train_data(split.train, plan, stage)
        if train_d.num_queries == 0:
            raise LeverError(f"{r.lp.path}: stage '{stage.name}' has no training queries after its data filter")
        pin = plan.select.epoch if last else None
        refresh = refresh_settings(r, stage, model) if stage.refresh else None  # the model holds the hand-off weights
        online = stage.kind == "grpo" and plan.rollout.mode == "online"
        key = stage_key(r, stage, prev_key, pin, refresh, online)
        stage_dir = folder.stage(stage.name, key)
        retrain_fix = run.retrain_fix(stage.name)
        with file_lock(folder.stage_lock(stage.name, key), wait=True, what=f"stage {stage.name}-{key}", on_wait=rep.info):
            try:
                if retrain == stage.name and (stage_dir.exists() or stage_dir.is_symlink()):
                    rep.info(f"{stage.name}: deleting {stage_dir} to train it again")
                    stage_dir.unlink() if stage_dir.is_symlink() else shutil.rmtree(stage_dir)
                run.path_of(folder.store_rel(stage_dir))  # a stage folder that leads outside the runs folder: damage
                result = read_result(stage_dir, plan.select, pin, key)  # a folder of another key is damage
                if result is None:
                    ref = pre_rce if (stage.kind == "grpo" and plan.grpo.reference == "pre_rce") else None
                    if stage.refresh:  # new groups from the selector as it stands now, scored by the VLM
                        train_d = refresh_round(r, stage, model, train_d, stage_dir, rep)
                    groups = make_groups(train_d, plan, feats)
                    source = online_source(r, stage, model, train_d, feats, rep) if online else None
                    runner = StageRunner(
                        stage, stage_dir, model, groups, val_groups, seed, plan.select, rep, pin, ref, validate=validate,
                        source=source, key=key,
                    )  # fmt: skip
                    runner.run()
                    result = read_result(stage_dir, plan.select, pin, key)
                else:
                    rep.info(f"{stage.name}: reusing the identical stage already trained in {stage_dir}")
                assert result is not None
                sel, rows = result
                # The next stage starts from this stage's selected epoch, or its last (grpo.handoff = "last").
                handoff = "selected" if last else getattr(r.stages[i + 1].opt, "handoff", "selected")
                weights = handoff_checkpoint(stage_dir, sel, rows, handoff)  # verified against the recorded digests
            except BudgetSpent as err:
                err.where = err.where or f"in {stage.name}, before its first epoch"  # a refresh round's generation
                raise
            except LeverError as err:
                if isinstance(err, DamagedState) or str(stage_dir) in str(err):
                    raise DamagedState(err.args[0], hint=retrain_fix) from None
                raise
        model.load_state_dict(weights)
        checkpoint = folder.store_rel(checkpoint_path(stage_dir, sel.epoch))
        entries.append(StageEntry.of(sel, stage.kind, key, folder.store_rel(stage_dir), checkpoint))
        all_rows += rows
        record = run.write_stages(entries, all_rows)
        prev_key = key

    run.write_selected(entries[-1])
    run.set_status("trained", _flags(all_rows, entries), None, metrics=record)
    return RunOutcome(run, "trained", entries[-1])


def asks_vlm(plan: Any) -> bool:
    """Whether training asks the VLM (online GRPO, refresh rounds, val/reward): what a VLM call budget bounds."""
    return plan.rollout.mode == "online" or plan.refresh.rounds > 0 or plan.select.logs_reward


def reward_validator(r: Recipe, val: CandidateData, feats: torch.Tensor) -> RewardValidator:
    """val/reward and val/accuracy of the policy's greedy selection on the validation queries (select.reward)."""
    return RewardValidator(r.scoring, val, feats, int(val.pointers.shape[-1]) if val.num_sequences else 1)


def baseline_choice(r: Recipe) -> SelectorChoice:
    """The record of a plan whose selector trains nothing: the selector, its key and what it does in words."""
    sel = r.plan.selector
    reason = {
        "zero-shot": "no demonstrations",
        "random": "random items of each question's pool, seeded per question",
        "similar": f"the pool's most similar items by {sel.features} features, {sel.order.replace('-', ' ')}",
    }[sel.kind]
    return SelectorChoice(sel.kind, selector_key(r.lp.spec_dict()["selector"]), reason)


def _choose(r: Recipe, rep: Reporter) -> RunOutcome:
    """A plan whose selector trains nothing: its run records the selector (no stage, no checkpoint, no metrics)."""
    run = r.run
    run.write_start(r.lp.spec_dict(), provenance(r, torch.device("cpu")))
    choice = baseline_choice(r)
    run.write_selected(choice)
    run.set_status("trained")
    rep.info(f"{r.name}: selector '{choice.selector}' ({choice.reason}); nothing to train")
    return RunOutcome(run, "trained", choice)


def _flags(rows: list[dict[str, Any]], entries: list[StageEntry]) -> list[str]:
    """Warnings a reader of the results should see: GRPO epochs (the selected ones) that carried little signal."""
    flags = []
    for e in entries:
        if e.kind != "grpo":
            continue
        row = next((r for r in rows if r["stage"] == e.stage and r["epoch"] == e.epoch), None)
        if row and row.get("adv/std", 1.0) < FLAT:
            flags.append(f"near-zero advantages in {e.stage} (adv/std {row['adv/std']:.4f})")
        if row and row.get("adv/zero_frac", 0.0) > FLAT_SHARE:
            flags.append(f"{row['adv/zero_frac']:.0%} of {e.stage} groups had all-zero advantages")
        flags += grpo_flags(e.stage, [r for r in rows if r["stage"] == e.stage])
    return flags
