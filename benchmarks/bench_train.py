"""Training speed at the log's scale: batched epochs vs a one-query-per-step reference loop.

Scale (issue "Training engine"): 800 queries split 640 train / 160 validation, 24
sequences of 2 shots per query, 64-item pools, features 512, hidden 256, data read from
the compatibility format (the bundled benchmark writes it; groups are trimmed to 24).

    python benchmarks/bench_train.py [--device cuda] [--batch-size 32] [--reference-queries 160]

Prints seconds per RCE epoch and per GRPO epoch (all 24 sequences), for lever's batched
loop (one encoding per query, many queries per step), with the selector scored by its fused
node (lever/model/fused.py, the default) and by the autograd path, and for a reference loop
written here the way the original trainer worked (one query per step, the pool re-encoded
for every sequence). The reference is timed on a subset of queries and scaled to 640. Each
figure is the best of --epochs fresh stages (the machine's noise only ever adds time).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lever.bench import BenchConfig, ensure_bench
from lever.data.reader import load_candidates
from lever.model import PointerSelector, build_selector
from lever.runs.sources import load_features
from lever.spec.schema import GRPOSpec, Plan, RCESpec, SelectSpec
from lever.train.groups import Groups
from lever.train.plandata import make_groups, split_data
from lever.train.stage import SilentReporter, Stage, StageRunner


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
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        paths = ensure_bench(Path(tmp), BenchConfig(group_min=args.group_size), log=lambda m: None)
        t0 = time.perf_counter()
        data = load_candidates(Path(paths.candidates), cache_dir=None, log=lambda m: None)
        read_s = time.perf_counter() - t0
        feats = load_features(Path(paths.features)).to(dev)
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


if __name__ == "__main__":
    main()
