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


def choice_accuracy(vlm: SimVLM, train_x: torch.Tensor, val_x: torch.Tensor, shots: Sequence[int] = (1, 2, 3, 4),
                    pool_size: int = 64, pool_near: int = 32, n_oracle: int = 64, seed: int = 0,
                    split: str = "val", item_bonus: torch.Tensor | None = None) -> dict[str, list[float]]:
    """VQA accuracy in percent per policy and shot count: {"random": [...], "similarity": [...], "oracle": [...]}.

    acc(policy, k) = 100 * mean over questions of vqa_acc_score(question, policy's k demonstrations)
    """
    g = torch.Generator().manual_seed(seed)
    n_q = val_x.shape[0]
    q = torch.arange(n_q)
    exclude = q if split == "train" else None
    pool, cos = make_pools(val_x, train_x, pool_size, pool_near, g, exclude=exclude)  # [Q, K] each
    by_sim = pool.gather(1, cos.argsort(dim=1, descending=True))  # [Q, K] most similar first
    out: dict[str, list[float]] = {"random": [], "similarity": [], "oracle": []}
    if item_bonus is not None:
        out["rerank"] = []
        by_bonus = pool.gather(1, (cos + item_bonus[pool]).argsort(dim=1, descending=True))
    for k in shots:
        rand = pool.gather(1, torch.rand(n_q, pool_size, generator=g).topk(k, dim=1).indices)  # [Q, k]
        out["random"].append(_mean_acc(vlm, split, q, rand))
        out["similarity"].append(_mean_acc(vlm, split, q, by_sim[:, :k]))
        picks = torch.rand(n_q, n_oracle, pool_size, generator=g).topk(k, dim=2).indices  # [Q, n, k]
        seqs = pool[:, None, :].expand(-1, n_oracle, -1).gather(2, picks).reshape(-1, k)  # [Q*n, k]
        acc = vlm.decide(split, q.repeat_interleave(n_oracle).tolist(), seqs.tolist())["acc"]
        out["oracle"].append(round(100 * acc.view(n_q, n_oracle).max(dim=1).values.mean().item(), 2))
        if item_bonus is not None:
            out["rerank"].append(_mean_acc(vlm, split, q, by_bonus[:, :k]))
    return out


def fit_item_bonus(candidates: dict[str, Any], train_x: torch.Tensor, ridge: float = 1.0) -> torch.Tensor:
    """A per-train-item score bonus [N] learned from candidate data by a linear probe on the features.

    Per query group, centre the outcome y = vqa_acc_score and the summed demo features f; then
    w = (F^T F + ridge I)^-1 F^T y (ridge regression) and bonus_i = x_i . w, scaled to the spread
    of cosines in a pool so that it is comparable with the similarity it is added to.
    """
    feats, ys = [], []
    for key, entry in candidates.items():
        if key == "_meta":
            continue
        cands = [c for c in entry["pointer_candidates"] if not c["eval_failed"]]
        y = torch.tensor([c["vqa_acc_score"] for c in cands])  # [G]
        f = torch.stack([train_x[c["pointer_global"]].sum(0) for c in cands])  # [G, dim]
        feats.append(f - f.mean(0))
        ys.append(y - y.mean())
    f, y = torch.cat(feats), torch.cat(ys)  # [sum G, dim], [sum G]
    w = torch.linalg.solve(f.T @ f + ridge * torch.eye(f.shape[1]), f.T @ y)  # [dim]
    bonus = train_x @ w  # [N]
    cos_spread = (train_x[:256] @ train_x.T).std()  # typical spread of cosines between items
    return (bonus - bonus.mean()) / bonus.std() * cos_spread


def _mean_acc(vlm: SimVLM, split: str, q: torch.Tensor, demos: torch.Tensor) -> float:
    acc = vlm.decide(split, q.tolist(), demos.tolist())["acc"]
    return round(100 * acc.mean().item(), 2)
