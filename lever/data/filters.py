"""Which queries and sequences a stage trains on: tiers, the plan's data filter, the split.

`apply_filter` applies the plan's `DataFilter` in this order:

1. skip_failed       drop failed evaluations (repeated sequences were dropped before, unless
                     the plan keeps them: data.duplicates, lever.train.plandata.split_data);
2. require_positive  keep queries with at least one correct sequence;
3. positive_ratio    keep queries whose share of correct sequences lies in [lo, hi];
4. tiers             keep queries in the listed quality tiers;
5. top_k             keep the k best sequences of each group by reward (ties: file order);
6. min_group_size    drop groups left with fewer sequences than this.

Steps 2-4 judge a query on its whole usable group; top_k trims afterwards, so
(for example) "high tier" keeps meaning ">= 3 positives and >= 3 negatives" even
with top_k = 3. Pass raw (un-normalised) rewards: tier gaps are in reward units,
and group normalisation belongs to the groups that are finally kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lever.errors import LeverError
from lever.spec.schema import DataFilter, DataSpec, TierRules

from .candidates import CandidateData
from .segments import segment_ids, segment_max, segment_min, segment_rank

TIERS = ("high", "medium", "low")  # tier code = position
EPS = 1e-6  # rewards are float32: 1.3 - 0.3 must count as a gap of 1.0


def reward_gap(data: CandidateData, rewards: Tensor) -> Tensor:
    """gap_q = max_{i in q} r_i - min_{i in q} r_i: [Q] float64 (0 for a group of one)."""
    r = rewards.double()
    return segment_max(r, data.offsets) - segment_min(r, data.offsets)


def quality_tiers(data: CandidateData, rewards: Tensor, rules: TierRules) -> Tensor:
    """Tier code per query [Q] long: 0 = high, 1 = medium, 2 = low (names in TIERS).

    high   = gap >= high_gap   and positives >= high_min_pos   and negatives >= high_min_neg
    medium = gap >= medium_gap and positives >= medium_min_pos and negatives >= medium_min_neg (not high)
    low    = the rest; positive = vqa_correct 1, gap = max reward - min reward in the group.
    """
    gap = reward_gap(data, rewards)
    pos = data.positives()
    neg = data.group_sizes() - pos
    high = (gap >= rules.high_gap - EPS) & (pos >= rules.high_min_pos) & (neg >= rules.high_min_neg)
    medium = (gap >= rules.medium_gap - EPS) & (pos >= rules.medium_min_pos) & (neg >= rules.medium_min_neg)
    tier = torch.full((data.num_queries,), 2, dtype=torch.long)
    tier[medium] = 1
    tier[high] = 0
    return tier


def positive_ratio(data: CandidateData) -> Tensor:
    """Share of correct sequences per query: positives_q / n_q, [Q] float64."""
    return data.positives().double() / data.group_sizes().double().clamp_min(1)


def top_k_keep(data: CandidateData, rewards: Tensor, k: int) -> Tensor:
    """keep [S] bool: the k highest-reward sequences of each group (ties: earlier row first)."""
    return segment_rank(rewards.double(), data.offsets, descending=True) < k


def _per_query(data: CandidateData, keep_query: Tensor) -> Tensor:
    """A query mask [Q] as a sequence mask [S]."""
    return keep_query[segment_ids(data.offsets)]


def apply_filter(
    data: CandidateData, rewards: Tensor, flt: DataFilter, rules: TierRules
) -> tuple[CandidateData, Tensor, dict[str, Any]]:
    """Apply the filter (order in the module docstring). Returns (data, rewards [S'], report).

    report = {"queries_in", "sequences_in", "steps": [{"step", "queries", "sequences"
    (dropped by that step)}], "queries_out", "sequences_out"}.
    """
    if len(rewards) != data.num_sequences:
        raise ValueError(f"rewards has {len(rewards)} values for {data.num_sequences} sequences")
    report: dict[str, Any] = {"queries_in": data.num_queries, "sequences_in": data.num_sequences, "steps": []}

    def step(name: str, keep: Tensor) -> None:
        nonlocal data, rewards
        q, s = data.num_queries, data.num_sequences
        data, rewards = data.select_sequences(keep), rewards[keep]
        report["steps"].append({"step": name, "queries": q - data.num_queries, "sequences": s - data.num_sequences})

    if flt.skip_failed:
        step("skip_failed", ~data.failed)
    if flt.require_positive:
        step("require_positive", _per_query(data, data.positives() > 0))
    lo, hi = flt.positive_ratio
    if (lo, hi) != (0.0, 1.0):
        ratio = positive_ratio(data)
        step(f"positive_ratio [{lo:g}, {hi:g}]", _per_query(data, (ratio >= lo - 1e-9) & (ratio <= hi + 1e-9)))
    if set(flt.tiers) != set(TIERS):
        wanted = torch.tensor([TIERS.index(t) for t in flt.tiers])
        tier = quality_tiers(data, rewards, rules)
        step(f"tiers {','.join(flt.tiers)}", _per_query(data, torch.isin(tier, wanted)))
    if flt.top_k:
        step(f"top_k {flt.top_k}", top_k_keep(data, rewards, flt.top_k))
    if flt.min_group_size > 1:
        step(f"min_group_size {flt.min_group_size}", _per_query(data, data.group_sizes() >= flt.min_group_size))
    report.update(queries_out=data.num_queries, sequences_out=data.num_sequences)
    return data, rewards, report


def split_train_val(data: CandidateData, val_fraction: float, rounding: str = "round") -> tuple[Tensor, Tensor]:
    """(train_index, val_index) query positions: ids sorted as integers, the first n_train train, the rest
    validate. n_train = round((1 - val_fraction) * Q) with rounding "round" (800 queries, 0.2 -> 640 / 160),
    int((1 - val_fraction) * Q) with "floor", the original's int(0.8 * Q) (7 queries: round 6 / 1, floor 5 / 2)."""
    if not 0.0 < val_fraction < 1.0:
        raise LeverError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if rounding not in ("round", "floor"):
        raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")
    Q = data.num_queries
    order = torch.argsort(data.query_ids, stable=True)  # already sorted when read from a file
    share = (1.0 - val_fraction) * Q
    n_train = round(share) if rounding == "round" else int(share)
    if n_train == 0:
        raise LeverError(
            f"{data.meta.get('path', 'candidate data')}: {Q} queries with val_fraction {val_fraction} leave none for training",
            hint="lower data.val_fraction or use a file with more queries",
        )
    return order[:n_train], order[n_train:]


def stage_filter(spec: DataSpec, override: Any = None) -> DataFilter:
    """The filter of one stage: the plan's data filter with a phase's `DataOverride` keys set over it."""
    base = {name: getattr(spec, name) for name in DataFilter.model_fields}
    if override is not None:
        base.update(override.model_dump(exclude_none=True))
    return DataFilter.model_validate(base)
