"""Demonstration selection speed: per-question pools + greedy decoding for 800 questions, shots 1-4.

    python benchmarks/bench_select.py [--questions 800] [--train 6000] [--device cpu]

One greedy decode of max(shots) steps serves every shot count (the first s picks are the
s-shot selection), so the figure covers all four shot settings. Also times the simulated
VLM answering all 4 x 800 requests, for scale.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from lever.eval.select import random_pools, select_demos, similar_pools
from lever.model import PointerSelector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=800)
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--pool", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    train = F.normalize(torch.randn(args.train, 512), dim=-1).to(args.device)
    queries = F.normalize(torch.randn(args.questions, 512), dim=-1).to(args.device)
    model = PointerSelector().to(args.device).eval()

    def timed(fn):
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best, out

    t_pool, pools = timed(lambda: similar_pools(queries, train, args.pool))
    t_rand, _ = timed(lambda: random_pools(list(range(args.questions)), args.train, args.pool, 0))
    t_sel, picks = timed(lambda: select_demos(model, queries, train, pools, 4))
    assert picks.shape == (args.questions, 4)
    print(f"{args.questions} questions, {args.train} train items, K={args.pool}, device {args.device} (best of {args.repeats})")
    print(f"  similar pools          {t_pool * 1000:8.1f} ms")
    print(f"  random pools           {t_rand * 1000:8.1f} ms")
    print(f"  greedy decode, 4 steps {t_sel * 1000:8.1f} ms")
    print(f"  selection, shots 1-4   {(t_pool + t_sel) * 1000:8.1f} ms  (target < 1000 ms)")


if __name__ == "__main__":
    main()
