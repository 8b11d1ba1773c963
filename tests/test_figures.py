"""Figures: the data of each figure equals the table's numbers (the same function), the drawn lines equal that data,
the files are PNG, PDF or SVG by extension, and without matplotlib a figure command says how to get it (exit 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_report import PLAN5_METRICS, comparison, plan_runs, runs  # noqa: F401 (a fixture)

from lever.report import figures
from lever.report.leaderboard import build_leaderboard

matplotlib = pytest.importorskip("matplotlib")


@pytest.fixture
def cli_runs(lever, runs: Path, monkeypatch):  # noqa: F811 (the fixture)
    """`lever` on the report tests' runs, from a folder whose plans/ holds no plan files (their only hashes count)."""
    monkeypatch.setenv("LEVER_RUNS", str(runs))
    monkeypatch.chdir(runs.parent)
    (runs.parent / "plans").mkdir(exist_ok=True)
    return lever


def _lines(fig) -> dict[str, object]:
    return {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}


def test_shot_curves_are_the_leaderboards_cells(runs: Path):  # noqa: F811
    lb = build_leaderboard([plan_runs(runs, n) for n in ("baseline", "plan5", "plan7_1")], n_resamples=2000)
    data = figures.shot_curves(lb)
    assert [(s.name, s.role) for s in data.series] == [("baseline", "baseline"), ("plan5", "plan"), ("plan7_1", "plan")]
    assert data.note == lb.footnote  # what the bands are, in the table's words
    plan5 = data.series[1]
    # hand-worked in test_report: plan5 60, 100, 46, 20 at 1-4 shots; the mean column is not a shot count
    assert [(p.shots, p.value) for p in plan5.points] == [(1, 60.0), (2, 100.0), (3, 46.0), (4, 20.0)]
    assert (plan5.points[1].lo, plan5.points[1].hi, plan5.points[1].mark) == (100.0, 100.0, "best")
    for s in data.series:
        for p in s.points:
            e = lb.columns[p.shots - 1].entries[s.name]
            assert (p.value, p.lo, p.hi, p.mark) == (e.accuracy, e.lo, e.hi, e.mark)
    # drawn: each plan's line holds its points, and its band spans its intervals
    fig = figures.render(data)
    line = _lines(fig)["series:plan5"]
    assert list(line.get_xdata()) == [1, 2, 3, 4] and list(line.get_ydata()) == [60.0, 100.0, 46.0, 20.0]
    assert line.get_color() == figures.OKABE_ITO[0] and _lines(fig)["series:baseline"].get_linestyle() == "--"
    base = lb.columns[0].entries["baseline"]
    bands = [c for c in fig.axes[0].collections if c.get_facecolor()[0][:3].tolist() == [0.0, 0.0, 0.0]]
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert min(ys) == pytest.approx(min(e.lo for c in lb.columns[:4] for k, e in c.entries.items() if k == "baseline"))
    assert base.lo in ys


def test_zero_shot_is_a_level(runs: Path):  # noqa: F811
    from test_report import write_run

    write_run(runs, "baselines/zero_shot", 0, spec={}, accs={0: [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]})
    lb = build_leaderboard([plan_runs(runs, n) for n in ("baseline", "baselines/zero_shot")], n_resamples=200)
    data = figures.shot_curves(lb)
    zero = next(s for s in data.series if s.name == "baselines/zero_shot")
    assert zero.role == "zero-shot" and [(p.shots, p.value) for p in zero.points] == [(0, 10.0)]
    fig = figures.render(data)
    level = [line for line in fig.axes[0].get_lines() if line.get_label() == "baselines/zero_shot (0 shots)"]
    assert list(level[0].get_ydata()) == [10.0, 10.0]  # a horizontal line across the axes
    assert list(fig.axes[0].get_xticks()) == [1, 2, 3, 4]  # 0 is not a shot count the others were drawn at


def test_deltas_are_the_comparisons_cells(runs: Path):  # noqa: F811
    cmp = comparison(runs, ("plan5", "plan7_1"))
    data = figures.deltas(cmp)
    plan5 = next(s for s in data.series if s.name == "plan5")
    # plan5 - baseline: +10, +100, -4, 0 (test_report's hand-worked values); +100 (all 10 questions up: exact
    # p = 2/1024) is the only one whose Holm-adjusted p is below 0.05, as the table's "sig. (adj)" counts
    assert [round(p.value, 6) for p in plan5.points] == [10.0, 100.0, -4.0, 0.0]
    assert [p.mark for p in plan5.points] == ["", "significant", "", ""]
    assert plan5.points[1].p == pytest.approx(2 / 1024) and plan5.points[1].p_holm < 0.05
    assert (
        sum(p.mark == "significant" for p in plan5.points) == next(c for c in cmp.plans if c.name == "plan5").improved_significant
    )
    for row in cmp.rows[:4]:
        c = row.cells["plan5"]
        p = plan5.points[int(row.label) - 1]
        assert (p.value, p.lo, p.hi, p.p, p.p_holm) == (c.delta, c.lo, c.hi, c.p, c.p_holm)
    fig = figures.render(data)
    line = _lines(fig)["series:plan5"]
    assert list(line.get_ydata()) == [p.value for p in plan5.points]
    # hollow markers for the three points within noise (the table's ~), none for the significant one
    hollow = [ln for ln in fig.axes[0].get_lines() if ln.get_markerfacecolor() == "white"]
    assert sorted(len(ln.get_xdata()) for ln in hollow) == [3, 4]  # plan5: 3 within noise; plan7_1: all 4


def test_training_curves_panels_selected_epoch_and_stages(runs: Path):  # noqa: F811
    data = figures.training_curves([plan_runs(runs, "plan5"), plan_runs(runs, "baseline")])
    # in CURVE_METRICS order, only what some run logged (the baseline's RCE loss included)
    assert [k for k, _ in data.panels] == ["val/loss", "losses/rce", "losses/ppo", "kl/value", "adv/std"]
    kl = next(c for c in data.curves if c.plan == "plan5" and c.metric == "kl/value")
    # PLAN5_METRICS: rce 1, grpo 1, grpo 2 (selected), grpo 3 -> x 1..4; KL is logged from x = 2
    assert (kl.x, kl.y, kl.selected) == ([2, 3, 4], [0.02, 0.05, 0.08], 3)
    assert data.stage_starts == [1.5]  # rce -> grpo after the first row
    base = next(c for c in data.curves if c.plan == "baseline" and c.metric == "val/loss")
    assert (base.x, base.y, base.selected) == ([1, 2], [2.0, 1.5], 2)
    fig = figures.render(data)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == [label for _, label in data.panels]
    assert list(_lines(fig)["curve:plan5:0:kl/value"].get_ydata()) == [0.02, 0.05, 0.08]
    # `lever report` draws every logged metric: the panels' first, then the others as they appear
    assert figures.logged_metrics([plan_runs(runs, "baseline")]) == ["val/loss", "losses/rce", "rce/tau"]
    # a metric by name, one a later trainer logs included, is one list entry (or --metric)
    only = figures.training_curves([plan_runs(runs, "plan5")], ["adv/std", "no/such"])
    assert [k for k, _ in only.panels] == ["adv/std"] and all(c.metric == "adv/std" for c in only.curves)
    assert PLAN5_METRICS[2]["adv/std"] in only.curves[0].y


def test_plot_shots_equals_leaderboard_json_in_png_pdf_svg(cli_runs, tmp_path: Path):
    table = json.loads(cli_runs("leaderboard", "--json", "--resamples", "500").out)
    for ext, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")):
        out = tmp_path / f"fig/shots{ext}"
        res = cli_runs("plot", "shots", "-o", out, "--json", "--resamples", "500")
        assert res.code == 0, res.text
        assert out.read_bytes().startswith(magic) and f"wrote {out}" in res.err
    drawn = json.loads(res.out)
    cells = {(c["label"], k): e for c in table["columns"] for k, e in c["entries"].items()}
    points = [(s["name"], p) for s in drawn["series"] for p in s["points"]]
    assert {name for name, _ in points} == {"baseline", "plan5", "plan7_1"}  # every evaluated plan (plan6 is not)
    assert len(points) == 12
    for name, p in points:
        e = cells[(str(p["shots"]), name)]
        assert (p["value"], p["lo"], p["hi"], p["mark"]) == (e["accuracy"], e["lo"], e["hi"], e["mark"])
    assert (tmp_path / "fig/shots.png").stat().st_size < 200_000


def test_plot_delta_equals_compare_json(cli_runs, tmp_path: Path):
    table = json.loads(cli_runs("compare", "plan5", "plan7_1", "--json", "--resamples", "500").out)
    res = cli_runs("plot", "delta", "plan5", "plan7_1", "-o", tmp_path / "d.pdf", "--json", "--resamples", "500")
    assert res.code == 0, res.text
    drawn = {s["name"]: s["points"] for s in json.loads(res.out)["series"]}
    for row in table["rows"]:
        if row["label"] == "avg":
            continue
        for name in ("plan5", "plan7_1"):
            c, p = row["cells"][name], drawn[name][int(row["label"]) - 1]
            assert (p["value"], p["lo"], p["hi"], p["p_holm"]) == pytest.approx((c["delta"], c["lo"], c["hi"], c["p_holm"]))


def test_plot_curves_and_bad_input(cli_runs, tmp_path: Path):
    res = cli_runs("plot", "curves", "plan5", "baseline", "-o", tmp_path / "c.png")
    assert res.code == 0 and (tmp_path / "c.png").read_bytes().startswith(b"\x89PNG"), res.text
    res = cli_runs("plot", "curves", "plan5", "-o", tmp_path / "c.jpg")
    assert res.code == 2 and "PNG, PDF or SVG" in res.err and "c.png" in res.err
    res = cli_runs("plot", "curves", "plan5", "-m", "no/such", "-o", tmp_path / "c.png")
    assert res.code == 2 and "no training metrics to draw" in res.err and "val/loss" in res.err
    (tmp_path / "file").write_text("")  # a file where the figure's folder would be
    res = cli_runs("plot", "curves", "plan5", "-o", tmp_path / "file" / "c.png")
    assert res.code == 2 and "the figure cannot be written" in res.err
    res = cli_runs("plot", "delta", "plan5", "--baseline", "plan6", "-o", tmp_path / "d.png")
    assert res.code == 2 and "plan6: not evaluated" in res.err
    assert "Traceback" not in res.text


def test_without_matplotlib_a_figure_command_says_how_to_get_it(cli_runs, monkeypatch, tmp_path: Path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    assert not figures.has_matplotlib()
    res = cli_runs("plot", "shots", "-o", tmp_path / "s.png", "--resamples", "100")
    assert res.code == 2 and "needs matplotlib" in res.err and "pip install 'lever[plot]'" in res.err, res.text
    assert not (tmp_path / "s.png").exists()


def test_online_grpo_metrics_have_panels_by_name():
    from lever.report.results import PlanRuns, RunData

    rows = [
        {"stage": "grpo", "epoch": 1, "val/loss": 1.0, "rollout/reward_mean": 0.4, "rollout/reward_std": 0.2,
         "rollout/zero_std_frac": 0.5, "rollout/entropy": 2.1, "cost/val/calls": 7},
        {"stage": "grpo", "epoch": 2, "val/loss": 0.9, "rollout/reward_mean": 0.5, "rollout/reward_std": 0.1,
         "rollout/zero_std_frac": 0.25, "rollout/entropy": 2.0, "cost/val/calls": 0},
    ]  # fmt: skip
    pr = PlanRuns("online", [RunData(path=Path("runs/online/h/seed-0"), plan="online", spec_hash="h", seed=0, metrics=rows)])
    data = figures.training_curves([pr])
    assert [k for k, _ in data.panels] == [
        "val/loss",
        "rollout/reward_mean",
        "rollout/reward_std",
        "rollout/zero_std_frac",
        "rollout/entropy",
    ]  # fmt: skip  (cost/val/calls is no panel of the default list; `--metric cost/val/calls` draws it)
    mean = next(c for c in data.curves if c.metric == "rollout/reward_mean")
    assert (mean.x, mean.y, mean.selected) == ([1, 2], [0.4, 0.5], None)
