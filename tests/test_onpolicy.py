"""On-policy pieces: scoring through the reward cache, val/reward selection, refresh rounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from workspaces import bench_workspace

from lever.bench import SimVLM
from lever.data.rewards import raw_rewards
from lever.eval.rollout import greedy_picks
from lever.io import read_jsonl
from lever.recipe import Recipe
from lever.runs.sources import bench_paths
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
