"""A sweep of 4 runs of a reduced plan, one at a time vs `--jobs 2`: wall time, and each run's own time.

    python benchmarks/bench_sweep.py [--jobs 2] [--plan plan5] [key=value ...]

The same sweep (plan5 reduced: 2 RCE + 8 GRPO epochs, 200 questions at 1-4 shots; two GRPO
learning rates x seeds 0 and 1) runs twice through the local executor, each time into a
fresh runs folder on the bundled benchmark: `--jobs 1` (sequential), then `--jobs N`.
Prints both wall times, their ratio, and every run's time (its provenance written to its
`done` status) under both, with the slowest run's ratio to its sequential time.
Target on 2 cores: `--jobs 2` no slower than sequential, and no run slower than 2x its solo time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REDUCED = ["rce.epochs=2", "grpo.epochs=8", "eval.questions=200", 'eval.splits=["val"]']
GRID = ["--grid", "grpo.lr=5e-6,1e-5", "--seeds", "0,1"]


def sweep(folder: Path, plan: str, overrides: list[str], jobs: int) -> tuple[float, dict[str, float]]:
    """Run the sweep into `folder/runs`; its wall time and each run's (hash/seed -> seconds)."""
    ws = folder / "lever.toml"
    ws.write_text(f'runs = "runs"\ncache = "{ROOT / ".lever-cache"}"\nplans = "{ROOT / "plans"}"\n', encoding="utf-8")
    cmd = [sys.executable, "-m", "lever_cli", "--workspace", str(ws), "sweep", plan, *overrides, *GRID, "--jobs", str(jobs)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    runs = {}
    for status in sorted((folder / "runs").glob("*/*/seed-*/status.json")):
        assert json.loads(status.read_text())["state"] == "done", status
        start = (status.parent / "provenance.json").stat().st_mtime
        runs[f"{status.parent.parent.name}/{status.parent.name}"] = status.stat().st_mtime - start
    return wall, runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--plan", default="plan5")
    ap.add_argument("overrides", nargs="*", help="key=value overrides instead of the reduced ones")
    args = ap.parse_args()
    overrides = args.overrides or REDUCED
    print(f"cores available: {len(os.sched_getaffinity(0))}; {args.plan} {' '.join(overrides)}; {' '.join(GRID)}")
    with tempfile.TemporaryDirectory() as warm, tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        sweep(Path(warm), args.plan, [*overrides, "rce.epochs=1", "grpo.epochs=0", "eval.questions=1"], 1)  # data ready, untimed
        seq_wall, seq_runs = sweep(Path(a), args.plan, overrides, 1)
        par_wall, par_runs = sweep(Path(b), args.plan, overrides, args.jobs)
    print(f"sequential (--jobs 1): {seq_wall:6.1f} s")
    print(f"--jobs {args.jobs}:            {par_wall:6.1f} s   ratio {par_wall / seq_wall:.2f} (below 1: faster)")
    print(f"{'run':<28} {'alone s':>8} {'jobs s':>8} {'ratio':>6}")
    for key in seq_runs:
        print(f"{key:<28} {seq_runs[key]:8.1f} {par_runs[key]:8.1f} {par_runs[key] / seq_runs[key]:6.2f}")
    worst = max(par_runs[k] / seq_runs[k] for k in seq_runs)
    print(f"slowest run under --jobs {args.jobs}: {worst:.2f}x its sequential time (target: at most 2x)")


if __name__ == "__main__":
    main()
