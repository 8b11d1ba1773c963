"""Candidate data (docs/data.md format) for the bundled benchmark, made the way the original was.

Per training query: a pool of K train items (the `pool_near` nearest by feature cosine plus random
ones, shuffled; never the query itself), candidate sequences from a similarity policy
pi(j) = softmax_j(cos(x_q, x_j) / policy_scale) (beam search, retrieval blocks, temperature samples)
and uniform random ones, deduplicated by index set, each scored by the simulated VLM.

Every sequence carries its behaviour log-probability (docs/data.md), per pick and summed: beam, log pi(seq);
sample at tau, sum_t log softmax(logits / tau)[pick_t] over the unchosen items; random, the uniform ordered
draw -sum_t log(K - t); retrieval (and the enumerated top-up of tiny pools) is deterministic: null.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any, NamedTuple

import torch

from .config import GENERATOR_VERSION, BenchConfig
from .vlm import SimVLM
from .world import World

Seq = tuple[int, ...]


class Proposal(NamedTuple):
    """A candidate sequence before scoring: local pointers and where it came from."""

    pointer: Seq
    method: str  # "beam" | "retrieval" | "sample" | "random"
    beam_rank: int | None = None
    beam_score: float | None = None
    temperature: float | None = None
    behaviour: tuple[float, ...] | None = None  # per-pick log-probs under the proposing distribution (None: deterministic)


def make_candidates(cfg: BenchConfig, world: World, vlm: SimVLM) -> dict[str, Any]:
    """The whole candidate-data object.

    {"_meta": {...}, "<query_id>": {"query": {...}, "candidate_pool_ids": [...], "pointer_candidates": [...]}, ...}
    """
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 1)  # its own stream, independent of the world's draws
    x = world.train.features  # [N, dim]
    queries = torch.randperm(cfg.n_train, generator=g)[: cfg.n_queries].sort().values  # [Q]
    pools, cos = make_pools(x[queries], x, cfg.pool_size, cfg.pool_near, g, exclude=queries)  # [Q, K] each
    logits = cos / cfg.policy_scale

    sources = _sources(cfg, logits, g)  # per query, proposals in source order
    fills = _random_sequences(len(queries), 2 * cfg.group_min + 8, cfg.pool_size, cfg.shots, g).tolist()
    groups = [_dedupe(cfg, src, fill) for src, fill in zip(sources, fills)]

    # Score every candidate with the simulated VLM in one batch.
    pool_list, query_list = pools.tolist(), queries.tolist()
    flat_q, flat_demos = [], []
    for qi, group in enumerate(groups):
        for prop in group:
            flat_q.append(query_list[qi])
            flat_demos.append([pool_list[qi][p] for p in prop.pointer])
    scores = vlm.score_batch("train", flat_q, flat_demos)
    edge = torch.rand(len(flat_q), 2, generator=g).tolist()

    out: dict[str, Any] = {"_meta": _meta(cfg)}
    items = world.train.items
    j = 0
    for qi, group in enumerate(groups):
        item = items[query_list[qi]]
        cands = []
        for prop in group:
            cands.append(_record(prop, flat_demos[j], scores[j], edge[j], cfg.edge_case_share, item["answers"]))
            j += 1
        out[str(item["index"])] = {
            "query": {
                "query_id": item["index"],
                "question_id": item["question_id"],
                "image_id": item["image_id"],
                "question": item["question"],
                "gt_answers_raw": item["answers"],
                "gt_answers_norm": item["answers"],
            },  # answers are already in normal form
            "candidate_pool_ids": pool_list[qi],
            "pointer_candidates": cands,
        }
    return out


def make_pools(
    query_x: torch.Tensor, x: torch.Tensor, size: int, near: int, g: torch.Generator, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pools [Q, size] of train indices (the `near` most similar items plus random ones, shuffled) and their cosines.

    query_x: [Q, dim] and x: [N, dim] L2-normalised features; exclude: [Q] a train index per query kept out
    of its pool (the query itself, for training queries).
    """
    n_q, n = query_x.shape[0], x.shape[0]
    rows = torch.arange(n_q)
    sims = query_x @ x.T  # [Q, N]
    r = torch.rand(n_q, n, generator=g)
    ranked = sims.clone()
    if exclude is not None:
        ranked[rows, exclude] = -float("inf")  # never the query itself
        r[rows, exclude] = -1.0
    nearest = ranked.topk(near, dim=1).indices  # [Q, near]
    r.scatter_(1, nearest, -1.0)  # random items are not already in the pool
    rand = r.topk(size - near, dim=1).indices  # [Q, size - near]
    pool = torch.cat([nearest, rand], dim=1)  # [Q, size]
    order = torch.rand(n_q, size, generator=g).argsort(dim=1)
    pool = pool.gather(1, order)
    return pool, sims.gather(1, pool)


def beam_search(logits: torch.Tensor, width: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`width` sequences of `steps` distinct pointers under pi_t = softmax(logits masked to unchosen items).

    logits: [Q, K]. Returns pointers [Q, w, steps] and scores [Q, w] = sum_t log pi_t(pointer_t), best first.
    """
    n_q, k = logits.shape
    width = min(width, k)
    seqs = torch.zeros(n_q, 1, 0, dtype=torch.long)  # [Q, b, t]
    score = torch.zeros(n_q, 1)  # [Q, b]
    for _ in range(steps):
        b = seqs.shape[1]
        masked = logits[:, None, :].expand(n_q, b, k).clone()  # [Q, b, K]
        masked.scatter_(2, seqs, -float("inf"))
        total = score[:, :, None] + masked.log_softmax(-1)  # [Q, b, K]
        score, flat = total.reshape(n_q, -1).topk(min(width, b * k), dim=1)  # [Q, w]
        parent, pick = flat // k, flat % k
        seqs = torch.cat([seqs.gather(1, parent[:, :, None].expand(-1, -1, seqs.shape[2])), pick[:, :, None]], dim=2)
    return seqs, score


def sample_sequences(logits: torch.Tensor, n: int, steps: int, tau: float, g: torch.Generator) -> torch.Tensor:
    """n samples [Q, n, steps] of distinct pointers, drawn one by one from softmax(logits / tau) over unchosen items.

    Gumbel top-k: the top `steps` of logits/tau + Gumbel noise is such a sequential sample without replacement.
    """
    u = torch.rand(logits.shape[0], n, logits.shape[1], generator=g).clamp(1e-12, 1 - 1e-7)  # [Q, n, K]
    gumbel = -torch.log(-torch.log(u))
    return (logits[:, None, :] / tau + gumbel).topk(steps, dim=2).indices


def step_logps(logits: torch.Tensor, seqs: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Per-pick log-probs [Q, n, steps] of sequences seqs [Q, n, steps] under softmax(logits / tau) over the items
    not yet chosen (logits [Q, K]): the distribution beam search (tau 1) and sample_sequences draw from."""
    n_q, n, steps = seqs.shape
    masked = (logits / tau)[:, None, :].expand(n_q, n, logits.shape[1]).clone()  # [Q, n, K]
    out = []
    for t in range(steps):
        out.append(masked.log_softmax(-1).gather(2, seqs[:, :, t : t + 1]).squeeze(2))
        masked.scatter_(2, seqs[:, :, t : t + 1], -float("inf"))
    return torch.stack(out, dim=2)


def uniform_logps(k: int, steps: int) -> tuple[float, ...]:
    """Per-pick log-probs of a uniform ordered draw of `steps` distinct items of K: log 1 / (K - t)."""
    return tuple(-math.log(k - t) for t in range(steps))


def _random_sequences(n_q: int, n: int, k: int, steps: int, g: torch.Generator) -> torch.Tensor:
    """n uniform sequences [Q, n, steps] of distinct pointers into a K-item pool."""
    return torch.rand(n_q, n, k, generator=g).topk(steps, dim=2).indices


def _sources(cfg: BenchConfig, logits: torch.Tensor, g: torch.Generator) -> list[list[Proposal]]:
    """Per query, all proposed sequences in source order: beam, retrieval, samples per temperature, random."""
    n_q, k = logits.shape
    props: list[list[Proposal]] = [[] for _ in range(n_q)]
    if cfg.beam_width:
        seqs, score = beam_search(logits, cfg.beam_width, cfg.shots)
        behs = step_logps(logits, seqs).tolist()
        for qi, (ss, sc, bb) in enumerate(zip(seqs.tolist(), score.tolist(), behs)):
            props[qi] += [
                Proposal(tuple(s), "beam", r, round(c, 4), behaviour=tuple(b)) for r, (s, c, b) in enumerate(zip(ss, sc, bb))
            ]
    ranking = logits.argsort(dim=1, descending=True).tolist()  # [Q, K] most similar first
    for qi in range(n_q):
        blocks = min(cfg.retrieval, k // cfg.shots)
        props[qi] += [Proposal(tuple(ranking[qi][b * cfg.shots : (b + 1) * cfg.shots]), "retrieval") for b in range(blocks)]
    for tau in cfg.temperatures:
        counts = torch.randint(cfg.samples_min, cfg.samples_max + 1, (n_q,), generator=g).tolist()
        drawn = sample_sequences(logits, cfg.samples_max, cfg.shots, tau, g)
        seqs, behs = drawn.tolist(), step_logps(logits, drawn, tau).tolist()
        for qi in range(n_q):
            props[qi] += [
                Proposal(tuple(s), "sample", temperature=tau, behaviour=tuple(b))
                for s, b in zip(seqs[qi][: counts[qi]], behs[qi])
            ]
    counts = torch.randint(cfg.random_min, cfg.random_max + 1, (n_q,), generator=g).tolist()
    seqs = _random_sequences(n_q, cfg.random_max, k, cfg.shots, g).tolist()
    uniform = uniform_logps(k, cfg.shots)
    for qi in range(n_q):
        props[qi] += [Proposal(tuple(s), "random", behaviour=uniform) for s in seqs[qi][: counts[qi]]]
    return props


def _dedupe(cfg: BenchConfig, proposals: list[Proposal], fill: list[list[int]]) -> list[Proposal]:
    """Keep the first sequence of each index set; top up with random ones to group_min; cut at group_max."""
    seen: set[Seq] = set()
    group = []

    def add(prop: Proposal) -> None:
        key = tuple(sorted(prop.pointer))
        if key not in seen:
            seen.add(key)
            group.append(prop)

    for cand in proposals:
        add(cand)
    for s in fill:
        if len(group) >= cfg.group_min:
            break
        add(Proposal(tuple(s), "random", behaviour=uniform_logps(cfg.pool_size, cfg.shots)))
    if len(group) < cfg.group_min:  # tiny pools: enumerate the remaining sets in order (deterministic)
        for s in combinations(range(cfg.pool_size), cfg.shots):
            if len(group) >= cfg.group_min:
                break
            add(Proposal(s, "enumerated"))
    return group[: cfg.group_max]


def _record(
    prop: Proposal, demos: list[int], score: dict[str, Any], edge: list[float], edge_share: float, answers: list[str]
) -> dict[str, Any]:
    """One pointer candidate with the field names of docs/data.md, in a fixed key order."""
    rec = {
        "pointer": list(prop.pointer),
        "pointer_global": demos,
        "gen_method": prop.method,
        "beam_rank": prop.beam_rank,
        "beam_score": prop.beam_score,
        "temperature": prop.temperature,
        "behaviour_logp": None if prop.behaviour is None else round(sum(prop.behaviour), 6),
        "behaviour_step_logps": None if prop.behaviour is None else [round(x, 6) for x in prop.behaviour],
        **score,
        "vqa_eval_mode": "vqaEval",
        "eval_failed": False,
    }
    if edge[0] < edge_share:
        # Realistic failures: the scorer crashed ("error"), or fell back to exact match with the top answer.
        if edge[1] < 0.5:
            rec.update(
                vqa_pred_answer="",
                vqa_correct=0,
                vqa_acc_score=0.0,
                vqa_gt_prob=0.0,
                vqa_rel_score=0.0,
                vqa_eval_mode="error",
                eval_failed=True,
            )
        else:
            hit = int(rec["vqa_pred_answer"] == max(answers, key=answers.count))
            rec.update(vqa_correct=hit, vqa_acc_score=float(hit), vqa_eval_mode="fallback", eval_failed=True)
    return rec


def _meta(cfg: BenchConfig) -> dict[str, Any]:
    return {
        "created_by": "lever bundled benchmark (simulated world and VLM; not OK-VQA)",
        "generator_version": GENERATOR_VERSION,
        "pool": f"{cfg.pool_near} nearest by feature cosine + {cfg.pool_size - cfg.pool_near} random train items",
        "sources": ["beam", "retrieval", "sample", "random"],
        "behaviour_logps": "per sequence and per pick, under the proposing distribution; null for retrieval",
        "settings": cfg.model_dump(),
    }
