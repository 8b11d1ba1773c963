"""`lever data generate`: candidate sequences for every query of a pools file, scored by the VLM.

Per query (its pool of K train items, `shots` items per sequence), in the original generator's source order:

- beam: the `beams` best sequences of the policy by beam search (sum of step log-probs);
- sample: for each temperature tau, `samples` sequences drawn step by step from softmax(log pi / tau);
- retrieval: `retrieval` sliding windows over the pool items ranked by similarity to the query (sequence r =
  ranks r, r+1, ..., r+shots-1: [0, 1], [1, 2], [2, 3] at 2 shots), as the original's retrieve_pointer_by_similarity;
- random: `random` uniform sequences of distinct pool items.

The policy is a trained plan's selected checkpoint, or, without one, the similarity policy
pi_t(j) = softmax_j(cos(x_q, x_j) / 0.1) over the items not yet picked. Duplicates are dropped per
`dedupe`: "set" (default, the original's generator) keeps one sequence per set of items: the set stays where
it was first proposed and holds the proposal of its highest-priority source (beam > retrieval > sample >
random; within a source the first proposed); "ordered" keeps each ordered sequence once ([a, b] and [b, a]
are two prompts), the first proposal wins.
Every sequence is answered by the evaluation backend with the evaluation's prompt protocol (through the
workspace's reward cache, `lever.eval.reward_cache`: a prompt answered before is not asked again) and
scored with its VQA metric, and written in the compatibility format (docs/data.md).

Each sequence also carries its behaviour log-probability, the log-probability of the ordered sequence under
the distribution that proposed it, per pick (`behaviour_step_logps`) and summed (`behaviour_logp`): beam, the
policy's log pi(seq); sample at temperature tau, the tempered distribution it was drawn from,
sum_t log softmax(log pi_t / tau)[pick_t] (the policy's own log pi(seq) at tau = 1); random, the uniform draw
without replacement, -sum_t log(K - t); retrieval is deterministic: null. `--dedupe set` keeps a sequence with
its own source's value. GRPO's `off_policy = "truncated_is"` weights by them (docs/training.md).

Random draws come from one generator per query (seeded by the seed and the query row), so the
output does not depend on chunking, resumption or the number of ranks. Crash safety: every
chunk of queries is appended to `OUT.parts/shard-<rank>.jsonl` and flushed; a rerun skips the
queries any shard holds; rank 0 merges the shards into OUT (atomically) and removes the parts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lever.data.sources import Dataset
from lever.errors import LeverError
from lever.io import atomic_write, read_jsonl, write_json
from lever.keys import content_key
from lever.spec.schema import EvalSpec

from .backend import Backend, Item, Request
from .distributed import Ranks, barrier, ranks
from .protocol import resolve_protocol
from .reward_cache import cached_backend, scoring_identity
from .score import score_requests
from .vqa import normalize_answer

Progress = Callable[[int, int], None]  # (queries done, total)
StepLogp = Callable[[Tensor], Tensor]  # prefix [Q, b, t] local pointers -> log-probs [Q, b, K] (picked items -inf)
SIMILARITY_TEMPERATURE = 0.1
DEDUPE = ("set", "ordered")
SET_PRIORITY = ("beam", "retrieval", "sample", "random")  # the original's preference when two sources propose one set


@dataclass(frozen=True)
class Sources:
    """How many sequences each source proposes per query (the original's defaults)."""

    beams: int = 5
    temperatures: tuple[float, ...] = (1.0, 1.3)
    samples: int = 2
    random: int = 2
    retrieval: int = 3

    def check(self, shots: int, k: int) -> None:
        counts = {"beams": self.beams, "samples": self.samples, "random": self.random, "retrieval": self.retrieval}
        bad = [f"{n} = {v}" for n, v in counts.items() if v < 0] + [f"temperature {t}" for t in self.temperatures if t <= 0]
        if bad:
            raise LeverError(f"generation sources: {', '.join(bad)}", hint="counts are >= 0, temperatures > 0")
        if not 1 <= shots <= k:
            raise LeverError(f"shots = {shots} does not fit pools of {k} items", hint=f"use 1..{k}")


# --------------------------------------------------------------------------- policies


def similarity_policy(query: Tensor, pool: Tensor) -> StepLogp:
    """pi_t = softmax(cos(query, pool) / 0.1) over unpicked items; query [Q, d], pool [Q, K, d]."""
    logits = torch.einsum("qd,qkd->qk", F.normalize(query.float(), dim=-1), F.normalize(pool.float(), dim=-1))
    logits = logits / SIMILARITY_TEMPERATURE  # [Q, K]

    def step(prefix: Tensor) -> Tensor:
        masked = logits[:, None, :].expand(prefix.shape[0], prefix.shape[1], -1).clone()  # [Q, b, K]
        masked.scatter_(2, prefix, -float("inf"))
        return masked.log_softmax(-1)

    return step


def selector_policy(model: Any, query: Tensor, pool: Tensor) -> StepLogp:
    """The selector's step distribution after each prefix (teacher-forced: SelectorBase.log_policy)."""
    model.eval()
    with torch.no_grad():
        enc = model.encode(query, pool, None)

    @torch.no_grad()
    def step(prefix: Tensor) -> Tensor:
        q, b, t = prefix.shape
        pointers = torch.cat([prefix, torch.zeros(q, b, 1, dtype=torch.long)], dim=2)  # the last step's label is unused
        logp = model.log_policy(enc, pointers)[:, :, t, :]  # [Q, b, K], or K + 1 with a STOP candidate last
        if logp.shape[-1] > pool.shape[1]:  # candidate sequences have every step: the policy given no STOP
            logp = logp[..., : pool.shape[1]].log_softmax(-1)
        return logp.float()

    return step


def beam_search(step: StepLogp, n_q: int, k: int, width: int, steps: int) -> tuple[Tensor, Tensor]:
    """The `width` best sequences [Q, w, steps] of distinct pointers and their scores [Q, w] (sum of log-probs)."""
    seqs = torch.zeros(n_q, 1, 0, dtype=torch.long)
    score = torch.zeros(n_q, 1)
    for _ in range(steps):
        b = seqs.shape[1]
        total = score[:, :, None] + step(seqs)  # [Q, b, K]
        score, flat = total.reshape(n_q, -1).topk(min(width, b * k - b * seqs.shape[2]), dim=1)
        parent, pick = flat // k, flat % k
        seqs = torch.cat([seqs.gather(1, parent[:, :, None].expand(-1, -1, seqs.shape[2])), pick[:, :, None]], dim=2)
    return seqs, score


def sample(step: StepLogp, n: int, steps: int, tau: float, gens: list[torch.Generator], k: int) -> tuple[Tensor, Tensor]:
    """n sequences [Q, n, steps] drawn step by step from softmax(log pi / tau) (Gumbel-max, one generator per query),
    and their per-pick log-probs [Q, n, steps] under that distribution: `step_logps(step, seqs, tau)`, taken from the
    distributions the picks were drawn from (no second pass)."""
    seqs = torch.zeros(len(gens), n, 0, dtype=torch.long)
    logps = []
    for _ in range(steps):
        u = torch.stack([torch.rand(n, k, generator=g) for g in gens]).clamp(1e-12, 1 - 1e-7)  # [Q, n, K]
        logp = step(seqs)  # [Q, n, K]
        pick = (logp / tau - torch.log(-torch.log(u))).argmax(-1)  # [Q, n]
        if tau != 1.0:
            logp = (logp / tau).log_softmax(-1)
        logps.append(logp.gather(2, pick[:, :, None]).squeeze(2))
        seqs = torch.cat([seqs, pick[:, :, None]], dim=2)
    return seqs, torch.stack(logps, dim=2) if logps else torch.zeros(len(gens), n, 0)


def step_logps(step: StepLogp, seqs: Tensor, tau: float = 1.0) -> Tensor:
    """Per-pick log-probs [Q, n, L] of sequences seqs [Q, n, L] under softmax(log pi_t / tau), teacher-forced:
    pick t is scored after the prefix seqs[..., :t]. tau = 1 gives the policy's own log pi_t(pick_t)."""
    out = []
    for t in range(seqs.shape[2]):
        logp = step(seqs[:, :, :t])  # [Q, n, K]
        if tau != 1.0:
            logp = (logp / tau).log_softmax(-1)
        out.append(logp.gather(2, seqs[:, :, t : t + 1]).squeeze(2))
    return torch.stack(out, dim=2)


def uniform_step_logps(k: int, shots: int) -> list[float]:
    """Per-pick log-probs of a uniform draw of `shots` distinct items of K, in order: log 1 / (K - t)."""
    return [-math.log(k - t) for t in range(shots)]


def behaviour(steps: list[float] | None) -> dict[str, Any]:
    """A proposal's behaviour fields: the per-pick log-probs and their sum (None for a deterministic source)."""
    if steps is None:
        return {"behaviour_logp": None, "behaviour_step_logps": None}
    return {"behaviour_logp": round(sum(steps), 6), "behaviour_step_logps": [round(x, 6) for x in steps]}


def propose(
    step: StepLogp, sims: Tensor, shots: int, sources: Sources, gens: list[torch.Generator], dedupe: str = "set"
) -> list[list[dict[str, Any]]]:
    """Per query, the deduplicated proposals {pointer, gen_method, beam_rank, beam_score, temperature,
    behaviour_logp, behaviour_step_logps} in source order.

    sims [Q, K]: cosine of the query with each pool item (retrieval ranks by it). dedupe: "set" (`dedupe_set`)
    or "ordered" (`dedupe_ordered`). The behaviour fields: see the module's docstring.
    """
    if dedupe not in DEDUPE:
        raise LeverError(f"--dedupe {dedupe!r} is not known", hint="use set (the original's) or ordered")
    n_q, k = sims.shape
    props: list[list[dict[str, Any]]] = [[] for _ in range(n_q)]

    def add(
        qi: int,
        seq: list[int],
        method: str,
        beh: list[float] | None,
        rank: int | None = None,
        score: float | None = None,
        tau: float | None = None,
    ):
        rec = {"pointer": seq, "gen_method": method, "beam_rank": rank, "beam_score": score, "temperature": tau}
        props[qi].append({**rec, **behaviour(beh)})

    # 1. beam, 2. sample, 3. retrieval, 4. random: the original generator's order, which `dedupe_set` keeps
    if sources.beams:
        seqs, scores = beam_search(step, n_q, k, sources.beams, shots)
        behs = step_logps(step, seqs).tolist()
        for qi, (ss, sc, bb) in enumerate(zip(seqs.tolist(), scores.tolist(), behs)):
            for r, (s, c, b) in enumerate(zip(ss, sc, bb)):
                add(qi, s, "beam", b, r, round(c, 4))
    for tau in sources.temperatures:
        if sources.samples:
            seqs, logps = sample(step, sources.samples, shots, tau, gens, k)
            for qi, (ss, bb) in enumerate(zip(seqs.tolist(), logps.tolist())):
                for s, b in zip(ss, bb):
                    add(qi, s, "sample", b, tau=tau)
    for qi, window in enumerate(retrieval_windows(sims, shots, sources.retrieval)):
        for seq in window:
            add(qi, seq, "retrieval", None)
    uniform = uniform_step_logps(k, shots)
    for qi, g in enumerate(gens):
        for _ in range(sources.random):
            add(qi, torch.randperm(k, generator=g)[:shots].tolist(), "random", uniform)
    return [dedupe_ordered(group) if dedupe == "ordered" else dedupe_set(group) for group in props]


def retrieval_windows(sims: Tensor, shots: int, n: int) -> list[list[list[int]]]:
    """Per query, `n` sequences of pool items by similarity rank, as the original's retrieve_pointer_by_similarity:
    sequence r holds ranks r .. r+shots-1 (a sliding window: [0, 1], [1, 2], [2, 3] at 2 shots), most similar
    first. sims [Q, K]; at most K - shots + 1 windows fit a pool."""
    ranking = sims.argsort(dim=1, descending=True, stable=True).tolist()  # [Q, K]: pool positions, most similar first
    count = min(n, sims.shape[1] - shots + 1)
    return [[ranks[r : r + shots] for r in range(count)] for ranks in ranking]


def dedupe_set(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One proposal per SET of items, as the original's generator: the sets in the order they were first
    proposed, each holding the proposal of its highest-priority source in SET_PRIORITY (beam > retrieval >
    sample > random; of one source, the first proposed). A later proposal of higher priority replaces the
    kept one in place (the original keeps a dict keyed by the sorted pointers)."""
    rank = {m: i for i, m in enumerate(SET_PRIORITY)}
    kept: dict[tuple[int, ...], dict[str, Any]] = {}  # insertion order = first-seen order of each set
    for p in group:
        key = tuple(sorted(p["pointer"]))
        have = kept.get(key)
        if have is None or rank.get(p["gen_method"], len(rank)) < rank.get(have["gen_method"], len(rank)):
            kept[key] = p
    return list(kept.values())


def dedupe_ordered(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first proposal of each ORDERED sequence: [a, b] and [b, a] are two prompts and both stay."""
    seen: set[tuple[int, ...]] = set()
    kept = []
    for p in group:
        key = tuple(p["pointer"])
        if key not in seen:
            seen.add(key)
            kept.append(p)
    return kept


# --------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class GenerateOptions:
    """Sequence length, sources, seed, and how many queries are answered between two flushes of a shard."""

    shots: int = 2
    sources: Sources = Sources()
    seed: int = 0
    chunk: int = 8  # queries answered between two flushes of the shard
    dedupe: str = "set"  # "set" (one sequence per set of items, the original's) or "ordered"


def query_generator(seed: int, query: int) -> torch.Generator:
    """The random stream of one query: the same whatever the chunking, the resumption or the ranks."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{query}".encode()))


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (also through another spelling, a symlink or a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def generate_file(
    ds: Dataset,
    pools_path: Path,
    features: Tensor,
    out: Path,
    *,
    opts: GenerateOptions = GenerateOptions(),
    spec: EvalSpec | None = None,
    policy: tuple[str, Any] = ("similarity", None),
    device: str = "auto",
    redo: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    backend: Backend | None = None,
    rk: Ranks | None = None,
) -> dict[str, Any]:
    """Generate and score candidates for every query of the pools file and write OUT; returns a short report.

    features [N, d]: the train items' features (row i = train item i of `ds`). policy: ("similarity", None)
    or (a label, a selector model). `backend` replaces the workspace's (tests, benchmarks). `rk`: the ranks
    that share the queries (default: the torchrun job's; a refresh round, on rank 0 alone, passes `Ranks()`:
    its backend spreads the prompts over the ranks instead).
    """
    from .prepare import read_pools
    from .world import load_split

    ws = ds.ws

    if _same_file(pools_path, out):
        raise LeverError(
            f"OUT {out} is the pools file {pools_path}: writing it would destroy the input it is generated from",
            hint="give OUT another file name",
        )
    spec = spec or EvalSpec()
    if opts.dedupe not in DEDUPE:
        raise LeverError(f"--dedupe {opts.dedupe!r} is not known", hint="use set (the original's) or ordered")
    if backend is None and not ws.is_bundled and ws.models.vlm:  # the preflight's check: a missing shard named now
        from .preflight import check_weight_files

        check_weight_files(ws.path(ws.models.vlm), "models.vlm")
    items = load_split(ds, "train", log)
    if features.shape[0] != len(items):
        raise LeverError(f"features have {features.shape[0]} rows but the train split has {len(items)} items")
    pools = read_pools(pools_path, len(items))
    k = len(next(iter(pools.values())))
    opts.sources.check(opts.shots, k)
    protocol = resolve_protocol(spec).for_candidates()  # sampling as the protocol's candidate_sampling says
    metric = protocol.metric
    settings = {
        "pools": content_key(pools),
        "shots": opts.shots,
        "sources": asdict(opts.sources),
        "seed": opts.seed,
        "dedupe": opts.dedupe,
        # the original generator's source order and sliding retrieval windows (lever's older files: blocks, random
        # before retrieval); an interrupted generation of the older kind is not resumed with this one
        "proposals": "beam,sample,retrieval-sliding,random",
        "policy": policy[0],
        "behaviour_logps": True,  # the records carry them (an interrupted generation without them is not resumed)
        "metric": metric,
        "protocol": protocol.identity(),
        "generation": {k_: getattr(spec, k_) for k_ in ("max_new_tokens", "num_beams", "dtype", "attn_implementation")},
        **ds.named(),  # okvqa's settings are those made before datasets
    }
    settings = json.loads(json.dumps(settings))  # as it reads back from settings.json (tuples become lists)
    r = rk or ranks()
    parts = out.with_name(out.name + ".parts")
    if r.is_main:
        if redo:
            shutil.rmtree(parts, ignore_errors=True)
        elif out.exists() and not parts.exists():
            raise LeverError(f"{out} already exists", hint="pass --redo to generate it again")
        parts.mkdir(parents=True, exist_ok=True)
        have = parts / "settings.json"
        if have.is_file() and json.loads(have.read_text()) != settings:
            raise LeverError(
                f"{parts} holds an interrupted generation with other settings",
                hint="rerun with the same settings to resume, or pass --redo to start again",
            )
        write_json(have, settings)
    barrier(r)
    from .evaluate import open_partial

    done = {row["query_id"] for f in sorted(parts.glob("shard-*.jsonl")) for row in read_jsonl(f)}
    queries = list(pools)
    mine = [q for p, q in enumerate(queries) if r.mine(p) and q not in done]
    if done and r.is_main:
        log(f"generate: resuming, {len(done)} of {len(queries)} queries already done in {parts}")
    if mine and backend is None:  # the workspace's VLM, behind its reward cache (each prompt answered once)
        backend = cached_backend(
            make_backend(ds, spec, r.device() if r.world > 1 else device, log),
            ws.cache_dir,
            scoring_identity(ds, spec, log),
        )
    with open_partial(parts / f"shard-{r.rank}.jsonl") as shard:
        for s in range(0, len(mine), opts.chunk):
            chunk = mine[s : s + opts.chunk]
            pool_t = torch.tensor([pools[q] for q in chunk])  # [Q, K]
            qx, px = features[chunk], features[pool_t]  # [Q, d], [Q, K, d]
            step = similarity_policy(qx, px) if policy[1] is None else selector_policy(policy[1], qx, px)
            sims = torch.einsum("qd,qkd->qk", F.normalize(qx, dim=-1), F.normalize(px, dim=-1))
            gens = [query_generator(opts.seed, q) for q in chunk]
            groups = propose(step, sims, opts.shots, opts.sources, gens, opts.dedupe)
            # Every sequence of the chunk's queries in one call: the backend batches them across queries.
            reqs = [
                Request("train", items[q], [items[pools[q][j]] for j in p["pointer"]]) for q, g in zip(chunk, groups) for p in g
            ]
            scored = iter(score_requests(backend, metric, reqs))
            for q, group in zip(chunk, groups):
                scores = [next(scored) for _ in group]
                cands = [
                    {"pointer": p["pointer"], "pointer_global": [pools[q][j] for j in p["pointer"]], **p, **sc}
                    for p, sc in zip(group, scores)
                ]
                shard.write(json.dumps({"query_id": q, "record": _entry(items[q], pools[q], cands)}) + "\n")
            shard.flush()
            if progress:
                progress(min(s + opts.chunk, len(mine)), len(mine))
    summary = getattr(getattr(backend, "inner", backend), "cache_summary", None)  # the hf backend's image features
    if mine and summary:
        log(f"generate: {summary()}")
    barrier(r)
    counts = getattr(backend, "counts", None)  # the reward cache's: VLM calls and cache hits of this process
    calls = {} if counts is None else {"vlm_calls": counts.calls, "cache_hits": counts.hits}
    if not r.is_main:
        return {"out": str(out), "queries": len(queries), **calls}
    return {**merge_parts(parts, out, queries, settings), **calls}


def _entry(query: Item, pool: list[int], cands: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "query": {
            "query_id": query.index,
            "question_id": query.question_id,
            "image_id": query.image_id,
            "question": query.question,
            "gt_answers_raw": query.answers,
            "gt_answers_norm": [normalize_answer(a) for a in query.answers],
        },
        "candidate_pool_ids": pool,
        "pointer_candidates": cands,
    }


def merge_parts(parts: Path, out: Path, queries: list[int], settings: dict[str, Any]) -> dict[str, Any]:
    """Every shard's queries, in pools order, into OUT (atomically); the parts folder is removed after."""
    rows = {row["query_id"]: row["record"] for f in sorted(parts.glob("shard-*.jsonl")) for row in read_jsonl(f)}
    missing = [q for q in queries if q not in rows]
    if missing:
        raise LeverError(f"generation incomplete: {len(missing)} queries missing from {parts} (e.g. {missing[0]})",
                         hint="rerun the same command to finish them")  # fmt: skip
    data = {"_meta": {"created_by": "lever data generate", "k": len(rows[queries[0]]["candidate_pool_ids"]), **settings}}
    data.update({str(q): rows[q] for q in queries})
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(data), encoding="utf-8"))
    shutil.rmtree(parts)
    seqs = sum(len(rows[q]["pointer_candidates"]) for q in queries)
    return {"out": str(out), "queries": len(queries), "sequences": seqs}


def make_backend(ds: Dataset, spec: EvalSpec, device: str, log: Callable[[str], None] = print) -> Backend:
    """The evaluation backend of the workspace: the simulated VLM on the bundled benchmark, else transformers (its
    train files and models checked first: `check_eval_files`)."""
    if ds.is_bundled:
        from lever.bench import SimVLM

        from .world import SimBackend

        return SimBackend(SimVLM.load(ds.bench(log)))
    from .world import check_eval_files, make_hf_backend

    check_eval_files(ds, spec.model_copy(update={"splits": ["train"]}))
    return make_hf_backend(ds.ws, spec, device, resolve_protocol(spec).for_candidates())
