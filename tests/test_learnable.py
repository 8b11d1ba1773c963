"""On the bundled benchmark, training learns: the baseline's selector beats random choice at 2 shots
and stays below an oracle that picks the best of many scored sequences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from workspaces import bench_workspace, shared_cache  # noqa: E402

from lever.bench import BenchConfig, SimVLM, ensure_bench
from lever.data.sources import load_features
from lever.eval.postprocess import postprocess
from lever.eval.select import similar_pools
from lever.eval.vqa import vqa_accuracy

ROOT = Path(__file__).resolve().parents[1]
N = 400  # val questions


@pytest.mark.slow
def test_baseline_between_random_and_oracle(lever, tmp_path):
    cache = shared_cache()
    ws = bench_workspace(tmp_path, bench="")  # the default benchmark
    res = lever(
        "--workspace", ws, "run", ROOT / "plans" / "baseline.toml", "rce.epochs=3", f"eval.questions={N}", "eval.shots=[2]"
    )
    assert res.code == 0, res.text
    summary = json.loads(next((tmp_path / "runs" / "baseline").glob("*/seed-0/eval/*/summary.json")).read_text())
    trained = summary["splits"]["val"]["2"]["accuracy"]

    paths = ensure_bench(cache, BenchConfig(), log=lambda m: None)
    vlm = SimVLM.load(paths)
    items = json.loads(Path(paths.items_val).read_text())[:N]
    train_f, val_f = load_features(Path(paths.features)), load_features(Path(paths.val_features))[:N]
    g = torch.Generator().manual_seed(0)

    def accuracy(demo_lists: list[list[int]]) -> list[float]:
        answers = vlm.answer_batch("val", list(range(len(demo_lists))), demo_lists)
        return [vqa_accuracy(postprocess(a), it["answers"]) for a, it in zip(answers, items)]

    random_acc = 100 * sum(accuracy([torch.randperm(len(train_f), generator=g)[:2].tolist() for _ in items])) / N
    pools = similar_pools(val_f, train_f, 64)
    best = torch.zeros(N)
    for _ in range(32):  # oracle: the best of 32 random 2-sequences from each question's pool
        pick = torch.stack([pools[i][torch.randperm(64, generator=g)[:2]] for i in range(N)])
        best = torch.maximum(best, torch.tensor(accuracy(pick.tolist())))
    oracle = 100 * float(best.mean())
    assert random_acc + 5 < trained < oracle, (random_acc, trained, oracle)
