"""Reward modes, clipping and group normalisation against values worked out by hand (docs/data.md, Rewards)."""

from __future__ import annotations

import math

import pytest
import torch

from lever.data.candidates import CandidateData
from lever.data.rewards import compute_rewards, group_zscore, raw_rewards
from lever.errors import LeverError
from lever.spec.schema import RewardSpec

# four sequences in two groups: (hard, acc, gt_prob, rel_score)
#   s0: correct, acc 0.6, gt 0.4, rel 0.9
#   s1: wrong,   acc 0.0, gt 0.1, rel 0.5
#   s2: correct, acc 1.0, gt 0.8, rel 1.0
#   s3: wrong,   acc 0.0, gt 0.0, rel 0.25
HARD = [1.0, 0.0, 1.0, 0.0]
ACC = [0.6, 0.0, 1.0, 0.0]
GT = [0.4, 0.1, 0.8, 0.0]
REL = [0.9, 0.5, 1.0, 0.25]


def data(offsets: tuple[int, ...] = (0, 2, 4), hard=HARD, acc=ACC, gt=GT, rel=REL) -> CandidateData:
    S = len(hard)
    Q = len(offsets) - 1
    return CandidateData(
        query_ids=torch.arange(Q), pools=torch.zeros(Q, 4, dtype=torch.long), pool_sizes=torch.full((Q,), 4),
        offsets=torch.tensor(offsets), pointers=torch.zeros(S, 2, dtype=torch.long),
        correct=torch.tensor(hard), acc=torch.tensor(acc), gt_prob=torch.tensor(gt), rel=torch.tensor(rel),
        failed=torch.zeros(S, dtype=torch.bool), source=torch.zeros(S, dtype=torch.long), source_names=["x"],
    )  # fmt: skip


CASES = {
    # h*hard + s*acc, h = 1, s = 0.5: [1 + 0.3, 0, 1 + 0.5, 0]
    ("hard_plus_soft", 1.0, 0.5, 0.1): [1.3, 0.0, 1.5, 0.0],
    # 2h + s*acc if correct else s*acc, h = 1, s = 1: [2 + 0.6, 0, 2 + 1, 0]
    ("separated", 1.0, 1.0, 0.1): [2.6, 0.0, 3.0, 0.0],
    # h*hard + s*gt + rel*(1-hard)*rs, h = 1, s = 1, rel = 0.2:
    #   s0: 1 + 0.4 + 0 = 1.4; s1: 0 + 0.1 + 0.2*0.5 = 0.2; s2: 1 + 0.8 = 1.8; s3: 0 + 0 + 0.2*0.25 = 0.05
    ("hard_plus_gtprob_plus_rel", 1.0, 1.0, 0.2): [1.4, 0.2, 1.8, 0.05],
    # h*hard, h = 2: [2, 0, 2, 0]
    ("hard_only", 2.0, 1.0, 0.1): [2.0, 0.0, 2.0, 0.0],
    # s*acc, s = 3: [1.8, 0, 3, 0]
    ("soft_only", 1.0, 3.0, 0.1): [1.8, 0.0, 3.0, 0.0],
}


@pytest.mark.parametrize("key", sorted(CASES))
def test_reward_modes(key):
    mode, h, s, rel = key
    r = compute_rewards(data(), RewardSpec(mode=mode, hard_weight=h, soft_weight=s, rel_weight=rel))
    assert r.dtype == torch.float32
    assert r.tolist() == pytest.approx(CASES[key], abs=1e-6)


def test_default_weights_match_the_domain():
    # defaults h = s = 1: hard_plus_soft puts positives in [1, 2] and negatives in [0, 1)
    r = compute_rewards(data(), RewardSpec())
    assert r.tolist() == pytest.approx([1.6, 0.0, 2.0, 0.0], abs=1e-6)


def test_clip():
    # separated with h = 2, s = 1: [4.6, 0, 5, 0], clipped to [0.5, 4.8] -> [4.6, 0.5, 4.8, 0.5]
    spec = RewardSpec(mode="separated", hard_weight=2.0, clip=(0.5, 4.8))
    assert compute_rewards(data(), spec).tolist() == pytest.approx([4.6, 0.5, 4.8, 0.5], abs=1e-6)


def test_zscore_normalisation_by_group():
    # groups [1.6, 0] and [2, 0]: mean 0.8 / 1.0; sample std = |a - b| / sqrt(2) = 1.1314 / 1.4142
    # z = +-(0.8 / 1.1314) = +-0.70711 and +-(1 / 1.4142) = +-0.70711
    r = compute_rewards(data(), RewardSpec(normalize="zscore"))
    z = 1 / math.sqrt(2)
    assert r.tolist() == pytest.approx([z, -z, z, -z], abs=1e-5)


def test_zscore_floor_group_of_one_and_constant_group():
    # groups: [0.3, 0.5, 0.4] (hard 0, acc varies: soft only matters), [1.0] alone, [0.7, 0.7] constant
    acc = [0.3, 0.5, 0.4, 1.0, 0.7, 0.7]
    d = data([0, 3, 4, 6], hard=[1.0] * 6, acc=acc, gt=[0.0] * 6, rel=[0.0] * 6)
    spec = RewardSpec(mode="soft_only", normalize="zscore", normalize_std_floor=0.5)
    # group 0: mean 0.4, sample std = sqrt((0.01 + 0.01 + 0) / 2) = 0.1 < floor 0.5 -> divide by 0.5:
    #          [-0.1, 0.1, 0] / 0.5 = [-0.2, 0.2, 0]
    # group 1: one sequence -> 0; group 2: constant -> 0
    assert compute_rewards(d, spec).tolist() == pytest.approx([-0.2, 0.2, 0.0, 0.0, 0.0, 0.0], abs=1e-6)


def test_group_zscore_direct():
    # one group [1, 2, 3, 6]: mean 3, sample var = (4 + 1 + 0 + 9) / 3 = 14/3, std 2.1602
    r = group_zscore(torch.tensor([1.0, 2.0, 3.0, 6.0]), torch.tensor([0, 4]), 0.1)
    s = math.sqrt(14 / 3)
    assert r.tolist() == pytest.approx([-2 / s, -1 / s, 0.0, 3 / s], abs=1e-6)


def test_raw_rewards_ignore_normalisation():
    spec = RewardSpec(normalize="zscore")
    assert raw_rewards(data(), spec).tolist() == pytest.approx([1.6, 0.0, 2.0, 0.0], abs=1e-6)


def test_gtprob_mode_needs_the_scores():
    d = data(gt=[0.4, float("nan"), 0.8, 0.0])
    with pytest.raises(LeverError, match="needs 'vqa_gt_prob', missing on 1 of 4 sequences"):
        compute_rewards(d, RewardSpec(mode="hard_plus_gtprob_plus_rel"))
    # rel_score is only used on negatives: missing on a positive is fine
    d = data(rel=[float("nan"), 0.5, float("nan"), 0.25])
    r = compute_rewards(d, RewardSpec(mode="hard_plus_gtprob_plus_rel", rel_weight=0.2))
    assert r.tolist() == pytest.approx([1.4, 0.2, 1.8, 0.05], abs=1e-6)
    # other modes do not look at them
    assert not torch.isnan(compute_rewards(data(gt=[float("nan")] * 4), RewardSpec())).any()
