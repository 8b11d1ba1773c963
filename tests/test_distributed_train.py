"""`torchrun` training: rank 0 trains, every rank answers its share of the VLM's prompts (CPU, gloo); two processes
give one process's metrics and checkpoints, and their VLM calls add up to one process's."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from workspaces import bench_workspace

from lever.eval.distributed import Ranks, Spread, _interleave
from lever.io import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
PLAN = str(ROOT / "plans" / "plan5.toml")
FAST = ["rce.epochs=2", "rce.batch_size=16", "grpo.lr=1e-4"]
# online GRPO selected by val/reward (the rollouts and the validation both ask the VLM), then evaluated by every rank
ONLINE = [*FAST, "eval.questions=30", "eval.shots=[1,2]", "--no-baseline", "grpo.epochs=2", 'rollout.mode="online"', "rollout.num_generations=4", 'select.metric="val/reward"',
          'select.mode="max"']  # fmt: skip
REFRESH = [*FAST, "--no-eval", "grpo.epochs=1", "refresh.rounds=1", "refresh.epochs=2", "refresh.samples=4"]


def _workspace(folder: Path) -> Path:
    """A bundled-benchmark workspace with its own cache: a cold reward cache."""
    folder.mkdir()
    path = bench_workspace(folder)
    text = re.sub(r'^cache = ".*"$', f'cache = "{folder / "cache"}"', path.read_text(), flags=re.M)
    path.write_text(text)
    return path


def _torchrun(ws: Path, args: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}  # gloo over loopback only
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lever_cli",
           "--workspace", str(ws), "run", PLAN, *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        # Two processes on a busy 2-core box: a second, complete attempt (a fresh runs folder and a cold cache again)
        # guards against start-up and tear-down races of torchrun and gloo themselves; lever must pass one of two.
        first = proc.stderr[-1500:]
        for folder in ("runs", "cache"):
            shutil.rmtree(ws.parent / folder, ignore_errors=True)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, first + "\n--- second attempt ---\n" + proc.stderr[-1500:]
    return proc.stderr


def _record(ws: Path) -> tuple[list[dict], dict[str, str], int]:
    """The run's metric rows without time/* and cost/*, the SHA-256 of every checkpoint file (and of the evaluation's
    results), and the VLM calls training made."""
    (run,) = (ws.parent / "runs" / "plan5").glob("*/seed-0")
    rows = read_jsonl(run / "metrics.jsonl")
    calls = sum(int(v) for r in rows for k, v in r.items() if k.startswith("cost/") and k.endswith("/calls"))
    calls += sum(int(r["vlm/calls"]) for r in map(_json, (ws.parent / "runs" / "_stages").glob("*/data/refresh.json")))
    stages = ws.parent / "runs" / "_stages"
    sums = {str(p.relative_to(stages)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(stages.rglob("*.safetensors"))}
    results = sorted(run.glob("eval/*/results.jsonl"))
    sums.update({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in results})
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "cost/"))} for r in rows], sums, calls


def _json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("args", [ONLINE, REFRESH], ids=["online", "refresh"])
def test_torchrun_training_equals_single_process(lever, tmp_path, monkeypatch, args):
    # One thread in both: the single process would otherwise use every core and torchrun's ranks one each (its
    # OMP_NUM_THREADS), and reductions split over other thread counts round differently (the rows differ in ulps).
    monkeypatch.setenv("LEVER_THREADS", "1")
    one, two = _workspace(tmp_path / "one"), _workspace(tmp_path / "two")
    res = lever("--workspace", one, "run", PLAN, *args)
    assert res.code == 0, res.text
    log = _torchrun(two, args)
    rows1, sums1, calls1 = _record(one)
    rows2, sums2, calls2 = _record(two)
    assert rows2 == rows1 and len(rows1) >= 4
    assert sums2 == sums1 and len(sums1) >= 4 and ("results.jsonl" in sums1) == ("--no-eval" not in args)
    # the ranks answered disjoint shares of every call: together as many prompts as one process asked the VLM
    (shares,) = re.findall(r"VLM prompts answered per rank: (\d+) \+ (\d+) = (\d+)", log)
    a, b, total = map(int, shares)
    assert a > 0 and b > 0 and a + b == total == calls1 == calls2
    assert log.count("VLM prompts answered per rank") == 1  # rank 0 speaks; rank 1 prints nothing of training


def test_each_ranks_answers_go_back_to_their_prompts_positions():
    """Rank r answered positions r, r + world, ...: interleaved back into prompt order (tuples element-wise)."""
    assert _interleave([["a", "c", "e"], ["b", "d"]], 5) == ["a", "b", "c", "d", "e"]
    assert _interleave([["a"], [], []], 1) == ["a"]
    got = _interleave([(["a0", "a3"], [0, 3]), (["a1"], [1]), (["a2"], [2])], 4)
    assert got == (["a0", "a1", "a2", "a3"], [0, 1, 2, 3])


def test_in_one_process_spread_is_its_inner_backend():
    class Echo:
        name = "echo"

        def answer(self, requests):
            return [f"answer {q}" for q in requests]

        def gt_probs(self, requests):
            return [q / 10 for q in requests]

    one = Spread(Echo(), Ranks())
    assert one.name == "echo" and one.answer([1, 2]) == ["answer 1", "answer 2"] and one.gt_probs([3]) == [0.3]
    assert not hasattr(one, "answer_with_gt_probs")  # the inner backend has none: the reward cache asks separately
