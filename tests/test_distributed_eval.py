"""`torchrun` evaluation: two CPU processes (gloo) share the questions and give the single-process results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from workspaces import bench_workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_evaluation_equals_single_process(lever, tmp_path):
    ws = bench_workspace(tmp_path)
    plan = [str(ROOT / "plans" / "baseline.toml"), "rce.epochs=1", "eval.questions=30", "eval.shots=[1,3]"]
    assert lever("--workspace", ws, "run", *plan, "--no-eval").code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}  # gloo over loopback only
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "lever_cli",
        "--workspace",
        str(ws),
        "evaluate",
        *plan,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        # Two processes on a 2-core CI box: a second, complete attempt (no partial answers kept) guards
        # against start-up and tear-down races of torchrun and gloo themselves; lever must pass one of two.
        for d in (tmp_path / "runs" / "baseline").glob("*/seed-0/eval"):
            shutil.rmtree(d)
        first = proc.stderr[-1500:]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, first + "\n--- second attempt ---\n" + proc.stderr[-1500:]
    (eval_dir,) = sorted(p for p in (tmp_path / "runs" / "baseline").glob("*/seed-0/eval/*") if p.is_dir())
    two = (eval_dir / "results.jsonl").read_text()
    shutil.rmtree(eval_dir)
    assert lever("--workspace", ws, "evaluate", *plan).code == 0
    one = (eval_dir / "results.jsonl").read_text()
    assert two == one
    rows = [json.loads(line) for line in one.splitlines()]
    assert len(rows) == 60 and [r["shots"] for r in rows] == [1] * 30 + [3] * 30
