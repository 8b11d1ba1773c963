"""Cost of an online GRPO epoch against an offline one, on the bundled benchmark (640 training queries), in one run.

Target (issue "On-policy RL"): an online GRPO epoch at group size 8 costs at most 3x an offline GRPO epoch of plan 5
(CPU, the simulated VLM included); a second identical run makes no VLM call.

    python benchmarks/bench_onpolicy.py [--rounds 3] [--num-generations 8] [--threads 1]
    python benchmarks/bench_onpolicy.py --hf [--rounds 3] [--questions 32] [--shots 2] [--batch-size 8]

Every round trains plan 5 with one GRPO epoch three ways, each in a fresh runs folder of one temporary workspace
(the RCE stage is trained in each, so nothing is shared but the benchmark and the reward cache): offline (the data's
groups), online with a cold reward cache (a new cache file: every sampled sequence is a VLM call) and online again
with that cache warm (the same samples: no VLM call). The figure is the GRPO row's `time/epoch_s` (the epoch's
steps, its sampling and scoring, and its validation), the best of --rounds (the machine's noise only ever adds time).

--hf: the second target, on the tests' tiny Qwen2.5-VL (built from a config; the tests' OK-VQA fixture of 48x64
images): the reward backend scores at least as many sequences per second as `lever evaluate` answers questions at
the same batch size and shot count. In one process, each round: `lever evaluate` of the random-demonstrations
baseline over --questions val questions (`lever.recipe.evaluate` with redo, its preflight left out; the command
answers in chunks of eval.batch_size), also its answering loop alone (the summary's `seconds`); then the reward
backend (`Recipe.scoring`, as online GRPO builds it, on a new reward cache file: every sequence is a VLM call)
scoring as many --shots-shot sequences of train queries, --num-generations per query and 16 queries per call
(online GRPO's batch). Both start with an empty image-feature cache. The figure is prompts per second, the best
of --rounds.
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
    ap.add_argument("--hf", action="store_true", help="the reward backend against `lever evaluate` (see above)")
    ap.add_argument("--questions", type=int, default=32, help="--hf: prompts per path")
    ap.add_argument("--shots", type=int, default=2, help="--hf: demonstrations per prompt")
    ap.add_argument("--batch-size", type=int, default=8, help="--hf: eval.batch_size")
    args = ap.parse_args()
    os.environ.setdefault("LEVER_THREADS", str(args.threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.hf:
        return hf_rates(args)

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


def hf_rates(args: argparse.Namespace) -> None:
    """The reward backend's sequences/s against `lever evaluate`'s answers/s on the tiny Qwen2.5-VL (docstring)."""
    import random
    import time

    sys.path.insert(0, str(ROOT / "tests"))
    import transformers
    from tiny_models import random_image, write_okvqa_workspace

    import lever.eval.clip as clip_mod
    import lever.eval.world as world_mod
    from lever.eval import image_cache, reward_cache
    from lever.eval.hf import HFBackend
    from lever.eval.rollout import build_scoring
    from lever.recipe import Recipe, evaluate
    from lever.spec import load_plan, load_workspace
    from lever.threads import configure_threads

    tmp = Path(tempfile.mkdtemp(prefix="bench_onpolicy-hf-"))
    n, g = args.questions, args.num_generations
    ws_file, clip_pair, (model, processor) = write_okvqa_workspace(tmp, n_train=80, n_val=n, pool=8)
    random_image(tmp / "okvqa_val" / "images" / "COCO_val2014_000000000503.jpg", seed=3)  # the fixture leaves one out
    # The models are the tests' in-memory ones (as tests/test_hf_e2e.py builds its backends): no download, no torchvision.
    clip_mod.load_clip = lambda model_dir, device="cpu": (clip_pair[0].eval(), clip_pair[1])
    transformers.AutoProcessor.from_pretrained = lambda *a, **k: processor
    world_mod.make_hf_backend = lambda ws, spec, device="cpu", protocol=None: HFBackend.from_pretrained_objects(
        model, processor, "cpu", spec.batch_size, spec.max_new_tokens, spec.num_beams, protocol
    )
    ws = load_workspace(ws_file)
    overrides = [f"eval.questions={n}", f"eval.shots=[{args.shots}]", f"eval.batch_size={args.batch_size}", 'eval.splits=["val"]']
    r = Recipe.build(load_plan(ROOT / "plans" / "baselines" / "random.toml", overrides, ws.plans_dir), ws, 0, lambda m: None)
    configure_threads()
    rng = random.Random(0)
    n_train = 80
    queries = [rng.randrange(n_train) for _ in range(max(1, n // g))]
    seqs = [rng.sample([j for j in range(n_train) if j != q], args.shots) for q in queries for _ in range(g)]
    rows = [q for q in queries for _ in range(g)]
    best = {"evaluate": float("inf"), "evaluate, answering": float("inf"), "reward": float("inf")}
    for rnd in range(args.rounds):
        image_cache._CACHES.clear()
        t0 = time.perf_counter()
        summary = evaluate(r, redo=True, preflight=False).summary
        best["evaluate"] = min(best["evaluate"], time.perf_counter() - t0)
        best["evaluate, answering"] = min(best["evaluate, answering"], summary["seconds"])  # its backend built
        assert summary["splits"]["val"][str(args.shots)]["failed"] == 0
        image_cache._CACHES.clear()
        reward_cache.CACHE_FILE = f"rewards-hf-{rnd}.sqlite"  # a cold reward cache: every sequence is a VLM call
        scoring = build_scoring(r.dataset, r.plan.eval, r.plan.reward, "cpu", lambda m: None)
        t0 = time.perf_counter()
        for s in range(0, len(rows), 16 * g):  # online GRPO's call: a batch of 16 queries x their sequences
            scoring.rewards(rows[s : s + 16 * g], seqs[s : s + 16 * g])
        best["reward"] = min(best["reward"], time.perf_counter() - t0)
        assert scoring.counts.calls == len(rows), scoring.counts
        print(
            f"round {rnd + 1}: evaluate {n / best['evaluate']:.2f} answers/s, reward {len(rows) / best['reward']:.2f} seq/s",
            file=sys.stderr,
        )
    print(f"| tiny Qwen2.5-VL, batch {args.batch_size}, {args.shots} shots | prompts | s (best of {args.rounds}) | per s |")
    print("|---|---|---|---|")
    print(f"| `lever evaluate` (answers) | {n} | {best['evaluate']:.2f} | {n / best['evaluate']:.2f} |")
    ans = best["evaluate, answering"]
    print(f"| `lever evaluate`, its answering loop (`seconds` in summary.json) | {n} | {ans:.2f} | {n / ans:.2f} |")
    print(f"| reward backend, cold cache (sequences) | {len(rows)} | {best['reward']:.2f} | {len(rows) / best['reward']:.2f} |")
    print(json.dumps({"threads": os.environ["LEVER_THREADS"], "best_s": best, "prompts": {"evaluate": n, "reward": len(rows)}}))


if __name__ == "__main__":
    main()
