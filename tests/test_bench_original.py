"""benchmarks/bench_train.py --original: the plan -> original-trainer flags mapping and the candidate file it reads
(hand-written expectations; the original's checkout is not needed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lever.spec import load_plan

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_train  # noqa: E402


def plan(name: str, rce_epochs: int = 5, grpo_epochs: int = 5):
    p = load_plan(name, (), ROOT / "plans").plan
    p = p.model_copy(update={"rce": p.rce.model_copy(update={"epochs": rce_epochs})})
    return p.model_copy(update={"grpo": p.grpo.model_copy(update={"epochs": grpo_epochs})})


def with_(p, section: str, **values):
    return p.model_copy(update={section: getattr(p, section).model_copy(update=values)})


def test_plan5_maps_to_the_original_flags():
    assert bench_train.original_args(plan("original/plan5")) == [
        "--rce_epochs", "5", "--grpo_epochs", "5", "--batch_size", "1",
        "--rce_lr", "0.0001", "--rce_temp_start", "2", "--rce_temp_end", "0.5",
        "--grpo_lr", "5e-06", "--kl_beta", "0.1", "--clip_epsilon", "0.2",
        "--reward_mode", "hard_plus_soft", "--hard_weight", "1", "--soft_weight", "1", "--rel_weight", "0.1",
        "--num_layers", "1", "--normalize_method", "z_score_clamp", "--normalize_clamp_value", "3",
        "--disable_adaptive_kl", "--freeze_backbone_in_grpo",
    ]  # fmt: skip


def test_switches_follow_the_plan():
    p = plan("original/plan5", 2, 3)
    g = p.grpo
    adaptive = g.kl.model_copy(update={"adaptive": g.kl.adaptive.model_copy(update={"enabled": True})})
    p = with_(p, "grpo", kl=adaptive, freeze_backbone=False, eps_low=0.3, eps_high=0.3)
    p = with_(with_(p, "rce", rewards="raw"), "data", require_positive=True)
    args = bench_train.original_args(p)
    assert args[:4] == ["--rce_epochs", "2", "--grpo_epochs", "3"]
    assert args[args.index("--clip_epsilon") + 1] == "0.3"
    assert "--disable_adaptive_kl" not in args and "--freeze_backbone_in_grpo" not in args
    assert args[-2:] == ["--require_positive_query", "--rce_use_raw_reward"]


@pytest.mark.parametrize(
    ("name", "section", "values", "named"),
    [
        ("plan5", None, {}, "model.arch = 'lever'"),  # lever's family
        ("original/plan1", None, {}, "grpo.advantage.kind = 'rank'"),  # the original trainer z-scores
        ("original/plan5", "grpo", {"eps_high": 0.28}, "grpo.eps_low 0.2 != grpo.eps_high 0.28"),
        ("original/plan5", "rce", {"batch_size": 16}, "rce.batch_size = 16"),
    ],
)
def test_settings_the_original_cannot_run_are_named(name, section, values, named):
    p = plan(name)
    if section:
        p = with_(p, section, **values)
    with pytest.raises(ValueError, match="cannot run this plan") as err:
        bench_train.original_args(p)
    assert named in str(err.value)


def test_original_candidates_keep_each_group_head(tmp_path):
    cands = lambda n: [{"pointer": [i, i + 1]} for i in range(n)]  # noqa: E731
    src = {"_meta": {"note": 1}, "3": {"query": {"query_id": 3}, "pointer_candidates": cands(3)}}
    src["7"] = {"pointer_candidates": cands(1)}
    (tmp_path / "in.json").write_text(json.dumps(src))
    bench_train.original_candidates(tmp_path / "in.json", tmp_path / "out.json", 2)
    assert json.loads((tmp_path / "out.json").read_text()) == {
        "_meta": {"note": 1},
        "3": {"query": {"query_id": 3}, "pointer_candidates": [{"pointer": [0, 1]}, {"pointer": [1, 2]}]},
    }
