"""A plan's data as training sees it: the plan's filter, the train/val split, a stage's narrowing, groups.

`lever.recipe` calls these once per run; `lever data stats --plan` (`lever.train.predict`) and
`benchmarks/bench_train.py` call the same functions, so what they report is what training gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from lever.data.candidates import CandidateData
from lever.data.filters import apply_filter, split_train_val, stage_filter
from lever.data.rewards import compute_rewards, raw_rewards
from lever.spec.schema import Plan, Stage

from .groups import Groups


@dataclass
class Split:
    """The plan's filtered data, split into training and validation queries."""

    train: CandidateData
    val: CandidateData
    report: dict[str, Any]  # what the plan's filter kept, step by step


def split_data(data: CandidateData, plan: Plan) -> Split:
    """The plan's reading of repeated sequences (`data.duplicates`: data read with duplicates="keep" has them
    flagged), the plan's filter on raw rewards, then the train/val split (`data.split_rounding`; phases only
    narrow the training side later)."""
    if plan.data.duplicates == "drop":
        data = data.without_duplicates()
    base, _, report = apply_filter(data, raw_rewards(data, plan.reward), plan.data, plan.data.tier_rules)
    if base.num_queries == 0:
        return Split(base, base, report)
    tr, va = split_train_val(base, plan.data.val_fraction, plan.data.split_rounding)
    return Split(base.subset(tr), base.subset(va), report)


def refreshed_data(data: CandidateData, plan: Plan) -> CandidateData:
    """A refresh round's groups (training queries only) as training sees them: the plan's reading of repeated
    sequences and its filter, as `split_data` applies them to the plan's own data (no split)."""
    if plan.data.duplicates == "drop":
        data = data.without_duplicates()
    kept, _, _ = apply_filter(data, raw_rewards(data, plan.reward), plan.data, plan.data.tier_rules)
    return kept


def stage_train_data(train: CandidateData, plan: Plan, stage: Stage) -> tuple[CandidateData, dict[str, Any] | None]:
    """A stage's training queries: the plan's, narrowed by the stage's own filter (a curriculum phase's `data`)."""
    if stage.data is None:
        return train, None
    kept, _, report = apply_filter(
        train, raw_rewards(train, plan.reward), stage_filter(plan.data, stage.data), plan.data.tier_rules
    )
    return kept, report


def make_groups(data: CandidateData, plan: Plan, features: Tensor) -> Groups:
    """Groups of sequences with the plan's training rewards and raw rewards."""
    return Groups(data, compute_rewards(data, plan.reward), raw_rewards(data, plan.reward), features)
