"""The supervised stage (`sft`) and the original's checkpoints both ways."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lever.io import read_jsonl
from lever.train.checkpoint import load_weights

ROOT = Path(__file__).resolve().parents[1]
PLANS = ROOT / "plans"
FAST = ["rce.batch_size=16", "eval.questions=20", "eval.shots=[1]", 'eval.splits=["val"]']


@pytest.fixture
def ws(tmp_path, monkeypatch):
    cache = Path(os.environ.get("LEVER_TEST_CACHE", ROOT / ".lever-cache" / "tests"))
    path = tmp_path / "lever.toml"
    path.write_text(f'runs = "runs"\ncache = "{cache}"\n[bench]\nn_train = 600\nn_queries = 120\nn_val = 80\n')
    monkeypatch.chdir(ROOT)
    return path


def cli(lever, ws, *args):
    res = lever("--workspace", ws, *args)
    assert res.code == 0, res.text
    return res


def test_sft_stage_trains_and_a_second_plan_starts_from_it(lever, ws, tmp_path):
    (tmp_path / "sft.toml").write_text(
        'description = "SFT only"\nextends = "%s"\n[sft]\nepochs = 2\nbatch_size = 16\n[rce]\nepochs = 0\n'
        % (PLANS / "baseline.toml")
    )
    (tmp_path / "after_sft.toml").write_text(
        'description = "RCE from the SFT plan"\nextends = "%s"\n[start]\nkind = "plan"\nplan = "sft"\n[rce]\nepochs = 1\n'
        % (PLANS / "baseline.toml")
    )
    cli(lever, ws, "run", tmp_path / "sft.toml", "--no-eval")  # no overrides: the start names the plan as it is
    (sft_run,) = sorted((tmp_path / "runs" / "sft").glob("*/seed-0"))
    rows = read_jsonl(sft_run / "metrics.jsonl")
    assert [r["stage"] for r in rows] == ["sft", "sft"] and all("losses/sft" in r for r in rows)
    assert rows[1]["losses/sft"] < rows[0]["losses/sft"]
    cli(lever, ws, "run", tmp_path / "after_sft.toml", *FAST, "rce.lr=1e-12", "--no-eval")
    (after,) = sorted((tmp_path / "runs" / "after_sft").glob("*/seed-0"))
    assert [s["stage"] for s in json.loads((after / "stages.json").read_text())] == ["rce"]
    # it started from the SFT plan's selected weights (an lr of 1e-12 leaves them as they were)
    (sft_entry,) = json.loads((sft_run / "stages.json").read_text())
    (rce_entry,) = json.loads((after / "stages.json").read_text())
    a = load_weights(tmp_path / "runs" / sft_entry["dir"] / sft_entry["checkpoint"])
    b = load_weights(tmp_path / "runs" / rce_entry["dir"] / rce_entry["checkpoint"])
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    shown = cli(lever, ws, "show", tmp_path / "sft.toml", "--json").out
    assert '"sft"' in shown
