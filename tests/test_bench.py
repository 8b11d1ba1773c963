"""The bundled benchmark: settings, text scores, the simulated VLM, the cache and the files it writes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

from lever.bench import BenchConfig, BenchPaths, SimVLM, ensure_bench, is_complete
from lever.bench import cache as cache_mod
from lever.bench.text import text_similarity, vocabulary, vqa_accuracy
from lever.bench.vlm import _mul32, hash_uniform
from lever.errors import LeverError

SMALL = dict(n_train=600, n_queries=80, n_val=80)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> BenchPaths:
    return ensure_bench(tmp_path_factory.mktemp("cache"), BenchConfig(**SMALL), log=lambda _: None)


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, field",
    [
        (dict(n_train=-5), "n_train"),
        (dict(n_train=50, n_queries=10, pool_size=64), "pool_size"),  # pool larger than the train set
        (dict(shots=65), "shots"),  # shots above the pool size
        (dict(n_queries=700, n_train=600), "n_queries"),
        (dict(n_val=0), "n_val"),
        (dict(group_min=50, group_max=40), "group_max"),
        (dict(samples_min=5, samples_max=3), "samples_max"),
        (dict(temperatures=[1.0, 0.0]), "temperatures"),
        (dict(harmful_share=1.5), "harmful_share"),
        (dict(pool_size=3, pool_near=1, shots=2, n_train=10, n_queries=5), "group_min"),  # only 3 distinct pairs exist
    ],
)
def test_bad_settings_name_the_field(bad: dict, field: str) -> None:
    with pytest.raises(LeverError) as err:
        BenchConfig(**bad)
    assert str(err.value).startswith(f"{field} = ")
    assert "must be" in str(err.value)


def test_bad_types_and_unknown_keys_are_lever_errors() -> None:
    with pytest.raises(LeverError, match=r"^n_train: Input should be a valid integer.*\(got 'many'\)"):
        BenchConfig(n_train="many")
    with pytest.raises(LeverError, match=r"^seed: Input should be greater than or equal to 0"):
        BenchConfig(seed=-1)
    with pytest.raises(LeverError, match="^bench.pool: unknown key. did you mean 'pool_size'"):
        BenchConfig.parse({"pool": 64})
    with pytest.raises(LeverError, match=r"bench\.shots = 100 is out of range: must be in \[1, 64 \(pool_size\)\]"):
        BenchConfig.parse({"shots": 100})


def test_key_follows_settings() -> None:
    assert BenchConfig().key() == BenchConfig(seed=0).key()
    assert BenchConfig().key() != BenchConfig(seed=1).key()
    assert len(BenchConfig().key()) == 12


# -- text scores ----------------------------------------------------------------------------------


def test_vqa_accuracy_matches_hand_values() -> None:
    # An answer given by c of 10 annotators: c annotators see c-1 matches among the other 9,
    # the other 10-c see c; acc = (c*min(1,(c-1)/3) + (10-c)*min(1,c/3)) / 10.
    answers = ["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["d"]
    assert vqa_accuracy("d", answers) == pytest.approx(0.3)  # c=1: (1*0 + 9*1/3)/10
    assert vqa_accuracy("c", answers) == pytest.approx(0.6)  # c=2: (2*1/3 + 8*2/3)/10 = 6/10
    assert vqa_accuracy("b", answers) == pytest.approx(0.9)  # c=3: (3*2/3 + 7*1)/10 = 9/10
    assert vqa_accuracy("a", answers) == pytest.approx(1.0)  # c=4: everyone sees >= 3 matches
    assert vqa_accuracy("e", answers) == 0.0


def test_text_similarity_is_bigram_dice() -> None:
    # " dog " -> { d, do, og, g }: 4 bigrams; " dogs " -> { d, do, og, gs, s }: 5; shared 3 -> 2*3/9
    assert text_similarity("dogs", ["cat", "dog"]) == pytest.approx(2 / 3)
    assert text_similarity("dog", ["cat", "dog"]) == 1.0
    assert text_similarity("", ["x"]) < 0.5


def test_vocabulary_is_unique() -> None:
    vocab = vocabulary()
    assert len(vocab) == len(set(vocab))


# -- hash and simulated VLM -----------------------------------------------------------------------


def test_mul32_is_exact_and_hash_is_uniform() -> None:
    x = torch.tensor([0, 1, 0xFFFFFFFF, 123456789])
    assert _mul32(x, 0x846CA68B).tolist() == [(v * 0x846CA68B) % 2**32 for v in x.tolist()]
    q = torch.arange(20000)
    u = hash_uniform(7, 0, q, torch.zeros(20000, 2, dtype=torch.long))
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 0.01  # sd of the mean of 20000 uniforms is 0.002
    assert torch.equal(u, hash_uniform(7, 0, q, torch.zeros(20000, 2, dtype=torch.long)))
    flipped = hash_uniform(7, 0, q[:1], torch.tensor([[1, 2]])), hash_uniform(7, 0, q[:1], torch.tensor([[2, 1]]))
    assert flipped[0] != flipped[1]  # demonstration order matters


def _tiny_state() -> dict:
    """Two train items and one val item in a 2-d latent space, every knob chosen for easy hand arithmetic."""
    h = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    split = {
        "h": h,
        "type": torch.tensor([0, 1]),
        "answer": torch.tensor([0, 1]),
        "quality": torch.tensor([1.0, -2.0]),
        "difficulty": torch.tensor([0.5, 0.0]),
        "sensitivity": torch.tensor([2.0, 1.0]),
        "options": torch.tensor([[0, 1], [1, 0]]),
        "option_acc": torch.tensor([[1.0, 0.0], [1.0, 0.0]]),
        "option_rel": torch.tensor([[1.0, 0.2], [1.0, 0.2]]),
        "correct_cdf": torch.ones(2, 2),
        "n_correct": torch.tensor([1, 1]),
        "n_options": torch.tensor([2, 2]),
    }
    params = dict(
        noise_scale=1.0,
        base_logit=0.25,
        relevance_weight=1.0,
        type_bonus=0.5,
        answer_bonus=1.0,
        quality_weight=0.5,
        redundancy_weight=2.0,
        redundancy_threshold=0.5,
        position_decay=0.5,
        shot_bias=[0.0, -0.5],
        salt=3,
    )
    return {"version": 1, "params": params, "vocab": ["yes", "no"], "train": split, "val": split}


def test_logit_matches_hand_computation() -> None:
    vlm = SimVLM(_tiny_state())
    # Question 0 (h=[1,0], type 0, answer 0, difficulty 0.5, sensitivity 2) with demos [1, 0]:
    #   value(1) = 1*(cos 0.6 + 0 + 0) + 0.5*(-2) = -0.4 ; value(0) = 1*(1 + 0.5 + 1) + 0.5*1 = 3.0
    #   positions: demo 1 first (weight 0.5), demo 0 last (weight 1) -> -0.2 + 3.0 = 2.8
    #   redundancy: cos(h1, h0) = 0.6 -> (0.6-0.5)/(1-0.5) = 0.2, times 2.0 = 0.4
    #   logit = 0.25 - 0.5 + shot_bias[2] (-0.5) + 2 * (2.8 - 0.4) = 4.05
    got = vlm.logit("val", torch.tensor([0]), torch.tensor([[1, 0]]))
    assert got.item() == pytest.approx(4.05)
    # One shot, demo 1: 0.25 - 0.5 + 0 + 2 * (-0.4) = -1.05
    assert vlm.logit("val", torch.tensor([0]), torch.tensor([[1]])).item() == pytest.approx(-1.05)


def test_logit_at_zero_and_beyond_four_shots_matches_hand_computation() -> None:
    vlm = SimVLM(_tiny_state())
    # No demonstrations: 0.25 - 0.5 + ZERO_SHOT_BIAS (-0.6) = -0.85 (no shot bias, no demonstration term)
    assert vlm.logit("val", torch.tensor([0]), torch.zeros(1, 0, dtype=torch.long)).item() == pytest.approx(-0.85)
    # Item 0 four times: value 3.0 at weights 1/8 + 1/4 + 1/2 + 1 = 1.875 -> 5.625; 6 pairs of cos 1, each
    #   (1 - 0.5) / (1 - 0.5) = 1, times 2.0 = 12; shot bias -0.5 (the list's last): -0.25 - 0.5 + 2 * (5.625 - 12)
    assert vlm.logit("val", torch.tensor([0]), torch.zeros(1, 4, dtype=torch.long)).item() == pytest.approx(-13.5)
    # Five times: weights sum 1.9375 -> 5.8125; 10 pairs rescaled to 4 shots' 6 -> 6, times 2.0 = 12 (unscaled: 20)
    assert vlm.logit("val", torch.tensor([0]), torch.zeros(1, 5, dtype=torch.long)).item() == pytest.approx(-13.125)


def test_score_fields_follow_the_decision() -> None:
    vlm = SimVLM(_tiny_state())
    s = vlm.score("val", 0, [1, 0])
    assert set(s) == {"vqa_pred_answer", "vqa_correct", "vqa_acc_score", "vqa_gt_prob", "vqa_rel_score"}
    p = 1 / (1 + math.exp(-4.05))
    u = hash_uniform(3, 1, torch.tensor([0]), torch.tensor([[1, 0]])).item()
    assert s["vqa_correct"] == int(u < p)
    assert s["vqa_pred_answer"] == ("yes" if u < p else "no")
    assert s["vqa_acc_score"] == (1.0 if u < p else 0.0)


def test_sim_vlm_is_deterministic_and_batch_equals_single(small: BenchPaths) -> None:
    vlm = SimVLM.load(small)
    g = torch.Generator().manual_seed(1)
    queries = list(range(40))
    demos = [torch.randint(600, (1 + i % 4,), generator=g).tolist() for i in queries]  # ragged shot counts
    batch = vlm.answer_batch("val", queries, demos)
    assert batch == [vlm.answer("val", q, d) for q, d in zip(queries, demos)]
    assert batch == SimVLM.load(small).answer_batch("val", queries, demos)
    for s in vlm.score_batch("train", queries, demos):
        assert s["vqa_correct"] == int(s["vqa_acc_score"] > 0)
        assert 0 <= s["vqa_gt_prob"] <= 1 and 0 <= s["vqa_rel_score"] <= 1
    assert batch != vlm.answer_batch("val", queries, [d[::-1] + [0] for d in demos])  # demos change answers


def test_sim_vlm_rejects_bad_input(small: BenchPaths) -> None:
    vlm = SimVLM.load(small)
    with pytest.raises(LeverError, match="demonstration \\(train\\) index 600 is out of range"):
        vlm.answer("val", 0, [1, 600])
    with pytest.raises(LeverError, match="val question index 80"):
        vlm.answer("val", 80, [1])
    with pytest.raises(LeverError, match="unknown split 'test'"):
        vlm.answer("test", 0, [1])


# -- files ----------------------------------------------------------------------------------------


def test_files_have_the_documented_shapes(small: BenchPaths) -> None:
    feats = torch.load(small.features, weights_only=True)
    val_feats = torch.load(small.val_features, weights_only=True)
    assert feats.shape == (600, 512) and feats.dtype == torch.float32
    assert val_feats.shape == (80, 512) and val_feats.dtype == torch.float32
    assert torch.allclose(feats.norm(dim=1), torch.ones(600), atol=1e-5)
    torch.load(small.world, weights_only=True)  # readable without pickle code
    for path, n in ((small.items_train, 600), (small.items_val, 80)):
        items = json.loads(path.read_text())
        assert len(items) == n
        assert [list(it) for it in items[:1]] == [["index", "question_id", "image_id", "question", "answers"]]
        assert [it["index"] for it in items] == list(range(n))
        qids = [it["question_id"] for it in items]
        assert qids == sorted(set(qids))  # increasing with index
        assert all(len(it["answers"]) == 10 for it in items)


def test_candidate_data_follows_the_compatibility_format(small: BenchPaths) -> None:
    data = json.loads(small.candidates.read_text())
    items = json.loads(small.items_train.read_text())
    vlm = SimVLM.load(small)
    assert data["_meta"]["settings"]["seed"] == 0
    keys = [k for k in data if k != "_meta"]
    assert len(keys) == 80 and keys == sorted(keys, key=int)
    fields = [
        "pointer",
        "pointer_global",
        "gen_method",
        "beam_rank",
        "beam_score",
        "temperature",
        "behaviour_logp",
        "behaviour_step_logps",
        "vqa_pred_answer",
        "vqa_correct",
        "vqa_acc_score",
        "vqa_gt_prob",
        "vqa_rel_score",
        "vqa_eval_mode",
        "eval_failed",
    ]
    methods, modes = set(), set()
    for key in keys:
        entry = data[key]
        qid = int(key)
        query = entry["query"]
        assert query["query_id"] == qid and query["question_id"] == items[qid]["question_id"]
        assert query["gt_answers_raw"] == items[qid]["answers"]
        pool = entry["candidate_pool_ids"]
        assert len(pool) == 64 and len(set(pool)) == 64 and qid not in pool
        cands = entry["pointer_candidates"]
        assert 10 <= len(cands) <= 40
        assert len({frozenset(c["pointer"]) for c in cands}) == len(cands)  # deduplicated by index set
        for c in cands:
            assert list(c) == fields
            assert len(set(c["pointer"])) == 2 and c["pointer_global"] == [pool[p] for p in c["pointer"]]
            methods.add(c["gen_method"])
            modes.add(c["vqa_eval_mode"])
            assert (c["temperature"] is not None) == (c["gen_method"] == "sample")
            assert (c["beam_rank"] is not None) == (c["gen_method"] == "beam")
            # behaviour log-probs: null only for retrieval; a uniform draw of 2 of 64 is log(1/64 * 1/63)
            assert (c["behaviour_logp"] is None) == (c["gen_method"] == "retrieval")
            if c["gen_method"] == "random":
                assert c["behaviour_step_logps"] == [round(-math.log(64), 6), round(-math.log(63), 6)]
            if c["gen_method"] == "beam":
                assert c["behaviour_logp"] == pytest.approx(c["beam_score"], abs=1e-4)
            if not c["eval_failed"]:
                assert vlm.score("train", qid, c["pointer_global"]) == {k: c[k] for k in fields[8:13]}
    assert methods == {"beam", "retrieval", "sample", "random"}
    assert "vqaEval" in modes


# -- the cache ------------------------------------------------------------------------------------


def _digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def test_generate_once_then_reuse(tmp_path: Path) -> None:
    cfg = BenchConfig(**SMALL)
    lines: list[str] = []
    first = ensure_bench(tmp_path, cfg, log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("generating the bundled benchmark (seed 0, 80 queries) into ")
    assert first.root == tmp_path / f"bench-{cfg.key()}" and is_complete(first.root)
    again = ensure_bench(tmp_path, cfg, log=lines.append)
    assert again == first and len(lines) == 1
    assert [p.name for p in tmp_path.iterdir()] == [first.root.name]  # no temporary leftovers


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path, small: BenchPaths) -> None:
    same = ensure_bench(tmp_path / "a", BenchConfig(**SMALL), log=lambda _: None)
    assert _digests(same.root) == _digests(small.root)
    other = ensure_bench(tmp_path / "b", BenchConfig(**SMALL, seed=1), log=lambda _: None)
    a, b = _digests(small.root), _digests(other.root)
    assert all(a[name] != b[name] for name in a)
    sa = json.loads(small.manifest.read_text())["stats"]
    sb = json.loads(other.manifest.read_text())["stats"]
    for key in ("all_negative", "all_positive"):
        assert abs(sa[key] - sb[key]) < 0.15  # 80 queries: about +-0.05 sampling noise per share


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(cfg: BenchConfig, root: Path) -> None:
        (root / "features.pt").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "write_bench", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_bench(tmp_path, BenchConfig(**SMALL), log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_incomplete_directory_is_not_trusted(tmp_path: Path) -> None:
    cfg = BenchConfig(**SMALL)
    stale = tmp_path / f"bench-{cfg.key()}"
    stale.mkdir()
    (stale / "features.pt").write_bytes(b"half a file")  # no manifest: an old, broken entry
    lines: list[str] = []
    paths = ensure_bench(tmp_path, cfg, log=lines.append)
    assert len(lines) == 1 and is_complete(paths.root)
    assert torch.load(paths.features, weights_only=True).shape == (600, 512)


def test_losing_the_rename_race_keeps_the_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = BenchConfig(**SMALL)
    real = cache_mod.write_bench

    def racing(cfg_: BenchConfig, root: Path) -> dict:
        # Another process finishes first while this one is still generating.
        monkeypatch.setattr(cache_mod, "write_bench", real)
        winner = ensure_bench(tmp_path, cfg_, log=lambda _: None)
        (winner.root / "marker").write_text("winner")
        return real(cfg_, root)

    monkeypatch.setattr(cache_mod, "write_bench", racing)
    paths = ensure_bench(tmp_path, cfg, log=lambda _: None)
    assert (paths.root / "marker").read_text() == "winner" and is_complete(paths.root)
    assert [p.name for p in tmp_path.iterdir()] == [paths.root.name]


def test_missing_world_file_is_a_lever_error(tmp_path: Path) -> None:
    with pytest.raises(LeverError, match="cannot read the simulated VLM's world file"):
        SimVLM.load(BenchPaths.at(tmp_path))


def test_old_leftovers_of_killed_generations_are_removed(tmp_path: Path) -> None:
    old = tmp_path / ".bench-0123456789ab.tmp-dead"
    old.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = tmp_path / ".bench-0123456789ab.tmp-live"  # another process may be writing it
    fresh.mkdir()
    paths = ensure_bench(tmp_path, BenchConfig(**SMALL), log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, paths.root.name])


def test_a_simulated_question_names_its_answer_type():
    """The benchmark's answer types (sport, animal, ..., number) are its questions' natural type: each question
    template belongs to one type, so the stored text names it without a stored field."""
    from lever.bench.text import ANSWER_TYPES, answer_type

    assert answer_type("What sport is being played?") == "sport" and answer_type("How many people are there?") is None
    for atype, (_, templates) in ANSWER_TYPES.items():
        assert {answer_type(q) for q in templates} == {atype}
