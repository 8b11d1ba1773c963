"""What a comparison pairs, and what it refuses: question sets, datasets, benchmark worlds, two spec hashes of a plan,
runs in progress, damaged runs; Holm across shot rows; one set of digits in `run`, `compare` and `leaderboard`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import BASE, BASE_SPEC, EVAL, H5, HB, PLAN5, PLAN5_SPEC, PLAN7_SPEC, cli, eval_rows, plan_runs, runs, write_run  # noqa: F401

from lever.errors import LeverError
from lever.keys import content_key
from lever.report.leaderboard import build_leaderboard, load_leaderboard
from lever.report.leaderboard import render_plain as leaderboard_plain
from lever.report.reports import load_comparison, run_comparisons, shot_points
from lever.report.results import evaluation_accuracies
from lever.report.tables import build_comparison, fixed, render_plain
from lever.runs.layout import RunDir


def world_eval(run_path: Path, accs: dict[int, list[float]], world: str) -> None:
    """Evaluate a run again as the bundled benchmark's world `world` would record it."""
    run = RunDir(run_path)
    ev = run.eval_dir(EVAL)
    ev.write(
        eval_rows(accs),
        {"checkpoint": {"sha256": run.selected().sha256}, "backend": "sim", "inputs": {"backend": "sim", "world": world}},
    )
    run.mark_selected_eval(ev)


def test_different_question_counts_pair_the_common_questions_with_a_note(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, "baseline", 0, spec=BASE_SPEC, accs={1: [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]})
    write_run(root, "short", 0, spec=PLAN5_SPEC, accs={1: [1, 1, 1, 1, 1]})  # questions 1-5 only
    cmp = build_comparison([plan_runs(root, "short")], plan_runs(root, "baseline"), n_resamples=500)
    row = cmp.rows[0]
    # on questions 1-5 the baseline is 60 (3 of 5), not its 50 over 10; the delta is +40 over the same 5
    assert row.cells["baseline"].accuracy == pytest.approx(60.0) and row.cells["short"].delta == pytest.approx(40.0)
    assert row.cells["baseline"].n_questions == 5
    assert "shots 1: plans answered different questions (baseline 10, short 5); every plan is scored on the 5" in cmp.notes[0]
    assert "note: shots 1: plans answered different questions" in render_plain(cmp)


def test_no_common_question_is_an_error(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, "baseline", 0, spec=BASE_SPEC, accs={1: [1, 0]})
    run = RunDir(write_run(root, "other", 0, spec=PLAN5_SPEC, accs=None))
    ev = run.eval_dir(EVAL)
    ev.write(
        [{**r, "question_id": r["question_id"] + 100} for r in eval_rows({1: [1, 1]})],
        {"checkpoint": {"sha256": run.selected().sha256}},
    )
    run.mark_selected_eval(ev)
    with pytest.raises(LeverError, match=r"answered no question in common \(baseline 2, other 2\)"):
        build_comparison([plan_runs(root, "other")], plan_runs(root, "baseline"), n_resamples=100)


def test_different_datasets_and_worlds_are_refused_by_name(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, "baseline", 0, spec=BASE_SPEC, accs=BASE)
    write_run(root, "v2", 0, spec={**PLAN5_SPEC, "data": {"dataset": "vqav2"}}, accs=PLAN5)
    with pytest.raises(LeverError, match=r"different datasets or benchmark worlds \(okvqa: baseline; vqav2: v2\)"):
        build_comparison([plan_runs(root, "v2")], plan_runs(root, "baseline"), n_resamples=100)
    for name, world in (("w1", "bench-aaaa"), ("w2", "bench-bbbb")):
        world_eval(write_run(root, name, 0, spec=PLAN5_SPEC, accs=None), PLAN5, world)
    with pytest.raises(LeverError, match=r"okvqa \(benchmark world bench-aaaa\): w1; okvqa \(benchmark world bench-bbbb\): w2"):
        build_comparison([plan_runs(root, "w2")], plan_runs(root, "w1"), n_resamples=100)
    with pytest.raises(LeverError, match="benchmark world"):
        build_leaderboard([plan_runs(root, "w1"), plan_runs(root, "w2")], n_resamples=100)


def test_two_hashes_of_one_plan_are_two_columns_and_rows(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, "baseline", 0, spec=BASE_SPEC, accs=BASE)
    a, b = PLAN5_SPEC, {**PLAN5_SPEC, "seeds": [0, 1]}
    ha, hb = content_key(a), content_key(b)
    write_run(root, "plan5", 0, spec=a, accs=PLAN5)
    write_run(root, "plan5", 0, spec=b, accs=BASE)
    plans = tmp_path / "plans"
    plans.mkdir()
    cmp = load_comparison([f"plan5@{ha[:6]}", f"plan5@{hb[:6]}"], "baseline", root, plans, n_resamples=200)
    assert [c.name for c in cmp.plans] == ["baseline", f"plan5@{ha}", f"plan5@{hb}"]
    assert cmp.rows[1].cells[f"plan5@{ha}"].delta == pytest.approx(100.0)
    assert cmp.rows[1].cells[f"plan5@{hb}"].delta == pytest.approx(0.0)
    assert f"Runs: baseline@{content_key(BASE_SPEC)}, plan5@{ha}, plan5@{hb} (1/2 seeds)" in render_plain(cmp)  # each hash once
    lb = load_leaderboard([f"plan5@{ha[:6]}", f"plan5@{hb[:6]}"], root, plans, n_resamples=200)
    assert [r.name for r in lb.plans] == [f"plan5@{ha}", f"plan5@{hb}"]
    assert f"Runs: plan5@{ha}, plan5@{hb} (1/2 seeds)" in leaderboard_plain(lb)


def test_a_run_in_progress_shows_seeds_done_of_planned(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, "baseline", 0, spec=BASE_SPEC, accs=BASE)
    write_run(root, "plan5", 0, spec={**PLAN5_SPEC, "seeds": [0, 1, 2]}, accs=PLAN5)
    write_run(root, "plan5", 1, spec={**PLAN5_SPEC, "seeds": [0, 1, 2]}, accs=None, state="running")
    cmp = build_comparison([plan_runs(root, "plan5")], plan_runs(root, "baseline"), n_resamples=200)
    assert "plan5: 1 of 3 planned seeds evaluated" in cmp.notes[-1]
    h = content_key({**PLAN5_SPEC, "seeds": [0, 1, 2]})
    assert f"plan5@{h} (1/3 seeds)" in render_plain(cmp)
    lb = build_leaderboard([plan_runs(root, "baseline"), plan_runs(root, "plan5")], n_resamples=200)
    assert f"plan5@{h} (1/3 seeds)" in leaderboard_plain(lb) and "1 of 3 planned seeds" in leaderboard_plain(lb)


def test_a_damaged_run_is_one_marked_row(cli, runs: Path):  # noqa: F811
    (runs / "plan7_1" / content_key(PLAN7_SPEC) / "seed-1" / "status.json").write_text("{cut")
    res = cli("leaderboard")
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if line.startswith("plan7_1"))
    assert "damaged" in row and "status.json" in row
    assert next(line for line in res.output.splitlines() if line.startswith("plan5")).split()[1].startswith("60.00")
    res = cli("compare", "plan5", "plan7_1")
    assert res.exit_code == 0, res.output
    assert "plan7_1: damaged" in res.output and "--redo" in res.output


def test_holm_over_shot_rows_and_sig_counts_use_adjusted_p(runs: Path):  # noqa: F811
    cmp = build_comparison([plan_runs(runs, "plan5")], plan_runs(runs, "baseline"), n_resamples=2000)
    cells = {r.label: r.cells["plan5"] for r in cmp.rows}
    # shot rows 1-4 of plan5 form one family: exact sign-flip p = 1, 2/1024, 1, 1 (shot 3: one question differs);
    # Holm: 4 * 2/1024 = 0.0078 for shot 2, the rest 1. The average row is the primary: a family of its own (m = 1).
    assert [cells[s].p for s in "1234"] == pytest.approx([1.0, 2 / 1024, 1.0, 1.0])
    assert [cells[s].p_holm for s in "1234"] == pytest.approx([1.0, 8 / 1024, 1.0, 1.0])
    assert cells["avg"].p_holm == cells["avg"].p
    assert cmp.plans[1].improved_significant == 1  # shot 2 only
    assert "Holm families: primary: 1 test(s)" in cmp.footnote and "shot rows: 4 test(s)" in cmp.footnote


def test_holm_across_plans_facing_one_baseline(runs: Path):  # noqa: F811
    # plan5 and plan7_1 against baseline: the average rows are one family of two; shot 2 (p = 2/1024 for plan5) is
    # one of the 8 shot-row tests: Holm 8 * 2/1024 = 0.0156.
    cmp = build_comparison([plan_runs(runs, "plan5"), plan_runs(runs, "plan7_1")], plan_runs(runs, "baseline"), n_resamples=2000)
    assert cmp.rows[1].cells["plan5"].p_holm == pytest.approx(16 / 1024)
    assert "primary: 2 test(s)" in cmp.footnote and "shot rows: 8 test(s)" in cmp.footnote


def test_rounding_rule_is_half_away_from_zero_after_binary_noise():
    assert fixed(51.425) == "51.43" and fixed(51.42499999999) == "51.43" and fixed(51.4249) == "51.42"
    assert fixed(-0.004) == "0.00" and fixed(-1.005, sign=True) == "-1.01" and fixed(2.5, 0) == "3"
    assert fixed(0.0, sign=True) == "+0.00"


def test_run_compare_and_leaderboard_print_the_same_digits(cli, runs: Path):  # noqa: F811
    plans = runs.parent / "plans"
    out = run_comparisons([("plan5", H5, ["val"])], "baseline", HB, runs, plans)
    assert out.why is None
    (from_run,) = out.tables
    from_compare = load_comparison(["plan5"], "baseline", runs, plans)
    assert render_plain(from_run) == render_plain(from_compare)
    text = cli("compare", "plan5").output
    assert render_plain(from_compare) == text
    lb = json.loads(cli("leaderboard", "baseline", "plan5", "--json").output)
    for point in shot_points(from_compare):
        if point.shots is None:
            continue
        entry = lb["columns"][point.shots - 1]["entries"][point.plan]
        assert fixed(entry["accuracy"]) == fixed(point.accuracy)
        assert f"{fixed(point.accuracy)}" in text


def test_shot_points_carry_the_table_numbers(runs: Path):  # noqa: F811
    cmp = build_comparison([plan_runs(runs, "plan5")], plan_runs(runs, "baseline"), n_resamples=2000)
    points = {(p.plan, p.shots): p for p in shot_points(cmp)}
    two = points[("plan5", 2)]
    assert (two.accuracy, two.lo, two.hi, two.delta, two.delta_lo, two.delta_hi) == (100.0, 100.0, 100.0, 100.0, 100.0, 100.0)
    assert two.p_holm == pytest.approx(8 / 1024) and two.interval == "questions"
    assert points[("baseline", None)].delta is None and points[("plan5", None)].delta == pytest.approx(26.5)


def test_a_spec_edited_by_hand_is_damage(runs: Path):  # noqa: F811
    spec_file = runs / "plan5" / H5 / "seed-0" / "spec.json"
    spec_file.write_text(json.dumps({**PLAN5_SPEC, "grpo": {"epochs": 51, "lr": 5e-6}}))
    with pytest.raises(LeverError, match="does not hash to its folder's spec hash"):
        RunDir(spec_file.parent).spec()


def test_the_run_table_rounds_once_from_the_rows(tmp_path: Path):
    # 400 questions, 205 right and one at 0.7: 51.425 %. summary.json stores it rounded to 2 decimals by Python's
    # round (51.42: the float is 51.42499...); every table rounds the unrounded value once, half away from zero: 51.43.
    root = tmp_path / "runs"
    run = RunDir(write_run(root, "plan5", 0, spec=PLAN5_SPEC, accs={1: [1.0] * 205 + [0.7] + [0.0] * 194}))
    ev = run.selected_eval()
    assert ev.summary()["splits"]["val"]["1"]["accuracy"] == 51.42
    assert fixed(evaluation_accuracies(ev.path)["val"][1]) == "51.43"
    write_run(root, "baseline", 0, spec=BASE_SPEC, accs={1: [0.0] * 400})
    cmp = build_comparison([plan_runs(root, "plan5")], plan_runs(root, "baseline"), n_resamples=200)
    assert "51.43" in render_plain(cmp)


def test_a_comparison_reports_each_paired_test_to_its_progress(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, "baseline", 0, spec=BASE_SPEC, accs={1: [1, 0, 1, 0], 2: [0, 0, 1, 1]})
    write_run(root, "plan5", 0, spec=PLAN5_SPEC, accs={1: [1, 1, 1, 0], 2: [1, 0, 1, 1]})
    calls: list[tuple[int, int]] = []
    build_comparison(
        [plan_runs(root, "plan5")], plan_runs(root, "baseline"), n_resamples=100, progress=lambda *a: calls.append(a)
    )
    assert calls == [(1, 3), (2, 3), (3, 3)]  # one plan against the baseline at 1 and 2 shots and their average


def test_a_long_comparison_shows_its_progress_on_stderr_and_leaves_stdout_to_the_table(runs: Path, lever, monkeypatch):  # noqa: F811
    import lever_cli._progress as progress

    monkeypatch.setattr(progress, "QUIET_S", 0.0)  # as if every test took long: the line shows from the first one
    monkeypatch.setenv("LEVER_RUNS", str(runs))
    monkeypatch.chdir(runs.parent)
    res = lever("compare", "plan5", "plan7_1", "--json")
    assert res.code == 0, res.err
    rows = json.loads(res.out)["rows"]  # stdout is the JSON alone
    n = len(rows) * 2  # each row tests plan5 and plan7_1 against the baseline
    assert f"comparing: {n}/{n} paired tests, 100%" in res.err
    monkeypatch.setattr(progress, "QUIET_S", 3600.0)  # the default: a short comparison prints nothing more
    res = lever("compare", "plan5", "plan7_1", "--json")
    assert res.code == 0 and "comparing" not in res.err
