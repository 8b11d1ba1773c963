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
(lever.train.passes.SEQUENCE_CHUNK) and unchunked as before (256 queries at once), alternated in
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

--original DIR runs the original project's own trainer (DIR: a checkout of yunsoft2019/Lever-Plus; its
lever_lm/workflows/grpo_post_train.py, code unchanged) in the same run, alternated with lever's runs: the same data
(the benchmark's candidate file with each query's first 24 sequences, in the original's JSON format, which the bundled
benchmark writes; the features tensor as its --img_emb), the flags `original_args` derives from the plan (it refuses a
plan whose settings the original fixes otherwise, e.g. its top-3-then-top-5 curriculum), --device cpu, in a fresh
process with OMP_NUM_THREADS=MKL_NUM_THREADS=1, torch.set_num_threads(1) and torch.manual_seed(--seed) (a small
`python -c` runner, ORIGINAL_RUNNER, that then calls its main()). The runner times its GRPOTrainer.train (the CPU s column) and
compute_old_log_probs (its reference pass) from outside, and reads from its datasets and epochs the queries, sequences,
epochs and last losses it trained on; os.wait4 gives the whole process's CPU and peak RSS. It prints "now / original
(same run)"; without --original the comparison falls back to a figure measured once earlier (labelled so).

What the original needs beyond lever's environment: faiss-cpu, more-itertools, loguru, omegaconf and datasets (pip,
into a separate environment that shares lever's torch, e.g. a venv with a .pth file naming lever's site-packages;
--original-python names its python). Its VLM interfaces (open_mmicl.interface, imported at module level through
lever_lm/utils.py and never called by the trainer) get a stand-in module, so open_clip, open_flamingo, qwen_vl_utils,
openicl and torchvision are not needed.

    python benchmarks/bench_train.py --faithful --full [--before DIR] [--original DIR [--original-python PY]] [--rounds 2]
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
from lever.data.sources import load_features
from lever.model import PointerSelector, build_selector
from lever.spec import load_plan
from lever.spec.schema import GRPOSpec, Plan, RCESpec, SelectSpec
from lever.train import grpo as grpo_mod
from lever.train import losses as L
from lever.train import passes as passes_mod
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
    ap.add_argument(
        "--original", default="", help="--faithful --full: a checkout of the original project, its trainer timed alternately"
    )
    ap.add_argument("--seed", type=int, default=0, help="--faithful --full: the seed of every run (lever's and the original's)")
    ap.add_argument("--original-python", default="", help="--original: the Python that runs it (default: this one)")
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
            runner = StageRunner(Stage(kind, kind, 1, opt), Path(d), model, train, val, 0, SelectSpec(), SilentReporter())
            runner.objective.start()  # GRPO: the reference's log-probs (untimed)
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
    passes_mod.SEQUENCE_CHUNK = chunk
    torch.manual_seed(1)
    reference = {k: v.clone() for k, v in build_selector(d_in, plan.model).state_dict().items()}
    torch.manual_seed(0)
    model = build_selector(d_in, plan.model)
    stage = next(s for s in plan.stages() if s.kind == "grpo")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as d:
        runner = StageRunner(stage, Path(d), model, train, val, 0, plan.select, SilentReporter(), None, reference)
        t = time.perf_counter()
        runner.objective.reference.start()
        seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "ratio": runner.objective.reference.start_ratio,
        "rss_mb": peak / 1024,
        "rss_before_mb": before / 1024,
    }


def _epochs(plan: Plan, train: Groups, val: Groups, d_in: int) -> dict:
    """One RCE epoch and one GRPO epoch (after its start pass) of a fresh faithful selector at the plan's batch 1."""
    out = {}
    for stage in plan.stages():
        torch.manual_seed(0)
        model = build_selector(d_in, plan.model)
        ref = {k: v.clone() for k, v in model.state_dict().items()} if stage.kind == "grpo" else None
        with tempfile.TemporaryDirectory() as d:
            runner = StageRunner(stage, Path(d), model, train, val, 0, plan.select, SilentReporter(), None, ref)
            runner.objective.start()  # GRPO: the reference's log-probs (untimed)
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
    now = passes_mod.SEQUENCE_CHUNK
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

# Fallback when --original is not given: the original trainer on this benchmark's data (batch 1, one thread), measured
# once earlier beside lever's code of the time (242 s CPU against lever's 192 s, peak RSS 416 MiB, reference 9.1 s).
ORIGINAL = {"cpu_s": 242.0, "lever_then_cpu_s": 192.0, "rss_mb": 416.0, "reference_s": 9.1}
WHOLE_PLAN = "original/plan5"
ORIGINAL_SCRIPT = "lever_lm/workflows/grpo_post_train.py"

# Settings the original trainer fixes in its code (no flag): a plan must hold these values to be run by it.
ORIGINAL_FIXED = {
    "start.kind": "scratch",
    "model.arch": "lever-plus-v3",
    "model.hidden": 256,
    "model.heads": 1,
    "model.dropout": 0.5,
    "model.attn_dropout": 0.1,
    "model.dropout_mask": "sequence",
    "data.val_fraction": 0.2,
    "data.split_rounding": "floor",
    "data.duplicates": "keep",
    "data.skip_failed": True,
    "data.min_group_size": 1,
    "data.top_k": 0,
    "rce.batch_size": 1,
    "rce.schedule": "constant",
    "rce.weight_decay": 0.01,
    "rce.grad_clip": 1.0,
    "rce.warmup_steps": 0,
    "rce.lr_scaling": "none",
    "rce.target": "weighted",
    "grpo.batch_size": 1,
    "grpo.schedule": "constant",
    "grpo.weight_decay": 0.01,
    "grpo.grad_clip": 1.0,
    "grpo.warmup_steps": 0,
    "grpo.lr_scaling": "none",
    "grpo.ppo_clip": True,
    "grpo.reference": "pre_rce",
    "grpo.policy_mode": "train",
    "grpo.handoff": "last",
    "grpo.top_k_ties": "topk",
    "grpo.advantage.kind": "zscore",
    "grpo.advantage.std_floor": 0.1,
    "grpo.advantage.clip": 5.0,
    "grpo.advantage.normalization": "original",
    "grpo.kl.estimator": "k3",
}


def _setting(plan: Plan, key: str):
    value = plan
    for part in key.split("."):
        value = getattr(value, part)
    return value


def original_args(plan: Plan) -> list[str]:
    """The original trainer's flags (lever_lm/workflows/grpo_post_train.py) for a plan of the original family.

    Only training settings: the caller adds --beam_data, --img_emb, --output_dir and --device. Raises ValueError
    naming the key when the plan sets something the original cannot run (ORIGINAL_FIXED: values in its code, e.g. the
    top-3-then-top-5 beam curriculum and the 80 / 20 split; or a combination its flags cannot express).
    """
    wrong = [f"{k} = {_setting(plan, k)!r} (the original: {v!r})" for k, v in ORIGINAL_FIXED.items() if _setting(plan, k) != v]
    r, g, kl = plan.rce, plan.grpo, plan.grpo.kl
    if [(s.from_epoch, s.top_k) for s in g.top_k_schedule] != [(1, 3), (2, 5)]:
        wrong.append(f"grpo.top_k_schedule = {g.top_k_schedule} (the original: top 3 in epoch 1, top 5 from epoch 2)")
    if g.eps_low != g.eps_high:
        wrong.append(f"grpo.eps_low {g.eps_low} != grpo.eps_high {g.eps_high} (the original: one --clip_epsilon)")
    if r.rewards not in ("original", "raw"):
        wrong.append(f"rce.rewards = {r.rewards!r} (the original: 'original' or 'raw')")
    if r.rewards == "original" and g.advantage.group_clip != 3.0:
        wrong.append(f"grpo.advantage.group_clip = {g.advantage.group_clip} (the original's RCE rewards share it: 3.0)")
    a = kl.adaptive
    if a.enabled and (a.cadence, a.low, a.high, a.factor) != ("step", 0.01, 0.1, 1.5):
        wrong.append("grpo.kl.adaptive: the original adapts per step between 0.01 and 0.1 by a factor 1.5")
    if wrong:
        raise ValueError("the original trainer cannot run this plan: " + "; ".join(wrong))
    args = ["--rce_epochs", str(r.epochs), "--grpo_epochs", str(g.epochs), "--batch_size", "1"]
    args += ["--rce_lr", f"{r.lr:g}", "--rce_temp_start", f"{r.temp_start:g}", "--rce_temp_end", f"{r.temp_end:g}"]
    args += ["--grpo_lr", f"{g.lr:g}", "--kl_beta", f"{kl.beta:g}", "--clip_epsilon", f"{g.eps_low:g}"]
    args += ["--reward_mode", plan.reward.mode, "--hard_weight", f"{plan.reward.hard_weight:g}"]
    args += ["--soft_weight", f"{plan.reward.soft_weight:g}", "--rel_weight", f"{plan.reward.rel_weight:g}"]
    args += ["--num_layers", str(plan.model.layers)]
    args += ["--normalize_method", "z_score_clamp", "--normalize_clamp_value", f"{g.advantage.group_clip:g}"]
    args += ["--disable_adaptive_kl"] if not a.enabled else []
    args += ["--freeze_backbone_in_grpo"] if g.freeze_backbone else []
    args += ["--require_positive_query"] if plan.data.require_positive else []
    args += ["--rce_use_raw_reward"] if r.rewards == "raw" else []
    return args


def original_candidates(src: Path, dst: Path, size: int) -> None:
    """The benchmark's candidate file as the original reads it: each query's first `size` sequences as listed (what
    `trim_groups` keeps on lever's side; failed evaluations stay in, both trainers skip them), shorter groups dropped."""
    data = json.loads(src.read_text())
    out = {k: v for k, v in data.items() if k == "_meta"}
    for qid, rec in data.items():
        if qid != "_meta" and len(rec["pointer_candidates"]) >= size:
            out[qid] = {**rec, "pointer_candidates": rec["pointer_candidates"][:size]}
    dst.write_text(json.dumps(out))


# Runs the original's trainer in this process: one thread, the seed its first argument; its training methods timed and
# counted from outside (its code unchanged); the last stdout line is ORIGINAL-RESULT {json}. Its VLM interfaces
# (open_mmicl.interface, imported at module level through lever_lm/utils.py, never called by the trainer) get a stand-in
# module, so the VLM packages they import (open_clip, open_flamingo, qwen_vl_utils, openicl, torchvision) need not be
# installed.
ORIGINAL_RUNNER = r"""
import json, resource, sys, time, types
import torch
torch.set_num_threads(1)
torch.manual_seed(int(sys.argv.pop(1)))  # the benchmark's --seed; the rest are the trainer's flags

class Absent(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return None

sys.modules["open_mmicl.interface"] = Absent("open_mmicl.interface")
from lever_lm.workflows import grpo_post_train as m

out = {"rce_losses": [], "grpo_losses": [], "val_losses": []}

def timed(name, before=None, after=None):
    fn = getattr(m.GRPOTrainer, name)
    def run(self, *a, **k):
        if before:
            before(self)
        t, w = time.process_time(), time.perf_counter()
        r = fn(self, *a, **k)
        after(self, r, time.process_time() - t, time.perf_counter() - w)
        return r
    setattr(m.GRPOTrainer, name, run)

def counts(self):
    out["rss_start_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for split, loader in (("train", self.train_loader), ("val", self.val_loader)):
        out[split + "_queries"] = len(loader.dataset.samples)
        out[split + "_sequences"] = sum(len(s["beam_labels"]) for s in loader.dataset.samples)
    out["steps_per_epoch"] = len(self.train_loader)

timed("train", counts, lambda s, r, c, w: out.update(cpu_s=c, wall_s=w))
timed("compute_old_log_probs", None, lambda s, r, c, w: out.update(reference_s=c, reference_wall_s=w))
timed("train_rce_epoch", None, lambda s, r, c, w: out["rce_losses"].append(r["rce_loss"]))
timed("train_grpo_epoch", None, lambda s, r, c, w: out["grpo_losses"].append(r["grpo_loss"]))
timed("validate", None, lambda s, r, c, w: out["val_losses"].append(r["val_loss"]))
sys.argv = [m.__file__] + sys.argv[1:]
m.main()
out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("ORIGINAL-RESULT " + json.dumps(out))
"""


def _run_child(cmd: list[str], env: dict, cwd: str | None = None) -> tuple[str, float, float]:
    """Run one child process; (its stdout, its CPU seconds user + system, its peak RSS MiB) from os.wait4."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} exited {proc.returncode}; its output ends:\n{text[-3000:]}")
    return text, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def _whole_child(args) -> dict:
    """One whole run in this process (one thread): RCE then GRPO through StageRunner.run; CPU seconds and peak RSS."""
    torch.set_num_threads(1)
    data = load_candidates(Path(args.data) / "candidates.json", cache_dir=None, log=lambda m: None)
    feats = load_features(Path(args.data) / "features.pt")
    plan = _whole_plan(args)
    split = split_data(trim_groups(data, args.group_size), plan)
    train, val = make_groups(split.train, plan, feats), make_groups(split.val, plan, feats)
    torch.manual_seed(args.seed)
    model = build_selector(feats.shape[1], plan.model)
    pre_rce = {k: v.clone() for k, v in model.state_dict().items()}
    passes = {True: 0.0, False: 0.0}  # CPU seconds of the GRPO start: the train-mode policy pass, the eval-mode reference
    timed = grpo_mod.all_logprobs

    def all_logprobs(model, groups, batch_size=256, train=False):
        t = time.process_time()
        out = timed(model, groups, batch_size, train)
        passes[train] += time.process_time() - t
        return out

    grpo_mod.all_logprobs = all_logprobs
    out: dict = {"rss_start_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    out.update(train_queries=train.num_queries, train_sequences=split.train.num_sequences)
    t0, w0 = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        for stage in plan.stages():
            ref = pre_rce if stage.kind == "grpo" else None
            runner = StageRunner(
                stage, Path(d) / stage.name, model, train, val, args.seed, plan.select, SilentReporter(), None, ref
            )
            rows = runner.run().rows
            out[f"{stage.kind}_loss"] = rows[-1]["train/loss"]
            out[f"{stage.kind}_epochs"] = len(rows)
            out["val_loss"] = rows[-1]["val/loss"]
            if stage.kind == "grpo":
                out["start_ratio"] = runner.objective.reference.start_ratio
    out.update(cpu_s=time.process_time() - t0, wall_s=time.perf_counter() - w0)
    out.update(reference_s=passes[False], start_pass_s=passes[True])
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _whole_plan(args) -> Plan:
    """plans/original/plan5 with --rce-epochs and --grpo-epochs."""
    plan = load_plan(WHOLE_PLAN, (), ROOT / "plans").plan
    plan = plan.model_copy(update={"rce": plan.rce.model_copy(update={"epochs": args.rce_epochs})})
    return plan.model_copy(update={"grpo": plan.grpo.model_copy(update={"epochs": args.grpo_epochs})})


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
    """The whole faithful run: this lever, (--before) another checkout's and (--original) the original trainer,
    alternated --rounds times; then the floor and the comparison."""
    if args.child == "whole":
        print(json.dumps(_whole_child(args)))
        return
    plan = _whole_plan(args)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LEVER_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    trees = {"now": str(ROOT)}
    if args.before:
        trees = {"before": str(Path(args.before).resolve()), **trees}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    original = Path(args.original).resolve() if args.original else None
    if original is not None:
        if not (original / ORIGINAL_SCRIPT).is_file():
            sys.exit(f"--original {args.original}: no {ORIGINAL_SCRIPT} there (a checkout of yunsoft2019/Lever-Plus)")
        flags = original_args(plan)
        runs["original"] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = ensure_bench(Path(tmp), BenchConfig(group_min=args.group_size), log=lambda m: None)
        shutil.copy(paths.candidates, Path(tmp) / "candidates.json")
        shutil.copy(paths.features, Path(tmp) / "features.pt")
        data = load_candidates(Path(tmp) / "candidates.json", cache_dir=None, log=lambda m: None)
        feats = load_features(Path(tmp) / "features.pt")
        cmd = [sys.executable, __file__, "--faithful", "--full", "--child", "whole", "--data", tmp]
        cmd += ["--rce-epochs", str(args.rce_epochs), "--grpo-epochs", str(args.grpo_epochs)]
        cmd += ["--group-size", str(args.group_size), "--seed", str(args.seed)]
        if original is not None:
            # The same data: the first --group-size sequences per query in the original's JSON format; the features
            # tensor [items, d] is what its --img_emb loads (torch.load, rows indexed by item id).
            original_candidates(Path(tmp) / "candidates.json", Path(tmp) / "original.json", args.group_size)
            out_dir = Path(tmp) / "original-out"
            ocmd = [
                args.original_python or sys.executable,
                "-c",
                ORIGINAL_RUNNER,
                str(args.seed),
                "--beam_data",
                str(Path(tmp) / "original.json"),
            ]
            ocmd += ["--img_emb", str(Path(tmp) / "features.pt"), "--output_dir", str(out_dir), "--device", "cpu", *flags]
            print("the original trainer: " + " ".join([ORIGINAL_SCRIPT, *ocmd[4:]]).replace(tmp, "DATA"), flush=True)
        for _ in range(args.rounds):
            for label, tree in trees.items():
                text, cpu, rss = _run_child(cmd, {**env, "PYTHONPATH": tree})
                runs[label].append({**json.loads(text.splitlines()[-1]), "process_cpu_s": cpu, "process_rss_mb": rss})
            if original is not None:
                text, cpu, rss = _run_child(ocmd, {**env, "PYTHONPATH": str(original)}, cwd=tmp)
                line = next(ln for ln in reversed(text.splitlines()) if ln.startswith("ORIGINAL-RESULT "))
                res = json.loads(line.split(" ", 1)[1])
                res.update(process_cpu_s=cpu, process_rss_mb=rss)
                res.update(rce_loss=res["rce_losses"][-1], grpo_loss=res["grpo_losses"][-1], val_loss=res["val_losses"][-1])
                res.update(rce_epochs=len(res["rce_losses"]), grpo_epochs=len(res["grpo_losses"]))
                runs["original"].append(res)
    split = split_data(trim_groups(data, args.group_size), plan)
    print(
        f"whole run: plans/{WHOLE_PLAN}, {args.rce_epochs} RCE + {args.grpo_epochs} GRPO epochs, batch 1, one thread; "
        f"{split.train.num_queries} train / {split.val.num_queries} val queries x {args.group_size} sequences "
        f"({split.train.num_sequences} training sequences once failed evaluations are skipped), pools "
        f"{data.pools.shape[1]}; seed {args.seed}; best of {args.rounds} (alternated), peak RSS the largest"
    )
    head = f"{'':10}{'CPU s':>8}{'process':>9}{'wall s':>8}{'peak RSS MiB':>13}{'at start':>9}{'reference s':>12}{'start pass s':>13}"
    print(head + f"{'start ratio':>12}{'RCE loss':>11}{'GRPO loss':>11}{'val loss':>10}")
    best = {}
    for label, rs in runs.items():
        b = best[label] = min(rs, key=lambda r: r["cpu_s"])
        rss = max(r["process_rss_mb"] for r in rs)
        ref = min(r["reference_s"] for r in rs)
        start = f"{min(r['start_pass_s'] for r in rs):>13.2f}" if "start_pass_s" in b else f"{'-':>13}"
        ratio = f"{b['start_ratio']:>12.5f}" if "start_ratio" in b else f"{'-':>12}"
        print(
            f"{label:10}{b['cpu_s']:>8.1f}{min(r['process_cpu_s'] for r in rs):>9.1f}{b['wall_s']:>8.1f}{rss:>13.0f}"
            f"{b['rss_start_mb']:>9.0f}{ref:>12.2f}{start}{ratio}{b['rce_loss']:>11.6f}{b['grpo_loss']:>11.6f}{b['val_loss']:>10.5f}"
        )
    print(
        "CPU s: the training (lever: both stages through StageRunner.run; the original: GRPOTrainer.train), "
        "process: the whole child (start-up, imports, data reading included); peak RSS of the whole child, at start: "
        "its peak before training; reference s: CPU of the pre-RCE "
        "reference log-probs (lever: all_logprobs in eval mode; the original: compute_old_log_probs)"
    )
    fl = floor_seconds(plan, split.train.num_queries, split.val.num_queries, args.group_size, data.pools.shape[1], feats.shape[1])
    now = best["now"]["cpu_s"]
    print(
        f"floor: {fl['tflop']:.2f} TFLOP at {fl['gflops']:.1f} GFLOP/s (one thread, a step's GEMM) + {fl['draws_m']:.0f} M "
        f"dropout draws at {fl['draw_ns']:.1f} ns = {fl['seconds']:.1f} s; now = {now / fl['seconds']:.2f}x the floor"
    )
    if "original" in best:
        o, n = best["original"], best["now"]
        orss = max(r["process_rss_mb"] for r in runs["original"])
        print(
            f"the original trainer (same run) trained on {o['train_queries']} / {o['val_queries']} queries, "
            f"{o['train_sequences']} training sequences, {o['rce_epochs']} RCE + {o['grpo_epochs']} GRPO epochs of "
            f"{o['steps_per_epoch']} steps; lever: {n['train_queries']} queries, {n['train_sequences']} sequences, "
            f"{n['rce_epochs']} + {n['grpo_epochs']} epochs"
        )
        print(
            f"now / original = {now / o['cpu_s']:.2f} (same run; {o['cpu_s'] / now:.2f}x less CPU), process "
            f"{min(r['process_cpu_s'] for r in runs['now']) / min(r['process_cpu_s'] for r in runs['original']):.2f}; "
            f"targets: CPU <= {o['cpu_s'] / 2:.0f} s, peak RSS <= {1.2 * orss:.0f} MiB, reference <= "
            f"{min(r['reference_s'] for r in runs['original']):.2f} s"
        )
    else:
        o = ORIGINAL
        print(
            f"the original trainer (fallback: measured once earlier beside lever's then {o['lever_then_cpu_s']:.0f} s, "
            f"not in this run; --original DIR measures it here): {o['cpu_s']:.0f} s CPU, {o['rss_mb']:.0f} MiB, "
            f"reference {o['reference_s']} s; targets: CPU <= {o['cpu_s'] / 2:.0f} s, RSS <= {1.2 * o['rss_mb']:.0f} MiB, "
            f"reference <= {o['reference_s']} s"
        )
    if "before" in best:
        ratio = now / best["before"]["cpu_s"]
        print(f"now / before = {ratio:.2f} (same run)")


if __name__ == "__main__":
    main()
