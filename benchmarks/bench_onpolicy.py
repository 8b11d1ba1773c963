"""Cost of an online GRPO epoch against an offline one, on the bundled benchmark (640 training queries), in one run.

Target (issue "On-policy RL"): an online GRPO epoch at group size 8 costs at most 3x an offline GRPO epoch of plan 5
(CPU, the simulated VLM included); a second identical run makes no VLM call.

    python benchmarks/bench_onpolicy.py [--rounds 3] [--num-generations 8] [--threads 1] [--before REF]
    python benchmarks/bench_onpolicy.py --hf [--rounds 3] [--questions 32] [--shots 2] [--batch-size 8] [--before REF]

Every round trains plan 5 with one GRPO epoch three ways, each in a fresh runs folder of one temporary workspace
(the RCE stage is trained in each, so nothing is shared but the benchmark and the reward cache): offline (the data's
groups), online with a cold reward cache (a new cache file: every sampled sequence is a VLM call) and online again
with that cache warm (the same samples: no VLM call). The figure is the GRPO row's `time/epoch_s` (the epoch's
steps, its sampling and scoring, and its validation), the best of --rounds (the machine's noise only ever adds time),
and the process's CPU seconds of that epoch (steadier than the wall clock on a loaded machine).

--before REF: before and after in one run. Each round runs the benchmark once with the lever package of git commit
REF (`git archive`, put first on the import path) and once with this checkout's, in turn, each in a fresh process.

--hf: the second target, on the tests' tiny Qwen2.5-VL (built from a config; the tests' OK-VQA fixture of 48x64
images): the reward backend scores at least as many sequences per second as `lever evaluate` answers questions at
the same batch size and shot count. In one process, each round: `lever evaluate` of the random-demonstrations
baseline over --questions val questions (`lever.recipe.evaluate` with redo, its preflight left out; the command
answers in chunks of eval.batch_size); then the reward backend (`Recipe.scoring`, as online GRPO builds it, on a
new reward cache file: every sequence is a VLM call) scoring as many --shots-shot sequences of train queries,
--num-generations per query and 16 queries per call (online GRPO's batch). Both start with an empty image-feature
cache and an empty reward cache (`lever evaluate` answers through it where it does). The figures are prompts per
second of wall time and of the process's CPU time (steadier on a loaded machine), each the best of --rounds.
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
    ap.add_argument("--before", default="", help="a git commit: time its lever too, round by round in turn with this one")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # a child of --before: one JSON line
    args = ap.parse_args()
    os.environ.setdefault("LEVER_THREADS", str(args.threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.before:
        return before_and_after(args)
    res = hf_rates(args) if args.hf else epochs(args)
    if args.json:
        print(json.dumps(res))
        return
    table({"": res}, args)


def before_and_after(args: argparse.Namespace) -> None:
    """--before REF: each round runs this benchmark once on REF's lever (its files, `git archive`, first on the
    import path) and once on this checkout's, in turn, each in a fresh process; the best of --rounds of each."""
    import subprocess

    old = Path(tempfile.mkdtemp(prefix="bench_onpolicy-before-"))
    subprocess.run(f"git -C {ROOT} archive {args.before} lever | tar -x -C {old}", shell=True, check=True)
    child = [sys.argv[0], *[a for a in sys.argv[1:] if not a.startswith("--before") and a != args.before]]
    child += ["--rounds", "1", "--json"]
    env = {**os.environ, "LEVER_BENCH_CACHE": os.environ.get("LEVER_BENCH_CACHE", str(ROOT / ".lever-cache"))}
    results: dict[str, dict] = {}
    for rnd in range(args.rounds):
        for label, path in ((f"before ({args.before})", str(old)), ("after", "")):
            e = {**env, "PYTHONPATH": os.pathsep.join(x for x in (path, env.get("PYTHONPATH", "")) if x)}
            out = subprocess.run([sys.executable, *child], env=e, capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"round {rnd + 1}, {label}: {res}", file=sys.stderr)
            results[label] = merge_best(results.get(label), res)
    table(results, args)


def merge_best(acc: dict | None, res: dict) -> dict:
    """The per-entry minimum of the timing tables of two rounds (the rest from the latest)."""
    if acc is None:
        return res
    out = dict(res)
    for key in ("wall_s", "cpu_s"):
        out[key] = {k: min(v, acc[key][k]) for k, v in res[key].items()}
    return out


def table(results: dict[str, dict], args: argparse.Namespace) -> None:
    """The markdown table of one or two code versions' results."""
    code = "code | " if len(results) > 1 else ""
    sep = "---|" if len(results) > 1 else ""
    if args.hf:
        print(f"| {code}tiny Qwen2.5-VL, batch {args.batch_size}, {args.shots} shots | prompts | per s | per CPU s |")
        print(f"|{sep}---|---|---|---|")
    else:
        print(f"| {code}epoch | s (best of {args.rounds}) | x offline | CPU s | x offline (CPU) | VLM calls |")
        print(f"|{sep}---|---|---|---|---|---|")
    for label, res in results.items():
        lead = f"{label} | " if code else ""
        wall, cpu = res["wall_s"], res["cpu_s"]
        if args.hf:
            n = res["prompts"]
            for name, what in (("evaluate", "`lever evaluate` (answers)"), ("reward", "reward backend, cold cache (sequences)")):
                print(f"| {lead}{what} | {n[name]} | {n[name] / wall[name]:.2f} | {n[name] / cpu[name]:.2f} |")
            continue
        off = OFFLINE
        for name in wall:
            print(
                f"| {lead}{name} | {wall[name]:.2f} | {wall[name] / wall[off]:.2f} | {cpu[name]:.2f} | "
                f"{cpu[name] / cpu[off]:.2f} | {res['calls'][name]:.0f} |"
            )
    print(json.dumps({"threads": os.environ["LEVER_THREADS"], "results": results}))


OFFLINE = "offline (plan 5)"


def epochs(args: argparse.Namespace) -> dict:
    """One GRPO epoch of plan 5 offline, online cold and online warm (module docstring): wall and CPU seconds."""
    import time

    from lever.eval import reward_cache
    from lever.io import read_jsonl
    from lever.recipe import Recipe, train
    from lever.spec import load_plan, load_workspace
    from lever.train import stage

    epoch_cpu: dict[str, float] = {}  # the process's CPU seconds of each stage's last epoch (steadier under load)
    run_epoch = stage.StageRunner._epoch

    def timed_epoch(self, epoch: int) -> dict:
        c = time.process_time()
        row = run_epoch(self, epoch)
        epoch_cpu[self.s.name] = time.process_time() - c
        return row

    stage.StageRunner._epoch = timed_epoch
    tmp = Path(tempfile.mkdtemp(prefix="bench_onpolicy-"))
    cache = os.environ.get("LEVER_BENCH_CACHE", str(ROOT / ".lever-cache"))  # the benchmark's generated world, shared
    base = ["grpo.epochs=1", 'eval.splits=["val"]']
    online = ['rollout.mode="online"', f"rollout.num_generations={args.num_generations}"]
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    calls: dict[str, float] = {}
    runs = 0
    for rnd in range(args.rounds):
        for name, overrides, cache_file in (
            (OFFLINE, base, f"rewards-{rnd}.sqlite"),
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
            wall[name] = min(wall.get(name, float("inf")), row["time/epoch_s"])
            cpu[name] = min(cpu.get(name, float("inf")), epoch_cpu["grpo"])
            calls[name] = row.get("cost/rollout/calls", 0.0)
            print(
                f"round {rnd + 1}: {name}: {row['time/epoch_s']:.2f} s, CPU {epoch_cpu['grpo']:.2f} s, "
                f"VLM calls {calls[name]:.0f}",
                file=sys.stderr,
            )
    return {"wall_s": wall, "cpu_s": cpu, "calls": calls}


def hf_rates(args: argparse.Namespace) -> dict:
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
    wall = {"evaluate": float("inf"), "reward": float("inf")}
    cpu = dict(wall)

    def timed(name: str, fn) -> None:
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall[name], cpu[name] = min(wall[name], time.perf_counter() - w), min(cpu[name], time.process_time() - c)

    def reward() -> None:
        for s in range(0, len(rows), 16 * g):  # online GRPO's call: a batch of 16 queries x their sequences
            scoring.rewards(rows[s : s + 16 * g], seqs[s : s + 16 * g])

    for rnd in range(args.rounds):
        image_cache._CACHES.clear()
        reward_cache.CACHE_FILE = f"rewards-eval-{rnd}.sqlite"  # where `lever evaluate` asks through it: cold too
        timed("evaluate", lambda: evaluate(r, redo=True, preflight=False))
        image_cache._CACHES.clear()
        reward_cache.CACHE_FILE = f"rewards-hf-{rnd}.sqlite"  # a cold reward cache: every sequence is a VLM call
        scoring = build_scoring(r.dataset, r.plan.eval, r.plan.reward, "cpu", lambda m: None)
        timed("reward", reward)
        assert scoring.counts.calls == len(rows), scoring.counts
        print(f"round {rnd + 1}: wall {wall}, cpu {cpu}", file=sys.stderr)
    return {"wall_s": wall, "cpu_s": cpu, "prompts": {"evaluate": n, "reward": len(rows)}}


if __name__ == "__main__":
    main()
