"""benchmarks/bench_worlds.py: its arguments, the workspace file per world, the table it assembles (hand-worked marks),
and, in the slow tier, its numbers against `lever compare --json` on two small worlds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lever.spec import load_workspace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_worlds  # noqa: E402


def test_arguments():
    args = bench_worlds.parse_args([])
    assert (args.worlds, args.seeds, args.dir, args.overrides) == ([0, 1], [0], None, [])
    args = bench_worlds.parse_args(["--worlds", "0,2", "--seeds", "0,1,2", "grpo.epochs=5"])
    assert (args.worlds, args.seeds, args.overrides) == ([0, 2], [0, 1, 2], ["grpo.epochs=5"])
    assert bench_worlds.plan_overrides(args) == (
        ['eval.splits=["val", "test"]', "seeds=[0, 1, 2]", "grpo.epochs=5"],
        ['eval.splits=["val", "test"]', "grpo.epochs=5"],
    )


@pytest.mark.parametrize("argv", [["--worlds", "a"], ["--worlds", ""], ["--seeds", "-1"], ["grpo"], ["--bench", "seed"]])
def test_bad_arguments_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as ex:
        bench_worlds.parse_args(argv)
    assert ex.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_one_workspace_per_world(tmp_path):
    path = bench_worlds.write_workspace(tmp_path / "world-3", 3, ['item_features = "image"'], tmp_path / "cache")
    ws = load_workspace(path)
    assert ws.bench == {"seed": 3, "item_features": "image"}
    assert ws.runs_dir == tmp_path / "world-3" / "runs"
    assert ws.cache_dir == tmp_path / "cache"
    assert ws.plans_dir == ROOT / "plans"


def cell(delta, lo, hi, p_holm, borderline=False):
    """A cell whose raw p is a third of its Holm-adjusted p (a family of three)."""
    p = None if p_holm is None else p_holm / 3
    return {"delta": delta, "lo": lo, "hi": hi, "p": p, "p_holm": p_holm, "borderline": borderline, "interval": "questions"}


def test_table_marks_holm_survivors_and_intervals_over_zero():
    records = [
        {
            "world": 0, "split": "val", "plan": "plan5_rank@a", "baseline": "baselines/similar_both@b", "n_questions": 800,
            "seeds": 1,
            "cells": {
                "1": cell(2.005, -0.61, 4.68, 0.28),  # interval over 0: ~
                "2": cell(4.54, 1.8, 7.3, 0.012),  # survives Holm: bold
                "3": cell(3.33, 0.2, 6.4, 0.09),  # raw interval above 0, adjusted p above 0.05: plain
                "avg": cell(3.36, 1.76, 4.95, 0.00031),
            },
        },
        {
            "world": 1, "split": "test", "plan": "plan5_rank@a", "baseline": "baselines/similar_both@b", "n_questions": 800,
            "seeds": 1,
            "cells": {
                "1": cell(-0.25, -2.5, 2.0, 1.0),
                "2": cell(1.03, -1.0, 3.0, 0.0499, borderline=True),
                "3": cell(None, None, None, None),
                "avg": cell(1.455, -0.14, 3.06, 0.073),
            },
        },
    ]  # fmt: skip
    lines = bench_worlds.table(records).splitlines()
    assert lines[:4] == [
        "| world, split | 1 | 2 | 3 | mean 1-3 [95% CI] | p (primary) |",
        "|---|---|---|---|---|---|",
        "| world 0, val | +2.01 ~ | **+4.54** | +3.33 | **+3.36** [+1.76, +4.95] | 0.0003 |",
        "| world 1, test | -0.25 ~ | **+1.03** ~? | — | +1.46 ~ [-0.14, +3.06] | 0.073 |",
    ]
    assert "1 seed(s) of the plan, intervals over questions" in lines[-1]


@pytest.mark.slow
def test_two_small_worlds_match_lever_compare(tmp_path, lever, capsys):
    """Two worlds of the small benchmark, short training: the script's numbers are `lever compare`'s on the same runs,
    and the worlds differ."""
    small = ["--bench", "n_train = 600", "--bench", "n_queries = 120", "--bench", "n_val = 80"]
    short = ["rce.epochs=1", "grpo.epochs=1", "eval.questions=80"]
    argv = ["--dir", str(tmp_path), "--worlds", "0,1", *small, *short, "--json"]
    bench_worlds.main(argv)
    records = json.loads(capsys.readouterr().out)
    assert [(r["world"], r["split"]) for r in records] == [(0, "val"), (0, "test"), (1, "val"), (1, "test")]
    assert all(r["n_questions"] == 80 for r in records)
    for r in records:
        ws = tmp_path / f"world-{r['world']}" / "lever.toml"
        out = lever("--workspace", ws, "compare", r["plan"], "--baseline", r["baseline"], "--split", r["split"], "--json")
        assert out.code == 0, out.err
        rows = {row["label"]: row["cells"][r["plan"].split("@")[0]] for row in json.loads(out.out)["rows"]}
        assert rows.keys() == r["cells"].keys() == {"1", "2", "3", "4", "avg"}
        for label, mine in r["cells"].items():
            for key in ("delta", "lo", "hi", "p", "p_holm", "accuracy"):
                assert mine[key] == rows[label][key], (r["world"], r["split"], label, key)
    assert records[0]["cells"]["avg"]["baseline"] != records[2]["cells"]["avg"]["baseline"]  # another world

    bench_worlds.main(argv[:-1])  # the same runs again: reused, printed as a table
    table = capsys.readouterr().out
    assert table.startswith("| world, split | 1 | 2 | 3 | 4 | mean 1-4 [95% CI] | p (primary) |")
    assert len([line for line in table.splitlines() if line.startswith("| world ")]) == 4
