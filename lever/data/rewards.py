"""Rewards of candidate sequences (docs/data.md, Rewards), in one place.

hard = vqa_correct (0/1), acc = vqa_acc_score, gt = vqa_gt_prob, rs = vqa_rel_score;
h, s, rel are the plan's weights:

    hard_plus_soft              h*hard + s*acc
    separated                   2h + s*acc if correct, else s*acc
    hard_plus_gtprob_plus_rel   h*hard + s*gt + rel*(1 - hard)*rs
    hard_only                   h*hard
    soft_only                   s*acc

then clipped to [lo, hi], then optionally z-scored within each query group.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lever.errors import LeverError
from lever.spec.schema import RewardSpec

from .candidates import CandidateData
from .segments import segment_ids, segment_sum


def raw_rewards(data: CandidateData, spec: RewardSpec) -> Tensor:
    """The mode's formula on every sequence, clipped to spec.clip, not normalised: [S] float32."""
    where = data.meta.get("path", "candidate data")
    return reward_of(data.correct, data.acc, data.gt_prob, data.rel, data.failed, spec, where)


def reward_of(
    correct: Tensor, acc: Tensor, gt_prob: Tensor, rel: Tensor, failed: Tensor, spec: RewardSpec, where: str = "the scores"
) -> Tensor:
    """The mode's formula on scored sequences [S] (the scorer's fields as CandidateData holds them: gt_prob and
    rel NaN where missing), clipped to spec.clip: [S] float32. Candidate data and fresh VLM scores alike."""
    hard, acc = correct.double(), acc.double()  # [S]
    h, s, w_rel = spec.hard_weight, spec.soft_weight, spec.rel_weight
    if spec.mode == "hard_plus_soft":
        r = h * hard + s * acc
    elif spec.mode == "separated":
        r = torch.where(hard > 0, 2 * h + s * acc, s * acc)
    elif spec.mode == "hard_plus_gtprob_plus_rel":
        # a failed evaluation may lack these scores: 0, like its missing vqa_correct / vqa_acc_score
        gt = _score(gt_prob, "vqa_gt_prob", ~failed, where)
        rs = _score(rel, "vqa_rel_score", ~failed & (hard == 0), where)  # only negatives use it
        r = h * hard + s * gt + w_rel * (1 - hard) * rs
    elif spec.mode == "hard_only":
        r = h * hard
    elif spec.mode == "soft_only":
        r = s * acc
    else:  # the schema makes this unreachable
        raise LeverError(f"unknown reward mode {spec.mode!r}")
    lo, hi = spec.clip
    return r.clamp(lo, hi).float()


def compute_rewards(data: CandidateData, spec: RewardSpec) -> Tensor:
    """Rewards the plan trains on: raw_rewards, then group z-scores if spec.normalize == "zscore": [S]."""
    r = raw_rewards(data, spec)
    if spec.normalize == "zscore":
        r = group_zscore(r, data.offsets, spec.normalize_std_floor)
    return r


def group_zscore(r: Tensor, offsets: Tensor, std_floor: float) -> Tensor:
    """z_i = (r_i - mean_q) / max(std_q, std_floor) within each group q: [S] -> [S].

    std_q is the sample std (divisor n_q - 1, as in the advantages); a group of one,
    or a constant group, has r_i - mean_q = 0, so z = 0.
    """
    seg = segment_ids(offsets)  # [S]
    x = r.double()
    n = (offsets[1:] - offsets[:-1]).double()  # [Q]
    mean = segment_sum(x, offsets, seg) / n.clamp_min(1)  # [Q]
    dev = x - mean[seg]  # [S]
    var = segment_sum(dev * dev, offsets, seg) / (n - 1).clamp_min(1)  # [Q]
    return (dev / var.sqrt().clamp_min(std_floor)[seg]).to(r.dtype)


def _score(values: Tensor, field: str, used: Tensor, where: str) -> Tensor:
    """An optional score as float64, refusing data where a sequence that needs it lacks it (NaN)."""
    x = values.double()
    missing = torch.isnan(x)
    n = int((missing & used).sum())
    if n:
        raise LeverError(
            f"{where}: reward mode hard_plus_gtprob_plus_rel needs '{field}', missing on {n} of {len(x)} sequences",
            hint="use a reward mode without it (hard_plus_soft, separated, hard_only, soft_only) or regenerate the data with it",
        )
    return x.nan_to_num(0.0)
