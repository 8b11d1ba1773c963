"""The candidate-data reader and the in-memory CSR form: what is kept, dropped, flagged and cached."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from lever.data.candidates import CandidateData
from lever.data.reader import load_candidates
from lever.data.synthetic import synthetic_records, write_records
from lever.errors import LeverError

QUIET = lambda msg: None  # noqa: E731


def c(ptr: list[int], acc: float, **extra: Any) -> dict[str, Any]:
    """A candidate with consistent scores (vqa_correct = acc > 0)."""
    return {"pointer": ptr, "vqa_correct": int(acc > 0), "vqa_acc_score": acc, "vqa_gt_prob": 0.5, "vqa_rel_score": 0.2, **extra}


def write(tmp_path: Path, records: dict[str, Any], name: str = "d.json", indent: int | None = None) -> Path:
    return write_records(tmp_path / name, records, indent=indent)


def small() -> dict[str, Any]:
    """Query 20 (written first) has 3 sequences, query 7 has 2; pools of 4 and 3."""
    return {
        "_meta": {"created_at": "today", "k": 4},
        "20": {"query": {"query_id": 20}, "candidate_pool_ids": [50, 51, 52, 53],
               "pointer_candidates": [c([0, 1], 1.0, gen_method="beam"), c([2, 3], 0.0, gen_method="random"),
                                      c([3, 1], 0.3, gen_method="beam")]},
        "7": {"candidate_pool_ids": [10, 11, 12],
              "pointer_candidates": [c([2, 0], 0.0, gen_method="random"), c([1, 2], 0.6)]},
    }  # fmt: skip


def test_reads_into_sorted_csr(tmp_path):
    d = load_candidates(write(tmp_path, small()), log=QUIET)
    assert d.query_ids.tolist() == [7, 20]  # sorted as integers, whatever the file order
    assert d.offsets.tolist() == [0, 2, 5]
    assert d.group_sizes().tolist() == [2, 3]
    assert d.pointers.tolist() == [[2, 0], [1, 2], [0, 1], [2, 3], [3, 1]]
    assert d.pools.tolist() == [[10, 11, 12, -1], [50, 51, 52, 53]]  # ragged pools padded with -1
    assert d.pool_sizes.tolist() == [3, 4]
    assert d.correct.tolist() == [0, 1, 1, 0, 1]
    assert torch.allclose(d.acc, torch.tensor([0.0, 0.6, 1.0, 0.0, 0.3]))
    assert d.cand_index.tolist() == [0, 1, 0, 1, 2]
    assert [d.source_names[i] for i in d.source.tolist()] == ["random", "unknown", "beam", "random", "beam"]
    assert d.shots == 2 and d.num_queries == 2 and d.num_sequences == 5
    assert d.meta["file_meta"] == {"created_at": "today", "k": 4}
    assert d.meta["read"] == {"candidates": 5, "duplicates_dropped": 0, "failed": 0, "missing_gt_prob": 0,
                              "missing_rel_score": 0, "queries": 2}  # fmt: skip
    assert len(d.meta["sha256"]) == 64


def test_pretty_printed_and_unicode_files_read_the_same(tmp_path):
    recs = small()
    recs["20"]["query"]["question"] = "Quel sport peut-on pratiquer ici ? — 运动"
    a = load_candidates(write(tmp_path, recs, "a.json"), log=QUIET)
    b = load_candidates(write(tmp_path, recs, "b.json", indent=2), log=QUIET)
    (tmp_path / "c.json").write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    cc = load_candidates(tmp_path / "c.json", log=QUIET)
    for x in (b, cc):
        assert torch.equal(a.pointers, x.pointers) and torch.equal(a.acc, x.acc) and torch.equal(a.offsets, x.offsets)


def test_duplicates_are_dropped_keeping_the_first(tmp_path):
    recs = small()
    cands = recs["20"]["pointer_candidates"]  # [0, 1], [2, 3], [3, 1]
    cands.append(c([0, 1], 0.6))  # candidate 0 again, same order: a duplicate
    cands.append(c([2, 3], 0.0))  # candidate 1 again: a duplicate
    d = load_candidates(write(tmp_path, recs), log=QUIET)
    assert d.meta["read"]["duplicates_dropped"] == 2
    assert d.group_sizes().tolist() == [2, 3]
    assert d.cand_index[2:].tolist() == [0, 1, 2]  # the first of each sequence survives


def test_the_same_items_in_another_order_are_another_sequence(tmp_path):
    # The order is the prompt's order: [38, 5] and [5, 38] were scored separately, both are data.
    recs = small()
    cands = recs["20"]["pointer_candidates"]  # [0, 1], [2, 3], [3, 1]
    cands.append(c([1, 0], 0.6))
    cands.append(c([3, 2], 0.0))
    cands.append(c([1, 0], 0.0))  # [1, 0] again: this one is a duplicate
    d = load_candidates(write(tmp_path, recs), log=QUIET)
    assert d.meta["read"]["duplicates_dropped"] == 1
    q = d.subset(torch.tensor([1]))
    assert q.cand_index.tolist() == [0, 1, 2, 3, 4]
    assert q.pointers.tolist() == [[0, 1], [2, 3], [3, 1], [1, 0], [3, 2]]
    assert q.acc.tolist()[3] == pytest.approx(0.6)  # the first [1, 0] kept, not the later one


def test_a_usable_duplicate_wins_over_a_failed_one(tmp_path):
    recs = small()
    cands = recs["20"]["pointer_candidates"]
    cands[0] = c([0, 1], 0.0, eval_failed=True)
    cands.append(c([0, 1], 1.0))  # the same sequence, evaluated fine
    cands.append(c([1, 0], 1.0))  # the same items in another order: kept
    d = load_candidates(write(tmp_path, recs), log=QUIET)
    q = d.subset(torch.tensor([1]))
    assert q.cand_index.tolist() == [1, 2, 3, 4]  # candidate 0 (failed) dropped as the duplicate
    assert not q.failed.any()


def test_failed_evaluations_are_kept_and_flagged(tmp_path):
    recs = small()
    cands = recs["20"]["pointer_candidates"]
    cands[0] = {"pointer": [0, 1], "eval_failed": True}  # no scores at all: allowed when failed
    cands[2]["vqa_eval_mode"] = "fallback"
    recs["7"]["pointer_candidates"][0]["vqa_eval_mode"] = "error"
    d = load_candidates(write(tmp_path, recs), log=QUIET)
    assert d.failed.tolist() == [True, False, True, False, True]
    assert d.correct[2] == 0 and d.acc[2] == 0  # the missing scores read as 0
    assert d.meta["read"]["failed"] == 3


def test_optional_scores_and_unknown_fields(tmp_path):
    recs = small()
    del recs["_meta"]
    recs["_notes"] = {"who": "someone"}  # other '_' keys are not queries
    for cand in recs["7"]["pointer_candidates"]:
        del cand["vqa_gt_prob"]
        cand["vqa_rel_score"] = None
        cand["beam_score"] = -1.5
        cand["something_new"] = {"nested": [1, 2]}
    d = load_candidates(write(tmp_path, recs), log=QUIET)
    assert d.meta["file_meta"] is None and d.meta["ignored_keys"] == ["_notes"]
    assert torch.isnan(d.gt_prob[:2]).all() and torch.isnan(d.rel[:2]).all()
    assert d.meta["read"]["missing_gt_prob"] == 2 and d.meta["read"]["missing_rel_score"] == 2
    assert not torch.isnan(d.gt_prob[2:]).any()


def test_many_chunks_match_the_records(tmp_path):
    recs = synthetic_records(queries=300, group=6, pool=10, shots=3, seed=3)  # > one decode chunk
    d = load_candidates(write(tmp_path, recs), log=QUIET)
    assert d.num_queries == 300 and d.shots == 3
    for q in (0, 137, 299):
        rec = recs[str(int(d.query_ids[q]))]
        rows = range(int(d.offsets[q]), int(d.offsets[q + 1]))
        assert [d.pointers[r].tolist() for r in rows] == [x["pointer"] for x in rec["pointer_candidates"]]
        assert d.pools[q, : d.pool_sizes[q]].tolist() == rec["candidate_pool_ids"]


# ---- cache -----------------------------------------------------------------------


def test_cache_is_written_then_used(tmp_path):
    path = write(tmp_path, small())
    cache = tmp_path / "cache"
    logs: list[str] = []
    a = load_candidates(path, cache_dir=cache, log=logs.append)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"  # no temp file left behind
    b = load_candidates(path, cache_dir=cache, log=logs.append)
    assert "from cache" in logs[1] and "from cache" not in logs[0]
    for name in ("query_ids", "pools", "offsets", "pointers", "correct", "acc", "failed", "source", "cand_index"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert a.source_names == b.source_names and a.meta["read"] == b.meta["read"]


def test_cache_follows_the_content(tmp_path):
    path = write(tmp_path, small())
    cache = tmp_path / "cache"
    load_candidates(path, cache_dir=cache, log=QUIET)
    recs = small()
    recs["7"]["pointer_candidates"][0]["pointer"] = [1, 0]  # new content, same name
    write(tmp_path, recs)
    logs: list[str] = []
    d = load_candidates(path, cache_dir=cache, log=logs.append)
    assert "from cache" not in logs[0] and d.pointers[0].tolist() == [1, 0]


def test_a_damaged_cache_is_ignored(tmp_path):
    path = write(tmp_path, small())
    cache = tmp_path / "cache"
    load_candidates(path, cache_dir=cache, log=QUIET)
    next(cache.iterdir()).write_bytes(b"not a torch file")
    logs: list[str] = []
    d = load_candidates(path, cache_dir=cache, log=logs.append)
    assert any("ignoring unreadable data cache" in m for m in logs)
    assert d.num_sequences == 5


# ---- the in-memory form ------------------------------------------------------------


def toy() -> CandidateData:
    """Groups of 2, 3 and 1 sequences."""
    S = 6
    return CandidateData(
        query_ids=torch.tensor([1, 2, 3]), pools=torch.arange(12).view(3, 4), pool_sizes=torch.tensor([4, 4, 4]),
        offsets=torch.tensor([0, 2, 5, 6]), pointers=torch.arange(S * 2).view(S, 2) % 4,
        correct=torch.tensor([1.0, 0, 1, 1, 0, 0]), acc=torch.tensor([0.6, 0, 1, 0.3, 0, 0]),
        gt_prob=torch.zeros(S), rel=torch.zeros(S), failed=torch.tensor([False, False, True, False, False, False]),
        source=torch.zeros(S, dtype=torch.long), source_names=["beam"],
    )  # fmt: skip


def test_subset_reorders_queries_with_their_sequences():
    d = toy().subset(torch.tensor([2, 0]))
    assert d.query_ids.tolist() == [3, 1]
    assert d.offsets.tolist() == [0, 1, 3]
    assert d.acc.tolist() == pytest.approx([0.0, 0.6, 0.0])
    assert d.pools[0].tolist() == [8, 9, 10, 11]


def test_select_sequences_drops_emptied_queries():
    d = toy().select_sequences(torch.tensor([True, False, False, False, False, True]))
    assert d.query_ids.tolist() == [1, 3]  # query 2 lost all its sequences
    assert d.offsets.tolist() == [0, 1, 2]
    assert d.positives().tolist() == [1, 0]


def test_padded_gathers_ragged_groups():
    d = toy()
    vals = torch.tensor([10.0, 11, 20, 21, 22, 30])
    out, mask = d.padded(torch.tensor([1, 2, 0]), vals)
    assert out.tolist() == [[20, 21, 22], [30, 0, 0], [10, 11, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    ptr, _ = d.padded(torch.tensor([2]), d.pointers)  # [B, G, L]
    assert ptr.shape == (1, 1, 2) and ptr[0, 0].tolist() == d.pointers[5].tolist()


# ---- two processes -----------------------------------------------------------------


@pytest.fixture
def forked(monkeypatch):
    """Make small files take the two-process path."""
    import lever.data.reader as reader

    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(reader, "CHUNK", 4)
    return reader


def test_two_processes_read_the_same(tmp_path, forked):
    recs = synthetic_records(queries=41, group=6, pool=10, shots=2, seed=4)
    first = next(k for k in recs if not k.startswith("_"))
    recs[first]["pointer_candidates"][0]["gen_method"] = "only_in_the_first_half"
    last = [k for k in recs if not k.startswith("_")][-1]
    recs[last]["pointer_candidates"][0]["gen_method"] = "only_in_the_second_half"
    recs[last]["pointer_candidates"].append(dict(recs[last]["pointer_candidates"][1]))  # a duplicate there
    path = write(tmp_path, recs)
    one = forked.parse_candidates(path, workers=1)
    two = forked.parse_candidates(path, workers=2)
    for name in ("query_ids", "pools", "offsets", "pointers", "correct", "acc", "failed", "cand_index", "cand_count"):
        assert torch.equal(getattr(one, name), getattr(two, name)), name
    names = lambda d: [d.source_names[i] for i in d.source.tolist()]  # noqa: E731
    assert names(one) == names(two) and "only_in_the_second_half" in names(two)
    assert one.meta["read"] == two.meta["read"] and two.meta["read"]["duplicates_dropped"] == 1


@pytest.mark.parametrize("where", ["first", "last"])
def test_two_processes_report_errors_in_either_half(tmp_path, forked, where):
    recs = synthetic_records(queries=41, group=6, pool=10, shots=2, seed=4)
    keys = [k for k in recs if not k.startswith("_")]
    key = keys[0] if where == "first" else keys[-1]
    recs[key]["pointer_candidates"][2]["pointer"] = [1, 1]
    path = write(tmp_path, recs)
    with pytest.raises(LeverError, match=rf"query {key}, candidate 2: field 'pointer' is \[1, 1\]: an index repeats"):
        forked.parse_candidates(path, workers=2)


def test_duplicates_keep_reads_every_copy_with_the_repeats_flagged(tmp_path):
    recs = small()
    cands = recs["20"]["pointer_candidates"]  # [0, 1], [2, 3], [3, 1]
    cands.append(c([0, 1], 0.6))  # candidate 0 again: a repeat, kept with its own score
    cands.append(c([1, 0], 0.0))  # the same items in another order: another sequence
    path, cache = write(tmp_path, recs), tmp_path / "cache"
    kept = load_candidates(path, cache_dir=cache, log=QUIET, duplicates="keep")
    q = kept.subset(torch.tensor([1]))
    assert q.pointers.tolist() == [[0, 1], [2, 3], [3, 1], [0, 1], [1, 0]]
    assert q.duplicate.tolist() == [False, False, False, True, False]
    assert q.acc.tolist()[3] == pytest.approx(0.6)
    dropped = load_candidates(path, cache_dir=cache, log=QUIET)  # the same cached parse, read the default way
    assert dropped.group_sizes().tolist() == [2, 4] and dropped.meta["read"]["duplicates_dropped"] == 1
    assert torch.equal(kept.without_duplicates().pointers, dropped.pointers)
