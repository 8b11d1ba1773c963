"""Measured properties of the bundled benchmark at its default size (one generation, a few seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from lever.bench import BenchConfig, BenchPaths, SimVLM, ensure_bench
from lever.bench.cache import candidate_stats
from lever.bench.candidates import make_candidates
from lever.bench.probe import choice_accuracy, fit_item_bonus
from lever.bench.world import make_world


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> BenchPaths:
    return ensure_bench(tmp_path_factory.mktemp("cache"), BenchConfig(), log=lambda _: None)


@pytest.fixture(scope="module")
def accuracy(default: BenchPaths) -> dict[str, list[float]]:
    """Accuracy at 2 shots of every reference choice (the expensive oracle only here)."""
    train_x = torch.load(default.features, weights_only=True)
    val_x = torch.load(default.val_features, weights_only=True)
    bonus = fit_item_bonus(json.loads(default.candidates.read_text()), train_x)
    return choice_accuracy(SimVLM.load(default), train_x, val_x, shots=(2,), item_bonus=bonus)


def test_choosing_demonstrations_matters(accuracy: dict[str, list[float]]) -> None:
    rnd, sim, oracle = (accuracy[k][0] for k in ("random", "similarity", "oracle"))  # 2 shots
    assert oracle >= rnd + 15
    assert rnd < sim < oracle
    assert 35 <= rnd and sim <= 65  # base accuracies in the range of the log


def test_a_selector_can_beat_similarity(accuracy: dict[str, list[float]]) -> None:
    # A linear probe fitted on the candidate data re-ranks the pool better than cosine alone.
    assert accuracy["rerank"][0] > accuracy["similarity"][0] + 1
    assert accuracy["rerank"][0] < accuracy["oracle"][0]


def test_more_shots_are_not_always_better(default: BenchPaths) -> None:
    train_x = torch.load(default.features, weights_only=True)
    val_x = torch.load(default.val_features, weights_only=True)
    sim = choice_accuracy(SimVLM.load(default), train_x, val_x, n_oracle=0)["similarity"]  # shots 1..4
    assert max(sim) - min(sim) >= 1  # accuracy changes with the shot count
    assert any(b < a for a, b in zip(sim, sim[1:]))  # and drops somewhere


def test_candidate_groups_look_like_the_log(default: BenchPaths) -> None:
    stats = json.loads(default.manifest.read_text())["stats"]
    assert stats["queries"] == 800
    assert 0.13 <= stats["all_negative"] <= 0.23  # 17% in the log
    assert 0.02 <= stats["all_positive"] <= 0.09  # 5.5% in the log
    assert 10 <= stats["group_min"] and stats["group_max"] <= 40
    assert 0.005 <= stats["failed"] / stats["candidates"] <= 0.02


def test_features_carry_relevance_but_not_all_of_it(default: BenchPaths) -> None:
    x = torch.load(default.features, weights_only=True)
    state = torch.load(default.world, weights_only=True)
    world, type_bonus = state["train"], state["params"]["type_bonus"]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(len(x), (2, 5000), generator=g)
    feat_cos = (x[a] * x[b]).sum(-1)
    # The relevance the simulated VLM counts, but the shared-answer bonus: latent cosine + type bonus.
    rel = (world["h"][a] * world["h"][b]).sum(-1) + type_bonus * (world["type"][a] == world["type"][b]).float()
    r = torch.corrcoef(torch.stack([feat_cos, rel]))[0, 1].item()
    assert 0.5 < r < 0.98


def test_another_seed_has_the_same_statistics() -> None:
    stats = []
    for seed in (0, 1):
        cfg = BenchConfig(seed=seed, n_train=1200, n_queries=300, n_val=300)
        world = make_world(cfg)
        vlm = SimVLM(world.vlm_state())
        s = candidate_stats(make_candidates(cfg, world, vlm))
        acc = choice_accuracy(vlm, world.train.features, world.val.features, shots=(2,), n_oracle=0)
        stats.append((s["all_negative"], s["all_positive"], acc["random"][0], acc["similarity"][0]))
    (n0, p0, r0, s0), (n1, p1, r1, s1) = stats
    assert abs(n0 - n1) < 0.08 and abs(p0 - p1) < 0.06  # 300 queries: sd of a 17% share is about 2 points
    assert abs(r0 - r1) < 8 and abs(s0 - s1) < 8
