"""Cost of an online GRPO epoch against an offline one, on the bundled benchmark (640 training queries), in one run.

Target (issue "On-policy RL"): an online GRPO epoch at group size 8 costs at most 3x an offline GRPO epoch of plan 5
(CPU, the simulated VLM included); a second identical run makes no VLM call.

    python benchmarks/bench_onpolicy.py [--rounds 3] [--num-generations 8] [--threads 1]

Every round trains plan 5 with one GRPO epoch three ways, each in a fresh runs folder of one temporary workspace
(the RCE stage is trained in each, so nothing is shared but the benchmark and the reward cache): offline (the data's
groups), online with a cold reward cache (a new cache file: every sampled sequence is a VLM call) and online again
with that cache warm (the same samples: no VLM call). The figure is the GRPO row's `time/epoch_s` (the epoch's
steps, its sampling and scoring, and its validation), the best of --rounds (the machine's noise only ever adds time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("LEVER_THREADS", str(args.threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from lever.eval import reward_cache
    from lever.io import read_jsonl
    from lever.recipe import Recipe, train
    from lever.spec import load_plan, load_workspace

    tmp = Path(tempfile.mkdtemp(prefix="bench_onpolicy-"))
    cache = os.environ.get("LEVER_BENCH_CACHE", str(ROOT / ".lever-cache"))  # the benchmark's generated world, shared
    base = ["grpo.epochs=1", 'eval.splits=["val"]']
    online = ['rollout.mode="online"', f"rollout.num_generations={args.num_generations}"]
    best: dict[str, float] = {}
    calls: dict[str, float] = {}
    runs = 0
    for rnd in range(args.rounds):
        for name, overrides, cache_file in (
            ("offline (plan 5)", base, f"rewards-{rnd}.sqlite"),
            (f"online, G={args.num_generations}, cold cache", base + online, f"rewards-{rnd}.sqlite"),
            (f"online, G={args.num_generations}, warm cache", base + online, f"rewards-{rnd}.sqlite"),
        ):
            runs += 1
            folder = tmp / f"run-{runs}"
            folder.mkdir()
            (folder / "lever.toml").write_text(f'runs = "runs"\ncache = "{cache}"\n', encoding="utf-8")
            reward_cache.CACHE_FILE = str(tmp / cache_file)  # this round's own cache: cold, then warm
            reward_cache._OPEN.clear()
            ws = load_workspace(folder / "lever.toml")
            r = Recipe.build(load_plan(ROOT / "plans" / "plan5.toml", overrides, ws.plans_dir), ws, 0, lambda m: None)
            train(r)
            row = [x for x in read_jsonl(r.run.path / "metrics.jsonl") if x["stage"] == "grpo"][-1]
            best[name] = min(best.get(name, float("inf")), row["time/epoch_s"])
            calls[name] = row.get("cost/rollout/calls", 0.0)
            print(f"round {rnd + 1}: {name}: {row['time/epoch_s']:.2f} s, VLM calls {calls[name]:.0f}", file=sys.stderr)
    offline = best["offline (plan 5)"]
    print(f"| epoch | s (best of {args.rounds}) | x offline | VLM calls |")
    print("|---|---|---|---|")
    for name, s in best.items():
        print(f"| {name} | {s:.2f} | {s / offline:.2f} | {calls[name]:.0f} |")
    print(json.dumps({"threads": os.environ["LEVER_THREADS"], "best_s": best}))


if __name__ == "__main__":
    main()
