"""The recipe every entry point shares: prepare stage data -> build model -> stages -> select -> evaluate.

The first four steps live here and in `lever.runs.run` (`lever data stats --plan` and
`benchmarks/bench_train.py` use the data step alone). Evaluation is the last step but
lives one layer up, in `lever.eval.pipeline`: `lever.runs` sits below `lever.eval`, so the
arrows of the house stay one way and training never imports a VLM backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lever.data.candidates import CandidateData
from lever.data.filters import apply_filter, split_train_val, stage_filter
from lever.data.reader import load_candidates
from lever.data.rewards import compute_rewards, raw_rewards
from lever.errors import LeverError
from lever.keys import file_digest
from lever.model import SelectorBase, build_selector
from lever.spec import Workspace
from lever.spec.schema import DataFilter, Plan
from lever.train.groups import Groups
from lever.train.stage import Stage

from .sources import TrainSources, load_features, resolve_train_sources


def compile_stages(plan: Plan) -> list[tuple[Stage, DataFilter | None]]:
    """The plan's stages in order, each with its data filter change (None = the plan's filter)."""
    floor = plan.reward.normalize_std_floor
    out: list[tuple[Stage, DataFilter | None]] = []
    if plan.sft.epochs:
        out.append((Stage("sft", "sft", plan.sft.epochs, plan.sft, plan.sft.lr, floor), None))
    if plan.rce.epochs:
        out.append((Stage("rce", "rce", plan.rce.epochs, plan.rce, plan.rce.lr, floor), None))
    if plan.phases:
        for ph in plan.phases:
            flt = stage_filter(plan.data, ph.data)
            opt = plan.grpo if ph.handoff is None else plan.grpo.model_copy(update={"handoff": ph.handoff})
            out.append((Stage(ph.name, "grpo", ph.epochs, opt, ph.lr or plan.grpo.lr, floor), flt))
    elif plan.grpo.epochs:
        out.append((Stage("grpo", "grpo", plan.grpo.epochs, plan.grpo, plan.grpo.lr, floor), None))
    return out


@dataclass
class Split:
    """The plan's filtered data, split into training and validation queries."""

    train: CandidateData
    val: CandidateData
    report: dict[str, Any]  # what the plan's filter kept, step by step


def split_data(data: CandidateData, plan: Plan) -> Split:
    """The plan's filter on raw rewards, then the train/val split (phases only narrow the training side later)."""
    base, _, report = apply_filter(data, raw_rewards(data, plan.reward), plan.data, plan.data.tier_rules)
    if base.num_queries == 0:
        return Split(base, base, report)
    tr, va = split_train_val(base, plan.data.val_fraction)
    return Split(base.subset(tr), base.subset(va), report)


def stage_train_data(train: CandidateData, plan: Plan, flt: DataFilter | None) -> tuple[CandidateData, dict[str, Any] | None]:
    """A stage's training queries: the plan's, narrowed by the stage's own filter (phases)."""
    if flt is None:
        return train, None
    kept, _, report = apply_filter(train, raw_rewards(train, plan.reward), flt, plan.data.tier_rules)
    return kept, report


def make_groups(data: CandidateData, plan: Plan, features: Tensor) -> Groups:
    """Groups of sequences with the plan's training rewards and raw rewards."""
    return Groups(data, compute_rewards(data, plan.reward), raw_rewards(data, plan.reward), features)


def build_model(plan: Plan, feature_dim: int, device: torch.device | str = "cpu") -> SelectorBase:
    """The plan's selector (`model.arch`), freshly initialised (seed the RNG first)."""
    return build_selector(feature_dim, plan.model).to(device)


@dataclass
class Prepared:
    """Everything the stages train on, and the content keys of the files it came from."""

    sources: TrainSources
    data: CandidateData
    features: Tensor  # [N_train, d] on CPU
    split: Split
    inputs: dict[str, str]  # content keys of the candidate data and features (part of every stage key)


def input_keys(sources: TrainSources, memo: Path | None) -> dict[str, str]:
    """Content keys of the training inputs (cheap after the first time: remembered by size and mtime)."""
    return {
        "candidates": file_digest(sources.candidates, memo)[:16],
        "features": file_digest(sources.features, memo)[:16],
    }


def prepare(plan: Plan, ws: Workspace, log: Callable[[str], None]) -> Prepared:
    """Step one of the recipe: read the plan's candidate data and features, check they fit, filter and split."""
    src = resolve_train_sources(ws, plan.data.candidates, plan.data.features, log)
    data = load_candidates(src.candidates, cache_dir=ws.cache_dir / "candidates", log=log)
    features = load_features(src.features)
    need = int(max(int(data.query_ids.max()), int(data.pools.max()))) + 1
    if features.shape[0] < need:
        raise LeverError(
            f"features file {src.features} has {features.shape[0]} rows, but the candidate data refers to train index {need - 1}",
            hint="the features must hold one row per train item (row i = train item i)",
        )
    split = split_data(data, plan)
    if split.train.num_queries == 0:
        raise LeverError(f"the plan's data filter leaves no training queries ({split.report})")
    return Prepared(src, data, features, split, input_keys(src, memo_file(ws)))


def memo_file(ws: Workspace) -> Path:
    """Where input digests are remembered between commands."""
    return ws.cache_dir / "digests.json"
