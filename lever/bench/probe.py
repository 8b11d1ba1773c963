"""Reference choices on the simulated world: VQA accuracy of random, similarity and oracle demonstrations.

Each val question gets its own pool built like the training pools (nearest train items by feature
cosine plus random ones). Per shot count k:
    random      k distinct pool items, uniformly
    similarity  the k most similar pool items, most similar first (greedy under the similarity policy)
    oracle      the best of `n_oracle` random k-sequences from the pool, by VQA accuracy
    rerank      (with `item_bonus`) the k pool items with the highest cos + bonus: what a selector that
                learned per-item value from the candidate data could reach (see `fit_item_bonus`)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .candidates import make_pools
from .vlm import SimVLM


def choice_accuracy(
    vlm: SimVLM,
    train_x: torch.Tensor,
    val_x: torch.Tensor,
    shots: Sequence[int] = (1, 2, 3, 4),
    pool_size: int = 64,
    pool_near: int = 32,
    n_oracle: int = 64,
    seed: int = 0,
    split: str = "val",
    item_bonus: torch.Tensor | None = None,
) -> dict[str, list[float]]:
    """VQA accuracy in percent per policy and shot count: {"random": [...], "similarity": [...], "oracle": [...]}
    ("oracle" only when n_oracle > 0, "rerank" only when `item_bonus` is given). `val_x` holds the questions' features, rows 0..Q-1 of `split`.

    acc(policy, k) = 100 * mean over questions of vqa_acc_score(question, policy's k demonstrations)
    """
    g = torch.Generator().manual_seed(seed)
    n_q = val_x.shape[0]
    q = torch.arange(n_q)
    exclude = q if split == "train" else None
    pool, cos = make_pools(val_x, train_x, pool_size, pool_near, g, exclude=exclude)  # [Q, K] each
    by_sim = pool.gather(1, cos.argsort(dim=1, descending=True))  # [Q, K] most similar first
    out: dict[str, list[float]] = {"random": [], "similarity": [], **({"oracle": []} if n_oracle else {})}
    if item_bonus is not None:
        out["rerank"] = []
        by_bonus = pool.gather(1, (cos + item_bonus[pool]).argsort(dim=1, descending=True))
    for k in shots:
        rand = pool.gather(1, torch.rand(n_q, pool_size, generator=g).topk(k, dim=1).indices)  # [Q, k]
        out["random"].append(_mean_acc(vlm, split, q, rand))
        out["similarity"].append(_mean_acc(vlm, split, q, by_sim[:, :k]))
        if n_oracle:
            picks = torch.rand(n_q, n_oracle, pool_size, generator=g).topk(k, dim=2).indices  # [Q, n, k]
            seqs = pool[:, None, :].expand(-1, n_oracle, -1).gather(2, picks).reshape(-1, k)  # [Q*n, k]
            acc = vlm.decide(split, q.repeat_interleave(n_oracle), seqs)["acc"]
            out["oracle"].append(round(100 * acc.view(n_q, n_oracle).max(dim=1).values.mean().item(), 2))
        if item_bonus is not None:
            out["rerank"].append(_mean_acc(vlm, split, q, by_bonus[:, :k]))
    return out


def fit_item_bonus(candidates: dict[str, Any], train_x: torch.Tensor, ridge: float = 1.0) -> torch.Tensor:
    """A per-train-item score bonus [N] learned from candidate data by a linear probe on the features.

    Per query group, centre the outcome y = vqa_acc_score and the summed demo features f; then
    w = (F^T F + ridge I)^-1 F^T y (ridge regression) and bonus_i = x_i . w, scaled to the spread
    of cosines between items so that it is comparable with the similarity it is added to.
    """
    group, demos, score = [], [], []
    for gid, entry in enumerate(v for k, v in candidates.items() if k != "_meta"):
        for c in entry["pointer_candidates"]:
            if not c["eval_failed"]:
                group.append(gid)
                demos.append(c["pointer_global"])
                score.append(c["vqa_acc_score"])
    gid = torch.tensor(group)  # [C]
    f = train_x[torch.tensor(demos)].sum(1)  # [C, dim]
    y = torch.tensor(score)  # [C]
    f = f - _group_mean(f, gid)
    y = y - _group_mean(y[:, None], gid)[:, 0]
    w = torch.linalg.solve(f.T @ f + ridge * torch.eye(f.shape[1]), f.T @ y)  # [dim]
    bonus = train_x @ w  # [N]
    cos_spread = (train_x[:256] @ train_x.T).std()  # typical spread of cosines between items
    return (bonus - bonus.mean()) / bonus.std() * cos_spread


def _group_mean(v: torch.Tensor, gid: torch.Tensor) -> torch.Tensor:
    """Per row, the mean of v [C, d] over the rows of its group gid [C]."""
    n = int(gid.max()) + 1
    total = torch.zeros(n, v.shape[1]).index_add_(0, gid, v)  # [G, d]
    count = torch.zeros(n).index_add_(0, gid, torch.ones(len(gid)))  # [G]
    return (total / count[:, None])[gid]


def _mean_acc(vlm: SimVLM, split: str, q: torch.Tensor, demos: torch.Tensor) -> float:
    acc = vlm.decide(split, q, demos)["acc"]
    return round(100 * acc.mean().item(), 2)
