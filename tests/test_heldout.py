"""The held-out `test` split: the bundled benchmark's own questions, disjoint from val and train, that leave the
benchmark's files (and so every stored evaluation) as they were; selectable in eval.splits and --split."""

from __future__ import annotations

import hashlib
import json

import torch
from test_run import PLANS, run_cli, seed_dirs
from test_run import ws as ws  # noqa: F401  (a fixture)
from workspaces import shared_cache

from lever.bench import BenchConfig
from lever.bench.world import make_world

SMALL = BenchConfig(n_train=600, n_queries=120, n_val=80)


def test_the_held_out_split_leaves_train_and_val_as_they_were():
    plain, held = make_world(SMALL), make_world(SMALL, held_out=True)
    assert plain.test is None and held.test is not None
    for a, b in ((plain.train, held.train), (plain.val, held.val)):
        assert a.items == b.items and torch.equal(a.features, b.features)
        assert all(torch.equal(a.latent[k], b.latent[k]) for k in a.latent)
    assert plain.params == held.params  # the VLM's salt included
    test_ids = {it["question_id"] for it in held.test.items}
    used = {it["question_id"] for it in held.train.items + held.val.items}
    images = {it["image_id"] for it in held.train.items + held.val.items}
    assert len(test_ids) == SMALL.n_val and not test_ids & used
    assert not {it["image_id"] for it in held.test.items} & images


def test_eval_splits_test_runs_on_the_bundled_benchmark(lever, ws):  # noqa: F811
    quick = ["eval.questions=30", "eval.shots=[1,2]", "--no-baseline"]
    plan = PLANS / "baselines" / "similar_both.toml"
    val = run_cli(lever, "run", plan, *quick)
    assert val.code == 0, val.text
    test = run_cli(lever, "run", plan, "eval.splits=['test']", *quick)
    assert test.code == 0, test.text
    rows, held = {}, None
    for run_dir in seed_dirs(ws, "baselines/similar_both"):
        for results in run_dir.glob("eval/*/results.jsonl"):
            for line in results.read_text().splitlines():
                r = json.loads(line)
                rows.setdefault(r["split"], set()).add(r["question_id"])
                held = run_dir if r["split"] == "test" else held
    assert set(rows) == {"val", "test"} and len(rows["test"]) == 30
    assert not rows["test"] & rows["val"]  # the held-out questions share no id with val
    bench = shared_cache() / f"bench-{SMALL.key()}"  # the benchmark's own files are untouched:
    manifest = json.loads((bench / "manifest.json").read_text())  # each still has the digest its manifest records
    for name, meta in manifest["files"].items():
        assert hashlib.sha256((bench / name).read_bytes()).hexdigest() == meta["sha256"], name
    assert (bench / "items_test.json").is_file()
    table = run_cli(lever, "leaderboard", f"baselines/similar_both@{held.parent.name}", "--split", "test")
    assert table.code == 0, table.text
    assert "held-out test split, computed so far: baselines/similar_both 1 evaluation(s) under 1 spec hash(es)" in table.out
