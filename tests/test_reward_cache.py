"""The reward cache: each prompt answered once, shared by processes, verified on read."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest
from workspaces import bench_workspace

from lever.errors import BudgetSpent, DamagedState
from lever.eval.backend import Item, Request, Response
from lever.eval.reward_cache import Budget, CachedBackend, RewardCache, prompt_key

ROOT = Path(__file__).resolve().parents[1]


def item(i: int) -> Item:
    return Item(index=i, question_id=1000 + i, image_id=i, question=f"q{i}", answers=["a"])


class Counting:
    """A backend whose answer names its prompt, counting the prompts it is asked."""

    name = "counting"

    def __init__(self):
        self.asked = 0

    def answer(self, requests: list[Request]) -> list[Response]:
        self.asked += len(requests)
        return [Response(prompt_key(r)[2] or "none", failed=r.query.index == 99) for r in requests]

    def gt_probs(self, requests: list[Request]) -> list[float]:
        return [0.25 + len(r.demos) / 10 for r in requests]


def requests(q: int, demo_lists: list[list[int]]) -> list[Request]:
    return [Request("train", item(q), [item(d) for d in demos]) for demos in demo_lists]


def test_each_prompt_is_answered_once_and_read_back_equal(tmp_path):
    inner = Counting()
    cache = RewardCache(tmp_path / "r.sqlite")
    ns = cache.namespace({"backend": "counting"})
    backend = CachedBackend(inner, cache, ns)
    reqs = requests(1, [[2, 3], [3, 2], [2, 3], [4]])  # [2, 3] twice in one batch; [3, 2] is another prompt
    fresh = [r.raw for r in backend.answer(reqs)]
    assert fresh == ["1002,1003", "1003,1002", "1002,1003", "1004"]
    assert inner.asked == 4 and backend.counts.calls == 4 and backend.counts.hits == 0
    again = CachedBackend(inner, RewardCache(tmp_path / "r.sqlite"), ns)  # another process would see the same
    assert [r.raw for r in again.answer(reqs)] == fresh
    assert inner.asked == 4 and again.counts.calls == 0 and again.counts.hits == 4
    assert again.gt_probs(reqs[:1]) == [pytest.approx(0.45)] and again.gt_probs(reqs[:1]) == [pytest.approx(0.45)]
    assert again.counts.calls == 0  # gt probs are stored beside the answers
    # another identity (another VLM, protocol or world) shares nothing
    other = CachedBackend(inner, cache, cache.namespace({"backend": "other"}))
    other.answer(reqs[:1])
    assert other.counts.calls == 1 and inner.asked == 5
    # a failed answer is never stored: it is asked again
    failing = requests(99, [[1]])
    backend.answer(failing)
    backend.answer(failing)
    assert inner.asked == 7


def test_a_budget_pays_for_new_prompts_only_and_stops_with_the_paid_ones_stored(tmp_path):
    """A budget of 3 new prompts over two backends: hits are free, the batch that would pass it is answered up to the
    budget (stored), then BudgetSpent; the prompts it did not pay for are asked by the next command."""
    inner, cache = Both(), RewardCache(tmp_path / "r.sqlite")
    budget = Budget(3)
    plain = CachedBackend(inner, cache, cache.namespace({"backend": "counting"}), budget=budget)
    plain.answer(requests(1, [[2]]))
    plain.answer(requests(1, [[2]]))  # a hit: free
    assert budget.spent == 1 and plain.counts.hits == 1
    both = CachedBackend(inner, cache, cache.namespace({"backend": "both"}), budget=budget)
    with pytest.raises(BudgetSpent, match="3 new VLM calls made, the budget is 3"):
        both.answer_with_gt_probs(requests(1, [[2], [3], [4]]))  # 2 of the 3 paid for
    assert inner.both == 2 and budget.spent == 3
    with pytest.raises(BudgetSpent):
        plain.answer(requests(1, [[5]]))  # nothing left
    assert inner.asked == 3
    plain.answer(requests(1, [[2]]))  # still free
    again = CachedBackend(inner, cache, both.ns)  # the next command, without a budget
    assert [r.raw for r in again.answer_with_gt_probs(requests(1, [[2], [3], [4]]))[0]] == ["1002", "1003", "1004"]
    assert again.counts.hits == 2 and again.counts.calls == 1


class Both(Counting):
    """A backend that answers and gives gt probs in one call (as the hf backend does from one prefill)."""

    def __init__(self):
        super().__init__()
        self.both = 0

    def answer_with_gt_probs(self, requests: list[Request]) -> tuple[list[Response], list[float]]:
        self.both += len(requests)
        return self.answer(requests), self.gt_probs(requests)


def test_answers_and_gt_probs_asked_together_are_stored_together(tmp_path):
    inner = Both()
    backend = CachedBackend(inner, RewardCache(tmp_path / "r.sqlite"), "ns")
    reqs = requests(1, [[2, 3], [4]])
    backend.answer(reqs[:1])  # the answer of the first is stored, not its gt prob
    answers, probs = backend.answer_with_gt_probs(reqs)
    assert [r.raw for r in answers] == ["1002,1003", "1004"] and probs == [pytest.approx(0.45), pytest.approx(0.35)]
    assert inner.both == 2 and backend.counts.calls == 3  # both prompts in one call (one lacked its gt prob)
    again, probs_again = backend.answer_with_gt_probs(reqs)
    assert [r.raw for r in again] == [r.raw for r in answers] and probs_again == probs
    assert inner.both == 2 and backend.counts.hits == 2  # all from the cache


def _writer(path: str, start: int, n: int) -> None:
    cache = RewardCache(path)
    ns = cache.namespace({"backend": "counting"})
    backend = CachedBackend(Counting(), cache, ns)
    for s in range(start, start + n, 10):  # many small transactions, interleaved with the other writer's
        backend.answer(requests(1, [[d] for d in range(s, s + 10)]))


def test_two_writer_processes_at_once(tmp_path):
    path = str(tmp_path / "r.sqlite")
    RewardCache(path)  # created before, as the workspace's is
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, start, 400)) for start in (0, 200)]  # 200..399 written by both
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = RewardCache(path)
    assert cache.count() == 600
    ns = cache.namespace({"backend": "counting"})
    keys = [prompt_key(r) for r in requests(1, [[d] for d in range(600)])]
    got = cache.get(ns, "answer", keys)
    assert [got[k] for k in keys] == [str(1000 + d) for d in range(600)]


def test_a_damaged_cache_is_an_error_naming_it(tmp_path):
    path = tmp_path / "r.sqlite"
    cache = RewardCache(path)
    backend = CachedBackend(Counting(), cache, cache.namespace({"backend": "counting"}))
    backend.answer(requests(1, [[2], [3]]))
    with sqlite3.connect(path) as conn:  # an edit that bypasses the checksum
        conn.execute("UPDATE answers SET value = '\"wrong\"' WHERE demos = '1003'")
    with pytest.raises(DamagedState, match=r"r\.sqlite is damaged.*query 1001 .*\[1003\] fails its checksum"):
        backend.answer(requests(1, [[3]]))
    garbage = tmp_path / "g.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DamagedState, match=r"g\.sqlite is damaged"):
        RewardCache(garbage)


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("lever.eval.reward_cache.CACHE_FILE", str(tmp_path / "rewards.sqlite"))  # this test's own
    return bench_workspace(tmp_path)


def test_data_generate_twice_makes_no_vlm_call_and_a_damaged_cache_is_exit_2(lever, ws, tmp_path):
    def cli(*args):
        res = lever("--workspace", ws, *args)
        assert res.code == 0, res.text
        return res

    cli("data", "embed", "--out", tmp_path / "f.pt")
    cli("data", "pools", tmp_path / "p.json", "-f", tmp_path / "f.pt", "--k", "16", "-n", "12")
    first = cli("data", "generate", tmp_path / "p.json", tmp_path / "a.json", "-f", tmp_path / "f.pt")
    data = json.loads((tmp_path / "a.json").read_text())
    n = sum(len(v["pointer_candidates"]) for k, v in data.items() if k != "_meta")
    assert f"VLM calls {n}, cache hits 0" in first.text
    second = cli("data", "generate", tmp_path / "p.json", tmp_path / "b.json", "-f", tmp_path / "f.pt")
    assert f"VLM calls 0, cache hits {n}" in second.text
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()  # a cached reward = a fresh one

    with sqlite3.connect(tmp_path / "rewards.sqlite") as conn:
        conn.execute("UPDATE answers SET crc = crc + 1")
    from lever.eval import reward_cache

    reward_cache._OPEN.clear()
    res = lever("--workspace", ws, "data", "generate", tmp_path / "p.json", tmp_path / "c.json", "-f", tmp_path / "f.pt")
    assert res.code == 2 and "rewards.sqlite is damaged" in res.text and "Traceback" not in res.text
    assert not (tmp_path / "c.json").exists()


def test_evaluation_answers_through_the_reward_cache_shared_with_training(lever, ws, tmp_path, monkeypatch):
    """`lever evaluate` asks the VLM through the reward cache: a fresh evaluation folder with a warm cache makes no
    VLM call and writes the same results.jsonl; the prompts training's scoring (online GRPO, refresh rounds,
    val/reward) asks are the evaluation's, one way and the other."""
    import shutil

    from lever.recipe import Recipe
    from lever.spec import load_plan, load_workspace

    plan = [ROOT / "plans" / "baseline.toml", "rce.epochs=1", "eval.questions=30", "eval.shots=[1,2]"]
    plan.append('eval.splits=["train","val"]')

    def evaluate() -> tuple[str, bytes]:
        res = lever("--workspace", ws, "evaluate", *plan)
        assert res.code == 0, res.text
        (ev,) = (p.parent for p in (tmp_path / "runs" / "baseline").glob("*/seed-0/eval/*/results.jsonl"))
        out = ev.joinpath("results.jsonl").read_bytes()
        shutil.rmtree(ev)  # the next evaluation starts from a fresh folder: only the reward cache is warm
        return res.text, out

    assert lever("--workspace", ws, "run", *plan, "--no-eval").code == 0
    text, results = evaluate()
    assert "evaluation: 120 VLM calls, 0 answers from the reward cache" in text  # 2 splits x 30 questions x 2 shots
    text, again = evaluate()
    assert "evaluation: 0 VLM calls, 120 answers from the reward cache" in text and again == results

    # Training's scoring, on a cache of its own, asks the train split's prompts the evaluation asked: same answers.
    monkeypatch.setattr("lever.eval.reward_cache.CACHE_FILE", str(tmp_path / "training.sqlite"))
    r = Recipe.build(load_plan(plan[0], [str(o) for o in plan[1:]]), load_workspace(ws), 0, lambda m: None)
    rows = [row for row in map(json.loads, results.decode().splitlines()) if row["split"] == "train"]
    row_of = {it.question_id: i for i, it in enumerate(r.scoring.items)}
    fields = r.scoring.fields(
        [row_of[row["question_id"]] for row in rows], [[row_of[d] for d in row["demo_ids"]] for row in rows]
    )
    assert r.scoring.counts.calls == len(rows) == 60
    assert [f["vqa_raw_generation"] for f in fields] == [row["raw_output"] for row in rows]
    assert [f["vqa_acc_score"] for f in fields] == [round(row["accuracy"], 4) for row in rows]
    # ... and an evaluation on that cache asks only the val split's prompts.
    text, again = evaluate()
    assert "evaluation: 60 VLM calls, 60 answers from the reward cache" in text and again == results


def test_the_simulated_held_out_splits_answers_are_stored_under_an_identity_with_its_files(lever, ws, tmp_path):
    """The bundled benchmark's test split is answered from its own world file: its prompts are stored under the
    training identity plus those files, so a change to them is never served the old answers; train and val share
    training's identity."""
    plan = [ROOT / "plans" / "baseline.toml", "rce.epochs=1", "eval.questions=10", "eval.shots=[1]"]
    plan.append('eval.splits=["val","test"]')
    assert lever("--workspace", ws, "run", *plan, "--no-eval").code == 0
    res = lever("--workspace", ws, "evaluate", *plan)
    assert res.code == 0 and "evaluation: 20 VLM calls" in res.text, res.text  # 10 val and 10 test questions
    with sqlite3.connect(tmp_path / "rewards.sqlite") as conn:
        by_split = dict(conn.execute("SELECT split, ns FROM answers GROUP BY split"))
        identities = dict(conn.execute("SELECT ns, identity FROM identities"))
    test, val = json.loads(identities[by_split["test"]]), json.loads(identities[by_split["val"]])
    assert {k: v for k, v in test.items() if k != "split"} == val and set(val) == {"backend", "vlm", "files"}
    assert {"items_test.json", "world_test.pt"} <= set(test["split"]["test"]["files"])
