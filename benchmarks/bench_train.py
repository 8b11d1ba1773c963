"""Training speed at the log's scale: batched epochs vs a one-query-per-step reference loop.

Scale (issue "Training engine"): 800 queries split 640 train / 160 validation, 24
sequences of 2 shots per query, 64-item pools, features 512, hidden 256, data read from
the compatibility format (the bundled benchmark writes it; groups are trimmed to 24).

    python benchmarks/bench_train.py [--device cuda] [--batch-size 32] [--reference-queries 160]
    python benchmarks/bench_train.py --faithful [--queries 64] [--rounds 2]

Prints seconds per RCE epoch and per GRPO epoch (all 24 sequences), for lever's batched
loop (one encoding per query, many queries per step), with the selector scored by its fused
node (lever/model/fused.py, the default) and by the autograd path, and for a reference loop
written here the way the original trainer worked (one query per step, the pool re-encoded
for every sequence). The reference is timed on a subset of queries and scaled to 640. Each
figure is the best of --epochs fresh stages (the machine's noise only ever adds time).

--faithful measures the original family's settings instead (plans/original/plan7: model.arch
lever-plus-v3, dropout 0.5 and attention dropout 0.1 with one mask per sequence, batch 1,
grpo.policy_mode "train", grpo.reference "pre_rce"): the GRPO start pass (the policy in train
mode and the reference in eval mode over all 640 x 24 training sequences) with its seconds, start
ratio and peak RSS (ru_maxrss of a fresh process per pass), chunked as now
(lever.train.stage.SEQUENCE_CHUNK) and unchunked as before (256 queries at once), alternated in
the same run; then one RCE and one GRPO epoch at batch 1 on --queries training queries, scaled
to 640.

--faithful --full times the whole run instead: plans/original/plan5 (the issue's "plan5-like"
run) at --rce-epochs RCE + --grpo-epochs GRPO epochs (5 + 5) on all 640 x 24 training
sequences, batch 1, one thread, through StageRunner.run (the GRPO start pass, checkpoints and
validation included), in a fresh process per run: CPU seconds, peak RSS, the GRPO start's two
passes (the reference log-probs in eval mode, the original's pass; the policy in train mode for
the start ratio, lever's diagnostic) and the last losses. --before DIR runs the same
process on another checkout's `lever` (a worktree of an earlier commit), alternated with this
one, --rounds times each: before and after from the same run. It prints the floor: the
arithmetic the original architecture must do (its dropout comes before the candidate
projection, so every sequence projects its own K candidates: K*h*h multiply-adds forward, and
one more such product per trained matrix backward) and its dropout draws (K*h + h + heads*K
per train-mode sequence), in seconds at this machine's one-thread GEMM and random-number rates
measured in the same process; and the original trainer's figures it is compared against.

    python benchmarks/bench_train.py --faithful --full [--before DIR] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lever.bench import BenchConfig, ensure_bench
from lever.data.reader import load_candidates
from lever.model import PointerSelector, build_selector
from lever.runs.sources import load_features
from lever.spec import load_plan
from lever.spec.schema import GRPOSpec, Plan, RCESpec, SelectSpec
from lever.train import losses as L
from lever.train import stage as stage_mod
from lever.train.groups import Groups
from lever.train.plandata import make_groups, split_data
from lever.train.stage import SilentReporter, Stage, StageRunner

ROOT = Path(__file__).resolve().parents[1]


def trim_groups(data, size: int):
    """Keep the first `size` sequences of each group (the log's fixed 24 per query)."""
    sizes = data.group_sizes()
    data = data.subset(torch.nonzero(sizes >= size).squeeze(-1))
    seq_query = torch.repeat_interleave(torch.arange(data.num_queries), data.group_sizes())
    pos = torch.arange(data.num_sequences) - data.offsets[seq_query]
    return data.select_sequences(pos < size)


def reference_epoch(model: PointerSelector, groups: Groups, queries: int, lr: float) -> float:
    """The original's loop: per query, per sequence, encode the pool again; one optimiser step per query."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    for q in range(queries):
        b = groups.batch(torch.tensor([q]))
        n = int(b.mask.sum())
        w = torch.softmax(b.rewards[0, :n] / 1.0, dim=0)
        loss = 0.0
        for g in range(n):
            enc = model.encode(b.query, b.pool, b.pool_mask)  # re-encoded for every sequence
            logp = model.sequence_logprobs(enc, b.pointers[:, g : g + 1], b.mask[:, g : g + 1])
            loss = loss + w[g] * -logp[0, 0]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--group-size", type=int, default=24)
    ap.add_argument(
        "--epochs", type=int, default=3, help="rounds; each times one fresh epoch of every stage and path (best is reported)"
    )
    ap.add_argument("--reference-queries", type=int, default=64, help="queries timed in the reference loop")
    ap.add_argument("--faithful", action="store_true", help="the original family's settings at batch 1 (see above)")
    ap.add_argument("--queries", type=int, default=64, help="--faithful: training queries timed per epoch")
    ap.add_argument("--rounds", type=int, default=2, help="--faithful: start passes per chunking, alternated")
    ap.add_argument("--full", action="store_true", help="--faithful: the whole run (see above)")
    ap.add_argument("--rce-epochs", type=int, default=5, help="--faithful --full: RCE epochs")
    ap.add_argument("--grpo-epochs", type=int, default=5, help="--faithful --full: GRPO epochs")
    ap.add_argument("--before", default="", help="--faithful --full: a checkout whose lever is timed alternately")
    ap.add_argument("--data", default="", help=argparse.SUPPRESS)  # --full child: the parent's benchmark data
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)  # --faithful: one measurement (internal)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    if args.faithful and args.full:
        return whole_run(args)

    with tempfile.TemporaryDirectory() as tmp:
        paths = ensure_bench(Path(tmp), BenchConfig(group_min=args.group_size), log=lambda m: None)
        t0 = time.perf_counter()
        data = load_candidates(Path(paths.candidates), cache_dir=None, log=lambda m: None)
        read_s = time.perf_counter() - t0
        feats = load_features(Path(paths.features)).to(dev)
    if args.faithful:
        return faithful(args, data, feats)
    plan = Plan()  # the default plan's filter, split (80 / 20), rewards and model: the recipe a run uses
    split = split_data(trim_groups(data, args.group_size), plan)
    train, val = make_groups(split.train, plan, feats), make_groups(split.val, plan, feats)
    print(
        f"data: {train.num_queries + val.num_queries} queries ({train.num_queries} train / {val.num_queries} val), "
        f"{args.group_size} sequences x {data.shots} shots, pools {data.pools.shape[1]}, read in {read_s:.2f} s, device {dev}"
    )

    def stage_time(kind: str, fused: bool) -> float:
        """Seconds for one epoch of a fresh stage (model, optimiser, reference log-probs untimed)."""
        model = build_selector(feats.shape[1], plan.model).to(dev)
        model.fused = fused
        opt = RCESpec(epochs=1, batch_size=args.batch_size) if kind == "rce" else GRPOSpec(epochs=1, batch_size=args.batch_size)
        with tempfile.TemporaryDirectory() as d:
            runner = StageRunner(Stage(kind, kind, 1, opt, opt.lr), Path(d), model, train, val, 0, SelectSpec(), SilentReporter())
            if kind == "grpo":
                runner.logp_ref = runner._reference_logprobs()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            runner._epoch(1)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

    # The fused selector node (lever/model/fused.py) and the autograd path, alternated in this run.
    times: dict[tuple[str, bool], float] = {}
    for _ in range(args.epochs):
        for kind in ("rce", "grpo"):
            for fused in (False, True):
                times[kind, fused] = min(times.get((kind, fused), float("inf")), stage_time(kind, fused))
    model = build_selector(feats.shape[1], plan.model).to(dev)
    ref = reference_epoch(model, train, args.reference_queries, 1e-4) * train.num_queries / args.reference_queries
    rce = times["rce", True]
    print(f"{'seconds/epoch':34}{'fused':>10}{'autograd':>10}")
    print(f"{f'lever RCE epoch (batch {args.batch_size})':34}{rce:>10.3f}{times['rce', False]:>10.3f}")
    print(f"{'lever GRPO epoch (all sequences)':34}{times['grpo', True]:>10.3f}{times['grpo', False]:>10.3f}")
    print(f"{'reference RCE epoch (1 query/step)':34}{ref:>10.3f}   ({args.reference_queries} queries timed, scaled)")
    print(f"speed-up RCE: {ref / rce:.1f}x   (epochs include the validation loss)")


def _in_child(args, what: str) -> dict:
    """Run this script again for one measurement (`--child what`: a fresh process, its own peak RSS); its JSON."""
    cmd = [sys.executable, __file__, "--faithful", "--child", what, "--queries", str(args.queries)]
    cmd += ["--group-size", str(args.group_size)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def _start_pass(plan: Plan, train: Groups, val: Groups, d_in: int, chunk: int) -> dict:
    """One GRPO start pass (policy in train mode, pre-RCE reference in eval mode) with SEQUENCE_CHUNK = chunk."""
    stage_mod.SEQUENCE_CHUNK = chunk
    torch.manual_seed(1)
    reference = {k: v.clone() for k, v in build_selector(d_in, plan.model).state_dict().items()}
    torch.manual_seed(0)
    model = build_selector(d_in, plan.model)
    stage = next(s for s in plan.stages() if s.kind == "grpo")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as d:
        runner = StageRunner(stage, Path(d), model, train, val, 0, plan.select, SilentReporter(), None, reference)
        t = time.perf_counter()
        runner._reference_logprobs()
        seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "ratio": runner.start_ratio, "rss_mb": peak / 1024, "rss_before_mb": before / 1024}


def _epochs(plan: Plan, train: Groups, val: Groups, d_in: int) -> dict:
    """One RCE epoch and one GRPO epoch (after its start pass) of a fresh faithful selector at the plan's batch 1."""
    out = {}
    for stage in plan.stages():
        torch.manual_seed(0)
        model = build_selector(d_in, plan.model)
        ref = {k: v.clone() for k, v in model.state_dict().items()} if stage.kind == "grpo" else None
        with tempfile.TemporaryDirectory() as d:
            runner = StageRunner(stage, Path(d), model, train, val, 0, plan.select, SilentReporter(), None, ref)
            if stage.kind == "grpo":
                runner.logp_ref = runner._reference_logprobs()
            t = time.perf_counter()
            runner._epoch(1)
            out[stage.kind] = time.perf_counter() - t
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def faithful(args, data, feats) -> None:
    """The original family at batch 1: the start pass chunked and unchunked (same run, alternated), then epochs."""
    plan = load_plan("original/plan7", (), ROOT / "plans").plan
    m, g = plan.model, plan.grpo
    split = split_data(trim_groups(data, args.group_size), plan)
    train, val = make_groups(split.train, plan, feats), make_groups(split.val, plan, feats)
    print(
        f"faithful (plans/original/plan7): arch {m.arch}, dropout {m.dropout} / attention {m.attn_dropout} per "
        f"{m.dropout_mask}, batch {plan.rce.batch_size}/{g.batch_size}, policy_mode {g.policy_mode}, reference "
        f"{g.reference}; {train.num_queries} train queries x {args.group_size} sequences, pools {data.pools.shape[1]}"
    )
    d_in = feats.shape[1]
    sub = make_groups(split.train.subset(torch.arange(min(args.queries, split.train.num_queries))), plan, feats)
    if args.child:  # one measurement in this fresh process
        out = _epochs(plan, sub, val, d_in) if args.child == "epochs" else _start_pass(plan, train, val, d_in, int(args.child))
        print(json.dumps(out))
        return
    now = stage_mod.SEQUENCE_CHUNK
    runs: dict[str, list[dict]] = {"unchunked (before)": [], f"chunked, {now} sequences (now)": []}
    for _ in range(args.rounds):
        for label, chunk in zip(runs, (10**9, now)):
            runs[label].append(_in_child(args, str(chunk)))
    print(f"{'GRPO start pass (train + reference)':42}{'seconds':>9}{'peak RSS MiB':>13}{'RSS before':>12}{'start ratio':>13}")
    for label, rs in runs.items():
        best = min(rs, key=lambda r: r["seconds"])
        rss = max(r["rss_mb"] for r in rs)
        print(f"{label:42}{best['seconds']:>9.2f}{rss:>13.0f}{best['rss_before_mb']:>12.0f}{best['ratio']:>13.4f}")
    ep = _in_child(args, "epochs")
    scale = train.num_queries / sub.num_queries
    print(
        f"epochs at batch 1 on {sub.num_queries} queries (scaled to {train.num_queries}): RCE {ep['rce']:.2f} s "
        f"({ep['rce'] * scale:.1f} s), GRPO {ep['grpo']:.2f} s ({ep['grpo'] * scale:.1f} s); "
        f"peak RSS {ep['rss_mb']:.0f} MB (validation loss included)"
    )


# --------------------------------------------------------------------------- the whole faithful run

# The original trainer on this benchmark's data (800 queries x 24 sequences, pools of 64, batch 1, one thread), measured
# beside lever's code of the time: 242 s CPU against lever's 192 s, peak RSS 416 MiB, its reference log-probs 9.1 s.
ORIGINAL = {"cpu_s": 242.0, "lever_then_cpu_s": 192.0, "rss_mb": 416.0, "reference_s": 9.1}
WHOLE_PLAN = "original/plan5"


def _whole_child(args) -> dict:
    """One whole run in this process (one thread): RCE then GRPO through StageRunner.run; CPU seconds and peak RSS."""
    torch.set_num_threads(1)
    data = load_candidates(Path(args.data) / "candidates.json", cache_dir=None, log=lambda m: None)
    feats = load_features(Path(args.data) / "features.pt")
    plan = load_plan(WHOLE_PLAN, (), ROOT / "plans").plan
    plan = plan.model_copy(update={"rce": plan.rce.model_copy(update={"epochs": args.rce_epochs})})
    plan = plan.model_copy(update={"grpo": plan.grpo.model_copy(update={"epochs": args.grpo_epochs})})
    split = split_data(trim_groups(data, args.group_size), plan)
    train, val = make_groups(split.train, plan, feats), make_groups(split.val, plan, feats)
    torch.manual_seed(0)
    model = build_selector(feats.shape[1], plan.model)
    pre_rce = {k: v.clone() for k, v in model.state_dict().items()}
    passes = {True: 0.0, False: 0.0}  # CPU seconds of the GRPO start: the train-mode policy pass, the eval-mode reference
    timed = stage_mod.all_logprobs

    def all_logprobs(model, groups, batch_size=256, train=False):
        t = time.process_time()
        out = timed(model, groups, batch_size, train)
        passes[train] += time.process_time() - t
        return out

    stage_mod.all_logprobs = all_logprobs
    out: dict = {"rss_start_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    t0, w0 = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for stage in plan.stages():
            ref = pre_rce if stage.kind == "grpo" else None
            runner = StageRunner(stage, Path(d) / stage.name, model, train, val, 0, plan.select, SilentReporter(), None, ref)
            rows = runner.run().rows
            out[f"{stage.kind}_loss"] = rows[-1]["train/loss"]
            if stage.kind == "grpo":
                out["start_ratio"] = runner.start_ratio
    out.update(cpu_s=time.process_time() - t0, wall_s=time.perf_counter() - w0)
    out.update(reference_s=passes[False], start_pass_s=passes[True])
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def floor_seconds(plan: Plan, train_queries: int, val_queries: int, G: int, K: int, d: int) -> dict:
    """The arithmetic and the dropout draws the original architecture must do in the whole run, and their
    seconds at this machine's one-thread rates (a GEMM of a step's shape, rand in float64), measured here.

    Per train-mode sequence (dropout mask per sequence): its own K candidates through the candidate
    projection, K*h*h multiply-adds, plus one such product backward per trained matrix (the projection's
    weight; the candidates' gradient when the input projection trains); K*h + h + heads*K dropout draws.
    Per query: the input projection of its K + 1 items, (K + 1)*d*h (x2 with its weight's gradient). Eval-mode
    passes (the reference, validation) encode each query once. Everything else is O(K*h) per sequence.
    """
    m, h = plan.model, plan.model.hidden
    unit = K * h * h  # multiply-adds of one candidate projection
    proj = (K + 1) * d * h
    macs, draws = 0.0, 0.0
    for stage in plan.stages():
        frozen = stage.opt.freeze_backbone
        back = 0 if frozen else 2  # the candidate projection's weight, and the candidates' gradient
        per_epoch = []
        for epoch in range(1, stage.epochs + 1):
            k = G
            if stage.kind == "grpo":
                sched = [(c.from_epoch, c.top_k) for c in stage.opt.top_k_schedule]
                k = min(L.top_k_for_epoch(sched, epoch) or G, G)
            per_epoch.append(k)
            macs += train_queries * (k * unit * (1 + back) + proj * (1 if frozen else 2))
            macs += val_queries * (unit + proj)  # validation loss, eval mode
        draws += sum(per_epoch) * train_queries * (K * h + h + m.heads * K * m.layers)
        if stage.kind == "grpo":  # the start pass: the policy in train mode per sequence, the reference per query
            macs += train_queries * (G * unit + 2 * proj + unit)
            draws += train_queries * G * (K * h + h + m.heads * K * m.layers)
    torch.set_num_threads(1)
    a, w = torch.randn(G * K, h), torch.randn(h, h)
    reps = 20
    a @ w
    t = time.process_time()
    for _ in range(reps):
        a @ w
    gemm = 2 * G * K * h * h * reps / (time.process_time() - t)  # FLOP/s
    n = G * K * h
    torch.rand(n, dtype=torch.float64)
    t = time.process_time()
    for _ in range(reps):
        torch.rand(n, dtype=torch.float64)
    draw = (time.process_time() - t) / (reps * n)
    flops = 2 * macs
    return {"tflop": flops / 1e12, "gflops": gemm / 1e9, "draws_m": draws / 1e6, "draw_ns": draw * 1e9,
            "seconds": flops / gemm + draws * draw}  # fmt: skip


def whole_run(args) -> None:
    """The whole faithful run, this lever and (--before) another checkout's, alternated; then the floor."""
    if args.child == "whole":
        print(json.dumps(_whole_child(args)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LEVER_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with tempfile.TemporaryDirectory() as tmp:
        paths = ensure_bench(Path(tmp), BenchConfig(group_min=args.group_size), log=lambda m: None)
        shutil.copy(paths.candidates, Path(tmp) / "candidates.json")
        shutil.copy(paths.features, Path(tmp) / "features.pt")
        data = load_candidates(Path(tmp) / "candidates.json", cache_dir=None, log=lambda m: None)
        feats = load_features(Path(tmp) / "features.pt")
        cmd = [sys.executable, __file__, "--faithful", "--full", "--child", "whole", "--data", tmp]
        cmd += [
            "--rce-epochs",
            str(args.rce_epochs),
            "--grpo-epochs",
            str(args.grpo_epochs),
            "--group-size",
            str(args.group_size),
        ]
        trees = {"now": str(ROOT)}
        if args.before:
            trees = {"before": str(Path(args.before).resolve()), **trees}
        runs: dict[str, list[dict]] = {k: [] for k in trees}
        for _ in range(args.rounds):
            for label, tree in trees.items():
                res = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**env, "PYTHONPATH": tree})
                runs[label].append(json.loads(res.stdout.splitlines()[-1]))
    plan = load_plan(WHOLE_PLAN, (), ROOT / "plans").plan
    plan = plan.model_copy(update={"rce": plan.rce.model_copy(update={"epochs": args.rce_epochs})})
    plan = plan.model_copy(update={"grpo": plan.grpo.model_copy(update={"epochs": args.grpo_epochs})})
    split = split_data(trim_groups(data, args.group_size), plan)
    print(
        f"whole run: plans/{WHOLE_PLAN}, {args.rce_epochs} RCE + {args.grpo_epochs} GRPO epochs, batch 1, one thread; "
        f"{split.train.num_queries} train / {split.val.num_queries} val queries x {args.group_size} sequences, "
        f"pools {data.pools.shape[1]}; best of {args.rounds} (alternated), peak RSS the largest"
    )
    head = f"{'':8}{'CPU s':>8}{'wall s':>8}{'peak RSS MiB':>13}{'reference s':>12}{'start pass s':>13}{'start ratio':>12}"
    print(head + f"{'RCE loss':>11}{'GRPO loss':>11}")
    best = {}
    for label, rs in runs.items():
        b = best[label] = min(rs, key=lambda r: r["cpu_s"])
        rss = max(r["rss_mb"] for r in rs)
        ref, start = min(r["reference_s"] for r in rs), min(r["start_pass_s"] for r in rs)
        print(
            f"{label:8}{b['cpu_s']:>8.1f}{b['wall_s']:>8.1f}{rss:>13.0f}{ref:>12.2f}{start:>13.2f}{b['start_ratio']:>12.5f}"
            f"{b['rce_loss']:>11.6f}{b['grpo_loss']:>11.6f}"
        )
    fl = floor_seconds(plan, split.train.num_queries, split.val.num_queries, args.group_size, data.pools.shape[1], feats.shape[1])
    now = best["now"]["cpu_s"]
    print(
        f"floor: {fl['tflop']:.2f} TFLOP at {fl['gflops']:.1f} GFLOP/s (one thread, a step's GEMM) + {fl['draws_m']:.0f} M "
        f"dropout draws at {fl['draw_ns']:.1f} ns = {fl['seconds']:.1f} s; now = {now / fl['seconds']:.2f}x the floor"
    )
    o = ORIGINAL
    line = (
        f"the original trainer (measured earlier beside lever's then {o['lever_then_cpu_s']:.0f} s): {o['cpu_s']:.0f} s CPU, "
        f"{o['rss_mb']:.0f} MiB, reference {o['reference_s']} s; targets: CPU <= {o['cpu_s'] / 2:.0f} s, "
        f"RSS <= {1.2 * o['rss_mb']:.0f} MiB, reference <= {o['reference_s']} s"
    )
    print(line)
    if "before" in best:
        ratio = now / best["before"]["cpu_s"]
        print(
            f"now / before = {ratio:.2f} (same run); scaled to that measurement: {o['lever_then_cpu_s'] * ratio:.0f} s, "
            f"{o['cpu_s'] / (o['lever_then_cpu_s'] * ratio):.2f}x less CPU than the original trainer"
        )


if __name__ == "__main__":
    main()
