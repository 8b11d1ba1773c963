"""Settings that reproduce the original trainer, and the two fixes that came with them, against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from lever.train import losses as L
from lever.train.groups import Batch
from lever.train.stage import rce_rewards


def batch(raw: list[list[float]], rewards: list[list[float]]) -> Batch:
    """A batch of one query: only the rewards matter here."""
    B, G = len(raw), len(raw[0])
    return Batch(
        query=torch.zeros(B, 4), pool=torch.zeros(B, 3, 4), pool_mask=torch.ones(B, 3, dtype=torch.bool),
        pointers=torch.zeros(B, G, 2, dtype=torch.long), rewards=torch.tensor(rewards), raw=torch.tensor(raw),
        seq=torch.arange(B * G).view(B, G), mask=torch.ones(B, G, dtype=torch.bool),
    )  # fmt: skip


# ---- fix: rce.rewards = "raw" reads the raw rewards whatever reward.normalize says ----------


def test_rce_raw_rewards_ignore_reward_normalize():
    # raw [2, 0]; reward.normalize = "zscore" made them [0.7071, -0.7071] (sample std sqrt(2))
    b = batch([[2.0, 0.0]], [[0.70710678, -0.70710678]])
    assert rce_rewards(b, "raw", 0.1).tolist() == [[2.0, 0.0]]
    # tau = 1, logp = [-1, -2]: w = softmax([2, 0]) = [0.880797, 0.119203]; loss = 0.880797 + 2 * 0.119203
    logp = torch.tensor([[-1.0, -2.0]])
    assert float(L.rce_loss(logp, rce_rewards(b, "raw", 0.1), b.mask, 1.0)) == pytest.approx(1.119203, abs=1e-6)
    # "normalized": the z-score of the raw rewards, w = softmax([0.7071, -0.7071]) = [0.804420, 0.195580]
    z = rce_rewards(b, "normalized", 0.1)
    assert z[0].tolist() == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2)], abs=1e-6)
    assert float(L.rce_loss(logp, z, b.mask, 1.0)) == pytest.approx(0.804420 + 2 * 0.195580, abs=1e-5)
