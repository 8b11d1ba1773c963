"""`lever evaluate`: the selected checkpoint picks demonstrations, the VLM answers, VQA accuracy per shot.

Results land in `<run>/eval/<key>/` where the key hashes the checkpoint, the backend and
the eval settings, so a second evaluation with the same inputs is instant:

    results.jsonl   one row per (split, shots, question): demo ids, raw output, answer, accuracy
    summary.json    accuracy (percent) per split and shot count, failures, the checkpoint used

While it runs, answers are appended to `partial-<rank>.jsonl` after every chunk, so an
evaluation killed after an hour of VLM generation resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lever.errors import LeverError
from lever.io import read_json, read_jsonl, write_json, write_jsonl
from lever.model import build_selector
from lever.spec import Plan, Workspace
from lever.train.checkpoint import checkpoint_info, load_into, load_weights, state_digest

from .backend import Request
from .distributed import barrier, gather_rows, ranks
from .postprocess import postprocess
from .select import random_pools, select_demos, similar_pools
from .sources import EvalWorld, eval_world
from .vqa import vqa_accuracy

Progress = Callable[[int, int], None]  # (done, total) questions answered


def checkpoint_for(run_dir: Path, epoch: int | None) -> dict[str, Any]:
    """The run's selected checkpoint, or epoch `epoch` of its final stage (recorded as a hand pick)."""
    selected = read_json(run_dir / "selected.json")
    if selected is None:
        raise LeverError(
            f"{run_dir} has no selected checkpoint: the run has not finished training", hint="run `lever run` on the plan first"
        )
    if epoch is None:
        return selected
    path = Path(selected["dir"]) / "ckpt" / f"epoch-{epoch:03d}.safetensors"
    if not path.is_file():
        have = sorted(int(p.stem.split("-")[1]) for p in (Path(selected["dir"]) / "ckpt").glob("epoch-*.safetensors"))
        raise LeverError(
            f"--epoch {epoch}: stage '{selected['stage']}' has no such checkpoint",
            hint=f"its epochs are {have[0]}-{have[-1]}" if have else "it has no checkpoints",
        )
    info = checkpoint_info(path) or {}
    return {
        **selected,
        "epoch": epoch,
        "checkpoint": str(path),
        "value": info.get("metrics", {}).get(selected["metric"]),
        "reason": f"epoch {epoch} chosen with --epoch",
    }


def eval_key(ckpt_digest: str, world: EvalWorld, plan: Plan, seed: int) -> str:
    blob = json.dumps(
        {"ckpt": ckpt_digest, "world": world.identity, "eval": plan.eval.model_dump(mode="json"), "seed": seed}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def evaluate_run(
    run_dir: Path,
    plan: Plan,
    ws: Workspace,
    seed: int,
    *,
    epoch: int | None = None,
    features_path: Path | None = None,
    log: Callable[[str], None] = print,
    progress: Progress | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Evaluate the run's selected (or `epoch`) checkpoint; returns the eval dir and its summary."""
    ckpt = checkpoint_for(run_dir, epoch)
    state = load_weights(Path(ckpt["checkpoint"]))
    world = eval_world(ws, plan.eval, features_path, log)
    key = eval_key(state_digest(state), world, plan, seed)
    out_dir = run_dir / "eval" / key
    summary = read_json(out_dir / "summary.json")
    if summary is not None:
        log(f"evaluation cached in {out_dir}")
        _mark_selected(out_dir, epoch)
        return out_dir, summary

    r = ranks()
    backend = world.make_backend(r.device())
    m = plan.model
    model = build_selector(world.train_features.shape[1], m)
    load_into(model, state, ckpt["checkpoint"])
    spec = plan.eval
    if spec.pool_size > len(world.train_items):
        raise LeverError(f"eval.pool_size = {spec.pool_size} but there are only {len(world.train_items)} train items")
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    todo: list[Request] = []  # every request, in a fixed order: position p goes to rank p % world
    for split in world.splits.values():
        if spec.pool == "similar":
            pools = similar_pools(split.features, world.train_features, spec.pool_size, split.self_rows)
        else:
            pools = random_pools(
                [it.question_id for it in split.items], len(world.train_items), spec.pool_size, seed, split.self_rows
            )
        picks = select_demos(model, split.features, world.train_features, pools, max(spec.shots))  # [M, max shots]
        for shots in spec.shots:
            for i, item in enumerate(split.items):
                todo.append(Request(split.name, item, [world.train_items[j] for j in picks[i, :shots].tolist()]))
    # Answers already given by an interrupted evaluation (any rank, any world size) are kept.
    done = read_partials(out_dir)
    rows = [row for pos, row in done.items() if r.mine(pos)]
    mine = [(p, req) for p, req in enumerate(todo) if r.mine(p) and p not in done]
    if done and r.is_main:
        log(f"evaluation: resuming, {len(done)} of {len(todo)} answers already in {out_dir}")
    step = spec.batch_size * 16
    with open_partial(out_dir / f"partial-{r.rank}.jsonl") as partial:
        for s in range(0, len(mine), step):
            chunk = mine[s : s + step]
            for (pos, req), resp in zip(chunk, backend.answer([req for _, req in chunk])):
                answer = "" if resp.failed else postprocess(resp.raw)
                rows.append(
                    {
                        "_pos": pos,
                        "split": req.split,
                        "shots": len(req.demos),
                        "question_id": req.query.question_id,
                        "demo_ids": [d.question_id for d in req.demos],
                        "raw_output": resp.raw,
                        "answer": answer,
                        "accuracy": 0.0 if resp.failed else vqa_accuracy(answer, req.query.answers),
                        "failed": resp.failed,
                        **({"error": resp.error} if resp.failed else {}),
                    }
                )
                partial.write(json.dumps(rows[-1]) + "\n")
            partial.flush()  # a kill loses at most the chunk being answered
            if progress:
                progress(min(s + step, len(mine)), len(mine))
    rows = gather_rows(r, rows)
    if not r.is_main:
        barrier(r)
        return out_dir, read_json(out_dir / "summary.json")
    summary = {
        "checkpoint": ckpt,
        "backend": world.identity["backend"],
        "eval": spec.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - t0, 2),
        "splits": _summarise(rows),
        "note": "accuracy in percent over all questions; failed questions score 0",
    }
    write_jsonl(out_dir / "results.jsonl", rows)
    write_json(out_dir / "summary.json", summary)  # written last: its presence marks a complete evaluation
    for part in out_dir.glob("partial-*.jsonl"):
        part.unlink()
    _mark_selected(out_dir, epoch)
    barrier(r)
    return out_dir, summary


def _mark_selected(out_dir: Path, epoch: int | None) -> None:
    """Record which evaluation is the selected checkpoint's (the one tables compare); --epoch runs are extras."""
    if epoch is None:
        write_json(out_dir.parent / "selected.json", {"key": out_dir.name})


def read_partials(out_dir: Path) -> dict[int, dict[str, Any]]:
    """Rows of an interrupted evaluation by position; a line cut short by a kill is ignored."""
    return {row["_pos"]: row for part in sorted(out_dir.glob("partial-*.jsonl")) for row in read_jsonl(part)}


def open_partial(path: Path):
    """Open a partial-results file for appending, first cutting a last line that a kill left unfinished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])
    return open(path, "a", encoding="utf-8")


def _summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        cell = out.setdefault(r["split"], {}).setdefault(str(r["shots"]), {"accuracy": 0.0, "n": 0, "failed": 0})
        cell["accuracy"] += r["accuracy"]
        cell["n"] += 1
        cell["failed"] += int(r["failed"])
    for split in out.values():
        for cell in split.values():
            cell["accuracy"] = round(100.0 * cell["accuracy"] / max(cell["n"], 1), 2)
    return out
