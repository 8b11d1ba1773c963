"""Quality tiers, the plan's data filter (each step and their order) and the train/val split."""

from __future__ import annotations

import pytest
import torch

from lever.data.candidates import CandidateData
from lever.data.filters import TIERS, apply_filter, quality_tiers, split_train_val, stage_filter
from lever.data.rewards import raw_rewards
from lever.errors import LeverError
from lever.spec.schema import DataFilter, DataOverride, DataSpec, RewardSpec, TierRules

# (acc per sequence, failed rows) per query; vqa_correct = acc > 0.
# Default reward hard_plus_soft: r = hard + acc, so a positive with acc a gets 1 + a, a negative 0.
GROUPS = {
    10: ([1.0, 1.0, 1.0, 0.0, 0.0, 0.0], []),  # r [2,2,2,0,0,0]: gap 2, 3 pos, 3 neg -> high
    11: ([0.3, 0.0, 0.3, 0.0], []),  # r [1.3,0,1.3,0]: gap 1.3, 2 pos, 2 neg -> medium
    12: ([0.0, 0.0, 0.0], []),  # all negative, gap 0 -> low
    13: ([1.0, 0.6], []),  # all positive, r [2, 1.6], gap 0.4 -> low
    14: ([0.6, 0.0, 0.0, 0.0, 0.0], [4]),  # 1 pos (r 1.6) -> low; its last sequence failed
}


def make() -> CandidateData:
    accs = [a for acc, _ in GROUPS.values() for a in acc]
    sizes = [len(acc) for acc, _ in GROUPS.values()]
    failed = torch.zeros(len(accs), dtype=torch.bool)
    start = 0
    for (_acc, bad), n in zip(GROUPS.values(), sizes):
        for i in bad:
            failed[start + i] = True
        start += n
    S, Q = len(accs), len(GROUPS)
    acc = torch.tensor(accs)
    return CandidateData(
        query_ids=torch.tensor(list(GROUPS)), pools=torch.zeros(Q, 8, dtype=torch.long), pool_sizes=torch.full((Q,), 8),
        offsets=torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()]), pointers=torch.zeros(S, 2, dtype=torch.long),
        correct=(acc > 0).float(), acc=acc, gt_prob=torch.zeros(S), rel=torch.zeros(S), failed=failed,
        source=torch.arange(S), source_names=[f"s{i}" for i in range(S)],
    )  # fmt: skip


def run(flt: DataFilter, rules: TierRules = TierRules()):
    d = make()
    return apply_filter(d, raw_rewards(d, RewardSpec()), flt, rules)


def test_quality_tiers_default_rules():
    d = make()
    tiers = quality_tiers(d, raw_rewards(d, RewardSpec()), TierRules())
    assert [TIERS[t] for t in tiers.tolist()] == ["high", "medium", "low", "low", "low"]


def test_quality_tiers_thresholds_are_inclusive():
    d = make()
    r = raw_rewards(d, RewardSpec())
    # query 11 has gap exactly 1.3 (float32 1.3 - 0): a medium_gap of 1.3 still holds
    rules = TierRules(medium_gap=1.3)
    assert quality_tiers(d, r, rules)[1] == 1
    # counts: high needs 3 pos / 3 neg; lowering to 2 / 2 with gap 1.3 makes query 11 high
    rules = TierRules(high_gap=1.3, high_min_pos=2, high_min_neg=2)
    assert quality_tiers(d, r, rules).tolist()[:2] == [0, 0]
    # query 14 (1 pos, 4 neg, gap 1.6) becomes medium with min_pos 1
    assert quality_tiers(d, r, TierRules(medium_min_pos=1))[4] == 1


def test_no_filter_keeps_everything():
    d, r, rep = run(DataFilter(skip_failed=False))
    assert d.num_queries == 5 and d.num_sequences == 20 and rep["steps"] == []
    assert rep["queries_out"] == 5 and rep["sequences_out"] == 20


def test_skip_failed():
    d, r, rep = run(DataFilter())
    assert d.num_sequences == 19 and d.group_sizes().tolist() == [6, 4, 3, 2, 4]
    assert rep["steps"] == [{"step": "skip_failed", "queries": 0, "sequences": 1}]
    assert not d.failed.any() and len(r) == 19


def test_require_positive():
    d, _, rep = run(DataFilter(require_positive=True))
    assert d.query_ids.tolist() == [10, 11, 13, 14]  # 12 is all negative
    assert rep["steps"][-1] == {"step": "require_positive", "queries": 1, "sequences": 3}


def test_positive_ratio_band():
    # ratios after skip_failed: 10: 3/6, 11: 2/4, 12: 0, 13: 1, 14: 1/4
    d, _, _ = run(DataFilter(positive_ratio=(0.1, 0.9)))
    assert d.query_ids.tolist() == [10, 11, 14]
    d, _, _ = run(DataFilter(positive_ratio=(0.25, 0.5)))  # both ends inclusive
    assert d.query_ids.tolist() == [10, 11, 14]
    d, _, _ = run(DataFilter(positive_ratio=(0.3, 1.0)))
    assert d.query_ids.tolist() == [10, 11, 13]


def test_tiers():
    d, _, rep = run(DataFilter(tiers=["high"]))
    assert d.query_ids.tolist() == [10]
    d, _, _ = run(DataFilter(tiers=["high", "medium"]))
    assert d.query_ids.tolist() == [10, 11]
    d, _, _ = run(DataFilter(tiers=["low"]))
    assert d.query_ids.tolist() == [12, 13, 14]


def test_top_k_keeps_the_best_sequences_ties_in_file_order():
    d, r, _ = run(DataFilter(top_k=2))
    assert d.group_sizes().tolist() == [2, 2, 2, 2, 2]
    assert r.tolist() == pytest.approx([2, 2, 1.3, 1.3, 0, 0, 2, 1.6, 1.6, 0], abs=1e-6)
    # rows kept (source = original row): 10 keeps its first two 2.0s, 11 its two 1.3s,
    # 12 its first two 0s, 13 both, 14 its positive and its first 0
    assert d.source.tolist() == [0, 1, 6, 8, 10, 11, 13, 14, 15, 16]


def test_min_group_size():
    d, _, rep = run(DataFilter(min_group_size=4))  # after skip_failed: sizes 6, 4, 3, 2, 4
    assert d.query_ids.tolist() == [10, 11, 14]
    assert rep["steps"][-1] == {"step": "min_group_size 4", "queries": 2, "sequences": 5}


def test_query_filters_judge_the_whole_group_before_top_k():
    # high tier needs 3 negatives: with top_k 3 applied first no group could qualify
    d, r, rep = run(DataFilter(tiers=["high"], top_k=3))
    assert d.query_ids.tolist() == [10] and r.tolist() == [2, 2, 2]
    assert [s["step"] for s in rep["steps"]] == ["skip_failed", "tiers high", "top_k 3"]


def test_full_order_and_report():
    flt = DataFilter(require_positive=True, positive_ratio=(0.2, 0.9), tiers=["high", "medium", "low"], top_k=3, min_group_size=3)
    d, _, rep = run(flt)
    assert [s["step"] for s in rep["steps"]] == [
        "skip_failed", "require_positive", "positive_ratio [0.2, 0.9]", "top_k 3", "min_group_size 3",
    ]  # fmt: skip
    assert d.query_ids.tolist() == [10, 11, 14]
    assert d.group_sizes().tolist() == [3, 3, 3]
    assert rep["queries_in"] == 5 and rep["queries_out"] == 3 and rep["sequences_out"] == 9


def test_stage_filter_applies_a_phase_override():
    spec = DataSpec(top_k=5, require_positive=True)
    flt = stage_filter(spec, DataOverride(tiers=["high", "medium"]))
    assert flt.tiers == ["high", "medium"] and flt.top_k == 5 and flt.require_positive
    assert stage_filter(spec).tiers == ["high", "medium", "low"]


# ---- split ---------------------------------------------------------------------


def ids_data(ids: list[int]) -> CandidateData:
    Q = len(ids)
    return CandidateData(
        query_ids=torch.tensor(ids), pools=torch.zeros(Q, 2, dtype=torch.long), pool_sizes=torch.full((Q,), 2),
        offsets=torch.arange(Q + 1), pointers=torch.zeros(Q, 1, dtype=torch.long), correct=torch.zeros(Q),
        acc=torch.zeros(Q), gt_prob=torch.zeros(Q), rel=torch.zeros(Q), failed=torch.zeros(Q, dtype=torch.bool),
        source=torch.zeros(Q, dtype=torch.long), source_names=["x"],
    )  # fmt: skip


def test_split_first_80_percent_of_ids_train():
    d = ids_data(list(range(1000, 1800)))
    tr, va = split_train_val(d, 0.2)
    assert len(tr) == 640 and len(va) == 160  # the log's 640 / 160 of 800
    assert d.query_ids[tr].max() < d.query_ids[va].min()
    assert d.query_ids[va].tolist() == list(range(1640, 1800))


def test_split_sorts_ids_as_integers():
    d = ids_data([9, 100, 20, 3, 1000])  # as strings "100" < "20" < "3" < "9"
    tr, va = split_train_val(d, 0.4)  # round(0.6 * 5) = 3 train
    assert d.query_ids[tr].tolist() == [3, 9, 20] and d.query_ids[va].tolist() == [100, 1000]


def test_split_refuses_to_leave_no_training_query():
    with pytest.raises(LeverError, match="leave none for training"):
        split_train_val(ids_data([1]), 0.9)


def test_split_rounding_round_and_floor_on_seven_queries():
    # 7 queries at val_fraction 0.2: 0.8 * 7 = 5.6 -> round 6 train / 1 val, floor (the original's int(0.8 * Q)) 5 / 2
    d = ids_data(list(range(7)))
    tr, va = split_train_val(d, 0.2)
    assert d.query_ids[tr].tolist() == [0, 1, 2, 3, 4, 5] and d.query_ids[va].tolist() == [6]
    tr, va = split_train_val(d, 0.2, "floor")
    assert d.query_ids[tr].tolist() == [0, 1, 2, 3, 4] and d.query_ids[va].tolist() == [5, 6]
    for rounding in ("round", "floor"):  # 800 queries: 640 / 160 either way (0.8 * 800 is whole)
        tr, va = split_train_val(ids_data(list(range(800))), 0.2, rounding)
        assert (len(tr), len(va)) == (640, 160)


def test_split_rounding_and_duplicates_default_away_from_every_key():
    # absent from a default plan's dump (spec hashes and stage keys made before them stay valid), present when set
    assert "split_rounding" not in DataSpec().model_dump(mode="json")
    assert "duplicates" not in DataSpec().model_dump(mode="json")
    dumped = DataSpec(split_rounding="floor", duplicates="keep").model_dump(mode="json")
    assert dumped["split_rounding"] == "floor" and dumped["duplicates"] == "keep"
