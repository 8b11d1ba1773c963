"""`lever data balance`: fixed group sizes, ratio band, tiers, pool restriction, and safe output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from data_cli import run_cli

import lever.data.balance as balance_mod
from lever.data.balance import BalanceOptions, balance_file
from lever.data.filters import TIERS, positive_ratio, quality_tiers, reward_gap
from lever.data.reader import load_candidates
from lever.data.rewards import raw_rewards
from lever.data.synthetic import synthetic_records, write_records
from lever.errors import LeverError
from lever.spec.schema import RewardSpec, TierRules

QUIET = lambda msg: None  # noqa: E731


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LEVER_WORKSPACE", raising=False)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source(tmp_path: Path, **kw: Any) -> tuple[Path, dict[str, Any]]:
    """40 ragged groups (4 to 12 sequences, pools of 10) with a few failed evaluations and one uniform group."""
    recs = synthetic_records(**{"queries": 40, "group": 12, "pool": 10, "shots": 2, "seed": 7, **kw})
    keys = [k for k in recs if not k.startswith("_")]
    recs[keys[0]]["pointer_candidates"][0]["eval_failed"] = True
    recs[keys[1]]["pointer_candidates"][1]["vqa_eval_mode"] = "fallback"
    for cand in recs[keys[2]]["pointer_candidates"]:  # all wrong: one reward value
        cand.update(vqa_correct=0, vqa_acc_score=0.0)
    return write_records(tmp_path / "in.json", recs), recs


def out_records(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_default_drops_failed_and_uniform_and_copies_candidates_as_read(tmp_path):
    src, recs = source(tmp_path)
    before = sha(src)
    out = tmp_path / "out.json"
    code, text = run_cli("balance", src, out)
    assert code == 0, text
    assert sha(src) == before  # IN untouched
    res = out_records(out)
    bal = res["_meta"]["balance"]
    assert res["_meta"]["generator"] == "lever.data.synthetic"  # the original _meta is kept
    assert bal["source"] == "in.json" and bal["source_sha256"] == before
    assert [s["step"] for s in bal["steps"]] == ["drop failed evaluations", "drop uniform-reward groups"]
    assert bal["steps"][0]["sequences"] == 2
    keys = [k for k in recs if not k.startswith("_")]
    assert keys[2] not in res  # the uniform group
    for key, rec in res.items():
        if key == "_meta":
            continue
        orig = recs[key]
        assert rec["query"] == orig["query"] and rec["candidate_pool_ids"] == orig["candidate_pool_ids"]
        usable = [c for c in orig["pointer_candidates"] if not c["eval_failed"] and c["vqa_eval_mode"] == "vqaEval"]
        assert rec["pointer_candidates"] == usable  # every field as read, file order kept
    d = load_candidates(out, log=QUIET)  # re-readable
    assert not d.failed.any()
    assert (reward_gap(d, raw_rewards(d, RewardSpec())) > 0).all()
    assert "before / after" in text and "wrote" in text


def test_fixed_group_size_stratified(tmp_path):
    src, recs = source(tmp_path)
    out = tmp_path / "out.json"
    N = 8
    code, text = run_cli("balance", src, out, "--group-size", N, "--keep-uniform", "--seed", 3)
    assert code == 0, text
    res = out_records(out)
    for key, rec in res.items():
        if key == "_meta":
            continue
        kept = rec["pointer_candidates"]
        assert len(kept) == N
        orig = [c for c in recs[key]["pointer_candidates"] if not c["eval_failed"] and c["vqa_eval_mode"] == "vqaEval"]
        assert all(c in orig for c in kept)  # sub-sampled, never invented
        assert [orig.index(c) for c in kept] == sorted(orig.index(c) for c in kept)  # file order kept
        n, p = len(orig), sum(c["vqa_correct"] for c in orig)
        k = sum(c["vqa_correct"] for c in kept)
        want = round(N * p / n)
        if 0 < p < n:
            want = min(max(want, 1), N - 1)
        want = max(min(want, p), N - (n - p))
        assert k == want, (key, n, p, k)
    small = [k for k, r in recs.items() if not k.startswith("_") and len(r["pointer_candidates"]) < N]
    assert small and not any(k in res for k in small)  # smaller groups dropped
    # same seed, same file; another seed picks differently
    out2, out3 = tmp_path / "o2.json", tmp_path / "o3.json"
    run_cli("balance", src, out2, "--group-size", N, "--keep-uniform", "--seed", 3)
    run_cli("balance", src, out3, "--group-size", N, "--keep-uniform", "--seed", 4)
    strip = lambda r: {k: v for k, v in r.items() if k != "_meta"}  # noqa: E731
    assert strip(out_records(out2)) == strip(res) and strip(out_records(out3)) != strip(res)


def test_positive_ratio_band_and_tiers(tmp_path):
    src, _ = source(tmp_path)
    out = tmp_path / "out.json"
    code, text = run_cli("balance", src, out, "--positive-ratio", "0.2,0.6")
    assert code == 0, text
    ratio = positive_ratio(load_candidates(out, log=QUIET))
    assert ((ratio >= 0.2) & (ratio <= 0.6)).all()
    out2 = tmp_path / "out2.json"
    code, text = run_cli("balance", src, out2, "--tiers", "high,medium")
    assert code == 0, text
    d = load_candidates(out2, log=QUIET)
    tiers = quality_tiers(d, raw_rewards(d, RewardSpec()), TierRules())
    assert {TIERS[t] for t in tiers.tolist()} <= {"high", "medium"}
    assert "tiers high,medium" in text


def test_pool_restriction_remaps_pointers(tmp_path):
    src, recs = source(tmp_path, group=4)  # 2 to 4 sequences of 2: at most 8 used items of 10
    out = tmp_path / "out.json"
    K = 6
    code, text = run_cli("balance", src, out, "--pool-size", K, "--keep-uniform")
    assert code == 0, text
    res = out_records(out)
    for key, rec in res.items():
        if key == "_meta":
            continue
        pool, orig_pool = rec["candidate_pool_ids"], recs[key]["candidate_pool_ids"]
        assert len(pool) == K and set(pool) <= set(orig_pool)
        used = {g for c in rec["pointer_candidates"] for g in c["pointer_global"]}
        n_used = len(used)
        assert set(pool[:n_used]) == used  # used items first...
        assert pool[:n_used] == [g for g in orig_pool if g in used]  # ...in the pool's order
        assert pool[n_used:] == [g for g in orig_pool if g not in used][: K - n_used]  # then the fill
        for c in rec["pointer_candidates"]:
            assert [pool[i] for i in c["pointer"]] == c["pointer_global"]  # remapped onto the same items
    step = next(s for s in res["_meta"]["balance"]["steps"] if s["step"].startswith("pool size"))
    assert step["pools_cut"] == 40 and step["sequences"] > 0  # some groups used more than K items
    load_candidates(out, log=QUIET)  # pointer_global still consistent: re-readable


def test_pool_smaller_than_the_used_items_drops_sequences(tmp_path):
    recs = {"5": {"candidate_pool_ids": [50, 51, 52, 53, 54],
                  "pointer_candidates": [
                      {"pointer": [3, 1], "pointer_global": [53, 51], "vqa_correct": 1, "vqa_acc_score": 1.0},
                      {"pointer": [1, 4], "pointer_global": [51, 54], "vqa_correct": 0, "vqa_acc_score": 0.0},
                      {"pointer": [0, 2], "pointer_global": [50, 52], "vqa_correct": 1, "vqa_acc_score": 0.3},
                      {"pointer": [3, 4], "pointer_global": [53, 54], "vqa_correct": 0, "vqa_acc_score": 0.0}]}}  # fmt: skip
    src = write_records(tmp_path / "in.json", recs)
    out = tmp_path / "out.json"
    # K = 3: items in order of first use are 3, 1, 4 (kept), then 0, 2 (not kept);
    # new pool = kept items in pool order: [51, 53, 54]; sequence 2 uses item 0 -> dropped
    result = balance_file(src, out, BalanceOptions(pool_size=3, drop_uniform=False), log=QUIET)
    rec = out_records(out)["5"]
    assert rec["candidate_pool_ids"] == [51, 53, 54]
    assert [c["pointer"] for c in rec["pointer_candidates"]] == [[1, 0], [0, 2], [1, 2]]
    assert [c["pointer_global"] for c in rec["pointer_candidates"]] == [[53, 51], [51, 54], [53, 54]]
    step = result["steps"][-1]
    assert step["sequences"] == 1 and step["pools_cut"] == 1


def test_refuses_to_overwrite_without_force(tmp_path):
    src, _ = source(tmp_path)
    out = tmp_path / "out.json"
    out.write_text("keep me")
    code, text = run_cli("balance", src, out)
    assert code == 2 and "already exists" in text and "--force" in text
    assert out.read_text() == "keep me"
    code, text = run_cli("balance", src, out, "--force")
    assert code == 0 and "_meta" in out.read_text()


def test_refuses_to_write_over_the_input(tmp_path):
    src, _ = source(tmp_path)
    before = sha(src)
    code, text = run_cli("balance", src, src, "--force")
    assert code == 2 and "OUT is the input file" in text
    assert sha(src) == before


def test_output_is_atomic(tmp_path, monkeypatch):
    src, _ = source(tmp_path)
    out = tmp_path / "sub" / "out.json"
    calls = {"n": 0}
    real = balance_mod._record_bytes  # builds each sub-sampled record

    def failing(*args: Any) -> bytes:
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt  # an interrupted run, mid-write
        return real(*args)

    monkeypatch.setattr(balance_mod, "_record_bytes", failing)
    with pytest.raises(KeyboardInterrupt):
        balance_file(src, out, BalanceOptions(group_size=4), log=QUIET)
    assert calls["n"] == 4
    assert not out.exists() and list(out.parent.iterdir()) == []  # no OUT, no temp file left


def test_bad_options_exit_2(tmp_path):
    src, _ = source(tmp_path)
    for args, msg in [
        (["--positive-ratio", "0.9,0.1"], "positive ratio band [0.9, 0.1] is invalid"),
        (["--positive-ratio", "half"], "expected lo,hi"),
        (["--tiers", "high,best"], "unknown tiers ['best']"),
        (["--reward-mode", "best"], "reward options: mode"),
        (["--group-size", "0"], "group size must be >= 1"),
    ]:
        code, text = run_cli("balance", src, tmp_path / "o.json", *args)
        assert code == 2 and msg in text, (args, text)
        assert not (tmp_path / "o.json").exists()


def test_nothing_left_is_an_error(tmp_path):
    src, _ = source(tmp_path)
    code, text = run_cli("balance", src, tmp_path / "o.json", "--group-size", 500)
    assert code == 2 and "leaves no query" in text


def test_nonfinite_literals_in_unused_fields_survive(tmp_path):
    recs = synthetic_records(queries=4, group=5, pool=6, seed=2)
    for rec in recs.values():
        if isinstance(rec, dict) and "pointer_candidates" in rec:
            rec["pointer_candidates"][0]["beam_score"] = float("nan")
    src = write_records(tmp_path / "in.json", recs)  # Python's json writes NaN
    out = tmp_path / "out.json"
    balance_file(src, out, BalanceOptions(drop_uniform=False), log=QUIET)
    text = out.read_text()
    assert '"beam_score": NaN' in text and "u0000" not in text
    load_candidates(out, log=QUIET)


def test_refuses_to_write_from_a_file_changed_since_it_was_read(tmp_path):
    src, _ = source(tmp_path)
    data = load_candidates(src, log=QUIET)
    src.write_text(src.read_text() + "\n")  # changed after the read
    with pytest.raises(LeverError, match="changed since it was read"):
        balance_mod.write_balanced(src, data, tmp_path / "o.json", {"pool_changed": False})
    assert not (tmp_path / "o.json").exists()
