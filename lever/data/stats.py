"""What a candidate-data file holds, and what a plan's reward and advantage settings will make of it.

Everything returns plain JSON-able dicts (the CLI renders them as tables or JSON).
`plan_prediction` computes advantages exactly like GRPO training does
(`lever.train.losses.group_advantages` on the plan's filtered training groups), so a
plan whose groups carry almost no signal is caught before any epoch is spent.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lever.spec.schema import Plan, RewardSpec, TierRules
from lever.train.losses import group_advantages, group_zscore_clamped, top_k_mask

from .candidates import CandidateData
from .filters import TIERS, apply_filter, positive_ratio, quality_tiers, reward_gap, split_train_val, stage_filter
from .rewards import compute_rewards, raw_rewards
from .segments import one_thread

FLAT = 0.01  # a group whose advantages are all below this in size teaches (almost) nothing
ZERO = 1e-8
RATIO_BINS = [(0.0, 0.0, "0 (all negative)"), (0.0, 0.25, "(0, 0.25]"), (0.25, 0.5, "(0.25, 0.5]"),
              (0.5, 0.75, "(0.5, 0.75]"), (0.75, 1.0, "(0.75, 1)"), (1.0, 1.0, "1 (all positive)")]  # fmt: skip
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def _summary(x: Tensor) -> dict[str, float]:
    """min / mean / std (population) / max of a 1-d tensor."""
    if x.numel() == 0:
        return {"min": 0.0, "mean": 0.0, "std": 0.0, "max": 0.0}
    x = x.double()
    return {"min": float(x.min()), "mean": float(x.mean()), "std": float(x.std(unbiased=False)), "max": float(x.max())}


def _quantiles(x: Tensor) -> dict[str, float]:
    q = torch.quantile(x.double(), torch.tensor(QUANTILES, dtype=torch.float64))
    return {f"p{round(p * 100)}": round(float(v), 6) for p, v in zip(QUANTILES, q)}


@one_thread()
def data_stats(data: CandidateData, reward: RewardSpec | None = None, rules: TierRules | None = None) -> dict[str, Any]:
    """Counts and distributions of the data as read (failed evaluations included, and counted)."""
    reward = reward or RewardSpec()
    rules = rules or TierRules()
    sizes = data.group_sizes()
    pos = data.positives()
    ratio = positive_ratio(data)
    r = raw_rewards(data, reward)
    gap = reward_gap(data, r)
    tier = quality_tiers(data, r, rules)
    values, counts = torch.unique(sizes, return_counts=True)
    src = torch.bincount(data.source, minlength=len(data.source_names))
    failed_per_q = torch.zeros(data.num_queries, dtype=torch.long).index_add_(0, data.seq_query(), data.failed.long())
    ratio_bins = []
    for lo, hi, label in RATIO_BINS:
        inside = (ratio == lo) if lo == hi else (ratio > lo) & (ratio <= hi) & (ratio < 1)
        ratio_bins.append({"range": label, "queries": int(inside.sum())})
    meta = data.meta
    return {
        "file": meta.get("path"),
        "sha256": meta.get("sha256"),
        "queries": data.num_queries,
        "sequences": data.num_sequences,
        "shots": data.shots,
        "pool_size": {"min": int(data.pool_sizes.min()), "max": int(data.pool_sizes.max())},
        "group_size": {
            "min": int(sizes.min()),
            "mean": float(sizes.double().mean()),
            "median": float(sizes.double().median()),
            "max": int(sizes.max()),
            "histogram": {str(int(v)): int(c) for v, c in zip(values, counts)},
        },  # fmt: skip
        "sources": {name: int(n) for name, n in zip(data.source_names, src)},
        "read": meta.get("read", {}),
        "failed": {"sequences": int(data.failed.sum()), "queries_all_failed": int((failed_per_q == sizes).sum())},
        "outcomes": {
            "all_negative": int((pos == 0).sum()),
            "all_positive": int((pos == sizes).sum()),
            "mixed": int(((pos > 0) & (pos < sizes)).sum()),
        },  # fmt: skip
        "positive_ratio": {"mean": float(ratio.mean()), "bins": ratio_bins},
        "reward": {"mode": reward.mode, **_summary(r)},
        "reward_gap": {"uniform_groups": int((gap <= ZERO).sum()), **_quantiles(gap)},
        "tiers": {name: int((tier == i).sum()) for i, name in enumerate(TIERS)},
        "tier_rules": rules.model_dump(),
    }


# --------------------------------------------------------------------------- plan-aware


def advantage_prediction(
    data: CandidateData,
    rewards: Tensor,
    adv: Any,
    top_k: int | None = None,
    chunk: int = 4096,
    ties: str = "index",
    raw: Tensor | None = None,
) -> dict[str, Any]:
    """Advantages as GRPO computes them, over every group (in chunks of `chunk` groups).

    adv is the plan's AdvantageSpec; top_k keeps each group's k best sequences first
    (the beam curriculum, ties per grpo.top_k_ties), as training does; with
    adv.normalization = "original" the first stage z-scores the raw rewards `raw`. Returns groups, zero_share (all |A| <= 1e-8),
    flat_share (max |A| < 0.01), adv_std (population, over all sequences), adv_max,
    mean_spread (mean over groups of max |A|).
    """
    n = s1 = s2 = 0.0
    a_max = float("-inf")
    zero = flat = 0
    spread_sum = 0.0
    Q = data.num_queries
    for start in range(0, Q, chunk):
        idx = torch.arange(start, min(Q, start + chunk))
        r, mask = data.padded(idx, rewards.double())  # [B, G]
        if adv.normalization == "original":
            r = group_zscore_clamped(data.padded(idx, (rewards if raw is None else raw).double())[0], mask, adv.group_clip)
        mask = top_k_mask(r, mask, top_k, ties)
        A = group_advantages(r, mask, adv.kind, std_floor=adv.std_floor, ties=adv.rank_ties, clip=adv.clip)  # [B, G]
        vals = A[mask]
        n += vals.numel()
        s1 += float(vals.sum())
        s2 += float((vals * vals).sum())
        a_max = max(a_max, float(vals.max()))
        spread = A.abs().amax(-1)  # [B] padded entries are 0
        zero += int((spread <= ZERO).sum())
        flat += int((spread < FLAT).sum())
        spread_sum += float(spread.sum())
    if Q == 0:
        return {
            "groups": 0,
            "top_k": top_k,
            "zero_share": 0.0,
            "flat_share": 0.0,
            "adv_std": 0.0,
            "adv_max": 0.0,
            "mean_spread": 0.0,
        }
    mean = s1 / n
    return {
        "groups": Q,
        "top_k": top_k,
        "zero_share": zero / Q,
        "flat_share": flat / Q,
        "adv_std": max(s2 / n - mean * mean, 0.0) ** 0.5,
        "adv_max": a_max,
        "mean_spread": spread_sum / Q,
    }


@one_thread()
def plan_prediction(data: CandidateData, plan: Plan) -> dict[str, Any]:
    """What the plan makes of this data before any training, step by step as a run does:
    the plan's filter on raw rewards, the train/val split of what is left, each GRPO
    stage's own filter (phases), the plan's rewards over the kept groups, then advantages
    per beam-curriculum top-k. A plan without GRPO gets the 'grpo' row as if it had one."""
    rules = plan.data.tier_rules
    base, _, base_report = apply_filter(data, raw_rewards(data, plan.reward), plan.data, rules)
    out: dict[str, Any] = {
        "plan_reward": plan.reward.model_dump(mode="json"),
        "advantage": plan.grpo.advantage.model_dump(mode="json"),
        "has_grpo": bool(plan.grpo.epochs or plan.phases),
        "filter": base_report,
        "split": {"train": 0, "val": 0, "val_fraction": plan.data.val_fraction},
        "stages": [],
        "warnings": [],
    }
    if base.num_queries == 0:
        out["warnings"].append("the plan's data filter leaves no query")
        return out
    tr, va = split_train_val(base, plan.data.val_fraction)
    out["split"].update(train=len(tr), val=len(va))
    train_base = base.subset(tr)
    ks = sorted({c.top_k or None for c in plan.grpo.top_k_schedule}, key=lambda k: (k is None, k or 0)) or [None]
    phases = [(ph.name, stage_filter(plan.data, ph.data)) for ph in plan.phases] or [("grpo", None)]
    for name, flt in phases:
        train, report = train_base, None
        if flt is not None:
            train, _, report = apply_filter(train_base, raw_rewards(train_base, plan.reward), flt, rules)
        rewards = compute_rewards(train, plan.reward)  # what the stage trains on (normalised if the plan says so)
        raw = raw_rewards(train, plan.reward)
        rows = [advantage_prediction(train, rewards, plan.grpo.advantage, k, ties=plan.grpo.top_k_ties, raw=raw) for k in ks]
        out["stages"].append(
            {
                "stage": name,
                "filter": report,
                "queries": train.num_queries,
                "sequences": train.num_sequences,
                "reward": _summary(rewards),
                "advantages": rows,
            }
        )
        for row in rows:
            k = "all sequences" if row["top_k"] is None else f"top-{row['top_k']}"
            if row["groups"] == 0:
                out["warnings"].append(f"stage {name}: its data filter leaves no training group")
            elif row["flat_share"] > 0.5 or row["adv_std"] < FLAT:
                out["warnings"].append(
                    f"stage {name} ({k}): {row['flat_share']:.0%} of groups have every |advantage| < {FLAT} "
                    f"(advantage std {row['adv_std']:.3g}): GRPO will get almost no signal from them"
                )
    return out
