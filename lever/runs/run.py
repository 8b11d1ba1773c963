"""`lever run`: compile a plan into stages and train them into a run directory.

    <runs>/<plan>/<spec hash>/seed-<seed>/      the plan's run
        spec.json  provenance.json  status.json  stages.json  metrics.jsonl  selected.json
    <runs>/_stages/<stage>-<key>/               a stage's epochs (see lever.train.stage)

A stage's key hashes everything its result depends on (data files, reward, model, its
own settings, the seed, the selection rule, and the key of the stage before it), so two
plans with the same RCE stage share one RCE result, and a changed spec never touches
an older run.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lever import __version__
from lever.data.cache import file_sha256
from lever.data.candidates import CandidateData
from lever.data.filters import apply_filter, split_train_val, stage_filter
from lever.data.reader import load_candidates
from lever.data.rewards import compute_rewards, raw_rewards
from lever.device import resolve_device
from lever.errors import LeverError, RunFailed
from lever.io import file_lock, read_json, read_jsonl, write_json, write_jsonl
from lever.model import SelectorBase, build_selector
from lever.spec import LoadedPlan, Workspace, load_plan
from lever.spec.schema import DataFilter, Plan
from lever.train.checkpoint import State, load_into, load_weights, state_digest
from lever.train.groups import Groups
from lever.train.stage import (
    STAGE_METRICS,
    Reporter,
    SilentReporter,
    Stage,
    StageRunner,
    derive_seed,
    grpo_flags,
    handoff_checkpoint,
)

from .sources import load_features, resolve_train_sources


@dataclass
class RunOutcome:
    run_dir: Path
    state: str  # "trained" | "already"
    selected: dict[str, Any]


def run_dir_of(ws: Workspace, lp: LoadedPlan, seed: int) -> Path:
    return ws.runs_dir / lp.name / lp.hash / f"seed-{seed}"


# --------------------------------------------------------------------------- compile


def compile_stages(plan: Plan) -> list[tuple[Stage, DataFilter | None]]:
    """The plan's stages in order, each with its data filter change (None = the plan's filter)."""
    floor = plan.reward.normalize_std_floor
    out: list[tuple[Stage, DataFilter | None]] = []
    if plan.rce.epochs:
        out.append((Stage("rce", "rce", plan.rce.epochs, plan.rce, plan.rce.lr, floor), None))
    if plan.phases:
        for ph in plan.phases:
            flt = stage_filter(plan.data, ph.data)
            out.append((Stage(ph.name, "grpo", ph.epochs, plan.grpo, ph.lr or plan.grpo.lr, floor), flt))
    elif plan.grpo.epochs:
        out.append((Stage("grpo", "grpo", plan.grpo.epochs, plan.grpo, plan.grpo.lr, floor), None))
    return out


def _key(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- start point


def start_state(lp: LoadedPlan, ws: Workspace, seed: int, model: SelectorBase) -> tuple[State | None, str]:
    """Load the plan's start weights into `model` (none for a fresh seeded init); returns them and a key naming them."""
    st = lp.plan.start
    if st.kind == "scratch":
        return None, f"scratch:{seed}"
    if st.kind == "checkpoint":
        state = load_weights(ws.path(st.checkpoint))
    else:
        # A plan names its start plan like `extends`: next to itself first, then in the workspace's plans folder.
        here = lp.path.parent
        other = load_plan(st.plan, (), here if (here / f"{st.plan}.toml").is_file() else ws.plans_dir)
        other_dir = run_dir_of(ws, other, seed)
        stages = read_json(other_dir / "stages.json")
        if not stages or read_json(other_dir / "status.json", {}).get("state") not in ("trained", "done"):
            raise LeverError(
                f"start.plan = '{st.plan}': that plan has no finished run for seed {seed}",
                hint=f"run it first: lever run {other.path}",
            )
        names = [s["stage"] for s in stages]
        name = st.stage or names[-1]
        if name not in names:
            raise LeverError(f"start.stage = '{name}': plan '{st.plan}' has stages {', '.join(names)}")
        entry = stages[names.index(name)]
        state = load_weights(Path(entry["dir"]) / entry["checkpoint"])
    load_into(model, state, f"start ({st.kind})")  # fails here, clearly, before any run directory exists
    return state, f"weights:{state_digest(state)}"


# --------------------------------------------------------------------------- the run


def provenance(lp: LoadedPlan, seed: int, device: torch.device, sources: dict[str, Any]) -> dict[str, Any]:
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
        "seed": seed,
        "plan": lp.name,
        "description": lp.plan.description,
        "plan_file": str(lp.path),
        "overrides": lp.overrides,
        "spec_hash": lp.hash,
        **sources,
    }


def run_plan(lp: LoadedPlan, ws: Workspace, seed: int, reporter: Reporter | None = None) -> RunOutcome:
    """Train every stage of `lp` for one seed into its run directory (resuming, reusing, never overwriting)."""
    rep = reporter or SilentReporter()
    run_dir = run_dir_of(ws, lp, seed)
    # The lock sits beside the run directory, which is only created once the inputs have resolved.
    with file_lock(run_dir.parent / f".{run_dir.name}.lock", wait=False, what=f"run {run_dir}"):
        status = read_json(run_dir / "status.json", {})
        if status.get("state") in ("trained", "done"):
            rep.info(f"{lp.name} (seed {seed}) already trained in {run_dir}; nothing to do")
            return RunOutcome(run_dir, "already", read_json(run_dir / "selected.json", {}))
        try:
            return _train(lp, ws, seed, run_dir, rep)
        except LeverError as err:
            if (run_dir / "status.json").is_file():  # the run had started: say how it ended
                flag = "guardrail" if isinstance(err, RunFailed) else "error"
                write_json(run_dir / "status.json", {"state": "failed", "flags": [flag], "message": str(err)})
            raise


def check_select_metric(lp: LoadedPlan) -> None:
    """Fail before any work when select.metric is not logged by every stage of the plan."""
    kinds = {stage.kind for stage, _ in compile_stages(lp.plan)}
    logged = set.intersection(*(set(STAGE_METRICS[k]) for k in kinds))
    if lp.plan.select.metric not in logged:
        raise LeverError(
            f"{lp.path}: select.metric = '{lp.plan.select.metric}' is not logged by every stage of this plan",
            hint=f"choose one of: {', '.join(sorted(logged))}",
        )


def _train(lp: LoadedPlan, ws: Workspace, seed: int, run_dir: Path, rep: Reporter) -> RunOutcome:
    plan = lp.plan
    check_select_metric(lp)
    device = resolve_device(plan.device)
    src = resolve_train_sources(ws, plan.data.candidates, plan.data.features, rep.info)
    data = load_candidates(src.candidates, cache_dir=ws.cache_dir / "candidates", log=rep.info)
    features = load_features(src.features)
    _check_rows(data, features, src.features)
    data_key = {"candidates": data.meta["sha256"][:16], "features": file_sha256(src.features)[:16]}

    # The plan's filter defines the validation queries once; phases only narrow the training side.
    # Filters rank and tier groups by raw (un-normalised) rewards.
    base, _, report = apply_filter(data, raw_rewards(data, plan.reward), plan.data, plan.data.tier_rules)
    tr, va = split_train_val(base, plan.data.val_fraction)
    if len(tr) == 0:
        raise LeverError(f"{lp.path}: the data filter leaves no training queries ({report})")
    train_base, val = base.subset(tr), base.subset(va)
    feats = features.to(device)

    def groups(d: CandidateData) -> Groups:
        return Groups(d, compute_rewards(d, plan.reward), raw_rewards(d, plan.reward), feats)

    val_groups = groups(val)
    torch.manual_seed(derive_seed(seed, "init"))
    m = plan.model
    model = build_selector(features.shape[1], m).to(device)
    _, prev_key = start_state(lp, ws, seed, model)  # loads the start weights into the model
    # Inputs resolved: from here on the run directory exists and records what happens.
    write_json(run_dir / "spec.json", lp.recipe())
    write_json(run_dir / "status.json", {"state": "running", "flags": [], "message": None})
    write_json(
        run_dir / "provenance.json",
        provenance(lp, seed, device, {"candidates_file": str(src.candidates), "features_file": str(src.features), **data_key}),
    )
    pre_rce = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    stages = compile_stages(plan)
    entries: list[dict[str, Any]] = []
    all_rows: list[dict[str, Any]] = []
    for i, (stage, flt) in enumerate(stages):
        last = i == len(stages) - 1
        train_d = (
            train_base
            if flt is None
            else apply_filter(train_base, raw_rewards(train_base, plan.reward), flt, plan.data.tier_rules)[0]
        )
        if train_d.num_queries == 0:
            raise LeverError(f"{lp.path}: stage '{stage.name}' has no training queries after its data filter")
        pin = plan.select.epoch if last else None
        key = _key(
            prev_key,
            stage.kind,
            stage.epochs,
            stage.lr,
            stage.opt.model_dump(mode="json"),
            flt.model_dump(mode="json") if flt else None,
            plan.data.model_dump(mode="json"),
            plan.reward.model_dump(mode="json"),
            m.model_dump(mode="json"),
            data_key,
            seed,
            plan.select.metric,
            plan.select.mode,
            pin,
            plan.grpo.reference if stage.kind == "grpo" else None,
        )
        stage_dir = ws.runs_dir / "_stages" / f"{stage.name}-{key}"
        with file_lock(
            ws.runs_dir / "_stages" / f".{stage.name}-{key}.lock", wait=True, what=f"stage {stage.name}-{key}", on_wait=rep.info
        ):
            result = _stage_result(stage_dir)
            if result is None:
                ref = pre_rce if (stage.kind == "grpo" and plan.grpo.reference == "pre_rce") else None
                runner = StageRunner(stage, stage_dir, model, groups(train_d), val_groups, seed, plan.select, rep, pin, ref)
                runner.run()
                result = _stage_result(stage_dir)
            else:
                rep.info(f"{stage.name}: reusing the identical stage already trained in {stage_dir}")
        assert result is not None
        sel, rows = result
        # The next stage starts from this stage's selected epoch, or its last (grpo.handoff = "last").
        handoff = "selected" if last else getattr(stages[i + 1][0].opt, "handoff", "selected")
        model.load_state_dict(load_weights(stage_dir / handoff_checkpoint(sel, rows, handoff)))
        entries.append({"stage": stage.name, "kind": stage.kind, "key": key, "dir": str(stage_dir.resolve()), **sel})
        all_rows += rows
        write_json(run_dir / "stages.json", entries)
        write_jsonl(run_dir / "metrics.jsonl", all_rows)
        prev_key = key

    final = dict(entries[-1])
    final["checkpoint"] = str(Path(final["dir"]) / final["checkpoint"])
    write_json(run_dir / "selected.json", final)
    flags = _flags(all_rows, entries)
    write_json(run_dir / "status.json", {"state": "trained", "flags": flags, "message": None})
    return RunOutcome(run_dir, "trained", final)


def _stage_result(stage_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    sel = read_json(stage_dir / "selected.json")
    return None if sel is None else (sel, read_jsonl(stage_dir / "metrics.jsonl"))


def _flags(rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[str]:
    """Warnings a reader of the results should see: GRPO epochs (the selected ones) that carried little signal."""
    flags = []
    for e in entries:
        if e["kind"] != "grpo":
            continue
        row = next((r for r in rows if r["stage"] == e["stage"] and r["epoch"] == e["epoch"]), None)
        if row and row.get("adv/std", 1.0) < 0.01:
            flags.append(f"near-zero advantages in {e['stage']} (adv/std {row['adv/std']:.4f})")
        if row and row.get("adv/zero_frac", 0.0) > 0.5:
            flags.append(f"{row['adv/zero_frac']:.0%} of {e['stage']} groups had all-zero advantages")
        flags += grpo_flags(e["stage"], [r for r in rows if r["stage"] == e["stage"]])
    return flags


def _check_rows(data: CandidateData, features: torch.Tensor, path: Path) -> None:
    need = int(max(int(data.query_ids.max()), int(data.pools.max()))) + 1
    if features.shape[0] < need:
        raise LeverError(
            f"features file {path} has {features.shape[0]} rows, but the candidate data refers to train index {need - 1}",
            hint="the features must hold one row per train item (row i = train item i)",
        )
