"""`lever run PLAN` runs the plans folder's baseline too (when it has no evaluated runs) and shows the comparison;
output redirected to a file is not wrapped at 80 columns."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from test_run import FAST, PLANS, ROOT, run_cli, seed_dirs
from test_run import ws as ws  # noqa: F401  (a fixture)

from lever.errors import LeverError
from lever.recipe.baseline import baseline_overrides, plan_baseline
from lever.spec import load_plan
from lever.spec.workspace import load_workspace

QUICK = [*FAST, "grpo.epochs=1"]  # plan5 with one GRPO epoch; the baseline has none and gets no grpo override


def test_the_overrides_of_what_the_baseline_does_not_run_are_left_out():
    kept, skipped = baseline_overrides(["rce.epochs=2", "grpo.epochs=1", "eval.shots=[1,2]", "phases=[]", "select.epoch=1"])
    assert kept == ["rce.epochs=2", "eval.shots=[1,2]"]
    assert skipped == ["grpo.epochs=1", "phases=[]", "select.epoch=1"]
    from_baseline = ["start.kind=plan", "start.plan=baseline", "rce.epochs=0", "eval.questions=20", "seeds=[1]"]
    assert baseline_overrides(from_baseline) == (  # GRPO on the baseline's weights: the baseline as it is
        ["eval.questions=20", "seeds=[1]"],
        ["start.kind=plan", "start.plan=baseline", "rce.epochs=0"],
    )
    assert baseline_overrides(["start.kind=plan", "start.plan=sft"]) == (["start.kind=plan", "start.plan=sft"], [])


def test_which_baseline(ws, tmp_path):
    workspace = load_workspace(os.environ["LEVER_WORKSPACE"])
    plan5 = load_plan(PLANS / "plan5.toml", QUICK)
    base = plan_baseline([plan5], QUICK, workspace, None)
    assert base.lp.path == PLANS / "baseline.toml" and base.skipped == ["grpo.epochs=1"]
    assert base.lp.hash == load_plan(PLANS / "baseline.toml", FAST).hash  # the same settings as the plan's RCE stage
    assert [r.seed for r in base.todo] == [0]  # nothing run yet
    assert [r.seed for r in plan_baseline([plan5], QUICK, workspace, 3).todo] == [3]  # --seed 3: that seed
    original = load_plan(PLANS / "original" / "plan5.toml", QUICK)
    assert plan_baseline([original], QUICK, workspace, None).lp.path == PLANS / "original" / "baseline.toml"
    assert plan_baseline([load_plan(PLANS / "baseline.toml"), plan5], [], workspace, None) is None  # named: used as is
    similar = load_plan(PLANS / "baselines" / "similar_both.toml")  # trains nothing: no RCE stage to share
    assert plan_baseline([similar, plan5], QUICK, workspace, None).lp.path == PLANS / "baseline.toml"
    assert plan_baseline([similar], [], workspace, None) is None
    alone = tmp_path / "mine.toml"  # a plan file in a folder without a baseline
    alone.write_text(f'description = "mine"\nextends = "{PLANS / "plan5.toml"}"\n')
    assert plan_baseline([load_plan(alone)], [], workspace, None) is None
    with pytest.raises(LeverError, match="baseline for the comparison table does not take this command's overrides"):
        plan_baseline([plan5], ["rce.epochs=0"], workspace, None)  # a baseline without stages


def test_run_plan_runs_the_baseline_and_shows_the_comparison(lever, ws):
    res = run_cli(lever, "run", PLANS / "plan5.toml", *QUICK)
    assert res.code == 0, res.text
    assert "baseline: no evaluated run for seed 0 with these settings (without grpo.epochs=1); running it too" in res.err
    (plan_run,) = seed_dirs(ws, "plan5")
    (base_run,) = seed_dirs(ws, "baseline")
    assert base_run.parent.name == load_plan(PLANS / "baseline.toml", FAST).hash
    assert json.loads((base_run / "status.json").read_text())["state"] == "done"
    # One RCE stage for both runs: the baseline's evaluation is all it added.
    rce = {json.loads((run / "stages.json").read_text())[0]["dir"] for run in (plan_run, base_run)}
    assert len(rce) == 1 and sorted(p.name.split("-")[0] for p in (ws / "runs" / "_stages").glob("[!.]*")) == ["grpo", "rce"]
    assert "Accuracy (%) on val vs baseline" in res.out and "no comparison table" not in res.text
    # Progress in answers: plan5 answers 40 questions of each of its 2 splits (val, train) at 2 shot counts,
    # the baseline 40 val questions at 2 shot counts.
    assert "evaluating plan5 seed 0: 160/160 answers (80 questions x 2 shot counts), 100%" in res.err
    assert "evaluating baseline seed 0: 80/80 answers (40 questions x 2 shot counts), 100%" in res.err
    # with the plot extra: the shot curve of the plan and its baseline, beside the plan's runs, its path printed
    figure = plan_run.parent / "report" / "shots_val.png"
    assert f"figure: {figure}" in res.err and figure.read_bytes().startswith(b"\x89PNG")
    again = run_cli(lever, "run", PLANS / "plan5.toml", *QUICK)
    assert again.code == 0 and "running it too" not in again.text and "Accuracy (%) on val vs baseline" in again.out
    # --no-baseline: another setting, so no baseline runs for it, and no table.
    other = run_cli(lever, "run", PLANS / "plan5.toml", *QUICK, "eval.questions=30", "--no-baseline")
    assert other.code == 0 and "running it too" not in other.text
    assert "no comparison table: baseline" in other.err and len(seed_dirs(ws, "baseline")) == 1, other.text
    assert load_plan(PLANS / "baseline.toml", [*FAST, "eval.questions=30"]).hash in other.err  # the one to run
    # A baseline that cannot take the overrides: a one-line error naming --no-baseline, which then runs the plan.
    bad = run_cli(lever, "run", PLANS / "plan5.toml", *QUICK, "rce.epochs=0", "--no-eval")
    assert bad.code == 0  # without evaluation there is no table, so no baseline
    bad = run_cli(lever, "run", PLANS / "plan5.toml", *QUICK, "rce.epochs=0")
    assert bad.code == 2 and "--no-baseline" in bad.err and "Traceback" not in bad.text
    assert run_cli(lever, "run", PLANS / "plan5.toml", *QUICK, "rce.epochs=0", "--no-baseline").code == 0


def test_output_redirected_to_a_file_is_not_wrapped(tmp_path, monkeypatch):
    """rich wraps at 80 columns when there is no terminal; lever's consoles do not (unless COLUMNS says a width)."""
    description = load_plan(PLANS / "plan5.toml").plan.description
    assert len(description) > 80
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    out = tmp_path / "out.txt"
    with out.open("w") as fo:
        cmd = [sys.executable, "-m", "lever_cli", "show", str(PLANS / "plan5.toml")]
        assert subprocess.run(cmd, cwd=ROOT, env=env, stdout=fo, stderr=subprocess.DEVNULL).returncode == 0
    assert description in out.read_text().splitlines()  # one line, as long as it is
    from lever_cli._console import _Console

    narrow = _Console(file=io.StringIO())
    monkeypatch.setenv("COLUMNS", "80")  # COLUMNS still decides
    narrow.print(description)
    assert description not in narrow.file.getvalue().splitlines()
    monkeypatch.delenv("COLUMNS")
    wide = _Console(file=io.StringIO())
    wide.print(description)
    assert wide.file.getvalue() == description + "\n"
