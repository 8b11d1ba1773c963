"""Demonstration selection at inference: a pool of K train items per question, then a selector's picks.

By default each eval question gets its *own* pool (`eval.pool`): the K train items nearest to it
by feature cosine similarity, or a seeded random draw. `fixed` is the original's pool: one seeded
draw of K train items for every question (which capped its shots at 3-4). A train-split question
never sees itself.

The selectors (`selector.kind`): the trained pointer network decodes greedily (`select_demos`);
the baselines train nothing: `random_picks` (seeded per question) and `similar_picks` (RICES: the
pool's most similar items), arranged in the prompt by `prompt_order`; zero-shot picks none.
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F
from torch import Tensor

from lever.model import SelectorBase


def similar_pools(queries: Tensor, train: Tensor, k: int, exclude: Tensor | None = None, chunk: int = 1024) -> Tensor:
    """Top-k train rows by cosine similarity for each query: [M, k].

    queries [M, d], train [N, d]; exclude [M] = a train row each query must not get (-1 = none).
    """
    tn = F.normalize(train.float(), dim=-1)
    out = []
    for s in range(0, queries.shape[0], chunk):
        sim = F.normalize(queries[s : s + chunk].float(), dim=-1) @ tn.T  # [m, N]
        if exclude is not None:
            ex = exclude[s : s + chunk]
            rows = torch.nonzero(ex >= 0).squeeze(-1)
            sim[rows, ex[rows]] = float("-inf")
        out.append(sim.topk(k, dim=-1).indices)
    return torch.cat(out)


def random_pools(question_ids: list[int], n_train: int, k: int, seed: int, exclude: Tensor | None = None) -> Tensor:
    """A seeded random draw of k distinct train rows per question (seeded by question id): [M, k]."""
    rows = []
    for i, qid in enumerate(question_ids):
        g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{qid}".encode()))
        perm = torch.randperm(n_train, generator=g)
        if exclude is not None and exclude[i] >= 0:
            perm = perm[perm != exclude[i]]
        rows.append(perm[:k])
    return torch.stack(rows)


@torch.no_grad()
def select_demos(model: SelectorBase, queries: Tensor, train: Tensor, pools: Tensor, steps: int, batch_size: int = 512) -> Tensor:
    """Greedy picks for every question: [M, steps] global train rows, in prompt order.

    Greedy decoding is deterministic, so the first s picks of a `steps`-long decode are
    exactly the s-shot selection: one decode serves every shot count. A selector with a
    STOP candidate (model.stop) may end a selection early: its row is -1 from there on
    (`demo_rows` drops them), so s is a cap and the prompt may hold fewer demonstrations.
    """
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for s in range(0, queries.shape[0], batch_size):
        q = queries[s : s + batch_size].to(dev)  # [B, d]
        pool = pools[s : s + batch_size].to(dev)  # [B, K]
        enc = model.encode(q, train[pool], None)
        local = model.decode(enc, steps, greedy=True)  # [B, steps], -1 after a STOP
        rows = pool.gather(1, local.clamp(min=0))  # [B, steps]
        out.append(torch.where(local >= 0, rows, torch.full_like(rows, -1)).cpu())
    return torch.cat(out)


def fixed_pools(n_questions: int, n_train: int, k: int, seed: int, exclude: Tensor | None = None) -> Tensor:
    """The original's evaluation pool: one seeded random draw of k train rows, the same for every question: [M, k].

    A train-split question whose own row (`exclude`) is in the draw gets the draw's next row in its place, so it
    never sees itself; every other question has exactly the one pool."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:fixed".encode()))
    draw = torch.randperm(n_train, generator=g)[: k + 1]  # [k + 1]: the pool, then the stand-in
    pools = draw[:k].expand(n_questions, k).clone()  # [M, k]
    if exclude is not None:
        hit = pools == exclude[:, None]  # [M, k]
        pools[hit] = draw[k]
    return pools


def random_picks(question_ids: list[int], pools: Tensor, steps: int, seed: int) -> Tensor:
    """`steps` distinct items of each question's pool in a random order, seeded by (seed, question id): [M, steps].

    The draw depends on the question alone, so a question gets the same picks in any order, chunk or run;
    the s-shot demonstrations are the first s."""
    rows = []
    for i, qid in enumerate(question_ids):
        g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:pick:{qid}".encode()))
        rows.append(pools[i, torch.randperm(pools.shape[1], generator=g)[:steps]])
    return torch.stack(rows) if rows else torch.zeros(0, steps, dtype=torch.long)


def similar_picks(queries: Tensor, train: Tensor, pools: Tensor, steps: int) -> Tensor:
    """The `steps` items of each question's pool most similar to it by cosine, most similar first: [M, steps].

    queries [M, d], train [N, d], pools [M, K] global train rows. Ties go to the earlier pool position."""
    q = F.normalize(queries.float(), dim=-1)  # [M, d]
    cand = F.normalize(train.float(), dim=-1)[pools]  # [M, K, d]
    sim = torch.einsum("md,mkd->mk", q, cand)  # [M, K]
    order = torch.sort(sim, dim=-1, descending=True, stable=True).indices[:, :steps]  # [M, steps]
    return pools.gather(1, order)


def prompt_order(ranked: Tensor, shots: int, order: str = "most-similar-first") -> Tensor:
    """The s-shot demonstrations of ranked picks [M, >= s] in prompt order: the first s, reversed for
    `most-similar-last` (the best-ranked one next to the question)."""
    demos = ranked[:, :shots]
    return demos.flip(1) if order == "most-similar-last" else demos


def demo_rows(picks: Tensor, shots: int) -> list[int]:
    """The train rows of one question's `shots`-shot selection: its first `shots` picks up to a STOP (-1)."""
    rows = picks[:shots].tolist()
    return rows[: rows.index(-1)] if -1 in rows else rows
