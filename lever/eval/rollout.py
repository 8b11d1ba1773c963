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

import copy
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
        extra = self.reward.mode == "hard_plus_gtprob_plus_rel"  # the one reward that reads gt prob and relevance
        return score_requests(self.backend, self.metric, reqs, gt_probs=extra, rel=extra)

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
    on the dataset `ds` (its train items are the demonstrations). Under torchrun each rank answers its share of
    the prompts on its own GPU (`lever.eval.distributed.Spread`)."""
    from .distributed import Spread, ranks
    from .world import load_split

    identity = scoring_identity(ds, spec, log)
    r = ranks()  # under torchrun the VLM's prompts are spread over the ranks (one GPU each): results do not change
    inner = Spread(make_backend(ds, spec, r.device(), log), r) if r.world > 1 else make_backend(ds, spec, device, log)
    backend = cached_backend(inner, ds.ws.cache_dir, identity)
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


@torch.no_grad()
def sample_groups(
    scoring: Scoring,
    model: SelectorBase,
    queries: CandidateData,
    features: Tensor,
    n: int,
    temperature: float,
    seed: int,
    tag: str,
) -> CandidateData:
    """A fresh group of `n` sequences per query of `queries` (its query rows and pools), drawn from the policy at
    `temperature` (no deduplication: TRL's num_generations), scored by the VLM: in-memory candidate data whose
    behaviour log-probs are those of the drawing distribution. Each query draws from its own generator seeded by
    (seed, tag, query row), so a group does not depend on batching or resumption. The policy is `model` in eval
    mode, on the CPU copy `features` live on."""
    from .generate import query_generator, sample, selector_policy

    k = int(queries.pool_sizes.min())
    if int(queries.pool_sizes.max()) != k:
        raise ValueError("sampling groups needs pools of one size")
    shots = queries.shots
    rows = queries.query_ids.tolist()
    pools = queries.pools[:, :k]  # [Q, K]
    was = model.training
    step = selector_policy(model, features[queries.query_ids], features[pools])
    gens = [query_generator(seed, f"{tag}:{q}") for q in rows]  # type: ignore[arg-type]
    seqs, beh = sample(step, n, shots, temperature, gens, k)  # [Q, n, L] local pointers, their behaviour log-probs
    model.train(was)
    flat = seqs.reshape(-1, shots)  # [Q n, L]
    glob = pools.gather(1, seqs.reshape(len(rows), -1)).reshape(-1, shots)  # [Q n, L] global rows
    qrow = torch.tensor(rows).repeat_interleave(n)
    reward_fields = scoring.fields(qrow.tolist(), glob.tolist())
    nan = float("nan")
    f32 = torch.float32
    return CandidateData(
        query_ids=queries.query_ids.clone(),
        pools=pools.clone(),
        pool_sizes=torch.full((len(rows),), k, dtype=torch.long),
        offsets=torch.arange(len(rows) + 1) * n,
        pointers=flat,
        correct=torch.tensor([float(r["vqa_correct"]) for r in reward_fields], dtype=f32),
        acc=torch.tensor([float(r["vqa_acc_score"]) for r in reward_fields], dtype=f32),
        gt_prob=torch.tensor([r.get("vqa_gt_prob", nan) for r in reward_fields], dtype=f32),
        rel=torch.tensor([r.get("vqa_rel_score", nan) for r in reward_fields], dtype=f32),
        failed=torch.tensor([bool(r["eval_failed"]) for r in reward_fields]),
        source=torch.zeros(len(flat), dtype=torch.long),
        source_names=["sample"],
        meta={"path": f"sampled groups ({tag})"},
        behaviour_logp=beh.sum(-1).reshape(-1).float(),
        behaviour_steps=beh.reshape(-1, shots).float(),
    )


class OnlineSource:
    """Online GRPO's batches (`rollout.mode = "online"`): every step, `grpo.batch_size` training queries (in an order
    seeded by (seed, stage, epoch)) each get `rollout.num_generations` sequences sampled from the policy as it stands,
    scored by the VLM through the reward cache; the batch is trained on `rollout.num_iterations` times (PPO's inner
    epochs: the ratio is to the sampling policy). `on_rollout(groups)` is told of each new batch of samples before
    its first step (the objective takes the sampling policy's and the reference's log-probs of them there).

    Per epoch it reports (`epoch_metrics`): the rollouts' reward mean and std, the share of groups whose rewards are
    all equal, distinct sequences per group, the sampling entropy (the mean negative behaviour log-prob per pick),
    and the VLM's calls, cache hits and seconds per call (`cost/*`: they depend on what the cache held)."""

    def __init__(
        self,
        scoring: Scoring,
        model: SelectorBase,
        train: CandidateData,
        features: Tensor,
        make_groups: Callable[[CandidateData], Any],
        rollout: Any,  # RolloutSpec
        batch_size: int,
        seed: int,
        stage: str,
        on_rollout: Callable[[Any], None] | None = None,
    ):
        import math

        self.scoring, self.model, self.train, self.make_groups = scoring, model, train, make_groups
        self.n, self.temperature, self.iterations = rollout.num_generations, rollout.temperature, rollout.num_iterations
        self.batch_size, self.seed, self.stage, self.on_rollout = batch_size, seed, stage, on_rollout
        self.steps_per_epoch = math.ceil(train.num_queries / batch_size) * self.iterations
        self.features = features.cpu()  # proposals are drawn on the CPU (seeded per query)
        self._stats: list[dict[str, float]] = []
        self._before = scoring.counts.copy()
        self.after_rollout: Callable[[], None] | None = None  # told after each batch is scored (the cost calibration)

    def bind(self, objective: Any) -> None:
        """Tell `objective` (GRPO's) of each new batch of samples (`new_groups`); it takes their log-probs there."""
        objective.online = True
        own = self.temperature == 1.0  # samples at temperature 1: their behaviour log-probs are the policy's own
        self.on_rollout = lambda groups: objective.new_groups(groups, own=own)

    def batches(self, epoch: int):
        from lever.train.stage import derive_seed

        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.stage, epoch, "order"))
        order = torch.randperm(self.train.num_queries, generator=gen)
        self._stats, self._before = [], self.scoring.counts.copy()
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            groups = self.rollout(self.train.subset(idx), derive_seed(self.seed, self.stage, epoch, "rollout"), f"{epoch}:{s}")
            if self.on_rollout is not None:
                self.on_rollout(groups)
            batch = next(iter(groups.batches(torch.arange(groups.num_queries), self.batch_size)))
            for _ in range(self.iterations):
                yield batch

    def rollout(self, queries: CandidateData, seed: int, tag: str) -> Any:
        """A batch of fresh groups for `queries` as training groups (the plan's rewards), and its statistics."""
        policy = self.model if next(self.model.parameters()).device.type == "cpu" else copy.deepcopy(self.model).cpu()
        data = sample_groups(self.scoring, policy, queries, self.features, self.n, self.temperature, seed, tag)
        if self.after_rollout is not None:
            self.after_rollout()
        groups = self.make_groups(data)
        self._stats.append(group_stats(data, groups.raw))
        return groups

    def epoch_metrics(self) -> dict[str, float]:
        """The epoch's rollout statistics (means over its batches of samples) and its VLM cost."""
        out = {k: sum(s[k] for s in self._stats) / len(self._stats) for k in self._stats[0]} if self._stats else {}
        return {**out, **self.scoring.counts.since(self._before).metrics("cost/rollout")}


def group_stats(data: CandidateData, raw: Tensor) -> dict[str, float]:
    """Statistics of a batch of sampled groups: reward mean and std (over every sequence), the share of groups whose
    rewards are all equal (no GRPO signal), distinct sequences per group, the sampling entropy per pick."""
    sizes = data.group_sizes().tolist()
    groups = raw.split(sizes)
    flat = sum(1 for g in groups if bool((g == g[0]).all()))
    distinct = [len({tuple(p) for p in ptr.tolist()}) for ptr in data.pointers.split(sizes)]
    ent = -data.behaviour_steps.double().mean() if data.behaviour_steps is not None else torch.tensor(float("nan"))
    return {
        "rollout/reward_mean": float(raw.double().mean()),
        "rollout/reward_std": float(raw.double().std(unbiased=False)),
        "rollout/zero_std_frac": flat / len(sizes),
        "rollout/distinct": sum(distinct) / len(distinct),
        "rollout/entropy": float(ent),
    }
