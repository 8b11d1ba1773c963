"""The leaderboard (Holm-corrected best and tied marks, intervals, question sets) and what a selector does beyond
copying (copy rate, majority vote), on hand-made run folders with hand-worked values."""

from __future__ import annotations

import csv
import io
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from test_report import PLAN5_SPEC, cli, eval_rows, plan_runs, runs, write_eval, write_run  # noqa: F401 (fixtures)

from lever.report.copying import copied, majority_vote
from lever.report.leaderboard import CSV_COLUMNS, build_leaderboard, marks
from lever.report.leaderboard import render_plain as render_lines
from lever.report.results import load_run
from lever.report.significance import holm, mean_ci
from lever.report.tables import build_comparison, render_plain
from lever.runs.layout import RunDir

# ---------------------------------------------------------------- Holm and the marks


def test_holm_by_hand():
    # m = 4, sorted 0.01 < 0.03 < 0.04 < 0.20: 4 * 0.01 = 0.04; 3 * 0.03 = 0.09; 2 * 0.04 = 0.08 -> max(0.09, 0.08)
    # = 0.09 (monotone); 1 * 0.20 = 0.20. Returned in the order given.
    assert holm([0.01, 0.04, 0.03, 0.20]) == pytest.approx([0.04, 0.09, 0.09, 0.20])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # 2 * 0.5 = 1.0 caps, then max(1.0, 0.6)
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_best_only_when_every_holm_corrected_test_survives():
    # Raw 0.01 and 0.049 -> Holm 0.02 and 0.049: both below 0.05, A beats each of the others.
    assert marks("A", dict(zip("BC", holm([0.01, 0.049])))) == {"A": "best"}
    # Raw 0.03 and 0.04, each below 0.05 alone -> Holm 2 * 0.03 = 0.06 and max(0.06, 0.04) = 0.06: nothing survives,
    # so B and C are tied with A.
    assert holm([0.03, 0.04]) == pytest.approx([0.06, 0.06])
    assert marks("A", dict(zip("BC", holm([0.03, 0.04])))) == {"A": "tied", "B": "tied", "C": "tied"}
    # Raw 0.001, 0.2, 0.01 -> Holm 0.003, 0.2, 0.02: only C (0.2) is not significantly below A.
    assert marks("A", dict(zip("BCD", holm([0.001, 0.2, 0.01])))) == {"A": "tied", "C": "tied"}


def test_leaderboard_values_intervals_and_marks(runs: Path):  # noqa: F811 (the fixture)
    """The report tests' runs (tests/test_report.py): baseline, plan5 and plan7_1 (two seeds) at 1-4 shots, 10 questions."""
    lb = build_leaderboard([plan_runs(runs, n) for n in ("baseline", "plan5", "plan7_1")], n_resamples=2000)
    assert [c.label for c in lb.columns] == ["1", "2", "3", "4", "mean"] and lb.columns[-1].shots == [1, 2, 3, 4]
    acc = {(c.label, k): e.accuracy for c in lb.columns for k, e in c.entries.items()}
    assert [acc[(c, "plan5")] for c in ("1", "2", "3", "4", "mean")] == pytest.approx([60, 100, 46, 20, 56.5])
    assert acc[("mean", "plan7_1")] == pytest.approx(32.5)  # (60 + 0 + 50 + 20) / 4
    mark = {c.label: {k: e.mark for k, e in c.entries.items() if e.mark} for c in lb.columns}
    # 2 shots: plan5 answers all 10, the others none: d = +1 on 10 questions. Against baseline (one seed a side) the
    # exact sign-flip p = 2 / 2^10; against plan7_1 (two seeds) every two-level resample is +100, so the bootstrap
    # p = 2 (1 + 0) / (2000 + 1). Holm: 2 * 2/2001 = 0.0020 for plan7_1, max(0.0020, 2/1024) = 0.0020 for baseline.
    col2 = lb.columns[1]
    assert col2.best == "plan5" and mark["2"] == {"plan5": "best"}
    assert col2.entries["baseline"].p == pytest.approx(2 / 1024) and col2.entries["baseline"].p_holm == pytest.approx(4 / 2001)
    assert col2.entries["plan7_1"].p == pytest.approx(2 / 2001)
    assert (col2.entries["plan5"].lo, col2.entries["plan5"].hi) == (100.0, 100.0)
    # 1 shot: plan5 60 = plan7_1 60 (first of equals: plan5); vs baseline one question differs (p = 1), vs plan7_1
    # d = [0,0,0,1,0,.5,-.5,0,-1,0] sums to 0 (p = 1): everyone is tied.
    assert mark["1"] == {"baseline": "tied", "plan5": "tied", "plan7_1": "tied"}
    # mean 1-4: plan5 - baseline per question > 0 on all 10 (one seed a side: sign-flip p = 2/1024); plan7_1 has two
    # seeds, so its test is the two-level bootstrap: plan5 is ahead on 9 of 10 questions for either seed, so a
    # resample at or below 0 needs all ten draws on the tenth; none of the 2000 does: p = 2 (1 + 0) / 2001. Holm: 2 * 2/2001 for it, then
    # max(4/2001, 2/1024) = 4/2001 for baseline -> best.
    mean = lb.columns[-1]
    assert mark["mean"] == {"plan5": "best"}
    assert mean.entries["plan7_1"].p == pytest.approx(2 / 2001) and mean.entries["plan7_1"].p_holm == pytest.approx(4 / 2001)
    assert mean.entries["plan7_1"].interval == "seeds and questions" and mean.entries["plan5"].interval == "questions"
    assert mean.entries["plan7_1"].std == pytest.approx(np.std([(70 + 0 + 50 + 20) / 4, (50 + 0 + 50 + 20) / 4], ddof=1))
    # every cell's interval is the bootstrap interval of its seed-averaged per-question vector
    assert (lb.columns[0].entries["baseline"].lo, lb.columns[0].entries["baseline"].hi) == pytest.approx(
        mean_ci(np.array([1, 0] * 5, dtype=float), n_resamples=2000)[1:]
    )
    text = render_lines(lb)
    assert "100.00* [100.0, 100.0]" in text and "60.00±14.14~" in text and "mean 1-4" in text


def test_different_question_sets_are_restricted_with_a_note(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, "a", 0, spec=PLAN5_SPEC, accs={1: [1, 1, 1, 1, 0, 0, 0, 0, 1, 1]})
    write_run(root, "b", 0, spec=PLAN5_SPEC, accs={1: [1, 0, 1, 0, 1, 0, 1, 0]})  # questions 1-8 only
    lb = build_leaderboard([plan_runs(root, "a"), plan_runs(root, "b")], n_resamples=500)
    (col,) = lb.columns
    assert col.n_questions == 8 and col.entries["a"].accuracy == pytest.approx(50.0)  # 4 of questions 1-8, not 6/10
    assert "plans answered different questions (a 10, b 8)" in lb.notes[0] and "the 8 all of them answered" in lb.notes[0]


# ---------------------------------------------------------------- copy rate and majority vote


def test_majority_vote_and_copy_by_hand():
    assert majority_vote(["dog", "cat", "the dog"]) == "dog"  # "the dog" normalises to "dog": 2 votes
    assert majority_vote(["cat", "dog"]) == "cat"  # a tie goes to the answer shown first
    assert majority_vote(["two", "2", "3"]) == "two"  # "two" -> "2": 2 votes, shown as first written
    assert majority_vote([]) is None
    assert copied("Dog.", ["cat", "dog"]) and copied("2", ["two"]) and not copied("bird", ["cat"])


# A hand-made results file at 2 shots (and 0 shots), scored with `classic`:
#   q1 answer "Dog" demos [dog, cat]: copies "dog"; vote "dog" (tie: first shown) vs ten "dog": 1.0
#   q2 answer "bird" demos [the cat, cat]: no copy; vote "the cat" -> "cat" vs ten "cat": 1.0
#   q3 answer "2" demos [two, 2]: copies; vote "two" -> "2" vs 3 x "2" + 7 x "3": (3 * 2/3 + 7 * 1) / 10 = 0.9
#   q4 failed, demos [yes, no]: no copy flag (a failed answer); vote "yes" vs ten "yes": 1.0
# copy rate = 2 of 3 answered = 66.67 %; vote = (1 + 1 + 0.9 + 1) / 4 = 97.5 %.
HAND = [
    ("Dog", False, ["dog", "cat"], ["dog"] * 10),
    ("bird", False, ["the cat", "cat"], ["cat"] * 10),
    ("2", False, ["two", "2"], ["2"] * 3 + ["3"] * 7),
    ("", True, ["yes", "no"], ["yes"] * 10),
]


def hand_rows() -> list[dict]:
    rows = []
    for shots in (0, 2):
        for qid, (answer, failed, demos, human) in enumerate(HAND, start=1):
            rows.append(
                {
                    "split": "val", "shots": shots, "question_id": qid, "demo_ids": [100 + qid, 200 + qid][:shots],
                    "demo_answers": demos[:shots], "raw_output": answer, "answer": answer, "answers": human,
                    "accuracy": 0.0, "failed": failed,
                }
            )  # fmt: skip
    return rows


def test_copy_rate_and_majority_vote_from_a_results_file(tmp_path: Path):
    root = tmp_path / "runs"
    path = write_run(root, "plan5", 0, spec=PLAN5_SPEC, accs=None)
    run = RunDir(path)
    ev = run.eval_dir("0a0a0a0a0a0a")
    ev.write(hand_rows(), {"checkpoint": {"sha256": run.selected().sha256}, "backend": "sim", "metric": "classic"})
    run.mark_selected_eval(ev)
    write_run(root, "baseline", 0, spec=PLAN5_SPEC, accs={0: [0] * 4, 2: [0] * 4})  # rows without demo answers
    qr = load_run(path).question_results("val", 2)
    assert qr.demo_answers[0] == ["dog", "cat"] and qr.metric == "classic"

    cmp = build_comparison([plan_runs(root, "plan5")], plan_runs(root, "baseline"), n_resamples=200)
    cells = {r.label: r.cells["plan5"] for r in cmp.rows}
    assert cells["2"].copy_rate == pytest.approx(200 / 3) and cells["2"].majority_vote == pytest.approx(97.5)
    assert cells["0"].copy_rate is None and cells["0"].majority_vote is None  # no demonstration, nothing to copy
    assert cells["avg"].copy_rate == pytest.approx(200 / 3)  # over the shot counts with demonstrations
    assert cmp.rows[1].cells["baseline"].copy_rate is None
    text = render_plain(cmp)
    assert "Beyond copying (%) on val" in text and "66.67" in text and "97.50" in text
    assert "No copy rate for baseline: run `lever evaluate" in text

    lb = build_leaderboard([plan_runs(root, "plan5"), plan_runs(root, "baseline")], n_resamples=200)
    entry = lb.columns[1].entries["plan5"]
    assert (entry.copy_rate, entry.majority_vote) == pytest.approx((200 / 3, 97.5))
    assert any("no copy rate or majority vote for baseline" in n for n in lb.notes)
    assert [c.label for c in lb.columns] == ["0", "2"]  # one shot count with demonstrations: no mean column
    assert "66.7 / 97.5" in render_lines(lb)


# ---------------------------------------------------------------- the CLI on the report tests' runs


def cli_fast(cli, *args: str):  # noqa: F811
    """The CLI with 500 resamples instead of 10,000: the marks below do not depend on it."""
    return cli(*args, "--resamples", "500")


def test_cli_leaderboard_formats_and_errors(cli, runs: Path):  # noqa: F811
    from lever.errors import LeverError

    cli = partial(cli_fast, cli)
    res = cli("leaderboard")  # default: every evaluated plan (plan6 is trained only, plan9 never run)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "Leaderboard: accuracy (%) on val by shot count (okvqa)" and "mean 1-4" in lines[1]
    assert [line.split()[0] for line in lines[3:6]] == ["baseline", "plan5", "plan7_1"]
    assert "note: not shown: plan6: not evaluated (lever evaluate plans/plan6.toml)" in res.output
    data = json.loads(cli("leaderboard", "plan5", "baseline", "--json").output)
    assert [p["name"] for p in data["plans"]] == ["plan5", "baseline"]
    assert data["columns"][1]["best"] == "plan5" and data["columns"][1]["entries"]["plan5"]["mark"] == "best"
    rows = list(csv.DictReader(io.StringIO(cli("leaderboard", "plan5", "baseline", "--csv").output)))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == 2 * 5
    md = cli("leaderboard", "--markdown").output
    assert md.startswith("### Leaderboard") and "**100.00**" in md
    tex = cli("leaderboard", "--latex").output
    assert r"\textbf{100.00}" in tex and tex.count(r"\\") == 4 and r"\underline{" in tex

    for args, message in (
        (("leaderboard", "plan55"), "plan 'plan55': no plan file"),
        (("leaderboard", "plan6"), "plan6: not evaluated — lever evaluate plans/plan6.toml"),
        (("leaderboard", "plan9"), "plan9: not run"),
        (("leaderboard", "--split", "train"), "no plan under"),
        (("leaderboard", "--json", "--latex"), "choose one output format"),
        (("leaderboard", "--metric", "exact"), "is not a VQA metric"),
    ):
        res = cli(*args)
        assert isinstance(res.exception, LeverError) and message in str(res.exception), (args, res.exception)


def test_cli_leaderboard_refuses_plans_without_common_questions(lever, runs: Path, monkeypatch):  # noqa: F811
    """Through the real entry point: exit 2, one screen, no traceback."""
    run = RunDir(write_run(runs, "plan8", 0, spec=PLAN5_SPEC, accs=None))
    write_eval(run, [{**r, "question_id": r["question_id"] + 100} for r in eval_rows({1: [1] * 10})])
    monkeypatch.setenv("LEVER_RUNS", str(runs))
    monkeypatch.chdir(runs.parent)
    res = lever("leaderboard", "baseline", "plan8", "--resamples", "500")
    assert res.code == 2 and "answered no question in common (baseline 10, plan8 10)" in res.err
    assert "Traceback" not in res.err and len(res.err.splitlines()) < 25


# ---------------------------------------------------------------- end to end on the bundled benchmark


@pytest.mark.slow
def test_leaderboard_of_two_plan_files_end_to_end(lever, tmp_path: Path, monkeypatch):
    """Two plan files of a workspace's own plans folder, trained and evaluated by `lever run`, ranked by default."""
    from workspaces import bench_workspace

    ws = bench_workspace(tmp_path)
    plans = tmp_path / "plans"
    plans.mkdir()
    base = Path(__file__).resolve().parents[1] / "plans" / "baseline.toml"
    (plans / "small.toml").write_text(
        f'description = "baseline, small"\nextends = "{base}"\n[rce]\nepochs = 2\nbatch_size = 16\n'
        "[eval]\nquestions = 40\nshots = [1, 2]\n"
    )
    (plans / "small_random.toml").write_text('description = "random pools"\nextends = "small.toml"\n[eval]\npool = "random"\n')
    monkeypatch.chdir(tmp_path)
    res = lever("--workspace", ws, "run", "small", "small_random", "--no-baseline")
    assert res.code == 0, res.text
    res = lever("--workspace", ws, "leaderboard", "--json", "--resamples", "1000")
    assert res.code == 0, res.text
    board = json.loads(res.out)
    assert [p["name"] for p in board["plans"]] == ["small", "small_random"]
    assert [c["label"] for c in board["columns"]] == ["1", "2", "mean"]
    for col in board["columns"]:
        entries = col["entries"]
        assert col["n_questions"] == 40 and set(entries) == {"small", "small_random"}
        best = max(entries, key=lambda k: entries[k]["accuracy"])
        assert col["best"] == best and entries[best]["mark"] in ("best", "tied")
        other = entries[next(k for k in entries if k != best)]
        assert other["p_holm"] == pytest.approx(other["p"])  # one test per column: Holm changes nothing
        assert entries[best]["mark"] == ("best" if other["p"] < 0.05 else "tied")
        assert all(0 <= e["copy_rate"] <= 100 and 0 <= e["majority_vote"] <= 100 for e in entries.values())
    res = lever("--workspace", ws, "leaderboard", "small", "--latex", "--metric", "vqa-latest", "--resamples", "200")
    assert res.code == 0 and r"\begin{tabular}{lrrr}" in res.out and "re-scored with metric vqa-latest" in res.out


def test_plans_of_different_datasets_are_never_paired():
    from types import SimpleNamespace

    from lever.errors import LeverError
    from lever.report.leaderboard import one_dataset
    from lever.report.results import PlanRuns

    def plan(name: str, dataset: str | None) -> PlanRuns:  # the spec leaves data.dataset out at its default
        data = {"candidates": "main"} if dataset is None else {"candidates": "main", "dataset": dataset}
        return PlanRuns(name, runs=[SimpleNamespace(spec={"data": data})])

    ok, v2, v2b = plan("plan5", None), plan("vqav2/baseline", "vqav2"), plan("vqav2/balanced_v3", "vqav2")
    both = [ok, plan("baseline", None)]
    assert one_dataset(both, None, named=False) == (both, [])  # one dataset: every plan, no note
    kept, notes = one_dataset([ok, v2, v2b], "vqav2", named=False)  # every evaluated plan: the others are noted
    assert [p.name for p in kept] == ["vqav2/baseline", "vqav2/balanced_v3"] and notes == ["not shown: plan5 (dataset okvqa)"]
    with pytest.raises(LeverError, match="different datasets") as err:  # no --dataset: one would pair ids of two
        one_dataset([ok, v2], None, named=False)
    assert "--dataset okvqa" in err.value.hint
    with pytest.raises(LeverError, match=r"plan5 \(okvqa\) answered another dataset"):  # named: an error, not a drop
        one_dataset([ok, v2], "vqav2", named=True)
    with pytest.raises(LeverError, match="no evaluated plan answered it"):
        one_dataset([ok], "vqav2", named=False)


def test_cli_leaderboard_by_answer_type(cli, runs: Path):  # noqa: F811
    """One leaderboard per answer type over its questions (report tests' runs: questions 1-4 yes/no, 5-10 other). By
    hand at 1 shot: baseline 1,0,1,0 | 1,0,1,0,1,0 and plan5 1,1,1,0 | 1,0,1,0,1,0 -> yes/no 50 and 75, other 50 and 50."""
    cli = partial(cli_fast, cli)
    data = json.loads(cli("leaderboard", "plan5", "baseline", "--json", "--by", "answer_type").output)
    assert data["by"] == "answer_type" and list(data["groups"]) == ["other", "yes/no"]

    def entry(t: str, label: str, plan: str) -> dict:
        return next(c for c in data["groups"][t]["columns"] if c["label"] == label)["entries"][plan]

    assert (entry("yes/no", "1", "plan5")["accuracy"], entry("yes/no", "1", "baseline")["accuracy"]) == (75.0, 50.0)
    assert entry("yes/no", "1", "plan5")["n_questions"] == 4 and entry("other", "1", "plan5")["n_questions"] == 6
    assert entry("other", "1", "plan5")["accuracy"] == entry("other", "1", "baseline")["accuracy"] == 50.0
    text = cli("leaderboard", "--by", "answer_type").output
    assert text.index("answer_type = other") < text.index("answer_type = yes/no") and text.count("Leaderboard:") == 2
    res = cli("leaderboard", "--by", "question_type")
    assert "hold no question_type" in str(res.exception)
