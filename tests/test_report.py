"""Compare and report: loading run dirs, the shot table, training and spec tables, exports, CLI."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from lever import records
from lever.io import write_json, write_rows
from lever.keys import content_key
from lever.records import RowsRecord, StageEntry, StageSelection
from lever.report.export import CSV_COLUMNS, to_csv, to_json, to_latex, to_markdown
from lever.report.results import load_plan, load_run, scan_runs
from lever.report.significance import paired_bootstrap_ci
from lever.report.sparkline import BARS, spark_rows, sparkline
from lever.report.tables import NEAR_ZERO_FLAG, build_comparison, render_plain
from lever.runs.layout import RunDir, RunsFolder
from lever.runs.store import find_plan_runs
from lever.train.checkpoint import epoch_digest, save_weights
from lever.train.stage import checkpoint_path

ROOT = Path(__file__).resolve().parents[1]

N = 10  # questions per (split, shots); 1 point = 0.1 question here

# Per-question accuracies, question ids 1..10. Worked by hand:
#   baseline: s1 50, s2 0, s3 50, s4 20 -> avg 30
#   plan5:    s1 60 (+10, one question), s2 100 (+100, all), s3 46 (-4, one question at 0.6), s4 20 (=) -> avg 56.5
BASE = {
    1: [1, 0, 1, 0, 1, 0, 1, 0, 1, 0],
    2: [0] * 10,
    3: [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    4: [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
}
PLAN5 = {
    1: [1, 1, 1, 0, 1, 0, 1, 0, 1, 0],
    2: [1] * 10,
    3: [0.6, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    4: BASE[4],
}
# plan7_1, two seeds differing at 1 shot only: seed 0 = 70, seed 1 = 50 -> mean 60, std sqrt(2 * 10^2 / 1) = 14.142
PLAN7_SEED = {0: {**BASE, 1: [1] * 7 + [0] * 3}, 1: {**BASE, 1: [1] * 5 + [0] * 5}}

BASE_SPEC = {"rce": {"epochs": 5}, "grpo": {"epochs": 0, "lr": 5e-6}, "reward": {"mode": "hard_plus_soft"}}
PLAN5_SPEC = {"rce": {"epochs": 5}, "grpo": {"epochs": 50, "lr": 5e-6}, "reward": {"mode": "hard_plus_soft"}}
PLAN7_SPEC = {"rce": {"epochs": 5}, "grpo": {"epochs": 0, "lr": 5e-6}, "reward": {"mode": "separated"}}
H5, HB = content_key(PLAN5_SPEC), content_key(BASE_SPEC)  # the spec hashes of plan5's and baseline's runs


def write_run(
    root: Path,
    plan: str,
    seed: int,
    *,
    spec: dict,
    accs: dict[int, list[float]] | None,
    metrics: list[dict] | None = None,
    selected: dict | None = None,
    flags: list[str] | None = None,
    state: str = "done",
) -> Path:
    """Write one seed run dir with lever's own writers, its stage folder and checkpoints included (every record
    is cross-checked when read); ``accs=None`` leaves it unevaluated."""
    run = RunsFolder(root).run(plan, content_key(spec), seed)  # the folder is named by the spec's hash, as lever does
    run.path.mkdir(parents=True)
    (run.path / "spec.json").write_text(json.dumps(spec))
    metrics = metrics or [
        {"stage": "rce", "epoch": 1, "val/loss": 2.0, "losses/rce": 2.1, "rce/tau": 2.0},
        {"stage": "rce", "epoch": 2, "val/loss": 1.5, "losses/rce": 1.6, "rce/tau": 0.5},
    ]
    sel = selected or {"stage": "rce", "epoch": 2, "metric": "val/loss", "mode": "min", "value": 1.5, "reason": "lowest val/loss"}
    stage_dir = root / "_stages" / f"{sel['stage']}-{content_key(plan, run.spec_hash, seed)}"
    rows = [r for r in metrics if r["stage"] == sel["stage"]]
    for r in rows:
        save_weights(checkpoint_path(stage_dir, r["epoch"]), {"w": torch.full((1,), float(r["epoch"]))}, {"epoch": r["epoch"]})
    ckpt = checkpoint_path(stage_dir, sel["epoch"])
    digest = epoch_digest(ckpt, sel["epoch"])
    stage_record = StageSelection(**sel, sha256=digest, metrics=RowsRecord(**write_rows(stage_dir / "metrics.jsonl", rows)))
    write_json(stage_dir / "selected.json", records.to_json(stage_record))
    entry = StageEntry(
        stage=sel["stage"], kind="grpo" if sel["stage"] == "grpo" else "rce", key="0123", dir=f"_stages/{stage_dir.name}",
        checkpoint=f"_stages/{stage_dir.name}/ckpt/{ckpt.name}", sha256=digest, **{k: sel[k] for k in ("epoch", "metric", "mode", "value", "reason")},
    )  # fmt: skip
    record = run.write_stages([entry], metrics)
    run.set_status(state, flags, None, metrics=record)
    run.write_selected(entry)
    if accs is not None:
        write_eval(run, eval_rows(accs))
    return run.path


EVAL = "5e1ec7ed0a10"  # an evaluation folder's name: a 12-digit hex key


def write_eval(run: RunDir, rows: list[dict], key: str = EVAL, backend: str = "sim") -> None:
    """An evaluation of the run's selected checkpoint, named in eval/selected.json."""
    ev = run.eval_dir(key)
    ev.write(rows, {"checkpoint": {"sha256": run.selected().sha256}, "backend": backend})
    run.mark_selected_eval(ev)


def eval_rows(accs: dict[int, list[float]], split: str = "val") -> list[dict]:
    """results.jsonl rows: question ids 1..n per shot count, with the given accuracies."""
    return [
        {
            "split": split,
            "shots": shots,
            "question_id": qid,
            "demo_ids": [qid] * shots,
            "raw_output": "x",
            "answer": "x",
            "accuracy": acc,
            "failed": False,
            "answer_type": "yes/no" if qid <= 4 else "other",  # `--by answer_type`: questions 1-4, 5-10
        }
        for shots, vals in accs.items()
        for qid, acc in enumerate(vals, start=1)
    ]


PLAN5_METRICS = [
    {"stage": "rce", "epoch": 1, "val/loss": 2.0},
    {"stage": "grpo", "epoch": 1, "val/loss": 1.4, "losses/ppo": -0.01, "kl/value": 0.02, "adv/std": 0.3},
    {"stage": "grpo", "epoch": 2, "val/loss": 1.2, "losses/ppo": -0.03, "kl/value": 0.05, "adv/std": 0.006},
    {"stage": "grpo", "epoch": 3, "val/loss": 1.3, "losses/ppo": -0.02, "kl/value": 0.08, "adv/std": 0.004},
]
PLAN5_SELECTED = {
    "stage": "grpo",
    "epoch": 2,
    "metric": "val/loss",
    "mode": "min",
    "value": 1.2,
    "reason": "lowest val/loss",
}


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """baseline (1 seed), plan5 (1 seed, GRPO), plan7_1 (2 seeds), plan6 trained only; plan9 never run."""
    root = tmp_path / "runs"
    write_run(root, "baseline", 0, spec=BASE_SPEC, accs=BASE)
    write_run(
        root,
        "plan5",
        0,
        spec=PLAN5_SPEC,
        accs=PLAN5,
        metrics=PLAN5_METRICS,
        selected=PLAN5_SELECTED,
        flags=["guardrail: kl above 0.5 at grpo epoch 3"],
    )
    for seed, accs in PLAN7_SEED.items():
        write_run(root, "plan7_1", seed, spec=PLAN7_SPEC, accs=accs)
    write_run(root, "plan6", 0, spec=PLAN5_SPEC, accs=None, state="trained")
    return root


def plan_runs(root: Path, name: str):
    dirs = sorted((root / name).glob("*/seed-*")) if (root / name).exists() else []
    return load_plan(name, dirs)


def comparison(root: Path, names=("plan5", "plan7_1", "plan6", "plan9")):
    return build_comparison([plan_runs(root, n) for n in names], plan_runs(root, "baseline"), n_resamples=2000)


# ---------------------------------------------------------------- loading


def test_load_run_reads_every_file(runs: Path):
    run = load_run(runs / "plan5" / H5 / "seed-0")
    assert (run.plan, run.spec_hash, run.seed, run.state) == ("plan5", H5, 0, "done")
    assert run.eval_key == EVAL
    qr = run.question_results("val", 3)
    assert qr.question_ids.tolist() == list(range(1, 11))
    assert qr.accuracy[0] == 0.6 and qr.n_failed == 0
    assert run.accuracy("val", 3) == pytest.approx(46.0)
    assert len(run.metrics) == 4 and run.selected.epoch == 2


def test_missing_files_are_none_not_errors(tmp_path: Path):
    d = tmp_path / "p" / "h" / "seed-3"
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text('{"stage": "rce", "epoch": 1, "val/loss": 1.0}\n')
    run = load_run(d)
    assert run.seed == 3 and run.spec is None and run.status is None and run.selected is None
    assert run.results is None and run.summary is None and not run.evaluated
    assert run.metrics == [{"stage": "rce", "epoch": 1, "val/loss": 1.0}]
    assert run.accuracy("val", 1) is None
    missing = load_plan("plans/plan9.toml", [])
    assert (missing.name, missing.missing, missing.command) == ("plan9", "not run", "lever run plans/plan9.toml")


def test_only_the_selected_checkpoints_evaluation_is_shown(runs: Path):
    from lever.errors import DamagedState

    d = runs / "baseline" / HB / "seed-0"
    run = RunDir(d)
    newer = run.eval_dir("0f0f0f0f0f0f")  # another evaluation (an --epoch one, say), finished later
    newer.write(eval_rows({1: [1, 0, 0, 0, 0, 0, 0, 0]}), {"checkpoint": {"sha256": "other"}, "backend": "hf"})
    os.utime(newer.summary_file, (2e9, 2e9))
    assert load_run(d).eval_key == EVAL  # never the newest: the one eval/selected.json names
    run.mark_selected_eval(newer)  # pointed at an evaluation of other weights
    with pytest.raises(DamagedState, match="not of this run's selected checkpoint"):
        load_run(d)
    (run.eval_root / "selected.json").write_text(json.dumps({"key": f"../../../../plan5/{H5}/seed-0/eval/" + EVAL, "version": 2}))
    with pytest.raises(DamagedState, match="not an evaluation of this run"):
        load_run(d)
    (run.eval_root / "selected.json").unlink()
    assert load_run(d).eval_key is None  # not evaluated: no number at all


def test_scan_runs_lists_every_seed(runs: Path):
    found = [(r.plan, r.seed) for r in scan_runs(runs)]
    assert found == [("baseline", 0), ("plan5", 0), ("plan6", 0), ("plan7_1", 0), ("plan7_1", 1)]


def test_a_plan_family_nests_by_name(runs: Path):
    """original/plan5 lives in runs/original/plan5/<hash>/seed-N and keeps its full name everywhere."""
    write_run(runs, "original/plan5", 0, spec=PLAN5_SPEC, accs=PLAN5)
    found = [(r.plan, r.seed) for r in scan_runs(runs)]
    assert ("original/plan5", 0) in found and ("plan5", 0) in found
    for ref in ("original/plan5", "plans/original/plan5.toml"):
        pr = load_plan(ref, find_plan_runs(ref, runs).runs)
        assert pr.name == "original/plan5" and len(pr.runs) == 1 and pr.runs[0].plan == "original/plan5"
    assert find_plan_runs("plan5", runs).runs[0].path.parent.parent == runs / "plan5"


def test_cli_compare_two_families(cli, runs: Path):
    write_run(runs, "original/plan5", 0, spec=PLAN5_SPEC, accs=PLAN7_SEED[0])
    res = cli("compare", "plan5", "original/plan5")
    assert res.exit_code == 0, res.output
    assert "original/plan5" in res.output and "not run" not in res.output.split("Training")[0]


# ---------------------------------------------------------------- shot table


def test_shot_table_values_deltas_and_average(runs: Path):
    cmp = comparison(runs)
    assert [r.label for r in cmp.rows] == ["1", "2", "3", "4", "avg"]
    assert [c.name for c in cmp.plans] == ["baseline", "plan5", "plan7_1", "plan6", "plan9"]
    acc = {(r.label, n): c.accuracy for r in cmp.rows for n, c in r.cells.items()}
    assert [acc[(s, "baseline")] for s in "1234"] == pytest.approx([50, 0, 50, 20])
    assert [acc[(s, "plan5")] for s in "1234"] == pytest.approx([60, 100, 46, 20])
    assert acc[("avg", "baseline")] == pytest.approx(30.0)  # (50 + 0 + 50 + 20) / 4
    assert acc[("avg", "plan5")] == pytest.approx(56.5)  # (60 + 100 + 46 + 20) / 4

    cells = {r.label: r.cells["plan5"] for r in cmp.rows}
    assert [cells[s].delta for s in "1234"] == pytest.approx([10, 100, -4, 0])
    # avg: per-question mean over shots of (plan5 - baseline): q1 (0+1-0.4+0)/4 = 0.15, q2 (1+1)/4 = 0.5,
    # q3..q10 1/4 each -> (0.15 + 0.5 + 8 * 0.25) / 10 = 0.265 -> +26.5 points
    assert cells["avg"].delta == pytest.approx(26.5)
    # shot 1: one question of 10 gained: d has a single non-zero, both sign flips reach it -> p = 1
    assert cells["1"].p == 1.0 and cells["1"].within_noise
    # shot 2: all 10 gained: CI [100, 100], p = 2 / 2^10
    assert (cells["2"].lo, cells["2"].hi) == (100.0, 100.0) and cells["2"].p == pytest.approx(2 / 1024)
    assert cells["2"].within_noise is False
    assert cells["4"].p == 1.0 and (cells["4"].lo, cells["4"].hi) == (0.0, 0.0)


def test_best_marks_and_improved_counts(runs: Path):
    cmp = comparison(runs)
    best = {r.label: sorted(n for n, c in r.cells.items() if c.best) for r in cmp.rows}
    # shot 1: plan5 60 and plan7_1 mean 60 tie; shot 3: baseline and plan7_1 50; shot 4: everyone evaluated 20
    assert best == {
        "1": ["plan5", "plan7_1"],
        "2": ["plan5"],
        "3": ["baseline", "plan7_1"],
        "4": ["baseline", "plan5", "plan7_1"],
        "avg": ["plan5"],
    }
    cols = {c.name: c for c in cmp.plans}
    assert (cols["plan5"].improved, cols["plan5"].improved_significant, cols["plan5"].n_shots) == (2, 1, 4)
    assert (cols["plan7_1"].improved, cols["plan7_1"].improved_significant) == (1, 0)
    assert cmp.n_questions == N and "10 questions: 1 point = 0.1 questions" in cmp.footnote


def test_multi_seed_mean_std_and_pairing(runs: Path):
    cell = comparison(runs).rows[0].cells["plan7_1"]
    assert cell.n_seeds == 2
    assert cell.accuracy == pytest.approx(60.0)
    assert cell.std == pytest.approx(14.1421356)  # sample std of (70, 50)
    # seed-mean per question: [1,1,1,1,1,.5,.5,0,0,0]; minus baseline [1,0,1,0,1,0,1,0,1,0]
    # d = [0,1,0,1,0,.5,-.5,0,-1,0], sum 1 -> +10 points.
    assert cell.delta == pytest.approx(10.0)
    # two seeds against one: the interval and p come from the two-level bootstrap (seeds and questions), seeds drawn
    # independently (the baseline has seed 0 only); no McNemar (it would need one seed a side, or paired seeds)
    assert cell.interval == "seeds and questions" and cell.p_mcnemar is None and cell.p_mcnemar_seeds is None
    # the seeds differ (70 and 50 at 1 shot): the interval is wider than the question-only one on seed-averaged rows
    d_lo, d_hi = paired_bootstrap_ci(np.array(BASE[1], float), np.mean([PLAN7_SEED[0][1], PLAN7_SEED[1][1]], axis=0), 2000)[1:]
    assert cell.lo < d_lo and cell.hi > d_hi
    assert 0.05 < cell.p <= 1.0 and cell.within_noise


def test_missing_plans_show_the_command(runs: Path):
    cols = {c.name: c for c in comparison(runs).plans}
    assert (cols["plan9"].missing, cols["plan9"].command) == ("not run", "lever run plans/plan9.toml")
    assert (cols["plan6"].missing, cols["plan6"].command) == ("not evaluated", "lever evaluate plans/plan6.toml")
    text = render_plain(comparison(runs))
    row1 = next(line for line in text.splitlines() if line.startswith("1 "))
    assert row1.endswith("not evaluated  not run")  # one column each for plan6 and plan9
    assert "plan9: not run — run `lever run plans/plan9.toml`" in text
    assert "plan6: not evaluated — run `lever evaluate plans/plan6.toml`" in text


def test_missing_split_is_reported_not_raised(runs: Path):
    cmp = build_comparison([plan_runs(runs, "plan5")], plan_runs(runs, "baseline"), split="train", n_resamples=100)
    assert all(c.missing == "not evaluated on train" for c in cmp.plans)
    assert all(c.accuracy is None for r in cmp.rows for c in r.cells.values())


def test_training_table_and_flags(runs: Path):
    rows = {(t.plan, t.seed): t for t in comparison(runs).training}
    t = rows[("plan5", 0)]
    assert (t.stage, t.epoch, t.reason) == ("grpo", 2, "lowest val/loss")
    assert (t.val_loss, t.ppo_loss, t.kl, t.adv_std) == (1.2, -0.03, 0.05, 0.006)
    assert t.flags == ["guardrail: kl above 0.5 at grpo epoch 3", NEAR_ZERO_FLAG]  # adv std 0.006 < 0.01
    base = rows[("baseline", 0)]
    assert (base.stage, base.epoch, base.val_loss, base.ppo_loss, base.flags) == ("rce", 2, 1.5, None, [])
    assert rows[("plan6", 0)].state == "trained" and ("plan7_1", 1) in rows


def test_spec_diff_only_keys_that_differ(runs: Path):
    diffs = [(d.plan, d.key, d.baseline, d.value) for d in comparison(runs).spec_diffs]
    assert ("plan5", "grpo.epochs", 0, 50) in diffs
    assert ("plan7_1", "reward.mode", "hard_plus_soft", "separated") in diffs
    assert all(k not in ("rce.epochs", "grpo.lr") for _, k, _, _ in diffs)


def test_plain_render_has_marks_and_footnote(runs: Path):
    text = render_plain(comparison(runs))
    lines = text.splitlines()
    row2 = next(line for line in lines if line.startswith("2 "))
    assert "100.00*" in row2 and "↑+100.00" in row2 and "[+100.00, +100.00]" in row2
    row1 = next(line for line in lines if line.startswith("1 "))
    assert "↑+10.00 ~" in row1 and "60.00±14.14*" in row1
    assert "↓-4.00 ~" in next(line for line in lines if line.startswith("3 "))
    improved = next(line for line in lines if line.startswith("improved"))
    assert re.search(r"^improved\s+2/4\s+1 sig\. \(adj\)\s+1/4\s+0 sig\. \(adj\)$", improved)  # plan5, then plan7_1
    assert "~ = within noise (the CI includes 0)" in text
    # plan7_1 has two seeds: its intervals cover them; plan5's (one seed a side) cover questions
    assert "over questions where both sides have one seed, over seeds and questions where one has more" in text
    assert "Spec differences vs baseline" in text and "near-zero advantages" in text


# ---------------------------------------------------------------- exports


def test_json_export_loads(runs: Path):
    data = json.loads(to_json(comparison(runs)))
    assert data["baseline"] == "baseline" and data["split"] == "val"
    cell = data["rows"][1]["cells"]["plan5"]
    assert cell["delta"] == 100.0 and cell["within_noise"] is False
    assert data["rows"][0]["cells"]["plan9"]["accuracy"] is None


def test_csv_export_columns(runs: Path):
    rows = list(csv.DictReader(io.StringIO(to_csv(comparison(runs)))))
    assert list(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == 5 * 5  # 5 shot rows x 5 plans
    r = next(r for r in rows if r["plan"] == "plan5" and r["shots"] == "avg")
    assert float(r["accuracy"]) == pytest.approx(56.5) and float(r["delta"]) == pytest.approx(26.5)
    assert next(r for r in rows if r["plan"] == "plan9")["missing"] == "not run"


def test_csv_floats_carry_no_binary_noise(runs: Path):
    rows = list(csv.DictReader(io.StringIO(to_csv(comparison(runs)))))
    r = next(r for r in rows if r["plan"] == "plan5" and r["shots"] == "3")
    assert r["ci_lo"] == "-12.0"  # -12.000000000000002 before rounding
    assert next(r for r in rows if r["plan"] == "plan7_1" and r["shots"] == "1")["std"] == "14.1421"


def test_markdown_tables_are_well_formed(runs: Path):
    md = to_markdown(comparison(runs))
    blocks = [b for b in md.split("\n\n") if b.startswith("|")]
    assert len(blocks) == 3  # shots, training, spec differences
    for block in blocks:
        lines = block.splitlines()
        n = lines[0].count(" | ") + 1
        assert re.fullmatch(r"\|(-{3}:?\|)+", lines[1]) and lines[1].count("|") == n + 1
        for line in lines:
            assert line.startswith("|") and line.endswith("|")
            assert len(re.split(r"(?<!\\)\|", line)) - 2 == n


def test_latex_is_a_balanced_tabular(runs: Path):
    tex = to_latex(comparison(runs))
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1)
    assert spec == "l" + "r" + "rr" + "rr"  # shots, baseline, (acc, delta) per evaluated plan
    assert "% missing: plan6 (not evaluated)" in tex and "% missing: plan9 (not run)" in tex
    body = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert len(body) == 1 + 5 + 1  # header, shot rows + avg, improved
    for line in body:
        assert line.count("&") == len(spec) - 1
    assert "plan7\\_1" in tex and "plan7_1" not in tex
    assert r"\textbf{100.00}" in tex and "$+10.00^{\\sim}$" in tex
    body_lines = [line for line in tex.splitlines() if not line.startswith("%")]
    assert all("%" not in line.replace(r"\%", "") for line in body_lines)  # only comment lines hold a bare %


# ---------------------------------------------------------------- sparklines


def test_sparkline_by_hand():
    # (v - 0) / (7 - 0) * 7 -> bars 0..7
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == BARS
    assert sparkline([1.0, None, 1.0]) == f"{BARS[3]} {BARS[3]}"  # constant -> mid bar, gap for None
    assert sparkline([0, 0, 7, 7], width=2) == BARS[0] + BARS[7]  # bucket means 0 and 7
    assert sparkline([]) == ""


def test_spark_rows_per_metric_and_stage():
    rows = {(r.metric, r.stage): r for r in spark_rows(PLAN5_METRICS)}
    assert set(rows) == {
        ("val/loss", "rce"),
        ("val/loss", "grpo"),
        ("losses/ppo", "grpo"),
        ("kl/value", "grpo"),
        ("adv/std", "grpo"),
    }
    r = rows[("val/loss", "grpo")]
    assert (r.first, r.last, r.lo, r.hi) == (1.4, 1.3, 1.2, 1.4)
    assert len(r.spark) == 3


# ---------------------------------------------------------------- CLI


@pytest.fixture
def cli(runs: Path, monkeypatch):
    from lever_cli.report import register

    app = typer.Typer()
    register(app)
    monkeypatch.setenv("LEVER_RUNS", str(runs))
    monkeypatch.chdir(runs.parent)  # no plan files for the runs here: each plan's only spec hash is the one shown
    (runs.parent / "plans").mkdir(exist_ok=True)
    (runs.parent / "plans" / "plan9.toml").write_text('description = "never run"\n')  # known, not run
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_cli_compare_plain(cli):
    res = cli("compare", "plan5", "plans/plan7_1.toml", "plan9")
    assert res.exit_code == 0, res.output
    assert "Accuracy (%) on val vs baseline" in res.output
    assert "plan9: not run — run `lever run plans/plan9.toml`" in res.output
    assert "\x1b[" not in res.output  # plain text when stdout is not a terminal
    from lever.errors import LeverError

    res = cli("compare", "plan6", "--baseline", "plan9")  # neither has an evaluated run: an error, not an empty table
    assert isinstance(res.exception, LeverError) and "no plan named has an evaluated run" in str(res.exception)
    assert "plan9: not run; plan6: not evaluated" in str(res.exception)
    res = cli("compare", "plan9", "plan6")  # the baseline is evaluated, no plan named is: still nothing to compare
    assert isinstance(res.exception, LeverError) and "no plan named has an evaluated run" in str(res.exception)
    assert "(plan9: not run; plan6: not evaluated)" in str(res.exception) and "lever run plans/plan9.toml" in res.exception.hint


def test_cli_compare_exports(cli):
    data = json.loads(cli("compare", "plan5", "--json").output)
    assert [p["name"] for p in data["plans"]] == ["baseline", "plan5"]
    header = cli("compare", "plan5", "--csv").output.splitlines()[0]
    assert header.split(",") == CSV_COLUMNS
    assert cli("compare", "plan5", "--markdown").output.startswith("### Accuracy")
    assert r"\begin{tabular}" in cli("compare", "plan5", "--latex").output


def test_cli_compare_bad_input(cli):
    from lever.errors import LeverError

    res = cli("compare", "plan5", "--split", "tset")
    assert isinstance(res.exception, LeverError) and "use one of: val, train, test" in str(res.exception)
    res = cli("compare", "plan5", "--json", "--csv")
    assert isinstance(res.exception, LeverError) and "choose one output format" in str(res.exception)


def test_cli_compare_other_baseline(cli):
    data = json.loads(cli("compare", "plan5", "--baseline", "plan7_1", "--json").output)
    assert data["baseline"] == "plan7_1"
    assert data["rows"][0]["cells"]["plan5"]["delta"] == pytest.approx(0.0)  # 60 vs seed mean 60


def test_cli_report(cli, tmp_path: Path):
    res = cli("report", "plan5", "--out", str(tmp_path / "png"))
    assert res.exit_code == 0, res.output
    assert "val/loss" in res.output and "grpo 2" in res.output and "near-zero advantages" in res.output
    assert any(b in res.output for b in BARS)
    png = tmp_path / "png" / "curves.png"
    if importlib.util.find_spec("matplotlib"):  # every logged metric in one figure
        assert f"wrote {png} (4 metrics)" in res.output and png.read_bytes().startswith(b"\x89PNG")
    else:
        assert "figure skipped: matplotlib is not installed (pip install 'lever[plot]')" in res.output
    res = cli("report", "plan6")
    assert "not evaluated: run `lever evaluate plans/plan6.toml`" in res.output
    res = cli("report", "plan9")
    assert res.exit_code != 0 and "lever run plans/plan9.toml" in str(res.exception)


def test_cli_runs(cli):
    res = cli("runs")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "val@1" in lines[1] and "val@4" in lines[1]
    plan5 = next(line for line in lines if line.startswith("plan5"))
    assert H5[:12] in plan5 and "grpo 2" in plan5 and "60" in plan5
    assert len([line for line in lines if line.startswith("plan7_1")]) == 2


def test_cli_runs_empty(cli, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("LEVER_RUNS", str(tmp_path / "nothing"))
    assert "no runs under" in cli("runs").output


def test_rich_render_colours_deltas(runs: Path):
    from rich.console import Console

    from lever.report.tables import render_rich

    buf = io.StringIO()
    render_rich(comparison(runs), Console(file=buf, force_terminal=True, width=250, color_system="standard"))
    out = buf.getvalue()
    assert "↑+100.00" in out and "↓-4.00 ~" in out
    assert "\x1b[1;32m↑+100.00" in out  # significant gain: bold green
    assert "\x1b[31m↓-4.00 ~" in out  # loss within noise: red, not bold
    assert "plan9: not run" in out


def test_store_never_picks_another_hash_silently(runs: Path):
    from lever.runs.store import find_plan_runs

    other = {**PLAN5_SPEC, "seeds": [4]}
    new = write_run(runs, "plan5", 4, spec=other, accs=None).parent
    os.utime(new, (2e9, 2e9))
    found = find_plan_runs("plans/plan5.toml", runs, current_hash=H5)
    assert [r.path for r in found.runs] == [runs / "plan5" / H5 / "seed-0"]
    found = find_plan_runs("plan5", runs, current_hash="999999999999")  # the plan file changed since
    assert found.runs == [] and "no run of the plan file as it is now" in found.problem
    assert f"plan5@{content_key(other)}" in found.hint and f"plan5@{H5}" in found.hint
    assert find_plan_runs("plan5", runs).problem == "several spec hashes have runs"
    assert [r.seed for r in find_plan_runs(f"plan5@{content_key(other)[:4]}", runs).runs] == [4]
    assert find_plan_runs("plan9", runs).problem == "not run"


def test_failed_answers_are_shown_in_compare_and_runs(runs: Path, cli):
    run = write_run(runs, "plan4", 0, spec=PLAN5_SPEC, accs=None)
    rows = eval_rows(PLAN5)
    for row in rows[:3]:  # three answers failed (an unreadable image, say) and scored 0
        row.update(failed=True, accuracy=0.0, error="image unreadable")
    write_eval(RunDir(run, "plan4"), rows)
    n = len(rows)
    base = load_plan("baseline", [runs / "baseline" / HB / "seed-0"])
    text = render_plain(build_comparison([load_plan("plan4", [run])], base, split="val", n_resamples=200))
    assert f"Failed answers, scored 0: plan4 3 of {n}" in text
    res = cli("runs")
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("plan4"))
    assert " 3 " in line


def test_a_symlinked_plan_folder_is_not_a_plan(runs: Path):
    """A link inside the runs folder to a plan's folder would rank its runs twice, under another name."""
    from lever.runs.layout import RunsFolder

    before = RunsFolder(runs).plans()
    assert "plan5" in before
    (runs / "plan5_again").symlink_to(runs / "plan5", target_is_directory=True)
    assert RunsFolder(runs).plans() == before


def test_repair_hints_of_a_copied_workspace_name_its_own_plan(tmp_path: Path):
    """Provenance records the plan file by absolute path; in a copy (or after a move) of the workspace a hint names
    the plan by name, which resolves in this workspace's plans folder, never the old workspace's file."""
    from lever.runs.layout import RunDir

    old, new = tmp_path / "old", tmp_path / "new"
    for ws in (old, new):
        (ws / "plans").mkdir(parents=True)
        (ws / "plans" / "plan5.toml").write_text("")
    run_dir = new / "runs" / "plan5" / "abc123def456" / "seed-0"
    run_dir.mkdir(parents=True)
    prov = {"plan_file": str(old / "plans" / "plan5.toml"), "overrides": ["grpo.lr=1e-5"], "seeds": [0]}
    (run_dir / "provenance.json").write_text(json.dumps(prov))
    run = RunDir(run_dir, "plan5")
    assert run.command("run", "--redo") == "lever run plan5 grpo.lr=1e-5 --redo"  # copied: not old/plans/plan5.toml
    shutil.rmtree(old)
    assert run.command("evaluate") == "lever evaluate plan5 grpo.lr=1e-5"  # moved: the old file is gone
    prov["plan_file"] = str(new / "plans" / "plan5.toml")
    (run_dir / "provenance.json").write_text(json.dumps(prov))
    assert run.command("run") == f"lever run {new / 'plans' / 'plan5.toml'} grpo.lr=1e-5"  # its own: as recorded


def test_cli_compare_by_answer_type(cli):
    """One comparison per answer type, each over its questions (1-4 yes/no, 5-10 other). By hand at 1 shot:
    baseline 1,0,1,0 | 1,0,1,0,1,0 -> yes/no 50, other 50; plan5 1,1,1,0 | 1,0,1,0,1,0 -> yes/no 75 (+25), other 50;
    at 3 shots baseline 1,1,1,1 | 1,0,0,0,0,0 -> 100 and 16.67, plan5 0.6,1,1,1 | ... -> 90 (-10) and 16.67."""
    data = json.loads(cli("compare", "plan5", "--json", "--by", "answer_type", "--resamples", "200").output)
    assert data["by"] == "answer_type" and list(data["groups"]) == ["other", "yes/no"]

    def cell(t: str, shots: int, plan: str) -> dict:
        row = next(r for r in data["groups"][t]["rows"] if r["label"] == str(shots))
        return row["cells"][plan]

    assert (cell("yes/no", 1, "baseline")["accuracy"], cell("yes/no", 1, "plan5")["accuracy"]) == (50.0, 75.0)
    assert cell("yes/no", 1, "plan5")["delta"] == 25.0 and cell("yes/no", 1, "plan5")["n_questions"] == 4
    assert (cell("other", 1, "plan5")["accuracy"], cell("other", 1, "plan5")["n_questions"]) == (50.0, 6)
    assert cell("yes/no", 3, "plan5")["accuracy"] == pytest.approx(90.0) and cell("other", 3, "baseline")[
        "accuracy"
    ] == pytest.approx(16.67, abs=0.01)
    text = cli("compare", "plan5", "--by", "answer_type", "--resamples", "200").output
    assert text.index("answer_type = other") < text.index("answer_type = yes/no")
    csv_lines = cli("compare", "plan5", "--csv", "--by", "answer_type", "--resamples", "200").output.splitlines()
    assert csv_lines[0].startswith("answer_type,") and {line.split(",")[0] for line in csv_lines[1:]} == {"other", "yes/no"}
    res = cli("compare", "plan5", "--by", "question_type")
    assert "hold no question_type" in str(res.exception)
