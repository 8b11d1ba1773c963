"""The selector proposes, the VLM scores: scoring sequences for training (docs/training.md, On-policy).

`Scoring` is the one way training asks the VLM: the workspace's backend (the simulated VLM or the hf
backend) behind the reward cache (`lever.eval.reward_cache`), the plan's prompt protocol and metric, and
its reward (`lever.data.rewards.reward_of`, the formula candidate data is rewarded by). The same prompt
scored by `lever data generate`, by a refresh round, by online GRPO or by the reward validation is asked
of the VLM once.

`RewardValidator` is the validation metric RL can be selected by: the policy's greedy selection on the
validation queries (each from its own pool, as many picks as the data's sequences hold), scored by the
VLM: `val/reward` (the plan's reward, before any group normalisation) and `val/accuracy` (the VQA
accuracy, 0..1). Its VLM calls land in the `cost/*` metrics (they depend on what the cache held).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lever.data.candidates import CandidateData
from lever.data.rewards import reward_of
from lever.data.sources import Dataset
from lever.model import SelectorBase
from lever.spec.schema import EvalSpec, RewardSpec

from .backend import Item, Request
from .generate import make_backend
from .protocol import resolve_protocol
from .reward_cache import CachedBackend, Counts, cached_backend, scoring_identity
from .score import score_requests

# The metrics the reward validation adds to every epoch row (select.metric may name them).
REWARD_METRICS = ("val/reward", "val/accuracy")


@dataclass
class Scoring:
    """How training scores sequences: the cached VLM, the metric, the reward, the train items (row = global row)."""

    backend: CachedBackend
    metric: str
    reward: RewardSpec
    items: list[Item]
    identity: dict[str, Any]  # what the answers depend on (scoring_identity): part of every key built on them

    @property
    def counts(self) -> Counts:
        return self.backend.counts

    def fields(self, queries: list[int], seqs: list[list[int]]) -> list[dict[str, Any]]:
        """The scorer's fields (as `lever data generate` writes them) of each (query row, sequence of global rows)."""
        reqs = [Request("train", self.items[q], [self.items[j] for j in s]) for q, s in zip(queries, seqs)]
        return score_requests(self.backend, self.metric, reqs, gt_probs=self.reward.mode == "hard_plus_gtprob_plus_rel")

    def rewards(self, queries: list[int], seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
        """(reward [S], accuracy [S]) of each (query row, sequence): the plan's reward before normalisation."""
        recs = self.fields(queries, seqs)
        correct = torch.tensor([float(r["vqa_correct"]) for r in recs])
        acc = torch.tensor([float(r["vqa_acc_score"]) for r in recs])
        nan = float("nan")
        gt = torch.tensor([r.get("vqa_gt_prob", nan) for r in recs])
        rel = torch.tensor([r.get("vqa_rel_score", nan) for r in recs])
        failed = torch.tensor([bool(r["eval_failed"]) for r in recs])
        return reward_of(correct, acc, gt, rel, failed, self.reward, "the VLM's scores"), acc


def build_scoring(
    ds: Dataset,
    spec: EvalSpec,
    reward: RewardSpec,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> Scoring:
    """The workspace's VLM (built now, loaded on its first answer) behind its reward cache, with the plan's protocol,
    on the dataset `ds` (its train items are the demonstrations)."""
    from .world import load_split

    identity = scoring_identity(ds, spec, log)
    backend = cached_backend(make_backend(ds, spec, device, log), ds.ws.cache_dir, identity)
    return Scoring(backend, resolve_protocol(spec).metric, reward, load_split(ds, "train", log), identity)


@torch.no_grad()
def greedy_picks(model: SelectorBase, data: CandidateData, features: Tensor, steps: int, batch_size: int = 256) -> Tensor:
    """The policy's greedy selection of `steps` items from each query's pool: [Q, steps] global train rows."""
    was = model.training
    model.eval()
    dev = features.device
    out = []
    for s in range(0, data.num_queries, batch_size):
        pools = data.pools[s : s + batch_size].to(dev)  # [B, K], -1 past each pool's size
        mask = pools >= 0
        enc = model.encode(features[data.query_ids[s : s + batch_size].to(dev)], features[pools.clamp(min=0)], mask)
        local = model.decode(enc, steps, greedy=True).clamp(min=0)  # [B, steps] (a STOP pick: the first item)
        out.append(pools.gather(1, local).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, steps, dtype=torch.long)


@dataclass
class RewardValidator:
    """`val/reward` and `val/accuracy` of the policy's greedy selection on the validation queries (module docstring)."""

    scoring: Scoring
    data: CandidateData  # the validation queries and their pools
    features: Tensor  # [N, d] train features on the model's device
    steps: int  # picks per selection: the data's sequence length

    def __call__(self, model: SelectorBase) -> dict[str, float]:
        if self.data.num_queries == 0:
            return {"val/reward": float("nan"), "val/accuracy": float("nan")}
        before = self.scoring.counts.copy()
        picks = greedy_picks(model, self.data, self.features, self.steps).tolist()
        reward, acc = self.scoring.rewards(self.data.query_ids.tolist(), picks)
        spent = self.scoring.counts.since(before)
        return {
            "val/reward": float(reward.double().mean()),
            "val/accuracy": float(acc.double().mean()),
            **spent.metrics("cost/val"),
        }
