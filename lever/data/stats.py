"""What a candidate-data file holds, and what a plan's reward and advantage settings will make of it.

Everything returns plain JSON-able dicts (the CLI renders them as tables or JSON). What a
plan's training will make of the data (`plan_prediction`) needs the training code, so it
lives in `lever.train.predict`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lever.spec.schema import RewardSpec, TierRules

from .candidates import CandidateData
from .filters import TIERS, positive_ratio, quality_tiers, reward_gap
from .rewards import raw_rewards
from .segments import one_thread

# The advantage-signal thresholds, in one place (stats --plan, run flags and report tables use them):
FLAT = 0.01  # a group whose advantages are all below this in size teaches (almost) nothing; so does an epoch's adv/std
FLAT_SHARE = 0.5  # more than this share of flat (or all-zero) groups is worth a warning
ZERO = 1e-8
RATIO_BINS = [(0.0, 0.0, "0 (all negative)"), (0.0, 0.25, "(0, 0.25]"), (0.25, 0.5, "(0.25, 0.5]"),
              (0.5, 0.75, "(0.5, 0.75]"), (0.75, 1.0, "(0.75, 1)"), (1.0, 1.0, "1 (all positive)")]  # fmt: skip
QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def value_summary(x: Tensor) -> dict[str, float]:
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
        # sequences with a behaviour log-prob per source (grpo.off_policy needs them; retrieval has none)
        "behaviour_logps": {name: int(n) for name, n in zip(data.source_names, _with_behaviour(data))},
        "read": meta.get("read", {}),
        "failed": {"sequences": int(data.failed.sum()), "queries_all_failed": int((failed_per_q == sizes).sum())},
        "outcomes": {
            "all_negative": int((pos == 0).sum()),
            "all_positive": int((pos == sizes).sum()),
            "mixed": int(((pos > 0) & (pos < sizes)).sum()),
        },  # fmt: skip
        "positive_ratio": {"mean": float(ratio.mean()), "bins": ratio_bins},
        "reward": {"mode": reward.mode, **value_summary(r)},
        "reward_gap": {"uniform_groups": int((gap <= ZERO).sum()), **_quantiles(gap)},
        "tiers": {name: int((tier == i).sum()) for i, name in enumerate(TIERS)},
        "tier_rules": rules.model_dump(),
    }


def _with_behaviour(data: CandidateData) -> list[int]:
    """Per source code, the sequences with a behaviour log-probability (all 0 when the file has none)."""
    if data.behaviour_logp is None:
        return [0] * len(data.source_names)
    has = torch.isfinite(data.behaviour_logp).long()
    return torch.zeros(len(data.source_names), dtype=torch.long).index_add_(0, data.source, has).tolist()
