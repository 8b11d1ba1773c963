"""What a plan's reward, filter and advantage settings make of candidate data, before any training.

`plan_prediction` follows the run's own recipe (`lever.train.plandata`: the plan's filter, the split, the stages'
filters, the groups and their rewards) and computes each GRPO stage's advantages with the functions training calls:
the batches of the stage's epoch (`lever.train.groups.OfflineSource`, the run's first seed), the stage's
`AdvantageRule.batch` and `losses.advantage_stats`. So its adv std, zero and flat shares are the ones that epoch
logs (adv/std, adv/zero_frac, adv/flat_frac), and a plan whose groups carry almost no signal is caught before
any epoch is spent. One thing it cannot know: the policy's KL, so with grpo.kl.in_reward it predicts the
advantages of a KL of 0 (the first step's, when the reference is the stage's start).
"""

from __future__ import annotations

from typing import Any

import torch

from lever.data.candidates import CandidateData
from lever.data.segments import one_thread
from lever.data.stats import FLAT, FLAT_SHARE, value_summary
from lever.spec.schema import Plan, Stage

from . import losses as L
from .groups import Groups, OfflineSource
from .grpo import AdvantageRule
from .plandata import make_groups, split_data, stage_train_data


def advantage_prediction(
    groups: Groups, rule: AdvantageRule, batch_size: int, seed: int, stage: str, epoch: int
) -> dict[str, Any]:
    """A GRPO stage's advantages in `epoch`, as training computes them: the epoch's batches (seed, stage, batch_size),
    its top-k and `rule`. Returns groups, top_k, epoch, zero_share (= adv/zero_frac: every |A| <= 1e-8), flat_share
    (= adv/flat_frac: every |A| < FLAT), adv_std (= adv/std, population), adv_max (= adv/max) and mean_spread (mean
    over groups of max |A|)."""
    k = rule.top_k(epoch)
    steps = []
    for b in OfflineSource(groups, batch_size, seed, stage).batches(epoch):
        adv, kb, _ = rule.batch(b, k)
        steps.append((adv, kb.mask))
    stats = L.advantage_stats(steps)
    spread = [L.masked_fill0(a.abs(), m).amax(-1)[m.any(-1)] for a, m in steps]
    return {
        "groups": groups.num_queries,
        "top_k": k,
        "epoch": epoch,
        "zero_share": stats["adv/zero_frac"],
        "flat_share": stats["adv/flat_frac"],
        "adv_std": stats["adv/std"],
        "adv_max": stats["adv/max"],
        "mean_spread": float(torch.cat(spread).mean()) if spread else 0.0,
    }


def first_epochs(rule: AdvantageRule) -> list[int]:
    """The first epoch of each top-k of the beam curriculum, in order (epoch 1 alone when there is none)."""
    out: dict[int | None, int] = {}
    for e in sorted({1} | {start for start, _ in rule.schedule}):
        out.setdefault(rule.top_k(e), e)
    return list(out.values())


def _no_features(data: CandidateData) -> torch.Tensor:
    """Features of zero width for every item the data names: batches without the selector's inputs."""
    n = int(max(data.query_ids.max(), data.pools.max())) + 1 if data.num_queries else 0
    return torch.zeros(n, 0)


@one_thread()
def plan_prediction(data: CandidateData, plan: Plan) -> dict[str, Any]:
    """What the plan makes of this data before any training, step by step as a run does:
    the plan's filter on raw rewards, the train/val split of what is left, each GRPO
    stage's own filter (phases), the plan's rewards over the kept groups, then advantages
    per beam-curriculum top-k, in the first epoch that uses it. A plan without GRPO gets the 'grpo' row as if it had
    one."""
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
    rule = AdvantageRule.of(plan.grpo)  # every GRPO stage's (a phase changes only its epochs, lr, handoff and data)
    seed = plan.seeds[0]
    grpo = plan.grpo_stages() or [Stage("grpo", "grpo", 0, plan.grpo)]
    for stage in grpo:
        name = stage.name
        train, report = stage_train_data(split.train, plan, stage)
        groups = make_groups(train, plan, _no_features(train))  # the stage's rewards, as training makes them
        rows = [advantage_prediction(groups, rule, plan.grpo.batch_size, seed, name, e) for e in first_epochs(rule)]
        out["stages"].append(
            {
                "stage": name,
                "filter": report,
                "queries": train.num_queries,
                "sequences": train.num_sequences,
                "reward": value_summary(groups.rewards),
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
