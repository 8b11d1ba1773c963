"""Time `lever data stats` and `lever data balance` on a large generated candidate file.

Generates a file in the compatibility format (default 100,000 queries x 40 sequences,
64-item pools, about 1.2 GB) in a temporary folder, then runs each measurement in its
own process so peak memories are separate:

  stats (cold)     parse + validate + cache write + stats
  reload (cached)  load_candidates from the cache
  stats (cached)   the whole command with a warm cache
  balance          default options (drop failed and uniform groups), warm cache
  balance (cold)   the same without the cache (parse + balance + write)
  balance (remap)  --group-size 16 --pool-size 32: every kept candidate is re-encoded

Prints, per measurement: process wall time (interpreter and imports included), the
operation's own time, CPU time (user + system, the forked parser included), peak
resident memory of the process and of the forked half-file parser (a cold read of a
file over 64 MB uses two processes; the file's pages they both map are shared, so
the two peaks overlap). The temporary folder is deleted at the end.

    python benchmarks/bench_data.py                 # the issue's size
    python benchmarks/bench_data.py --queries 5000  # a quick run
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

TARGETS = "targets (issue 4): stats and balance < 20 s each, peak memory < 3 GB, cached reload < 2 s"


def child(op: str, file: Path, work: Path) -> None:
    """Run one measurement in this process and print its figures as JSON."""
    os.chdir(work)  # the workspace cache (.lever-cache) lands in the work folder
    t_start = time.perf_counter()
    import typer
    from typer.testing import CliRunner

    from lever.data.reader import load_candidates
    from lever_cli.data import data_app

    app = typer.Typer()
    app.add_typer(data_app, name="data")
    t0 = time.perf_counter()
    if op == "reload":
        load_candidates(file, cache_dir=work / ".lever-cache" / "candidates", log=lambda m: None)
    else:
        args = {
            "stats_cold": ["stats", file, "--json"],
            "stats_cached": ["stats", file, "--json"],
            "balance": ["balance", file, work / "out1.json"],
            "balance_cold": ["balance", file, work / "out2.json", "--no-cache"],
            "balance_remap": ["balance", file, work / "out3.json", "--group-size", "16", "--pool-size", "32"],
        }[op]
        res = CliRunner().invoke(app, ["data", *map(str, args)])
        if res.exit_code != 0:
            raise SystemExit(f"{op} failed: {res.output[-2000:]} {res.exception!r}")
    op_s = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the forked half-file parser, if any
    print(json.dumps({
        "op_s": op_s, "imports_s": t0 - t_start, "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
        "rss_kb": me.ru_maxrss, "child_rss_kb": kids.ru_maxrss,
    }))  # fmt: skip


def measure(op: str, file: Path, work: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--child", op, "--file", str(file), "--work", str(work)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["wall_s"] = time.perf_counter() - t0
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--group", type=int, default=40, help="sequences per query")
    ap.add_argument("--pool", type=int, default=64, help="candidate pool size")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.file, a.work)
        return

    from lever.data.synthetic import write_synthetic_file

    work = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        file = work / "candidates.json"
        t0 = time.perf_counter()
        size = write_synthetic_file(file, a.queries, group=a.group, pool=a.pool)
        print(f"generated {a.queries} queries x {a.group} sequences, pools of {a.pool}: "
              f"{size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
        print(f"{'measurement':<16}{'wall s':>8}{'op s':>8}{'cpu s':>8}{'peak GB':>9}{'child GB':>10}", flush=True)
        for op in ("stats_cold", "reload", "stats_cached", "balance", "balance_cold", "balance_remap"):
            f = measure(op, file, work)
            print(f"{op:<16}{f['wall_s']:>8.1f}{f['op_s']:>8.1f}{f['cpu_s']:>8.1f}{f['rss_kb'] / 1e6:>9.2f}"
                  f"{f['child_rss_kb'] / 1e6:>10.2f}", flush=True)  # fmt: skip
        print(f"(process imports took about {f['imports_s']:.1f} s of each wall time; {os.cpu_count()} CPUs; {TARGETS})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
