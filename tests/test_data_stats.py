"""`lever data stats`: counts and distributions, and the plan-aware advantage prediction."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from lever.data.reader import load_candidates
from lever.data.stats import data_stats
from lever.data.synthetic import write_records
from lever.errors import LeverError
from lever_cli.data import data_app


def invoke(*args: Any):
    app = typer.Typer()
    app.add_typer(data_app, name="data")
    res = CliRunner().invoke(app, ["data", *map(str, args)], env={"COLUMNS": "200", "NO_COLOR": "1"})
    if res.exception is not None and not isinstance(res.exception, (SystemExit, LeverError)):
        raise res.exception
    return res


def run_cli(*args: Any) -> tuple[int, str]:
    """(exit code, all output); a LeverError counts as main() shows it: its code and text."""
    res = invoke(*args)
    if isinstance(res.exception, LeverError):
        return res.exception.exit_code, res.output + str(res.exception)
    return res.exit_code, res.output


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEVER_WORKSPACE", raising=False)


def c(i: int, acc: float, **extra: Any) -> dict[str, Any]:
    """Candidate i of a pool of 8: pointer [i, i+1 mod 8], vqa_correct = acc > 0."""
    return {"pointer": [i % 8, (i + 1) % 8], "vqa_correct": int(acc > 0), "vqa_acc_score": acc, **extra}


def record(accs: list[float], **extra: Any) -> dict[str, Any]:
    return {"candidate_pool_ids": list(range(100, 108)), "pointer_candidates": [c(i, a, **extra) for i, a in enumerate(accs)]}


# hard_plus_soft rewards (1 + acc for positives, 0 for negatives):
#   q1: [2, 0]          mixed, ratio 1/2, gap 2
#   q2: [1.6, 1.6, 1.6] all positive, ratio 1, gap 0 (uniform)
#   q3: [0, 0]          all negative, ratio 0, gap 0 (uniform)
#   q4: [2, 2, 2, 0, 0, 0, 1.3] mixed, 4 pos / 3 neg, gap 2 -> high tier
FILE = {"_meta": {"k": 8}, "1": record([1.0, 0.0]), "2": record([0.6, 0.6, 0.6]), "3": record([0.0, 0.0]),
        "4": record([1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.3])}  # fmt: skip


def test_data_stats_figures(tmp_path):
    recs = json.loads(json.dumps(FILE))
    recs["4"]["pointer_candidates"].append(c(0, 1.0))  # a duplicate of candidate 0: dropped at read
    recs["1"]["pointer_candidates"][1]["eval_failed"] = True
    s = data_stats(load_candidates(write_records(tmp_path / "d.json", recs), log=lambda m: None))
    assert (s["queries"], s["sequences"], s["shots"]) == (4, 14, 2)
    assert s["group_size"]["histogram"] == {"2": 2, "3": 1, "7": 1}
    assert (s["group_size"]["min"], s["group_size"]["max"], s["group_size"]["mean"]) == (2, 7, 3.5)
    assert s["read"]["duplicates_dropped"] == 1 and s["read"]["candidates"] == 15
    assert s["failed"] == {"sequences": 1, "queries_all_failed": 0}
    assert s["outcomes"] == {"all_negative": 1, "all_positive": 1, "mixed": 2}
    bins = {b["range"]: b["queries"] for b in s["positive_ratio"]["bins"]}
    assert bins == {
        "0 (all negative)": 1,
        "(0, 0.25]": 0,
        "(0.25, 0.5]": 1,
        "(0.5, 0.75]": 1,
        "(0.75, 1)": 0,
        "1 (all positive)": 1,
    }
    assert s["tiers"] == {"high": 1, "medium": 0, "low": 3}  # q1 has only 1 positive / 1 negative
    gap = s["reward_gap"]
    assert gap["uniform_groups"] == 2 and gap["p0"] == 0 and gap["p100"] == 2
    # rewards: [2, 0, 1.6 x3, 0, 0, 2, 2, 2, 0, 0, 0, 1.3], sum 14.1 over 14
    assert s["reward"]["mean"] == pytest.approx(14.1 / 14, abs=1e-6) and s["reward"]["max"] == pytest.approx(2.0)
    assert s["sources"] == {"unknown": 14}


PLAN = """description = "stats test plan"
[data]
val_fraction = 0.25
[grpo]
epochs = 1
[grpo.advantage]
kind = "{kind}"
std_floor = 0.1
"""


def stats_json(tmp_path: Path, kind: str = "zscore", extra: str = "") -> dict[str, Any]:
    plan = tmp_path / "p.toml"
    plan.write_text(PLAN.format(kind=kind) + extra)
    data = write_records(tmp_path / "d.json", FILE)
    res = invoke("stats", data, "--plan", plan, "--json", "--no-cache")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)  # stdout holds only the JSON (progress goes to stderr)


def test_plan_prediction_zscore(tmp_path):
    p = stats_json(tmp_path)["plan"]
    # 4 queries, val_fraction 0.25: train = ids 1, 2, 3 (round(0.75 * 4) = 3), val = id 4
    assert p["split"] == {"train": 3, "val": 1, "val_fraction": 0.25}
    (stage,) = p["stages"]
    (row,) = stage["advantages"]
    # q1 [2, 0]: mean 1, sample std sqrt(2) -> A = +-1/sqrt(2); q2 and q3 are constant -> A = 0
    # 7 sequences: mean 0, population std = sqrt((0.5 + 0.5) / 7), max 1/sqrt(2)
    assert row["groups"] == 3
    assert row["zero_share"] == pytest.approx(2 / 3) and row["flat_share"] == pytest.approx(2 / 3)
    assert row["adv_std"] == pytest.approx(math.sqrt(1 / 7), abs=1e-6)
    assert row["adv_max"] == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert row["mean_spread"] == pytest.approx(1 / math.sqrt(2) / 3, abs=1e-6)
    assert len(p["warnings"]) == 1 and "67% of groups have every |advantage| < 0.01" in p["warnings"][0]


def test_plan_prediction_rank(tmp_path):
    (row,) = stats_json(tmp_path, "rank")["plan"]["stages"][0]["advantages"]
    # rank: q1 -> [+1, -1]; q2 three ties share rank 1 -> 1 - 2*1/2 = 0; q3 ties -> 0
    assert row["adv_std"] == pytest.approx(math.sqrt(2 / 7), abs=1e-6) and row["adv_max"] == pytest.approx(1.0)


def test_plan_prediction_follows_the_beam_curriculum(tmp_path):
    extra = "[[grpo.top_k_schedule]]\nfrom_epoch = 1\ntop_k = 1\n[[grpo.top_k_schedule]]\nfrom_epoch = 2\ntop_k = 0\n"
    rows = stats_json(tmp_path, "zscore", extra)["plan"]["stages"][0]["advantages"]
    assert [r["top_k"] for r in rows] == [1, None]
    assert rows[0]["zero_share"] == 1.0 and rows[0]["adv_std"] == 0.0  # one sequence per group teaches nothing
    assert rows[1]["zero_share"] == pytest.approx(2 / 3)


def test_plan_prediction_uses_the_plan_reward(tmp_path):
    p = stats_json(tmp_path, "centered", '[reward]\nmode = "hard_only"\nhard_weight = 3.0\n')["plan"]
    (row,) = p["stages"][0]["advantages"]
    # hard_only, h = 3: q1 [3, 0] -> centered A = [1.5, -1.5]; q2 [3, 3, 3] and q3 [0, 0] -> 0
    assert p["plan_reward"]["mode"] == "hard_only"
    assert row["adv_max"] == pytest.approx(1.5) and row["adv_std"] == pytest.approx(math.sqrt(4.5 / 7), abs=1e-6)


def test_plan_prediction_filters_before_the_split(tmp_path):
    p = stats_json(tmp_path, "zscore", "")["plan"]
    assert p["filter"]["steps"] == [{"step": "skip_failed", "queries": 0, "sequences": 0}]
    plan = tmp_path / "q.toml"
    plan.write_text(PLAN.format(kind="zscore").replace("val_fraction = 0.25", "val_fraction = 0.25\nrequire_positive = true"))
    p = json.loads(invoke("stats", tmp_path / "d.json", "--plan", plan, "--json", "--no-cache").stdout)["plan"]
    # require_positive drops q3 first (as a run does): 3 queries left, train round(0.75 * 3) = 2 (ids 1, 2)
    assert p["filter"]["steps"][-1] == {"step": "require_positive", "queries": 1, "sequences": 2}
    assert p["split"]["train"] == 2 and p["stages"][0]["queries"] == 2


def test_stats_tables_and_warning(tmp_path):
    plan = tmp_path / "p.toml"
    plan.write_text(PLAN.format(kind="zscore"))
    data = write_records(tmp_path / "d.json", FILE)
    code, out = run_cli("stats", data, "--plan", plan)
    assert code == 0, out
    for text in ("queries", "group sizes", "outcomes", "quality tiers", "reward gap", "adv std", "warning:"):
        assert text in out
    assert (tmp_path / ".lever-cache" / "candidates").is_dir()  # the workspace cache was filled


def test_stats_bad_plan_exits_2(tmp_path):
    data = write_records(tmp_path / "d.json", FILE)
    code, out = run_cli("stats", data, "--plan", tmp_path / "missing.toml")
    assert code == 2 and "missing.toml" in out


def test_help_has_an_example():
    code, out = run_cli("stats", "--help")
    assert code == 0 and "Example" in out and "--plan" in out
    code, out = run_cli("balance", "--help")
    assert code == 0 and "Example" in out and "--group-size" in out


def test_the_original_family_keeps_repeated_sequences_and_floors_the_split(tmp_path):
    # 7 queries of 2 sequences; query 3 lists its sequence [0, 1] a third time (a repeated ordered sequence).
    recs = {str(q): record([1.0, 0.0]) for q in range(1, 8)}
    recs["3"]["pointer_candidates"].append(c(0, 0.6))
    write_records(tmp_path / "d.json", recs)
    plans = Path(__file__).resolve().parents[1] / "plans"
    got = {}
    for name in ("baseline", "original/baseline"):
        res = invoke("stats", tmp_path / "d.json", "--plan", plans / f"{name}.toml", "--json", "--no-cache")
        p = json.loads(res.stdout)["plan"]
        got[name] = (p["split"]["train"], p["split"]["val"], p["stages"][0]["sequences"])
    # lever: the repeat dropped, round(0.8 * 7) = 6 training queries of 2 sequences = 12
    # the original: every copy kept, int(0.8 * 7) = 5 training queries, query 3 with 3 sequences = 11
    assert got == {"baseline": (6, 1, 12), "original/baseline": (5, 2, 11)}


def test_the_plan_line_names_how_advantages_are_scaled(tmp_path):
    """The plan's summary line says scale_rewards when it is not the group default, and a std floor only where one
    divides: a Dr. GRPO plan (none) must not read like the default z-score."""
    data = write_records(tmp_path / "d.json", FILE)
    plan = tmp_path / "p.toml"
    lines = {}
    for scale in ("group", "batch", "none"):
        plan.write_text(PLAN.format(kind="zscore") + f'scale_rewards = "{scale}"\n')
        code, out = run_cli("stats", data, "--plan", plan, "--no-cache")
        assert code == 0, out
        lines[scale] = " ".join(next(line for line in out.splitlines() if line.startswith("plan ")).split())
    assert "advantage zscore (std floor 0.1, clip 5)" in lines["group"]
    assert "advantage zscore (scale_rewards batch, std floor 0.1, clip 5)" in lines["batch"]
    assert "advantage zscore (scale_rewards none: r - mean, clip 5)" in lines["none"]
    plan.write_text(PLAN.format(kind="rank"))
    code, out = run_cli("stats", data, "--plan", plan, "--no-cache")
    assert code == 0 and "advantage rank (clip 5)" in " ".join(out.split())  # no std in a rank advantage
