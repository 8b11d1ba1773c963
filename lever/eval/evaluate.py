"""Scoring a selector: it picks demonstrations, the VLM answers, VQA accuracy per shot (which checkpoint,
and which run it belongs to, is the recipe's business: `lever.recipe.evaluate`).

Results land in the run's evaluation folder (`lever.runs.layout.EvalDir`), named by a key of
two parts, so a second evaluation with the same inputs is instant and a changed input is new work:

* the generation key (`generation_key`): the checkpoint, every input of the evaluation world
  (model folders, OK-VQA files, image folders, features, the prompt protocol) and every eval
  setting that shapes the VLM's outputs: everything but the metric;
* the scoring key: the metric and `SCORING_VERSION` (post-processing, what a row holds).

An evaluation whose generation key matches a finished one (of this run, or of another run of
the plan with the same seed) is not asked of the VLM again: `rescore` takes that one's stored
raw outputs, post-processes and scores them under its own metric in seconds, and writes its own
results.jsonl and summary.json, so both evaluations stay verifiable.

    results.jsonl   one row per (split, shots, question): demo ids, the demonstrations' answers as the
                    prompt shows them (`demo_answers`), raw output, answer, the human answers, accuracy
    summary.json    accuracy (percent) per split and shot count, failures, the checkpoint used,
                    the inputs, and the row count and digest of results.jsonl

While it runs, answers are appended to `partial-<rank>.jsonl` after every chunk, so an
evaluation killed after an hour of VLM generation resumes where it stopped. A cached
evaluation is verified before it is served; a damaged one is an error that says to run
`lever evaluate PLAN --redo`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lever.errors import DamagedState, LeverError
from lever.io import read_jsonl
from lever.keys import content_key
from lever.model import SelectorBase
from lever.runs.layout import EvalDir
from lever.spec.schema import EvalSpec, SelectorSpec

from .backend import Request, demo_answer
from .distributed import barrier, gather_rows, ranks
from .postprocess import postprocess
from .select import demo_rows, fixed_pools, prompt_order, random_picks, random_pools, select_demos, similar_picks, similar_pools
from .vqa import vqa_accuracy
from .world import EvalSplit, EvalWorld

Progress = Callable[[int, int], None]  # (done, total) questions answered


# What a scored row means beyond the metric: 1 = `postprocess` as of lever 0.x, rows carry the human answers;
# 2 = rows also carry the demonstrations' answers as the prompt shows them (`demo_answers`: copy rate, majority vote);
# 3 = rows also carry the dataset's `answer_type` and `question_type` where it has them (accuracy by type).
# Raising it gives every evaluation a new key, served by re-scoring the stored raw outputs (no VLM).
SCORING_VERSION = 3


def generation_identity(identity: dict[str, Any]) -> dict[str, Any]:
    """The world's identity without the metric (the simulated world's `metric`, the protocol's `metric`):
    what the VLM's outputs depend on."""
    out = {k: v for k, v in identity.items() if k != "metric"}
    if isinstance(out.get("protocol"), dict):
        out["protocol"] = {k: v for k, v in out["protocol"].items() if k != "metric"}
    return out


def generation_key(ckpt_digest: str, identity: dict[str, Any], eval_settings: dict[str, Any], seed: int) -> str:
    """What the raw outputs depend on: the weights, every input of the world and every eval setting but the
    metric, the seed. `identity` and `eval_settings` are as a summary stores them (`inputs`, `eval`)."""
    settings = {k: v for k, v in eval_settings.items() if k != "metric"}
    return content_key({"ckpt": ckpt_digest, "world": generation_identity(identity), "eval": settings, "seed": seed})


def eval_key(ckpt_digest: str, world: EvalWorld, spec: EvalSpec, seed: int) -> str:
    """An evaluation's folder: its generation key and its scoring key (the resolved metric, SCORING_VERSION)."""
    gen = generation_key(ckpt_digest, world.identity, spec.model_dump(mode="json"), seed)
    return content_key({"generation": gen, "scoring": {"metric": world.protocol.metric, "version": SCORING_VERSION}})


def scored_row(row: dict[str, Any], answers: list[str], metric: str, types: dict[str, str] | None = None) -> dict[str, Any]:
    """`row` (as results.jsonl holds it) scored again from its raw output: post-processed, then VQA accuracy
    under `metric` against `answers`; a failed question keeps its empty answer and scores 0. `types`: the
    question's answer and question type (`Item.types`), kept on the row (a row written before rows held them
    gets them)."""
    answer = "" if row["failed"] else postprocess(row["raw_output"])
    accuracy = 0.0 if row["failed"] else vqa_accuracy(answer, answers, metric)
    return {**row, "answer": answer, "answers": list(answers), **(types or {}), "accuracy": accuracy}


def pools_for(split: EvalSplit, world: EvalWorld, spec: EvalSpec, seed: int, features: str | None = None) -> Tensor:
    """The candidate pool of each question of `split` (`eval.pool`): [M, K] global train rows. A `similar` pool is
    the nearest by the `features` a similar selector ranks by (None: the item features the learned selector reads)."""
    if spec.pool == "fixed":
        return fixed_pools(len(split.items), len(world.train_items), spec.pool_size, seed, split.self_rows)
    if spec.pool == "random":
        ids = [it.question_id for it in split.items]
        return random_pools(ids, len(world.train_items), spec.pool_size, seed, split.self_rows)
    if features is None:
        return similar_pools(split.features, world.train_features, spec.pool_size, split.self_rows)
    train, queries = world.features(features)
    return similar_pools(queries[split.name], train, spec.pool_size, split.self_rows)


def choose_demos(
    model: SelectorBase | None, world: EvalWorld, spec: EvalSpec, seed: int, selector: SelectorSpec | None = None
) -> dict[str, Tensor]:
    """Per split, every question's demonstrations for the largest shot count, ranked: [M, max shots] global train
    rows (`demos_at` puts the first s of them in prompt order). The trained `model` decodes greedily over each pool;
    a baseline selector (`selector.kind`) picks without training: none, random (seeded per question) or the most
    similar."""
    sel = selector or SelectorSpec()
    steps = max(spec.shots)
    features = sel.features if sel.kind == "similar" else None
    out: dict[str, Tensor] = {}
    for name, split in world.splits.items():
        if steps == 0 or sel.kind == "zero-shot":
            out[name] = torch.zeros(len(split.items), 0, dtype=torch.long)
            continue
        pools = pools_for(split, world, spec, seed, features)  # [M, K]
        if sel.kind == "random":
            out[name] = random_picks([it.question_id for it in split.items], pools, steps, seed)
        elif sel.kind == "similar":
            train, queries = world.features(sel.features)
            out[name] = similar_picks(queries[name], train, pools, steps)
        else:
            assert model is not None, "a learned selector needs its model"
            out[name] = select_demos(model, split.features, world.train_features, pools, steps)
    return out


def demos_at(ranked: Tensor, shots: int, selector: SelectorSpec | None = None) -> Tensor:
    """The s-shot demonstrations [M, s] of ranked picks, in prompt order (a `similar` selector's `order`)."""
    sel = selector or SelectorSpec()
    return prompt_order(ranked, shots, sel.order if sel.kind == "similar" else "most-similar-first")


def score(
    model: SelectorBase | None,
    ev: EvalDir,
    world: EvalWorld,
    spec: EvalSpec,
    seed: int,
    checkpoint: dict[str, Any],
    *,
    selector: SelectorSpec | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
    progress: Progress | None = None,
    generation: str | None = None,
) -> dict[str, Any]:
    """Let `model` (or a baseline `selector`, without a model) pick demonstrations for every question and shot count
    of `world`, ask the backend, and write results.jsonl and summary.json into `ev` (resuming from its partial
    answers); returns the summary.

    `checkpoint` is what the summary records of the weights (stage, epoch, reason, file, sha256), `generation`
    the generation key it records (what a later evaluation under another metric finds it by)."""
    r = ranks()
    backend = world.make_backend(r.device() if r.world > 1 else device)  # one process: the plan's device
    metric = world.protocol.metric
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    todo: list[Request] = []  # every request, in a fixed order: position p goes to rank p % world
    ranked = choose_demos(model, world, spec, seed, selector)  # split -> [M, max shots]
    caps: list[int] = []  # the shot count each request was asked at (a selector with STOP may use fewer)
    stops = getattr(model, "heads_cfg", None) is not None and model.heads_cfg.stop
    for split in world.splits.values():
        for shots in spec.shots:
            demos = demos_at(ranked[split.name], shots, selector)  # [M, shots] in prompt order
            for i, item in enumerate(split.items):
                todo.append(Request(split.name, item, [world.train_items[j] for j in demo_rows(demos[i], shots)]))
                caps.append(shots)
    # Answers already given by an interrupted evaluation (any rank, any world size) are kept; failed ones
    # (a missing image, say) are asked again, so fixing the files and re-running finishes the evaluation.
    done = {pos: row for pos, row in read_partials(ev).items() if not row.get("failed")}
    rows = [row for pos, row in done.items() if r.mine(pos)]
    mine = [(p, req) for p, req in enumerate(todo) if r.mine(p) and p not in done]
    if done and r.is_main:
        log(f"evaluation: resuming, {len(done)} of {len(todo)} answers already in {ev.path}")
    before, total = len(rows), len(rows) + len(mine)
    if progress and mine:
        progress(before, total)  # the total is known before the first answer
    with open_partial(ev.partial(r.rank)) as partial:
        for s, end in chunk_bounds(len(mine), spec.batch_size):
            chunk = mine[s:end]
            for (pos, req), resp in zip(chunk, backend.answer([req for _, req in chunk])):
                answer = "" if resp.failed else postprocess(resp.raw)
                rows.append(
                    {
                        "_pos": pos,
                        "split": req.split,
                        "shots": caps[pos],
                        **({"shots_used": len(req.demos)} if stops else {}),  # the demonstrations its prompt held
                        "question_id": req.query.question_id,
                        "demo_ids": [d.question_id for d in req.demos],
                        "demo_answers": [demo_answer(d) for d in req.demos],  # as the prompt shows them
                        "raw_output": resp.raw,
                        "answer": answer,
                        "answers": list(req.query.answers),  # what a re-scoring under another metric needs
                        **req.query.types(),  # answer_type, question_type: accuracy by type (`--by answer_type`)
                        "accuracy": 0.0 if resp.failed else vqa_accuracy(answer, req.query.answers, metric),
                        "failed": resp.failed,
                        **({"error": resp.error} if resp.failed else {}),
                    }
                )
                partial.write(json.dumps(rows[-1]) + "\n")
            partial.flush()  # a kill loses at most the chunk being answered
            if progress:
                progress(before + end, total)
    images = getattr(getattr(backend, "inner", backend), "cache_summary", None)  # the hf backend's image features
    if mine and images:
        log(f"evaluation: {images()}")
    counts = getattr(backend, "counts", None)  # the reward cache's (lever.eval.reward_cache)
    if mine and counts is not None:
        log(f"evaluation: {counts.calls:,} VLM calls, {counts.hits:,} answers from the reward cache")
    rows = gather_rows(r, rows)
    if not r.is_main:
        barrier(r)
        return ev.read()[0]
    failed = [row for row in rows if row["failed"]]
    if len(failed) > spec.max_failed * len(rows):
        barrier(r)
        first = "; ".join(dict.fromkeys(str(row.get("error")) for row in failed[:50]))
        raise LeverError(
            f"{len(failed)} of {len(rows)} answers failed ({len(failed) / len(rows):.1%}, above eval.max_failed = "
            f"{spec.max_failed:.1%}); first: {first[:600]}",
            hint="fix what the errors name and run the same command again (a failure that passes, such as running out "
            "of memory, is asked again; answered questions are kept), or raise eval.max_failed to score them 0",
        )
    summary = _summary(checkpoint, world, spec, time.perf_counter() - t0, generation)
    summary = ev.write(rows, summary)  # results, then the summary that vouches for them (its presence = complete)
    barrier(r)
    return summary


def _summary(
    checkpoint: dict[str, Any], world: EvalWorld, spec: EvalSpec, seconds: float, generation: str | None
) -> dict[str, Any]:
    """What summary.json says besides the splits and the rows' record."""
    return {
        "checkpoint": checkpoint,
        "backend": world.identity["backend"],
        "inputs": world.identity,
        "eval": spec.model_dump(mode="json"),
        "metric": world.protocol.metric,
        "scoring_version": SCORING_VERSION,
        **({"generation": generation} if generation else {}),
        "seconds": round(seconds, 2),
        "note": "accuracy in percent over all questions; failed questions score 0",
    }


def rescore(
    ev: EvalDir,
    source: EvalDir,
    source_rows: list[dict[str, Any]],
    world: EvalWorld,
    spec: EvalSpec,
    checkpoint: dict[str, Any],
    *,
    source_name: str,
    generation: str | None = None,
) -> dict[str, Any]:
    """Write into `ev` the verified rows of `source` (an evaluation with the same generation key) scored again
    under this world's metric: no backend is asked. The human answers come from the world (so an evaluation
    written before rows held them is re-scored too); the rows must be the questions and shot counts this
    evaluation asks, else it is damage. The demonstrations' answers (`demo_answers`) come from the world's train
    items when the source rows predate them. Returns the summary, which names the source (`source_name`)."""
    r = ranks()
    if not r.is_main:
        barrier(r)
        return ev.read()[0]
    t0 = time.perf_counter()
    metric = world.protocol.metric
    items = {(s.name, it.question_id): it for s in world.splits.values() for it in s.items}  # answers and types
    want = {(name, shots) for name in world.splits for shots in spec.shots}
    have = {(row["split"], row["shots"]) for row in source_rows}
    train = {it.question_id: it for it in world.train_items}
    missing = [row for row in source_rows if (row["split"], row["question_id"]) not in items]
    missing += [row for row in source_rows if "demo_answers" not in row and not set(row["demo_ids"]) <= train.keys()]
    counts = {name: sum(1 for row in source_rows if row["split"] == name) for name in world.splits}
    if have != want or missing or any(n != len(world.splits[k].items) * len(spec.shots) for k, n in counts.items()):
        barrier(r)
        raise DamagedState(f"{source.results} does not hold the questions and shot counts of its key", hint=source.fix)
    rows = [
        scored_row(
            row if "demo_answers" in row else {**row, "demo_answers": [demo_answer(train[q]) for q in row["demo_ids"]]},
            items[(row["split"], row["question_id"])].answers,
            metric,
            items[(row["split"], row["question_id"])].types(),
        )
        for row in source_rows
    ]
    summary = {**_summary(checkpoint, world, spec, time.perf_counter() - t0, generation), "rescored_from": source_name}
    summary = ev.write(rows, summary)
    barrier(r)
    return summary


def chunk_bounds(n: int, batch: int) -> list[tuple[int, int]]:
    """(start, end) of the answer chunks between two partial writes and progress reports: one batch first, so a
    rate shows from the first seconds, then four batches at a time."""
    starts = [0, *range(min(batch, n), n, 4 * batch)] if n else []
    return list(zip(starts, [*starts[1:], n]))


def read_partials(ev: EvalDir) -> dict[int, dict[str, Any]]:
    """Rows of an interrupted evaluation by position; a line cut short by a kill is ignored."""
    return {row["_pos"]: row for part in ev.partials() for row in read_jsonl(part)}


def open_partial(path: Path):
    """Open a partial-results file for appending, first cutting a last line that a kill left unfinished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])
    return open(path, "a", encoding="utf-8")
