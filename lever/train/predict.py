"""What a plan's reward, filter and advantage settings make of candidate data, before any training.

`plan_prediction` follows the run's own recipe (`lever.train.plandata.split_data`, the stages'
filters) and computes advantages exactly like GRPO training does
(`lever.train.losses.group_advantages`), so a plan whose groups carry almost no signal is
caught before any epoch is spent.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lever.data.candidates import CandidateData
from lever.data.rewards import compute_rewards, raw_rewards
from lever.data.segments import one_thread
from lever.data.stats import FLAT, FLAT_SHARE, ZERO, value_summary
from lever.spec.schema import Plan, Stage
from lever.train.losses import group_advantages, group_zscore_clamped, top_k_mask

from .plandata import split_data, stage_train_data


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
    flat_share (max |A| < FLAT), adv_std (population, over all sequences), adv_max,
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
    split = split_data(data, plan)
    out: dict[str, Any] = {
        "plan_reward": plan.reward.model_dump(mode="json"),
        "advantage": plan.grpo.advantage.model_dump(mode="json"),
        "has_grpo": bool(plan.grpo.epochs or plan.phases),
        "filter": split.report,
        "split": {"train": 0, "val": 0, "val_fraction": plan.data.val_fraction},
        "stages": [],
        "warnings": [],
    }
    if split.train.num_queries + split.val.num_queries == 0:
        out["warnings"].append("the plan's data filter leaves no query")
        return out
    out["split"].update(train=split.train.num_queries, val=split.val.num_queries)
    ks = sorted({c.top_k or None for c in plan.grpo.top_k_schedule}, key=lambda k: (k is None, k or 0)) or [None]
    grpo = [s for s in plan.stages() if s.kind == "grpo"] or [Stage("grpo", "grpo", 0, plan.grpo, plan.grpo.lr)]
    for stage in grpo:
        name = stage.name
        train, report = stage_train_data(split.train, plan, stage)
        rewards = compute_rewards(train, plan.reward)  # what the stage trains on (normalised if the plan says so)
        raw = raw_rewards(train, plan.reward)
        rows = [advantage_prediction(train, rewards, plan.grpo.advantage, k, ties=plan.grpo.top_k_ties, raw=raw) for k in ks]
        out["stages"].append(
            {
                "stage": name,
                "filter": report,
                "queries": train.num_queries,
                "sequences": train.num_sequences,
                "reward": value_summary(rewards),
                "advantages": rows,
            }
        )
        for row in rows:
            k = "all sequences" if row["top_k"] is None else f"top-{row['top_k']}"
            if row["groups"] == 0:
                out["warnings"].append(f"stage {name}: its data filter leaves no training group")
            elif row["flat_share"] > FLAT_SHARE or row["adv_std"] < FLAT:
                out["warnings"].append(
                    f"stage {name} ({k}): {row['flat_share']:.0%} of groups have every |advantage| < {FLAT} "
                    f"(advantage std {row['adv_std']:.3g}): GRPO will get almost no signal from them"
                )
    return out
