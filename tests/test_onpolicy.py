"""On-policy pieces: scoring through the reward cache, val/reward selection, refresh rounds."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from workspaces import bench_workspace

from lever.bench import SimVLM
from lever.data.rewards import raw_rewards
from lever.data.sources import bench_paths
from lever.eval.rollout import greedy_picks
from lever.io import read_jsonl
from lever.recipe import Recipe
from lever.spec import load_plan, load_workspace
from lever.train.checkpoint import load_weights

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "plans"
FAST = ["rce.epochs=2", "rce.batch_size=16", "grpo.epochs=2", "grpo.lr=1e-4", "eval.questions=40", "eval.shots=[1,2]"]


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("lever.eval.reward_cache.CACHE_FILE", str(tmp_path / "rewards.sqlite"))  # this test's own
    path = bench_workspace(tmp_path)
    monkeypatch.setenv("LEVER_WORKSPACE", str(path))
    return path


def test_scoring_gives_the_rewards_the_candidate_data_holds_and_asks_once(ws):
    """The bundled data was scored by SimVLM.score_batch; Scoring answers through the backend, post-processes and
    applies the VQA metric and the reward formula: the same rewards, and a second time no VLM call."""
    r = Recipe.build(load_plan(PLANS / "plan5.toml"), load_workspace(ws), 0, lambda m: None)
    d = r.loaded.data
    group = torch.repeat_interleave(torch.arange(d.num_queries), d.offsets[1:] - d.offsets[:-1])[:400]  # [S]
    queries = d.query_ids[group].tolist()
    seqs = [d.pools[g, d.pointers[s]].tolist() for s, g in enumerate(group.tolist())]
    ok = ~d.failed[:400]  # the data's simulated scorer failures (its edge cases) are not the VLM's answers
    reward, acc = r.scoring.rewards(queries, seqs)
    assert torch.equal(reward[ok], raw_rewards(d, r.plan.reward)[:400][ok]) and torch.equal(acc[ok], d.acc[:400][ok])
    assert r.scoring.counts.calls == 400 and r.scoring.counts.hits == 0
    again, _ = r.scoring.rewards(queries, seqs)
    assert torch.equal(again, reward) and r.scoring.counts.calls == 400 and r.scoring.counts.hits == 400


def test_rl_checkpoints_selected_by_val_reward(lever, ws):
    args = ["--workspace", ws, "run", PLANS / "plan5.toml", *FAST, 'select.metric="val/reward"', "--no-eval"]
    res = lever(*args, 'select.mode="min"')
    assert res.code == 2 and "set mode = 'max'" in res.text
    res = lever(*args, 'select.mode="max"')
    assert res.code == 0, res.text
    (run,) = (Path(ws).parent / "runs" / "plan5").glob("*/seed-0")
    rows = read_jsonl(run / "metrics.jsonl")
    grpo = [row for row in rows if row["stage"] == "grpo"]
    best = max(grpo, key=lambda row: (row["val/reward"], -row["epoch"]))
    selected = json.loads((run / "selected.json").read_text())
    assert (selected["stage"], selected["epoch"]) == ("grpo", best["epoch"])
    assert all(row["cost/val/calls"] + row["cost/val/hits"] > 0 for row in rows)

    # The logged value, worked out again from the checkpoint: greedy picks, the simulated VLM's own scores,
    # the reward hard_plus_soft = vqa_correct + vqa_acc_score, the mean over the validation queries.
    recipe = Recipe.build(load_plan(PLANS / "plan5.toml", FAST), load_workspace(ws), 0, lambda m: None)
    model = recipe.model()
    model.load_state_dict(load_weights(Path(ws).parent / "runs" / selected["checkpoint"]))
    val = recipe.split.val
    picks = greedy_picks(model, val, recipe.loaded.features, 2)
    vlm = SimVLM.load(bench_paths(load_workspace(ws), lambda m: None))
    scores = vlm.score_batch("train", val.query_ids.tolist(), picks.tolist())
    want = sum(s["vqa_correct"] + s["vqa_acc_score"] for s in scores) / len(scores)
    assert best["val/reward"] == pytest.approx(want, abs=1e-6)
    assert best["val/accuracy"] == pytest.approx(sum(s["vqa_acc_score"] for s in scores) / len(scores), abs=1e-6)
    # a second identical run asks the VLM nothing (the stage is reused; a forced retrain hits the cache)
    res = lever(*args, 'select.mode="max"', "--retrain-stage", "grpo")
    assert res.code == 0, res.text
    again = read_jsonl(run / "metrics.jsonl")
    assert all(row["cost/val/calls"] == 0 for row in again if row["stage"] == "grpo")
    assert [row["val/reward"] for row in again] == [row["val/reward"] for row in rows]

    # The validation queries are train questions, each with the pool an evaluation of the train split gives it, so
    # the selected checkpoint's validated prompts (its greedy 2 picks, in pick order) are that evaluation's 2-shot
    # prompts: `lever evaluate` finds them in the reward cache and asks the VLM only the other train questions.
    ev = [*args[:-1], 'select.mode="max"', 'eval.splits=["train"]', 'eval.questions="all"', "eval.shots=[2]"]
    res = lever(*[a if a != "run" else "evaluate" for a in ev])
    n, train = val.num_queries, len(recipe.scoring.items)
    assert res.code == 0 and f"evaluation: {train - n:,} VLM calls, {n:,} answers from the reward cache" in res.text, res.text


def _rows(run: Path) -> list[dict]:
    """A run's metric rows without what depends on the machine and the cache's state (time/*, cost/*)."""
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "cost/"))} for r in read_jsonl(run / "metrics.jsonl")]


# The line a stage prints once its VLM has answered a first batch: the seconds it took and what they predict.
CALIBRATION = r"{stage}: the first [\d,]+ VLM calls took [\d.e-]+ (s|min)[^:]*: about [\d.e-]+ (s|min|h)[\d\w ]* at most for the other [\d,]+"

REFRESH = [*FAST, "grpo.epochs=1", "refresh.rounds=2", "refresh.epochs=2", "refresh.samples=4", "--no-eval"]


def test_refresh_rounds_train_on_the_selectors_own_scored_groups(lever, ws, tmp_path):
    res = lever("--workspace", ws, "run", PLANS / "plan5.toml", *REFRESH)
    assert res.code == 0, res.text
    assert "grpo_r1: refreshing 96 groups" in res.text and "at most 384 VLM calls" in res.text
    assert re.search(CALIBRATION.format(stage="grpo_r1"), res.text), res.text
    (run,) = (Path(ws).parent / "runs" / "plan5").glob("*/seed-0")
    rows = _rows(run)
    assert [(r["stage"], r["epoch"]) for r in rows][-4:] == [("grpo_r1", 1), ("grpo_r1", 2), ("grpo_r2", 1), ("grpo_r2", 2)]
    stages = json.loads((run / "stages.json").read_text())
    for name in ("grpo_r1", "grpo_r2"):
        (entry,) = [s for s in stages if s["stage"] == name]
        folder = Path(ws).parent / "runs" / entry["dir"] / "data"
        cost = json.loads((folder / "refresh.json").read_text())
        assert cost["vlm/calls"] > 0 and cost["queries"] == 96
        data = json.loads((folder / "candidates.json").read_text())
        cands = [c for k, v in data.items() if k != "_meta" for c in v["pointer_candidates"]]
        assert {c["gen_method"] for c in cands} == {"sample"} and all(2 <= len(v["pointer_candidates"]) <= 4
                                                                      for k, v in data.items() if k != "_meta")  # fmt: skip
        assert all(c["behaviour_logp"] < 0 and len(c["behaviour_step_logps"]) == 2 for c in cands)
        assert data["_meta"]["policy"].startswith(f"plan5 seed 0 {name} weights ")
        stats = lever("--workspace", ws, "data", "stats", folder / "candidates.json")
        assert stats.code == 0 and "96" in stats.text
    # the two rounds proposed from other weights: other groups
    r1, r2 = (json.loads((Path(ws).parent / "runs" / s["dir"] / "data" / "candidates.json").read_text())
              for s in stages if s["stage"].startswith("grpo_r"))  # fmt: skip
    assert r1 != r2

    # The same plan in another runs folder, same workspace cache: trained again, not a single VLM call, same rows.
    other = tmp_path / "other.toml"
    other.write_text(Path(ws).read_text().replace('runs = "runs"', 'runs = "again"'))
    res = lever("--workspace", other, "run", PLANS / "plan5.toml", *REFRESH)
    assert res.code == 0, res.text
    assert "(0 VLM calls, " in res.text and res.text.count("(0 VLM calls, ") == 2
    (again,) = (tmp_path / "again" / "plan5").glob("*/seed-0")
    assert _rows(again) == rows


def _kill_after_two_epochs(ws, args: list[str], stage_glob: str) -> None:
    """Run plan 5 with `args` in a subprocess and kill it hard (SIGKILL) once the stage folder matching `stage_glob`
    has two epochs on disk (the first one's resume.pt too)."""
    cmd = [sys.executable, "-m", "lever_cli", "--workspace", str(ws), "run", str(PLANS / "plan5.toml"), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 900  # generous: a loaded machine takes minutes to reach the stage
    while time.time() < deadline:
        files = sorted((Path(ws).parent / "runs" / "_stages").glob(f"{stage_glob}/metrics.jsonl"))
        if files and len(read_jsonl(files[0])) >= 2:
            break
        if proc.poll() is not None:
            pytest.fail(f"the first run ended (exit {proc.returncode}) before its second epoch")
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the first run did not reach its second epoch in time")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _resumed_equals_a_clean_run(lever, ws, tmp_path, args: list[str], stage: str, epochs: int) -> None:
    """Rerun the killed command: `stage` resumes, and its rows and selected checkpoint equal a clean run's in another
    runs folder (same workspace cache)."""
    res = lever("--workspace", ws, "run", PLANS / "plan5.toml", *args)
    assert res.code == 0, res.text
    assert f"{stage}: resuming after epoch" in res.text, res.text
    (run,) = (Path(ws).parent / "runs" / "plan5").glob("*/seed-0")
    other = tmp_path / "clean.toml"
    other.write_text(Path(ws).read_text().replace('runs = "runs"', 'runs = "clean"'))
    assert lever("--workspace", other, "run", PLANS / "plan5.toml", *args).code == 0
    (clean,) = (tmp_path / "clean" / "plan5").glob("*/seed-0")
    assert [r["epoch"] for r in _rows(run) if r["stage"] == stage] == list(range(1, epochs + 1))
    assert _rows(run) == _rows(clean)
    sel, sel_clean = (json.loads((p / "selected.json").read_text()) for p in (run, clean))
    assert sel["sha256"] == sel_clean["sha256"]


@pytest.mark.slow
def test_kill_in_a_refresh_round_and_rerun_gives_the_same_metrics(lever, ws, tmp_path):
    args = [*FAST, "grpo.epochs=1", "refresh.rounds=1", "refresh.epochs=8", "refresh.samples=4", "--no-eval"]
    _kill_after_two_epochs(ws, args, "grpo_r1-*")
    _resumed_equals_a_clean_run(lever, ws, tmp_path, args, "grpo_r1", 8)


ONLINE = [*FAST, 'rollout.mode="online"', "rollout.num_generations=4", "--no-eval"]


def test_online_grpo_samples_scores_and_takes_the_ratio_to_the_sampling_policy(lever, ws, tmp_path):
    # reference = pre_rce: the KL is to the weights before RCE (far from the policy); the PPO ratio is to the policy
    # that sampled the batch, so with one step per batch of samples (num_iterations = 1) it is exactly 1.
    args = [*ONLINE, 'grpo.reference="pre_rce"', "grpo.lr=1e-3"]
    res = lever("--workspace", ws, "run", PLANS / "plan5.toml", *args)
    assert res.code == 0, res.text
    assert "grpo: online GRPO, 96 queries x 4 samples x 2 epochs: at most 768 VLM calls" in res.text
    # the first batch of samples is timed: what it took predicts the rest (the value is the machine's)
    assert re.search(CALIBRATION.format(stage="grpo"), res.text), res.text
    (run,) = (Path(ws).parent / "runs" / "plan5").glob("*/seed-0")
    rows = [r for r in read_jsonl(run / "metrics.jsonl") if r["stage"] == "grpo"]
    for r in rows:
        assert r["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6) and r["policy/first_step_ratio"] == pytest.approx(1.0)
        assert r["kl/value"] > 1e-3 and r["policy/start_ratio"] != pytest.approx(1.0, abs=1e-3)
        assert r["cost/rollout/calls"] + r["cost/rollout/hits"] == 96 * 4
        assert 1 <= r["rollout/distinct"] <= 4 and 0 <= r["rollout/zero_std_frac"] <= 1 and r["rollout/entropy"] > 0
    assert rows[0]["rollout/reward_mean"] != rows[1]["rollout/reward_mean"]  # each epoch samples anew
    # two steps per batch of samples: the second is taken after an update, so the ratio moves off 1
    res = lever("--workspace", ws, "run", PLANS / "plan5.toml", *args, "rollout.num_iterations=2")
    assert res.code == 0, res.text
    (run2,) = [p for p in (Path(ws).parent / "runs" / "plan5").glob("*/seed-0") if p != run]
    rows2 = [r for r in read_jsonl(run2 / "metrics.jsonl") if r["stage"] == "grpo"]
    assert rows2[0]["policy/first_step_ratio"] == pytest.approx(1.0) and rows2[0]["policy/ratio_mean"] != pytest.approx(
        1.0, abs=1e-6
    )
    assert 2 * sum(r["cost/rollout/calls"] + r["cost/rollout/hits"] for r in rows2) == 2 * 2 * 96 * 4

    # the same plan in another runs folder: not a VLM call, the same rows
    other = tmp_path / "other.toml"
    other.write_text(Path(ws).read_text().replace('runs = "runs"', 'runs = "again"'))
    assert lever("--workspace", other, "run", PLANS / "plan5.toml", *args).code == 0
    (again,) = (tmp_path / "again" / "plan5").glob("*/seed-0")
    assert all(r["cost/rollout/calls"] == 0 for r in read_jsonl(again / "metrics.jsonl") if r["stage"] == "grpo")
    assert _rows(again) == _rows(run)


def test_online_settings_that_conflict_fail_early(lever, ws):
    res = lever("--workspace", ws, "run", PLANS / "plan5.toml", *ONLINE, "refresh.rounds=1")
    assert res.code == 2 and "set refresh.rounds = 0" in res.text
    res = lever("--workspace", ws, "run", PLANS / "baseline.toml", *ONLINE, "grpo.epochs=0")
    assert res.code == 2 and "needs a GRPO stage" in res.text


@pytest.mark.slow
def test_kill_in_an_online_stage_and_rerun_gives_the_same_metrics(lever, ws, tmp_path):
    args = [*FAST, 'rollout.mode="online"', "rollout.num_generations=4", "grpo.epochs=6", "--no-eval"]
    _kill_after_two_epochs(ws, args, "grpo-*")
    _resumed_equals_a_clean_run(lever, ws, tmp_path, args, "grpo", 6)


def test_online_at_another_temperature_takes_the_ratio_to_the_policy_itself(lever, ws):
    """At temperature 1.5 the behaviour log-probs are the tempered distribution's, not the policy's: the ratio's
    denominators come from a pass of the policy, so one step per batch of samples still has ratio 1 (and the
    sampling entropy is higher than at temperature 1)."""
    rows = {}
    for tau in ("1.0", "1.5"):
        res = lever("--workspace", ws, "run", PLANS / "plan5.toml", *ONLINE, f"rollout.temperature={tau}")
        assert res.code == 0, res.text
    for run in (Path(ws).parent / "runs" / "plan5").glob("*/seed-0"):
        spec = json.loads((run / "spec.json").read_text())
        rows[spec["rollout"]["temperature"]] = [r for r in read_jsonl(run / "metrics.jsonl") if r["stage"] == "grpo"]
    assert all(r["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6) for r in rows[1.5])
    assert rows[1.5][0]["rollout/entropy"] > rows[1.0][0]["rollout/entropy"]


def test_a_vlm_call_budget_stops_online_grpo_resumably_and_the_rerun_equals_a_clean_run(lever, ws, tmp_path):
    """--max-vlm-calls 500 with 384 new calls per online epoch: epoch 1 is saved, epoch 2 stops after 116 calls
    (exit 75, the run interrupted, not failed); the same command without a budget finishes from the cache and the
    rows equal an uninterrupted run's."""
    cmd = ["--workspace", ws, "run", PLANS / "plan5.toml", *ONLINE]
    res = lever(*cmd, "--max-vlm-calls", "500")
    assert res.code == 75, res.text
    assert "at most 768 VLM calls (fewer through the reward cache); the budget (--max-vlm-calls) allows 500 more" in res.text
    assert "500 new VLM calls made, the budget is 500 (in grpo epoch 2 of 2: the stage resumes after epoch 1)" in res.text
    assert f"lever --workspace {Path(ws).resolve()} run {PLANS / 'plan5.toml'} rce.epochs=2" in res.text
    (run,) = (Path(ws).parent / "runs" / "plan5").glob("*/seed-0")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and "budget" in status["message"]
    res = lever(*cmd)
    assert res.code == 0, res.text
    assert "grpo: resuming after epoch 1" in res.text
    second = [r for r in read_jsonl(run / "metrics.jsonl") if r["stage"] == "grpo"][1]
    assert second["cost/rollout/hits"] >= 116 and second["cost/rollout/calls"] + second["cost/rollout/hits"] == 384
    other = tmp_path / "clean.toml"
    other.write_text(Path(ws).read_text().replace('runs = "runs"', 'runs = "clean"'))
    assert lever("--workspace", other, "run", PLANS / "plan5.toml", *ONLINE).code == 0
    (clean,) = (tmp_path / "clean" / "plan5").glob("*/seed-0")
    assert _rows(run) == _rows(clean)


@pytest.mark.slow
def test_a_vlm_call_budget_stops_a_refresh_round_in_its_generation_and_the_rerun_finishes_it(lever, ws):
    cmd = ["--workspace", ws, "run", PLANS / "plan5.toml", *REFRESH]
    res = lever(*cmd, "--max-vlm-calls", "0")  # the RCE and GRPO stages ask nothing; the round's first prompt stops it
    assert res.code == 75, res.text
    assert "0 new VLM calls made, the budget is 0 (in grpo_r1, before its first epoch)" in res.text
    (run,) = (Path(ws).parent / "runs" / "plan5").glob("*/seed-0")
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"
    res = lever(*cmd)
    assert res.code == 0, res.text
    assert (
        "grpo: reusing the identical stage" in res.text
        and [r["stage"] for r in read_jsonl(run / "metrics.jsonl")][-1] == "grpo_r2"
    )
