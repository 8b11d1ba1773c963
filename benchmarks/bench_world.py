"""Print the measured properties of the bundled benchmark: cost of generating it and how it behaves.

    python benchmarks/bench_world.py              # default size, seed 0
    python benchmarks/bench_world.py --seed 1     # another world, same statistics

Figures: generation time and peak memory (this process), file sizes, candidate-group statistics,
VQA accuracy at 1-4 shots of random / similarity / oracle / re-ranked choice, simulated VLM speed.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from lever.bench import BenchConfig, SimVLM, ensure_bench
from lever.bench.probe import choice_accuracy, fit_item_bonus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-queries", type=int, default=800)
    ap.add_argument("--n-val", type=int, default=800)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))  # the target machine: 2 cores
    cfg = BenchConfig(seed=args.seed, n_queries=args.n_queries, n_val=args.n_val)

    tmp = Path(tempfile.mkdtemp())
    try:
        start = time.perf_counter()
        paths = ensure_bench(tmp, cfg, log=lambda _: None)
        gen_s = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        print(f"generation: {gen_s:.2f} s, peak memory (whole process, torch included) {peak_mb:.0f} MiB")
        print("files:")
        for p in sorted(paths.root.iterdir()):
            print(f"  {p.name:<18} {p.stat().st_size / 2**20:8.2f} MiB")

        data = json.loads(paths.candidates.read_text())
        stats = json.loads(paths.manifest.read_text())["stats"]
        print(
            f"candidate data: {stats['queries']} queries, {stats['candidates']} candidates "
            f"({stats['failed']} eval_failed), groups {stats['group_min']}..{stats['group_max']} "
            f"(mean {stats['group_mean']})"
        )
        print(
            f"  all-negative {100 * stats['all_negative']:.1f}%  all-positive {100 * stats['all_positive']:.1f}%  "
            f"mixed {100 * stats['mixed']:.1f}%"
        )
        sizes = Counter(5 * (len(e["pointer_candidates"]) // 5) for k, e in data.items() if k != "_meta")
        print("  group sizes: " + "  ".join(f"{b}-{b + 4}: {sizes[b]}" for b in sorted(sizes)))
        methods = Counter(c["gen_method"] for k, e in data.items() if k != "_meta" for c in e["pointer_candidates"])
        print("  sources: " + "  ".join(f"{m} {n}" for m, n in sorted(methods.items())))

        vlm = SimVLM.load(paths)
        train_x = torch.load(paths.features, weights_only=True)
        val_x = torch.load(paths.val_features, weights_only=True)
        start = time.perf_counter()
        bonus = fit_item_bonus(data, train_x)
        acc = choice_accuracy(vlm, train_x, val_x, item_bonus=bonus)
        took = time.perf_counter() - start
        print(f"VQA accuracy on {cfg.n_val} val questions (simulated, not OK-VQA; {took:.1f} s):")
        print("  shots          " + "".join(f"{k:>8}" for k in (1, 2, 3, 4)))
        for name, row in acc.items():
            print(f"  {name:<14} " + "".join(f"{a:8.2f}" for a in row))

        g = torch.Generator().manual_seed(0)
        demos = {k: torch.randint(cfg.n_train, (cfg.n_val, k), generator=g).tolist() for k in (1, 2, 3, 4)}
        queries = list(range(cfg.n_val))
        vlm.answer_batch("val", queries, demos[2])  # warm-up
        start = time.perf_counter()
        for k in (1, 2, 3, 4):
            vlm.answer_batch("val", queries, demos[k])
        batch_ms = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        for q in queries[:200]:
            vlm.answer("val", q, demos[2][q])
        single_ms = 1000 * (time.perf_counter() - start) / 200
        print(
            f"simulated VLM: {cfg.n_val} questions x 4 shot counts in {batch_ms:.0f} ms (answer_batch); "
            f"{single_ms:.2f} ms per single answer()"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
