"""On-policy data for a recipe's stages: refresh rounds (docs/training.md, On-policy).

A refresh round (`refresh.rounds`, stage `grpo_r<r>`) trains GRPO on new groups for the plan's training
queries, proposed by the selector as it stands after the stage before (its hand-off weights): `lever data
generate --policy` run inside the stage, on each query's own pool (the data's), with the round's sources
(samples at the set temperatures, the beam, random, retrieval), deduplicated as `data generate` does, every
sequence scored by the workspace's VLM through the reward cache with the plan's protocol and metric, and each
with its behaviour log-probability (for `grpo.off_policy`). The plan's data filter then applies as to the
plan's own data; the validation queries (and `val/loss`) stay the plan's.

The round's data is `<stage folder>/data/candidates.json`, in the compatibility format (`lever data stats`
reads it); the stage key holds what it depends on (the hand-off weights' digest, the round's sources, the
VLM and protocol identity), so it is reused with the stage, and a killed generation resumes from its parts.
`data/refresh.json` records what the round cost (VLM calls, cache hits, seconds).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor

from lever.data.candidates import CandidateData
from lever.data.reader import load_candidates
from lever.errors import LeverError
from lever.eval.distributed import Ranks
from lever.eval.generate import GenerateOptions, Sources, generate_file
from lever.eval.rollout import OnlineSource
from lever.io import read_state, write_json
from lever.model import SelectorBase
from lever.spec.schema import Stage
from lever.train.checkpoint import state_digest, state_of
from lever.train.plandata import make_groups, refreshed_data
from lever.train.stage import Reporter, derive_seed

from .recipe import Recipe


def refresh_settings(r: Recipe, stage: Stage, model: SelectorBase) -> dict[str, Any]:
    """What a refresh round's groups depend on besides the stage before: the weights that propose them, the
    round's sources, the VLM and protocol identity, the metric (part of the round's stage key)."""
    rf = r.plan.refresh.model_dump(mode="json", exclude={"rounds", "epochs"})
    return {
        "round": stage.refresh,
        "weights": state_digest(state_of(model)),
        "sources": rf,
        "scoring": r.scoring.identity,
        "metric": r.scoring.metric,
    }


def max_calls(rf: Any, queries: int, k: int, shots: int) -> int:
    """The most prompts a round can send to the VLM: every source's sequences for every query (before
    deduplication and the cache)."""
    return queries * (rf.beams + rf.samples * len(rf.temperatures) + rf.random + min(rf.retrieval, k // shots))


def about(seconds: float) -> str:
    """A duration as a person reads it: 48 s, 4 min 8 s, 1 h 44 min."""
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{s} s"
    h, rest = divmod(s, 3600)
    return f"{h} h {rest // 60} min" if h else f"{rest // 60} min {rest % 60} s"


def calibrator(r: Recipe, stage: str, most: int, say: Callable[[str], None]) -> Callable[..., None]:
    """A callback (any arguments) that, the first time the stage's VLM has answered prompts (cache hits are not
    timed), says what they took and the time they predict for the stage's other calls, at most (its `most`, or
    what the budget leaves): `grpo: the first 384 VLM calls took 3.1 s: about 3.1 s at most for the other 384`."""
    before, said = r.scoring.counts.copy(), []

    def calibrate(*_: Any) -> None:
        spent = r.scoring.counts.since(before)
        if spent.calls and not said:
            said.append(True)
            b = r.scoring.backend.budget
            rest = max(0, most - spent.calls if b is None else min(most - spent.calls, b.limit - b.spent))
            per = spent.seconds / spent.calls
            say(
                f"{stage}: the first {spent.calls:,} VLM calls took {about(spent.seconds)} ({per:.3g} s each): about "
                f"{about(per * rest)} at most for the other {rest:,}"
            )

    return calibrate


def budget_note(r: Recipe) -> str:
    """What is left of `lever run --max-vlm-calls`, for the cost line a stage prints first ("" without a budget)."""
    b = r.scoring.backend.budget
    return "" if b is None else f"; the budget (--max-vlm-calls) allows {b.limit - b.spent:,} more"


def refresh_round(
    r: Recipe, stage: Stage, model: SelectorBase, train: CandidateData, stage_dir: Path, rep: Reporter
) -> CandidateData:
    """The round's training groups: generated into the stage folder (or reused, or resumed), then the plan's filter."""
    folder = stage_dir / "data"
    out = folder / "candidates.json"
    if not out.is_file():
        rf = r.plan.refresh
        shots = int(train.pointers.shape[-1])
        pools = {int(q): p[: int(n)].tolist() for q, p, n in zip(train.query_ids, train.pools, train.pool_sizes)}
        if len({len(p) for p in pools.values()}) > 1:
            raise LeverError(f"{r.lp.path}: refresh rounds need the data's pools to be of one size")
        k = len(next(iter(pools.values())))
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "pools.json", {str(q): p for q, p in pools.items()})
        src = Sources(rf.beams, tuple(rf.temperatures), rf.samples, rf.random, rf.retrieval)
        opts = GenerateOptions(shots=shots, sources=src, seed=derive_seed(r.seed, stage.name, "refresh"), dedupe=rf.dedupe)
        rep.info(
            f"{stage.name}: refreshing {len(pools)} groups with the selector after the stage before: at most "
            f"{max_calls(rf, len(pools), k, shots):,} VLM calls (fewer after deduplication and the reward cache)"
            f"{budget_note(r)}"
        )
        before = r.scoring.counts.copy()
        calibrate = calibrator(r, stage.name, max_calls(rf, len(pools), k, shots), rep.info)  # after the first chunk

        policy = copy.deepcopy(model).cpu()  # proposals are drawn on the CPU (seeded per query)
        label = f"{r.name} seed {r.seed} {stage.name} weights {state_digest(state_of(model))}"
        report = generate_file(
            r.dataset, folder / "pools.json", r.loaded.features, out, opts=opts, spec=r.plan.eval, policy=(label, policy),
            backend=r.scoring.backend, log=rep.info, progress=calibrate, rk=Ranks(),
        )  # fmt: skip
        spent = r.scoring.counts.since(before)
        write_json(folder / "refresh.json", {**report, "out": out.name, **spent.metrics("vlm")})
        rep.info(
            f"{stage.name}: {report['sequences']:,} sequences for {report['queries']} queries "
            f"({spent.calls:,} VLM calls, {spent.hits:,} cache hits)"
        )
    data = load_candidates(out, cache_dir=r.ws.cache_dir / "candidates", log=lambda m: None, duplicates="keep")
    return refreshed_data(data, r.plan)


def refresh_cost(stage_dir: Path) -> dict[str, Any] | None:
    """What a finished round recorded of its generation (None when it has none)."""
    return read_state(stage_dir / "data" / "refresh.json", fix="")


def online_source(
    r: Recipe, stage: Stage, model: SelectorBase, train: CandidateData, feats: Tensor, rep: Reporter
) -> OnlineSource:
    """Online GRPO's batches for a GRPO stage (`rollout.mode = "online"`): fresh groups for the stage's training
    queries every step, scored through the reward cache. Says first how many VLM calls the stage makes at most."""
    ro, opt = r.plan.rollout, stage.opt
    most = train.num_queries * ro.num_generations * stage.epochs
    rep.info(
        f"{stage.name}: online GRPO, {train.num_queries} queries x {ro.num_generations} samples x {stage.epochs} epochs: "
        f"at most {most:,} VLM calls (fewer through the reward cache){budget_note(r)}"
    )
    make = partial(make_groups, plan=r.plan, features=feats)
    source = OnlineSource(r.scoring, model, train, feats, make, ro, opt.batch_size, r.seed, stage.name)
    source.after_rollout = calibrator(r, stage.name, most, rep.info)  # the first batch's seconds predict the rest
    return source
