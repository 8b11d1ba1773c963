"""Balance a candidate-data file: drop uninformative groups, fix group and pool sizes, keep tiers.

`balance_data` decides what to keep, in this order:

1. drop_failed     drop failed evaluations;
2. pool_size K     restrict each pool to K items: items used by the remaining sequences
                   come first (if they are more than K, the K used earliest in the file's
                   order are kept and sequences using the others are dropped), then unused
                   items fill up to K, both in the pool's original order; pointers are
                   remapped. A pool smaller than K stays as it is (nothing is invented);
3. group_size N    drop groups smaller than N; sub-sample larger ones to N, stratified by
                   outcome: the positive share is kept (rounded, and at least one of each
                   outcome when the group has both), picks are seeded;
4. positive_share s  sub-sample each group towards a positive share of s (`share_keep`): the
                   outcome above its share loses sequences (seeded), the other keeps all;
                   groups with one outcome only are dropped;
5. tiers           keep queries in the listed quality tiers;
6. positive_ratio  keep queries whose share of correct sequences lies in [lo, hi];
7. drop_uniform    drop groups whose rewards are all equal (no advantage signal).

Steps 5-7 judge the groups as they will be written. `RECIPES` names the original project's
settings: `balanced-v3` is its "Balanced V3" filter (queries with 40-60% positive candidates,
docs/datasets.md). `write_balanced` writes the
compatibility format from the input file's own bytes: every kept candidate is copied
as it was read (re-encoded only when its pointer is remapped), plus a `_meta.balance`
record, to a temp file that replaces OUT only when complete.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec
import torch
from torch import Tensor

from lever.errors import LeverError
from lever.io import atomic_write
from lever.spec.schema import RewardSpec, TierRules

from .candidates import CandidateData
from .filters import TIERS, positive_ratio, quality_tiers, reward_gap
from .rawjson import RawFile, decode_json
from .reader import load_candidates
from .rewards import raw_rewards
from .segments import one_thread, segment_ids

_MEMBERS = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])
_encode = msgspec.json.Encoder().encode

# Named settings of the original project (docs/datasets.md). Balanced V3: of the train queries it scored
# (20 two-shot candidates each), it kept those with a positive share in [0.4, 0.6] (both bounds kept).
RECIPES: dict[str, dict[str, Any]] = {"balanced-v3": {"positive_ratio": (0.4, 0.6)}}


@dataclass
class BalanceOptions:
    """What `lever data balance` does (defaults: drop failed and uniform groups, nothing else)."""

    drop_failed: bool = True
    drop_uniform: bool = True
    positive_ratio: tuple[float, float] = (0.0, 1.0)
    group_size: int | None = None
    pool_size: int | None = None
    tiers: tuple[str, ...] | None = None
    reward: RewardSpec = field(default_factory=RewardSpec)
    tier_rules: TierRules = field(default_factory=TierRules)
    seed: int = 0
    positive_share: float | None = None  # target share of correct sequences per group (step 4), in (0, 1)
    recipe: str | None = None  # the RECIPES entry these options were made from (recorded, `from_recipe`)

    @classmethod
    def from_recipe(cls, name: str, **changes: Any) -> BalanceOptions:
        """The options of a named recipe (RECIPES), with `changes` on top; an unknown name is an error."""
        if name not in RECIPES:
            raise LeverError(f"balance recipe {name!r} is not known", hint=f"choose from {', '.join(RECIPES)}")
        return cls(**{**RECIPES[name], **changes, "recipe": name})

    def __post_init__(self) -> None:
        lo, hi = self.positive_ratio
        if not 0.0 <= lo <= hi <= 1.0:
            raise LeverError(
                f"positive ratio band [{lo}, {hi}] is invalid", hint="use lo,hi with 0 <= lo <= hi <= 1, e.g. 0.1,0.9"
            )
        if self.group_size is not None and self.group_size < 1:
            raise LeverError(f"group size must be >= 1, got {self.group_size}")
        if self.pool_size is not None and self.pool_size < 1:
            raise LeverError(f"pool size must be >= 1, got {self.pool_size}")
        if self.positive_share is not None and not 0.0 < self.positive_share < 1.0:
            raise LeverError(
                f"positive share {self.positive_share} is invalid",
                hint="use a share strictly between 0 and 1, e.g. 0.5 (a group of one outcome gives no signal)",
            )
        bad = [t for t in self.tiers or () if t not in TIERS]
        if bad or (self.tiers is not None and not self.tiers):
            raise LeverError(f"unknown tiers {bad or '(none)'}", hint=f"choose from {', '.join(TIERS)}")

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["reward"] = self.reward.model_dump(mode="json")
        out["tier_rules"] = self.tier_rules.model_dump(mode="json")
        out["positive_ratio"] = list(self.positive_ratio)
        out["tiers"] = list(self.tiers) if self.tiers else None
        return out


# --------------------------------------------------------------------------- deciding


def _first_use(data: CandidateData) -> Tensor:
    """Rank of each pool item by first use: [Q, P] long (P for unused items and padding).

    first_q(i) = min over the sequences r (row in the group) and steps t that pick item i
    of r * L + t; rank_q(i) = position of i when query q's items are sorted by first_q.
    """
    Q, P = data.pools.shape
    L = data.shots
    seg = data.seq_query()  # [S]
    BIG = data.num_sequences * L + 1
    pos = ((torch.arange(data.num_sequences) - data.offsets[seg]).unsqueeze(1) * L + torch.arange(L)).flatten()  # [S*L]
    flat = (seg.unsqueeze(1) * P + data.pointers).flatten()  # [S*L] index into [Q*P]
    first = torch.full((Q * P,), BIG, dtype=torch.long).scatter_reduce_(0, flat, pos, reduce="amin").view(Q, P)
    rank = torch.empty_like(first)
    rank.scatter_(1, first.argsort(dim=1, stable=True), torch.arange(P).expand(Q, P).contiguous())
    return torch.where(first < BIG, rank, P)


def restrict_pools(data: CandidateData, K: int) -> tuple[CandidateData, dict[str, int]]:
    """Pools cut to K items (see the module docstring), pointers remapped; sequences that
    use an item outside the K used earliest are dropped first. Returns (data, counts)."""
    Q, P = data.pools.shape
    seg = data.seq_query()
    rank = _first_use(data)  # [Q, P]
    fits = (rank[seg.unsqueeze(1), data.pointers] < K).all(1)  # [S]
    counts = {
        "pools_smaller_than_k": int((data.pool_sizes < K).sum()),
        "pools_cut": int((data.pool_sizes > K).sum()),
    }
    data = data.select_sequences(fits)  # now every query uses at most K items
    Q, seg = data.num_queries, data.seq_query()
    used = _first_use(data) < P  # [Q, P]
    real = torch.arange(P).unsqueeze(0) < data.pool_sizes.unsqueeze(1)  # [Q, P]
    group = torch.where(used, 0, torch.where(real, 1, 2))  # 0 used, 1 fill, 2 padding
    order = (group * P + torch.arange(P)).argsort(dim=1)  # [Q, P] new position -> old item, pool order inside
    new_size = torch.clamp(real.sum(1), max=K)  # [Q]
    new_pos = torch.empty_like(order)
    new_pos.scatter_(1, order, torch.arange(P).expand(Q, P).contiguous())  # old item -> new position
    width = min(K, P)
    pools = torch.where(torch.arange(width) < new_size.unsqueeze(1), data.pools.gather(1, order[:, :width]), -1)
    pointers = new_pos[seg.unsqueeze(1), data.pointers]  # [S, L], all < K: used items come first
    return replace(data, pools=pools, pool_sizes=new_size, pointers=pointers), counts


def stratified_keep(data: CandidateData, N: int, seed: int) -> Tensor:
    """keep [S]: groups of more than N sequences sub-sampled to N, keeping the positive share.

    Per group: n sequences, p positive; k = round(N p / n) positives are kept, clamped to
    [1, N - 1] when the group has both outcomes (N >= 2), to at most p, and to at least
    N - (n - p); the k positives and N - k negatives are drawn uniformly (seeded).
    Groups of at most N are kept whole (the caller drops the smaller ones).
    """
    n = data.group_sizes()
    p = data.positives()
    k = torch.round(N * p.double() / n.double()).long()
    both = (p > 0) & (p < n) & (N >= 2)
    k = torch.where(both, k.clamp(1, N - 1), k)
    k = torch.minimum(k, p)
    k = torch.maximum(k, N - (n - p))
    quota = torch.stack([N - k, k], 1)  # [Q, 2]: negatives, positives
    quota = torch.where((n <= N).unsqueeze(1), n.unsqueeze(1), quota)  # keep small groups whole
    return _keep_quota(data, quota, seed)


def share_keep(data: CandidateData, share: float, seed: int) -> Tensor:
    """keep [S]: each group sub-sampled towards a positive share of `share` (0 < share < 1).

    Per group, p positives and m negatives. Both > 0: when p / (p + m) > share, every negative is kept
    and k = clamp(round(share * m / (1 - share)), 1, p) positives (drawn uniformly, seeded); otherwise
    every positive and j = clamp(round(p * (1 - share) / share), 1, m) negatives. Groups of one outcome
    (p = 0 or m = 0) are dropped: no subset of them has a share between 0 and 1.
    Example, share 0.5: 2 positives and 8 negatives keep 2 + 2; 6 and 3 keep 3 + 3; 3 and 1 keep 1 + 1.
    """
    p = data.positives()  # [Q]
    m = data.group_sizes() - p  # [Q]
    k = torch.round(share * m.double() / (1 - share)).long().clamp(min=1)
    j = torch.round(p.double() * (1 - share) / share).long().clamp(min=1)
    over = p.double() / (p + m).double().clamp_min(1) > share  # [Q] too many positives
    quota = torch.where(over.unsqueeze(1), torch.stack([m, torch.minimum(k, p)], 1), torch.stack([torch.minimum(j, m), p], 1))
    quota = torch.where(((p > 0) & (m > 0)).unsqueeze(1), quota, 0)  # [Q, 2]: negatives, positives
    return _keep_quota(data, quota, seed)


def _keep_quota(data: CandidateData, quota: Tensor, seed: int) -> Tensor:
    """keep [S]: per query, quota[q, 0] negatives and quota[q, 1] positives drawn uniformly (seeded generator)."""
    seg = data.seq_query()
    outcome = data.correct.long()  # [S]
    cls = seg * 2 + outcome  # [S] (query, outcome) class
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(data.num_sequences, generator=g)
    order = u.argsort()
    order = order[cls[order].argsort(stable=True)]  # by class, random inside
    counts = torch.bincount(cls, minlength=2 * data.num_queries)
    starts = counts.cumsum(0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order)) - starts[cls[order]]
    return rank < quota.flatten()[cls]


def balance_data(data: CandidateData, opts: BalanceOptions) -> tuple[CandidateData, list[dict[str, Any]]]:
    """Apply the steps (module docstring); returns (kept data, [{step, queries, sequences dropped, ...}])."""
    steps: list[dict[str, Any]] = []

    def step(name: str, keep: Tensor | None = None, new: CandidateData | None = None, **extra: int) -> None:
        nonlocal data
        q, s = data.num_queries, data.num_sequences
        data = new if new is not None else data.select_sequences(keep)
        steps.append({"step": name, "queries": q - data.num_queries, "sequences": s - data.num_sequences, **extra})

    def per_query(mask: Tensor) -> Tensor:
        return mask[segment_ids(data.offsets)]

    if opts.drop_failed:
        step("drop failed evaluations", ~data.failed)
    if opts.pool_size is not None:
        new, counts = restrict_pools(data, opts.pool_size)
        step(f"pool size {opts.pool_size}", new=new, **counts)
    if opts.group_size is not None:
        N = opts.group_size
        step(f"group size >= {N}", per_query(data.group_sizes() >= N))
        step(f"sub-sample to {N}", stratified_keep(data, N, opts.seed))
    if opts.positive_share is not None:
        step(f"positive share {opts.positive_share:g}", share_keep(data, opts.positive_share, opts.seed))
    if opts.tiers is not None and set(opts.tiers) != set(TIERS):
        tier = quality_tiers(data, raw_rewards(data, opts.reward), opts.tier_rules)
        wanted = torch.tensor([TIERS.index(t) for t in opts.tiers])
        step(f"tiers {','.join(opts.tiers)}", per_query(torch.isin(tier, wanted)))
    lo, hi = opts.positive_ratio
    if (lo, hi) != (0.0, 1.0):
        ratio = positive_ratio(data)
        step(f"positive ratio [{lo:g}, {hi:g}]", per_query((ratio >= lo - 1e-9) & (ratio <= hi + 1e-9)))
    if opts.drop_uniform:
        gap = reward_gap(data, raw_rewards(data, opts.reward))
        step("drop uniform-reward groups", per_query(gap > 1e-8))
    return data, steps


def brief(data: CandidateData, opts: BalanceOptions) -> dict[str, Any]:
    """The before/after figures shown by `lever data balance`."""
    if data.num_queries == 0:
        return {"queries": 0, "sequences": 0}
    sizes = data.group_sizes()
    pos = data.positives()
    r = raw_rewards(data, opts.reward)
    gap = reward_gap(data, r)
    tier = quality_tiers(data, r, opts.tier_rules)
    return {
        "queries": data.num_queries,
        "sequences": data.num_sequences,
        "group_size_min": int(sizes.min()),
        "group_size_mean": round(float(sizes.double().mean()), 2),
        "group_size_max": int(sizes.max()),
        "pool_size_min": int(data.pool_sizes.min()),
        "pool_size_max": int(data.pool_sizes.max()),
        "failed": int(data.failed.sum()),
        "positive_ratio_mean": round(float(positive_ratio(data).mean()), 4),
        "positive_share": round(float(pos.sum()) / data.num_sequences, 4),  # of all sequences in the file
        "all_negative": int((pos == 0).sum()),
        "all_positive": int((pos == sizes).sum()),
        "mixed": int(((pos > 0) & (pos < sizes)).sum()),
        "uniform_reward": int((gap <= 1e-8).sum()),
        **{f"tier_{name}": int((tier == i).sum()) for i, name in enumerate(TIERS)},
    }


# --------------------------------------------------------------------------- writing


def write_balanced(src: Path, data: CandidateData, out: Path, balance_record: dict[str, Any], force: bool = False) -> None:
    """Write `data` (a selection of the queries and candidates read from `src`) to `out` in
    the compatibility format, atomically (lever.io.atomic_write)."""
    src, out = Path(src), Path(out)
    check_output(src, out, force)
    st = src.stat()
    if (st.st_size, st.st_mtime_ns) != (data.meta.get("size"), data.meta.get("mtime_ns")):
        raise LeverError(f"{src}: the file changed since it was read", hint="run the command again")
    if data.cand_index is None or data.cand_count is None:
        raise ValueError("write_balanced needs data read from a file (cand_index, cand_count)")
    position = {qid: i for i, qid in enumerate(data.query_ids.tolist())}
    offsets, cand_count, sizes = data.offsets.tolist(), data.cand_count.tolist(), data.pool_sizes.tolist()
    cand_index, pointers, pools = data.cand_index.numpy(), data.pointers.numpy(), data.pools.numpy()  # sliced per query
    remap = bool(balance_record.get("pool_changed"))

    def write(tmp: Path) -> None:
        with open(tmp, "wb", buffering=1 << 20) as f, RawFile(src) as raw:
            meta = decode_json(raw.members["_meta"]) if "_meta" in raw.members else {}
            meta = meta if isinstance(meta, dict) else {"original": meta}
            meta["balance"] = {**balance_record, "previous": meta["balance"]} if "balance" in meta else balance_record
            f.write(b'{"_meta": ' + raw.unmark(json.dumps(meta).encode()))
            for n, (key, value) in enumerate(raw.members.items()):
                if n % 8192 == 8191:
                    raw.release()  # records already copied need not stay resident
                if key == "_meta":
                    continue
                if key.startswith("_"):
                    f.write(b",\n" + json.dumps(key).encode() + b": " + raw.unmark(bytes(value)))
                    continue
                q = position.get(int(key))
                if q is None:
                    continue
                a, b = offsets[q], offsets[q + 1]
                f.write(b",\n" + json.dumps(key).encode() + b": ")
                if not remap and b - a == cand_count[q]:  # every candidate kept: the record as it is
                    f.write(raw.unmark(bytes(value)) if raw.marked else value)  # (a raw record is a buffer)
                    continue
                record = _record_bytes(
                    value, cand_index[a:b].tolist(),
                    pointers[a:b].tolist() if remap else None,
                    pools[q, : sizes[q]].tolist() if remap else None,
                )  # fmt: skip
                f.write(raw.unmark(record))
            f.write(b"\n}\n")

    atomic_write(out, write)  # temp file beside OUT, fsync, rename: an interrupted run leaves no OUT


def _record_bytes(value: msgspec.Raw, keep: list[int], pointers: list[list[int]] | None, pool: list[int] | None) -> bytes:
    """One query record with only the candidates `keep` (file positions), copied byte for byte;
    with a new pool, candidate_pool_ids is replaced and each kept candidate's pointer remapped."""
    members = _MEMBERS.decode(value)  # key order as in the file
    cands = _RAW_LIST.decode(members["pointer_candidates"])
    if pointers is None:
        kept = [bytes(cands[i]) for i in keep]
    else:
        kept = []
        for i, ptr in zip(keep, pointers):
            cand = decode_json(cands[i])
            cand["pointer"] = ptr  # pointer_global names the same global items: unchanged
            kept.append(_encode(cand))
    parts = []
    for name, raw in members.items():
        if name == "pointer_candidates":
            body = b"[" + b", ".join(kept) + b"]"
        elif name == "candidate_pool_ids" and pool is not None:
            body = _encode(pool)
        else:
            body = bytes(raw)
        parts.append(json.dumps(name).encode() + b": " + body)
    return b"{" + b", ".join(parts) + b"}"


def check_output(src: Path, out: Path, force: bool) -> None:
    """OUT must not be IN, and must not exist unless force."""
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise LeverError(f"{out}: OUT is the input file; balance never modifies its input", hint="choose another OUT path")
    if out.exists() and not force:
        raise LeverError(f"{out}: already exists", hint="pass --force to overwrite it, or choose another OUT path")
    if out.exists() and out.is_dir():
        raise LeverError(f"{out}: is a directory", hint="OUT is the path of the JSON file to write")


@one_thread()
def balance_file(
    src: Path, out: Path, opts: BalanceOptions, force: bool = False, cache_dir: Path | None = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:  # fmt: skip
    """Read IN, decide, write OUT; returns {"before", "after", "steps", "out"} for display."""
    src, out = Path(src), Path(out)
    check_output(src, out, force)  # fail before the (long) read
    data = load_candidates(src, cache_dir=cache_dir, log=log)
    kept, steps = balance_data(data, opts)
    if kept.num_queries == 0:
        raise LeverError(
            f"{src}: balancing leaves no query, nothing to write",
            hint="loosen the options (see the steps with `lever data stats`)",
        )
    before, after = brief(data, opts), brief(kept, opts)
    sha256 = data.meta.get("sha256")
    del data  # only the kept part is needed from here on
    record = {
        "tool": "lever data balance",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": src.name,
        "source_sha256": sha256,
        "options": opts.record(),
        "steps": steps,
        "before": before,
        "after": after,
        "pool_changed": opts.pool_size is not None,
    }
    write_balanced(src, kept, out, record, force=force)
    return {"before": before, "after": after, "steps": steps, "out": str(out)}
