"""Selectors that need no training (zero-shot, random, similar), the fixed evaluation pool, shots 0-8 and
`eval.questions = "all"`: picks on hand-made features, the plan schema, and a baseline plan through the real CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_run import PLANS, run_cli, seed_dirs
from test_run import ws as ws  # noqa: F401  (a fixture)

from lever.errors import LeverError
from lever.eval.backend import Item
from lever.eval.evaluate import choose_demos, demos_at
from lever.eval.select import fixed_pools, prompt_order, random_picks, similar_picks
from lever.eval.world import EvalSplit, EvalWorld
from lever.records import SelectorChoice, parse, selector_key
from lever.spec import load_plan
from lever.spec.schema import EvalSpec, Plan, SelectorSpec


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# Six train items on the unit circle; the query at 0 degrees. Cosine order: 0, 1, 2, 3, 4, 5.
TRAIN = torch.tensor([_unit(d) for d in (0, 10, 30, 60, 100, 170)])  # [6, 2]
QUERY = torch.tensor([_unit(0), _unit(170)])  # [2, 2]: the second question sits on item 5


def test_similar_returns_the_k_nearest_most_similar_first_then_in_the_stated_order():
    pools = torch.tensor([[5, 3, 0, 4, 1, 2], [0, 1, 2, 3, 4, 5]])  # any pool order
    ranked = similar_picks(QUERY, TRAIN, pools, 3)
    assert ranked.tolist() == [[0, 1, 2], [5, 4, 3]]
    assert prompt_order(ranked, 3, "most-similar-first").tolist() == [[0, 1, 2], [5, 4, 3]]
    assert prompt_order(ranked, 3, "most-similar-last").tolist() == [[2, 1, 0], [3, 4, 5]]  # best next to the question
    assert prompt_order(ranked, 2, "most-similar-last").tolist() == [[1, 0], [4, 5]]  # the 2 nearest, not a suffix
    # only the pool's items: without items 0 and 1 the nearest are 2, 3, 4
    assert similar_picks(QUERY[:1], TRAIN, torch.tensor([[4, 5, 3, 2]]), 3).tolist() == [[2, 3, 4]]


def test_random_is_seeded_per_question_and_stable_across_order_and_chunks():
    qids = [11, 22, 33, 44]
    pools = torch.arange(40).reshape(4, 10)  # question i's pool: 10i .. 10i + 9
    picks = random_picks(qids, pools, 4, seed=0)
    assert picks.shape == (4, 4)
    for i, row in enumerate(picks.tolist()):
        assert len(set(row)) == 4 and all(10 * i <= j < 10 * i + 10 for j in row)  # distinct items of its own pool
    again = random_picks([33, 11], pools[[2, 0]], 4, seed=0)  # another order, another chunk
    assert again.tolist() == [picks[2].tolist(), picks[0].tolist()]
    assert random_picks(qids, pools, 2, seed=0).tolist() == picks[:, :2].tolist()  # s shots = the first s picks
    assert random_picks(qids, pools, 4, seed=1).tolist() != picks.tolist()  # the run's seed draws anew
    # questions with the same pool still get their own draws
    same = random_picks([1, 2, 3], torch.arange(10).expand(3, 10), 4, seed=0)
    assert len({tuple(r) for r in same.tolist()}) == 3


def test_the_fixed_pool_is_one_pool_for_every_question():
    pools = fixed_pools(5, 20, 4, seed=0)
    assert pools.shape == (5, 4) and len(set(pools[0].tolist())) == 4
    assert all(row == pools[0].tolist() for row in pools.tolist())
    assert fixed_pools(5, 20, 4, seed=0).tolist() == pools.tolist()  # seeded
    assert fixed_pools(5, 20, 4, seed=1).tolist() != pools.tolist()
    # A train-split question in the pool gets the draw's next item in its own place; the others keep the pool.
    own = pools[0, 2].item()
    rows = fixed_pools(5, 20, 4, seed=0, exclude=torch.tensor([own, -1, -1, -1, -1]))
    assert own not in rows[0].tolist() and rows[0, [0, 1, 3]].tolist() == pools[0, [0, 1, 3]].tolist()
    assert rows[1:].tolist() == pools[1:].tolist()


def _world() -> EvalWorld:
    items = [Item(i, 100 + i, i, "q", ["a"]) for i in range(6)]
    val = [Item(0, 900, 0, "q", ["a"]), Item(1, 901, 1, "q", ["a"])]
    split = EvalSplit("val", val, QUERY, torch.full((2,), -1))
    views = {"image": (TRAIN, {"val": QUERY}), "question": (TRAIN.flip(0), {"val": QUERY}), "both": (TRAIN, {"val": QUERY})}
    return EvalWorld(items, TRAIN, {"val": split}, lambda device: None, {}, None, views.__getitem__)  # type: ignore[arg-type]


def test_each_selector_picks_from_the_pool_by_its_rule():
    world = _world()
    spec = EvalSpec(shots=[0, 2, 3], pool_size=6)
    zero = choose_demos(None, world, EvalSpec(shots=[0], pool_size=6), 0, SelectorSpec(kind="zero-shot"))
    assert zero["val"].shape == (2, 0)  # zero-shot: no demonstrations at all
    similar = SelectorSpec(kind="similar", features="image", order="most-similar-last")
    ranked = choose_demos(None, world, spec, 0, similar)["val"]
    assert ranked.tolist() == [[0, 1, 2], [5, 4, 3]]
    assert demos_at(ranked, 2, similar).tolist() == [[1, 0], [4, 5]] and demos_at(ranked, 0, similar).shape == (2, 0)
    # question features: the train rows are reversed, so item 5 holds the query's direction
    by_question = choose_demos(None, world, spec, 0, SelectorSpec(kind="similar", features="question"))["val"]
    assert by_question[0].tolist() == [5, 4, 3]
    rnd = choose_demos(None, world, spec, 0, SelectorSpec(kind="random"))["val"]
    assert rnd.shape == (2, 3) and all(len(set(r)) == 3 for r in rnd.tolist())
    fixed = choose_demos(None, world, EvalSpec(shots=[4], pool_size=4, pool="fixed"), 0, SelectorSpec(kind="similar"))
    pool = set(fixed_pools(2, 6, 4, 0)[0].tolist())
    assert all(set(r) == pool for r in fixed["val"].tolist())  # similar over the one fixed pool: all of it at 4 shots


def test_selector_settings_are_validated_and_the_default_keeps_every_hash(plans_dir):
    assert load_plan(plans_dir / "plan5.toml").hash == load_plan(plans_dir / "plan5.toml", ["selector.kind=learned"]).hash
    with pytest.raises(ValueError, match="order applies to kind = 'similar' only"):
        SelectorSpec(kind="random", order="most-similar-first")
    with pytest.raises(ValueError, match="set eval.shots = \\[0\\]"):
        Plan.model_validate({"selector": {"kind": "zero-shot"}})
    with pytest.raises(ValueError, match="shots must each be in 0..8"):
        EvalSpec(shots=[9])
    assert EvalSpec(shots=[0, 8], questions="all").questions == "all"
    with pytest.raises(ValueError):
        EvalSpec(questions="most")
    with pytest.raises(ValueError, match="questions must be 1"):
        EvalSpec(questions=0)
    plan = Plan.model_validate({"selector": {"kind": "similar"}, "rce": {"epochs": 0}})  # nothing to train, no error
    assert plan.stages() == []
    zero = load_plan(PLANS / "baselines" / "zero_shot.toml")
    assert zero.plan.eval.shots == [0] and zero.spec_dict()["selector"] == {
        "kind": "zero-shot",
        "features": "both",
        "order": "most-similar-last",
    }


def test_a_selector_record_verifies_itself(tmp_path):
    key = selector_key({"kind": "random"})
    rec = parse(SelectorChoice, {"selector": "random", "key": key, "reason": "r", "version": 2}, tmp_path, "fix")
    assert (rec.stage, rec.epoch, rec.sha256) == ("random", None, key)
    with pytest.raises(LeverError, match="not one of"):
        parse(SelectorChoice, {"selector": "learned", "key": key, "reason": "r", "version": 2}, tmp_path, "fix")
    with pytest.raises(LeverError, match="not a selector key"):
        parse(SelectorChoice, {"selector": "random", "key": "x", "reason": "r", "version": 2}, tmp_path, "fix")
    # another record version: an older lever's (no digests) or a newer one's, each described as what it is
    with pytest.raises(LeverError, match=r"by a newer lever \(record version 3, this lever reads 2\)") as err:
        parse(SelectorChoice, {"selector": "random", "key": key, "reason": "r", "version": 3}, tmp_path, "fix")
    assert "no checkpoint digests" not in str(err.value) and err.value.hint == "update lever to read it, or fix"
    with pytest.raises(LeverError, match=r"recorded no checkpoint digests \(record version 1, this lever reads 2\)"):
        parse(SelectorChoice, {"selector": "random", "key": key, "reason": "r"}, tmp_path, "fix")


def test_a_baseline_plan_runs_end_to_end_through_the_cli(lever, ws):
    quick = ["eval.questions=30", "eval.shots=[0,2,6]"]
    res = run_cli(lever, "run", PLANS / "baselines" / "similar_both.toml", *quick, "--no-baseline")
    assert res.code == 0, res.text
    assert "selector similar" in res.text and "nothing to train" in res.text
    (run_dir,) = seed_dirs(ws, "baselines/similar_both")
    selected = json.loads((run_dir / "selected.json").read_text())
    assert selected["selector"] == "similar" and not (run_dir / "stages.json").exists()
    (summary,) = run_dir.glob("eval/*/summary.json")
    assert json.loads(summary.read_text())["checkpoint"]["key"] == selected["key"]
    rows = [json.loads(line) for line in (summary.parent / "results.jsonl").read_text().splitlines()]
    assert {r["shots"] for r in rows} == {0, 2, 6} and len(rows) == 90
    six = {r["question_id"]: r["demo_ids"] for r in rows if r["shots"] == 6}
    two = {r["question_id"]: r["demo_ids"] for r in rows if r["shots"] == 2}
    assert all(len(d) == 6 and d[-2:] == two[q] for q, d in six.items())  # most similar last: 2 nearest are the tail
    assert all(r["demo_ids"] == [] for r in rows if r["shots"] == 0)
    # the run is listed and compared like a trained one; its record is checked against its spec
    listed = run_cli(lever, "runs")
    assert listed.code == 0 and "baselines/similar_both" in listed.out
    named = f"baselines/similar_both@{run_dir.parent.name}"  # the run made with overrides
    table = run_cli(lever, "compare", named, "--baseline", named)
    assert table.code == 0, table.text
    # against a zero-shot baseline: its one 0-shot result at every row; the average is over the shot counts with
    # demonstrations (2 and 6), and "improved" counts the rows the average spans (not 0 shots, the same prompt)
    zero = run_cli(lever, "run", PLANS / "baselines" / "zero_shot.toml", "eval.questions=30", "--no-baseline")
    assert zero.code == 0 and "no comparison table: these plans train nothing" in zero.text, zero.text
    (zero_dir,) = seed_dirs(ws, "baselines/zero_shot")
    vs_zero = run_cli(lever, "compare", named, "--baseline", f"baselines/zero_shot@{zero_dir.parent.name}", "--json")
    assert vs_zero.code == 0, vs_zero.text
    cmp = json.loads(vs_zero.out)
    acc = {r["label"]: r["cells"][named.split("@")[0]]["accuracy"] for r in cmp["rows"]}
    assert acc["avg"] == pytest.approx((acc["2"] + acc["6"]) / 2)
    base = {r["label"]: r["cells"]["baselines/zero_shot"]["accuracy"] for r in cmp["rows"]}
    assert base["avg"] == base["0"] == base["2"] == base["6"]
    (col,) = [c for c in cmp["plans"] if not c["baseline"]]
    assert col["n_shots"] == 2  # rows 2 and 6: the zero-shot baseline has its one result there too
    again = run_cli(lever, "run", PLANS / "baselines" / "similar_both.toml", *quick, "--no-baseline")
    assert again.code == 0 and "already trained" in again.text and "evaluation cached" in again.text
    plan = [PLANS / "baselines" / "similar_both.toml", *quick]
    no_epochs = run_cli(lever, "evaluate", *plan, "--epoch", "1")
    assert no_epochs.code == 2 and "trains nothing" in no_epochs.text
    no_weights = run_cli(lever, "export", *plan, "--format", "lever-plus-v3", "-o", ws / "x.pt")
    assert no_weights.code == 2 and "no checkpoint" in no_weights.text
    (run_dir / "selected.json").write_text(json.dumps({**selected, "key": selector_key({"kind": "random"})}))
    broken = run_cli(lever, "runs")
    assert "does not name the selector" in broken.text


def test_bench_item_features_hold_the_question_and_the_views_match_generator_2s(tmp_path):
    """The default item features are normalise(image + question) (as CLIP's); every view a `similar` selector ranks
    by is the same as with generator 2's image-only features, and the image view is recovered from them exactly."""
    from workspaces import SMALL_BENCH, bench_workspace

    from lever.data.sources import resolve_dataset
    from lever.eval.world import check_eval_files, eval_world
    from lever.spec.workspace import load_workspace

    spec = EvalSpec(questions=20)
    worlds = {}
    for name, extra in (("both", ""), ("image", 'item_features = "image"\n')):
        (tmp_path / name).mkdir()
        ws = load_workspace(bench_workspace(tmp_path / name, SMALL_BENCH + extra))
        worlds[name] = eval_world(check_eval_files(resolve_dataset(ws), spec), None, log=lambda m: None)
    both, image = worlds["both"], worlds["image"]
    assert not torch.allclose(both.train_features, image.train_features)  # the selector reads other features
    for part in ("both", "image", "question"):
        (tb, vb), (ti, vi) = both.features(part), image.features(part)
        assert torch.allclose(tb, ti, atol=1e-5) and torch.allclose(vb["val"], vi["val"], atol=1e-5), part
    assert torch.allclose(both.train_features, both.features("both")[0])  # the selector's input is the `both` view
    assert torch.allclose(image.train_features, image.features("image")[0])
