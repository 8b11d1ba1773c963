"""The headline across benchmark worlds: `plan5_rank` against `similar, both` on `val` and the held-out `test` split,
one bundled-benchmark world per world seed (docs/benchmark.md, "Confirmed on the held-out split, and on a second world").

    python benchmarks/bench_worlds.py                                 # worlds 0 and 1, seed 0, in a temporary folder
    python benchmarks/bench_worlds.py --worlds 0,1,2 --dir worlds     # keep the runs: the same call again reuses them
    python benchmarks/bench_worlds.py --seeds 0,1,2 --dir worlds      # the plan over three seeds (the baseline trains nothing)
    python benchmarks/bench_worlds.py --dir worlds grpo.epochs=5      # overrides, for both plans as in `lever run`

Each world is a workspace file DIR/world-N/lever.toml holding `[bench] seed = N` (and any --bench settings), with its
own runs folder; the worlds share one cache (DIR/.lever-cache). The runs are made by `lever run` (the plan with the
given seeds, the baseline with its own, both with eval.splits = ["val", "test"]); the numbers are `lever compare`'s
(lever.report.reports.load_comparison, the same Holm families and resampling).

One Markdown table: Δ = plan - baseline in points per shot count; the mean over the shot counts with its 95% paired
interval and its p (the primary test; Holm over one test is the test itself); bold = Holm-adjusted p < 0.05, the shot
rows of a world and split one family; ~ = the interval includes 0; ? = borderline. --json prints every cell's numbers.
About 3 minutes a world on two idle cores, 8 on two loaded ones (training the plan; the baseline trains nothing).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("val", "test")
AVG = "avg"


def int_list(text: str) -> list[int]:
    """'0,1' -> [0, 1] (argparse type: a bad value is a usage error, exit 2)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,1, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected one or more integers >= 0 such as 0,1, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", type=int_list, default=[0, 1], help="World seeds ([bench] seed), e.g. 0,1 (default)")
    ap.add_argument("--seeds", type=int_list, default=[0], help="The plan's training seeds, e.g. 0,1,2 (default 0)")
    ap.add_argument("--dir", type=Path, default=None, help="Keep the workspaces and runs here (default: a temporary folder)")
    ap.add_argument("--plan", default="plan5_rank", help="The plan: a name in plans/ or a file (default plan5_rank)")
    ap.add_argument(
        "--baseline", default="baselines/similar_both", help="The baseline: a name or a file (default baselines/similar_both)"
    )
    ap.add_argument(
        "--bench",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="More [bench] settings for every world, as TOML (e.g. --bench item_features='\"image\"'); repeatable",
    )
    ap.add_argument("--json", action="store_true", help="Print every cell's numbers as JSON instead of the table")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Overrides for both plans, as `lever run` takes them")
    args = ap.parse_args(argv)
    for text in [*args.bench, *args.overrides]:
        if "=" not in text:
            ap.error(f"expected KEY=VALUE, got {text!r}")
    return args


def write_workspace(folder: Path, world: int, bench: list[str], cache: Path) -> Path:
    """folder/lever.toml: this world's [bench] settings, runs in folder/runs, the shared cache, the repository's plans."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "lever.toml"
    lines = ['runs = "runs"', f"cache = {json.dumps(str(cache))}", f"plans = {json.dumps(str(ROOT / 'plans'))}", "", "[bench]"]
    lines += [f"seed = {world}", *bench]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plan_overrides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The `lever run` overrides of the plan and of the baseline (which keeps its own seeds: it trains nothing)."""
    splits = "eval.splits=" + json.dumps(list(SPLITS))
    return [splits, f"seeds={json.dumps(args.seeds)}", *args.overrides], [splits, *args.overrides]


def run_world(workspace: Path, args: argparse.Namespace) -> None:
    """`lever run` the plan and the baseline in this world (finished runs are reused); progress goes to stderr."""
    plan_sets, base_sets = plan_overrides(args)
    for ref, sets in ((args.plan, plan_sets), (args.baseline, base_sets)):
        cmd = [sys.executable, "-m", "lever_cli", "--workspace", str(workspace), "run", ref, *sets, "--no-baseline"]
        print("$ " + shlex.join(["lever", *cmd[3:]]), file=sys.stderr, flush=True)
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            sys.exit(f"lever run {ref} failed in {workspace} (exit {done.returncode})")


def world_rows(workspace: Path, args: argparse.Namespace) -> list[dict]:
    """One record per split: the compared plan@HASH and baseline@HASH, and each shot row's cell (`lever compare`)."""
    from lever.report.reports import load_comparison
    from lever.spec import load_plan, load_workspace

    ws = load_workspace(workspace)
    plan_sets, base_sets = plan_overrides(args)
    plan = load_plan(args.plan, plan_sets, ws.plans_dir)
    base = load_plan(args.baseline, base_sets, ws.plans_dir)
    out = []
    for split in SPLITS:
        cmp = load_comparison([f"{plan.name}@{plan.hash}"], f"{base.name}@{base.hash}", ws.runs_dir, ws.plans_dir, split)
        col = next(c for c in cmp.plans if not c.baseline)
        if col.missing:
            sys.exit(f"{workspace}: {col.name} on {split}: {col.missing}")
        cells = {}
        for row in cmp.rows:
            c, b = row.cells[col.name], row.cells[cmp.baseline]
            cells[row.label] = {
                "accuracy": c.accuracy, "baseline": b.accuracy, "delta": c.delta, "lo": c.lo, "hi": c.hi, "p": c.p,
                "p_holm": c.p_holm, "borderline": c.borderline, "interval": c.interval,
            }  # fmt: skip
        out.append({
            "split": split, "plan": f"{plan.name}@{plan.hash}", "baseline": f"{base.name}@{base.hash}",
            "n_questions": cmp.n_questions, "seeds": col.n_seeds, "cells": cells,
        })  # fmt: skip
    return out


def delta_text(cell: dict) -> str:
    """+4.54 in bold when its Holm-adjusted p is below ALPHA; ~ when the interval includes 0; ? when borderline."""
    from lever.report.significance import ALPHA
    from lever.report.tables import fixed

    if cell["delta"] is None:
        return "—"
    text = fixed(cell["delta"], sign=True)
    if cell["p_holm"] is not None and cell["p_holm"] < ALPHA:
        text = f"**{text}**"
    if cell["lo"] is not None and cell["lo"] <= 0.0 <= cell["hi"]:
        text += " ~"
    return text + ("?" if cell["borderline"] else "")


def table(records: list[dict]) -> str:
    """The Markdown table of docs/benchmark.md: one line per world and split."""
    from lever.report.tables import fixed, fmt_p

    shots = [label for label in records[0]["cells"] if label != AVG]
    lines = [
        f"| world, split | {' | '.join(shots)} | mean {shots[0]}-{shots[-1]} [95% CI] | p (primary) |",
        "|---|" + "---|" * len(shots) + "---|---|",
    ]
    for r in records:
        mean = r["cells"][AVG]
        ci = "[—]" if mean["lo"] is None else f"[{fixed(mean['lo'], sign=True)}, {fixed(mean['hi'], sign=True)}]"
        cells = [delta_text(r["cells"].get(s, {"delta": None})) for s in shots]
        lines.append(
            f"| world {r['world']}, {r['split']} | {' | '.join(cells)} | {delta_text(mean)} {ci} | {fmt_p(mean['p_holm'])} |"
        )
    r = records[0]
    seeds = f"{r['seeds']} seed(s) of the plan, intervals over {r['cells'][AVG]['interval']}"
    lines += [
        "",
        f"Δ = {r['plan'].split('@')[0]} - {r['baseline'].split('@')[0]} in points; {r['n_questions']} questions per split; {seeds}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="lever-worlds-"))
    try:
        records = []
        for world in args.worlds:
            workspace = write_workspace(folder / f"world-{world}", world, args.bench, folder / ".lever-cache")
            start = time.perf_counter()
            run_world(workspace, args)
            print(f"world {world}: runs done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            records += [{"world": world, **r} for r in world_rows(workspace, args)]
        print(json.dumps(records, indent=2) if args.json else table(records))
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
