"""Loss math against values worked out by hand (docs/training.md, Losses)."""

from __future__ import annotations

import math

import pytest
import torch

from lever.errors import LeverError
from lever.train.losses import (
    adapt_beta,
    advantage_stats,
    aggregate,
    clipped_policy_terms,
    group_advantages,
    kept_first,
    kl_terms,
    linear_schedule,
    masked_mean,
    ratio_terms,
    rce_loss,
    top1_ce_loss,
    top_k_for_epoch,
    top_k_mask,
    two_stage_advantages,
)

PAD = 99.0  # garbage in padded slots: must never show up in a result


def ppo_loss(logp_new, logp_old, adv, mask, eps_low=0.2, eps_high=0.2, clip=True):
    """GRPO's policy term at its defaults (ratio_level joint, loss_agg seq-mean-token-mean, no dual clip): the
    functions `lever.train.grpo.GRPOObjective.policy_loss` calls, in its order."""
    log_ratio, tmask = ratio_terms(logp_new, logp_old, mask, "joint")
    terms, stats = clipped_policy_terms(log_ratio, adv, tmask, eps_low, eps_high, clip)
    return aggregate(terms, tmask), stats


def kl_to_reference(logp_new, logp_ref, mask, estimator="k3"):
    """GRPO's KL term at its defaults (per sequence, seq-mean-token-mean), as `GRPOObjective.policy_loss` takes it."""
    log_ratio, tmask = ratio_terms(logp_new, logp_ref, mask, "joint")
    return aggregate(kl_terms(log_ratio, estimator), tmask)


def padded(groups: list[list[float]], fill: float = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged groups -> ([B, G] float64 values, [B, G] bool mask)."""
    G = max(len(g) for g in groups)
    x = torch.full((len(groups), G), fill, dtype=torch.float64)
    mask = torch.zeros(len(groups), G, dtype=torch.bool)
    for b, g in enumerate(groups):
        x[b, : len(g)] = torch.tensor(g, dtype=torch.float64)
        mask[b, : len(g)] = True
    return x, mask


def t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---- schedules -----------------------------------------------------------------


def test_linear_schedule():
    assert linear_schedule(0, 5, 2.0, 0.5) == 2.0
    assert linear_schedule(4, 5, 2.0, 0.5) == 0.5
    assert linear_schedule(2, 5, 2.0, 0.5) == pytest.approx(1.25)  # 2 - 1.5 * 2/4
    assert linear_schedule(1, 3, 0.5, 0.1) == pytest.approx(0.3)  # 0.5 - 0.4 * 1/2
    assert linear_schedule(9, 5, 2.0, 0.5) == 0.5  # past the end stays at end
    assert linear_schedule(0, 1, 2.0, 0.5) == 2.0
    assert linear_schedule(3, 0, 2.0, 0.5) == 2.0


def test_top_k_for_epoch():
    sched = [(1, 3), (2, 5)]  # the original: top-3 in epoch 1, top-5 later
    assert top_k_for_epoch(sched, 1) == 3
    assert top_k_for_epoch(sched, 2) == 5
    assert top_k_for_epoch(sched, 50) == 5
    assert top_k_for_epoch([(2, 5), (1, 3)], 1) == 3  # order of entries does not matter
    assert top_k_for_epoch([], 1) is None
    assert top_k_for_epoch([(3, 5)], 2) is None  # nothing applies yet
    assert top_k_for_epoch([(1, 3), (4, 0)], 4) is None  # 0 = all
    with pytest.raises(LeverError, match="from_epoch"):
        top_k_for_epoch([(0, 3)], 1)
    with pytest.raises(LeverError):
        top_k_for_epoch([(1, -1)], 1)


def test_top_k_mask_ties_and_padding():
    r, m = padded([[1, 3, 3, 0], [2, 2], [7]])
    # row 0 by reward, ties to the lower index: idx1 (3), idx2 (3), idx0 (1), idx3 (0)
    want2 = [[False, True, True, False], [True, True, False, False], [True, False, False, False]]
    assert top_k_mask(r, m, 2).tolist() == want2
    want1 = [[False, True, False, False], [True, False, False, False], [True, False, False, False]]
    assert top_k_mask(r, m, 1).tolist() == want1
    assert torch.equal(top_k_mask(r, m, None), m)
    assert torch.equal(top_k_mask(r, m, 10), m)  # k above the group size keeps the group
    with pytest.raises(LeverError):
        top_k_mask(r, m, 0)


# ---- advantages -------------------------------------------------------------


def test_rank_advantages_average_ties():
    # rewards [3, 1, 3, 0], n = 4: the two 3s share ranks 0 and 1 -> 0.5; 1 -> 2; 0 -> 3
    # A = 1 - 2*rank/3: [1 - 1/3, 1 - 4/3, 1 - 1/3, 1 - 2] = [2/3, -1/3, 2/3, -1]
    r, m = padded([[3, 1, 3, 0]])
    a = group_advantages(r, m, "rank", ties="average")
    assert torch.allclose(a, t([[2 / 3, -1 / 3, 2 / 3, -1]]))


def test_rank_advantages_first_ties():
    # ranks by index on ties: [0, 2, 1, 3] -> A = [1, -1/3, 1/3, -1]
    r, m = padded([[3, 1, 3, 0]])
    a = group_advantages(r, m, "rank", ties="first")
    assert torch.allclose(a, t([[1, -1 / 3, 1 / 3, -1]]))


def test_rank_advantages_group_of_one_and_all_equal():
    r, m = padded([[5], [2, 2, 2], [1, 2]])
    a = group_advantages(r, m, "rank")
    # one -> 0; all equal: each rank (0+1+2)/3 = 1 -> 1 - 2*1/2 = 0; pair: best +1, worst -1
    assert torch.allclose(a, t([[0, 0, 0], [0, 0, 0], [-1, 1, 0]]))


def test_zscore_floor_inactive_and_active():
    # [1, 2, 3]: mean 2, sample std sqrt((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1]
    # [1.0, 1.1]: mean 1.05, sample std sqrt(2 * 0.05^2 / 1) = 0.0707 < 0.1 -> /0.1 -> [-0.5, 0.5]
    # [4]: std 0 -> floor, r - mean = 0 -> 0
    r, m = padded([[1, 2, 3], [1.0, 1.1], [4]])
    a = group_advantages(r, m, "zscore", std_floor=0.1)
    assert torch.allclose(a, t([[-1, 0, 1], [-0.5, 0.5, 0], [0, 0, 0]]))
    # a smaller floor lets the real std through: 0.05 / 0.0707107 = 0.7071068
    a = group_advantages(r, m, "zscore", std_floor=0.01)
    assert torch.allclose(a[1, :2], t([-0.7071068, 0.7071068]), atol=1e-6)


def test_centered_and_clip():
    # [0, 0, 12]: mean 4 -> [-4, -4, 8]; clip 5 -> [-4, -4, 5]; [1, 2, 6]: mean 3 -> [-2, -1, 3]
    r, m = padded([[0, 0, 12], [1, 2, 6]])
    assert torch.allclose(group_advantages(r, m, "centered", clip=None), t([[-4, -4, 8], [-2, -1, 3]]))
    assert torch.allclose(group_advantages(r, m, "centered", clip=5.0), t([[-4, -4, 5], [-2, -1, 3]]))
    assert torch.allclose(group_advantages(r, m, "centered", clip=2.0), t([[-2, -2, 2], [-2, -1, 2]]))


def test_advantages_unknown_kind():
    r, m = padded([[1, 2]])
    with pytest.raises(LeverError, match="zscore"):
        group_advantages(r, m, "bogus")  # type: ignore[arg-type]


def test_advantage_stats():
    # A over real sequences: [1, -1, 0, 0] -> mean 0, population std sqrt(2/4), max 1;
    # second group is all zero -> 1 of 2 groups teaches nothing
    a, m = padded([[1, -1], [0, 0]])
    s = advantage_stats([(a, m)])
    assert s["adv/mean"] == pytest.approx(0.0)
    assert s["adv/std"] == pytest.approx(math.sqrt(0.5))
    assert s["adv/max"] == pytest.approx(1.0)
    assert s["adv/zero_frac"] == pytest.approx(0.5)


def test_advantage_stats_over_an_epoch_counts_groups():
    # step 1: groups [1, -1], [0, 0] (1 of 2 flat); step 2: one group [0] plus an empty row (not a group).
    # Epoch: 2 of 3 groups flat = 2/3 (a mean of per-step shares would give (1/2 + 1) / 2 = 3/4);
    # values [1, -1, 0, 0, 0]: mean 0, population std sqrt(2/5), max 1.
    a1, m1 = padded([[1, -1], [0, 0]])
    a2, m2 = padded([[0], []])
    s = advantage_stats([(a1, m1), (a2, m2)])
    assert s["adv/zero_frac"] == pytest.approx(2 / 3)
    assert s["adv/mean"] == pytest.approx(0.0)
    assert s["adv/std"] == pytest.approx(math.sqrt(0.4))
    assert s["adv/max"] == pytest.approx(1.0)
    assert advantage_stats([]) == {"adv/mean": 0.0, "adv/std": 0.0, "adv/max": 0.0, "adv/zero_frac": 0.0, "adv/flat_frac": 0.0}


def test_advantage_stats_flat_groups():
    # max |A| per group: 1, 0.005, 0 (padding 99 never counts) -> zero (<= 1e-8) 1 of 3, flat (< 0.01) 2 of 3
    a, m = padded([[1, -1], [0.005, -0.005], [0, 0]])
    s = advantage_stats([(a, m)])
    assert s["adv/zero_frac"] == pytest.approx(1 / 3) and s["adv/flat_frac"] == pytest.approx(2 / 3)
    assert advantage_stats([(a, m)], flat=0.001)["adv/flat_frac"] == pytest.approx(1 / 3)


def test_lever_advantages_in_the_trainers_layout():
    # lever's normalisation (no stage 1), top-2 by index ties. Group 1 [0, 1.0, 0, 1.05] keeps 1.0 and
    # 1.05: mean 1.025, sample std 0.035355 < floor 0.1 -> A = -+0.025 / 0.1 = [-0.25, 0.25]; group 2
    # has one sequence: A = 0. The full layout puts them in place; `compact` moves the kept ones first,
    # re-padded to 2 columns: the batch the trainer scores.
    r, m = padded([[0.0, 1.0, 0.0, 1.05], [3.0]])
    adv, kept = two_stage_advantages(r, m, 2, None, "zscore", 0.1, ties="index")
    assert kept.tolist() == [[False, True, False, True], [True, False, False, False]]
    assert torch.allclose(adv, t([[0.0, -0.25, 0.0, 0.25], [0.0, 0.0, 0.0, 0.0]]))
    small, kept2 = two_stage_advantages(r, m, 2, None, "zscore", 0.1, ties="index", compact=True)
    assert kept2.equal(kept) and kept_first(kept).tolist() == [[1, 3], [0, 1]]
    assert torch.allclose(small, t([[-0.25, 0.25], [0.0, 0.0]]))
    # k None keeps every real sequence and the layout: plain group advantages over the group
    whole, _ = two_stage_advantages(r, m, None, None, "centered", compact=True)
    assert torch.allclose(whole, t([[-0.5125, 0.4875, -0.5125, 0.5375], [0.0, 0.0, 0.0, 0.0]]))


# ---- RCE and top-1 ------------------------------------------------------------


def test_rce_two_sequences_two_temperatures():
    r, m = padded([[1, 0]])
    logp = t([[-1, -2]])
    # tau 1: w = [e, 1] / (e + 1) = [0.7310586, 0.2689414]; loss = 0.7310586*1 + 0.2689414*2
    assert rce_loss(logp, r, m, 1.0).item() == pytest.approx(1.2689414, abs=1e-6)
    # tau 0.5: r/tau = [2, 0]: w = [0.8807971, 0.1192029]; loss = 0.8807971 + 2*0.1192029
    assert rce_loss(logp, r, m, 0.5).item() == pytest.approx(1.1192029, abs=1e-6)


def test_rce_three_sequences_two_temperatures():
    r, m = padded([[0, 1, 2]])
    logp = t([[-3, -2, -1]])
    # tau 1: w = [1, e, e^2] / 11.1073379 = [0.0900306, 0.2447285, 0.6652410]
    # loss = 3*0.0900306 + 2*0.2447285 + 1*0.6652410 = 1.4247898
    assert rce_loss(logp, r, m, 1.0).item() == pytest.approx(1.4247898, abs=1e-6)
    # tau 2: exp([0, .5, 1]) = [1, 1.6487213, 2.7182818] / 5.3670031 = [0.1863237, 0.3071959, 0.5064804]
    # loss = 3*0.1863237 + 2*0.3071959 + 0.5064804 = 1.6798433
    assert rce_loss(logp, r, m, 2.0).item() == pytest.approx(1.6798433, abs=1e-6)


def test_rce_batch_is_mean_over_queries_and_padding_is_inert():
    r, m = padded([[1, 0], [0, 1, 2]])
    logp, _ = padded([[-1, -2], [-3, -2, -1]], fill=float("-inf"))  # -inf in padding
    logp.requires_grad_(True)
    loss = rce_loss(logp, r, m, 1.0)
    assert loss.item() == pytest.approx((1.2689414 + 1.4247898) / 2, abs=1e-6)
    loss.backward()
    assert torch.isfinite(logp.grad).all()
    # d loss / d logp_i = -w_i / B: first group's w at tau 1 is [0.7310586, 0.2689414]
    assert logp.grad[0, :2].tolist() == pytest.approx([-0.7310586 / 2, -0.2689414 / 2], abs=1e-6)
    assert logp.grad[0, 2].item() == 0.0


def test_top1_ce_ties_take_first():
    # group 0: best reward 2 at idx 1 and 2 -> idx 1, CE = 2; group 1: only seq, CE = 4
    r, m = padded([[0.5, 2, 2], [1]])
    logp, _ = padded([[-1, -2, -3], [-4]], fill=float("-inf"))
    assert top1_ce_loss(logp, r, m).item() == pytest.approx((2 + 4) / 2)


# ---- PPO and KL ---------------------------------------------------------------

# five cases with eps_low 0.2, eps_high 0.3 (range [0.8, 1.3]):
#   ratio 1.1, A  2: inside         -> -min(2.2, 2.2)   = -2.2
#   ratio 1.5, A  1: above, clipped -> -min(1.5, 1.3)   = -1.3  (counted)
#   ratio 1.5, A -1: above, not     -> -min(-1.5, -1.3) =  1.5
#   ratio 0.5, A -1: below, clipped -> -min(-0.5, -0.8) =  0.8  (counted)
#   ratio 0.5, A  1: below, not     -> -min(0.5, 0.8)   = -0.5
RATIOS = [1.1, 1.5, 1.5, 0.5, 0.5]
ADVS = [2.0, 1.0, -1.0, -1.0, 1.0]


def test_ppo_clip_cases():
    logp_new = t([RATIOS]).log().requires_grad_(True)
    logp_old = torch.zeros(1, 5, dtype=torch.float64)
    adv, m = padded([ADVS])
    loss, stats = ppo_loss(logp_new, logp_old, adv, m, eps_low=0.2, eps_high=0.3)
    # (-2.2 - 1.3 + 1.5 + 0.8 - 0.5) / 5 = -0.34
    assert loss.item() == pytest.approx(-0.34)
    assert stats["clip_frac"] == pytest.approx(2 / 5)
    assert stats["ratio_mean"] == pytest.approx(5.1 / 5)
    loss.backward()
    # unclipped: d(-ratio*A/5)/dlogp = -ratio*A/5; clipped terms have no gradient
    want = [-2.2 / 5, 0.0, 1.5 / 5, 0.0, -0.5 / 5]
    assert logp_new.grad[0].tolist() == pytest.approx(want)


def test_ppo_symmetric_eps_changes_the_clip():
    logp_new = t([[math.log(1.5)]])
    adv, m = padded([[1.0]])
    loss, _ = ppo_loss(logp_new, torch.zeros_like(logp_new), adv, m, eps_low=0.2, eps_high=0.2)
    assert loss.item() == pytest.approx(-1.2)  # clamp at 1 + 0.2


def test_ppo_without_clip():
    logp_new = t([RATIOS]).log()
    adv, m = padded([ADVS])
    loss, stats = ppo_loss(logp_new, torch.zeros_like(logp_new), adv, m, clip=False)
    # -ratio*A: [-2.2, -1.5, 1.5, 0.5, -0.5] -> sum -2.2 -> mean -0.44
    assert loss.item() == pytest.approx(-0.44)
    assert stats["clip_frac"] == 0.0


def test_ppo_every_query_weighs_the_same():
    # group 0 = case 1 alone: -2.2; group 1 = cases 2, 3: (-1.3 + 1.5) / 2 = 0.1
    # mean over queries = (-2.2 + 0.1) / 2 = -1.05 (pooled would give -2.0 / 3)
    logp_new, m = padded([[math.log(1.1)], [math.log(1.5), math.log(1.5)]], fill=float("nan"))
    adv, _ = padded([[2.0], [1.0, -1.0]])
    loss, stats = ppo_loss(logp_new, torch.zeros_like(logp_new), adv, m, eps_low=0.2, eps_high=0.3)
    assert loss.item() == pytest.approx(-1.05)
    assert stats["clip_frac"] == pytest.approx(1 / 3)


def test_kl_k1_k2_k3():
    # log ratios [ln 2, 0, ln 0.5]
    # k1: mean(ln2, 0, -ln2) = 0
    # k3: (2 - 1 - ln2) + 0 + (0.5 - 1 + ln2) = 0.5 -> mean 1/6
    logp_new = t([[math.log(2), 0.0, math.log(0.5)]])
    ref = torch.zeros_like(logp_new)
    m = torch.ones(1, 3, dtype=torch.bool)
    assert kl_to_reference(logp_new, ref, m, "k1").item() == pytest.approx(0.0, abs=1e-12)
    assert kl_to_reference(logp_new, ref, m, "k3").item() == pytest.approx(1 / 6)
    # single value: ratio 2 -> k3 = 1 - ln 2 = 0.3068528
    assert kl_to_reference(logp_new[:, :1], ref[:, :1], m[:, :1], "k3").item() == pytest.approx(0.3068528)
    assert kl_to_reference(ref, ref, m, "k3").item() == 0.0
    # k2 = (log ratio)^2 / 2: (ln2^2 / 2 + 0 + ln2^2 / 2) / 3 = ln2^2 / 3
    assert kl_to_reference(logp_new, ref, m, "k2").item() == pytest.approx(math.log(2) ** 2 / 3)
    with pytest.raises(LeverError):
        kl_to_reference(logp_new, ref, m, "k4")  # type: ignore[arg-type]


def test_adapt_beta_branches_and_bounds():
    assert adapt_beta(0.1, 0.2) == pytest.approx(0.15)  # kl > 0.1 -> x1.5
    assert adapt_beta(0.1, 0.005) == pytest.approx(0.1 / 1.5)  # kl < 0.01 -> /1.5
    assert adapt_beta(0.1, 0.05) == pytest.approx(0.1)  # in between -> unchanged
    assert adapt_beta(0.1, 0.1) == pytest.approx(0.1)  # the bounds themselves do not trigger
    assert adapt_beta(0.1, 0.01) == pytest.approx(0.1)
    assert adapt_beta(9.0, 0.5) == 10.0  # 13.5 clamped to beta_max
    assert adapt_beta(0.0012, 0.0) == 0.001  # 0.0008 clamped to beta_min
    assert adapt_beta(1.0, 1.0, factor=2.0, beta_max=1.5) == 1.5


# ---- ragged batch == groups one by one ---------------------------------------


def test_ragged_batch_matches_groups_one_by_one():
    gen = torch.Generator().manual_seed(0)
    sizes = [5, 1, 3, 5, 2]
    G = max(sizes)
    mask = torch.arange(G).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)  # [B, G]
    # rewards with ties (rounded) and garbage in the padding
    r = (torch.rand(len(sizes), G, generator=gen, dtype=torch.float64) * 4).round() / 2
    logp = -torch.rand(len(sizes), G, generator=gen, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(len(sizes), G, generator=gen, dtype=torch.float64)
    r = r.masked_fill(~mask, 1e6)
    logp = logp.masked_fill(~mask, float("-inf"))
    old = old.masked_fill(~mask, float("nan"))

    def one(b: int) -> tuple[torch.Tensor, ...]:
        n = sizes[b]
        return r[b : b + 1, :n], logp[b : b + 1, :n], old[b : b + 1, :n], mask[b : b + 1, :n]

    B = len(sizes)
    for kind in ("rank", "zscore", "centered"):
        for ties in ("average", "first"):
            batch = group_advantages(r, mask, kind, ties=ties, clip=1.5)
            for b in range(B):
                rb, _, _, mb = one(b)
                alone = group_advantages(rb, mb, kind, ties=ties, clip=1.5)
                assert torch.allclose(batch[b, : sizes[b]], alone[0])
                assert (batch[b, sizes[b] :] == 0).all()
    for k in (1, 2, None):
        batch = top_k_mask(r, mask, k)
        for b in range(B):
            rb, _, _, mb = one(b)
            assert torch.equal(batch[b, : sizes[b]], top_k_mask(rb, mb, k)[0])
            assert not batch[b, sizes[b] :].any()

    adv = group_advantages(r, mask, "zscore")

    def mean_of_singles(fn) -> float:
        return sum(float(fn(*one(b))) for b in range(B)) / B

    checks = {
        "rce": (lambda rr, lp, o, mm: rce_loss(lp, rr, mm, 0.7)),
        "top1": (lambda rr, lp, o, mm: top1_ce_loss(lp, rr, mm)),
        "kl_k1": (lambda rr, lp, o, mm: kl_to_reference(lp, o, mm, "k1")),
        "kl_k3": (lambda rr, lp, o, mm: kl_to_reference(lp, o, mm, "k3")),
        "ppo": (lambda rr, lp, o, mm: ppo_loss(lp, o, group_advantages(rr, mm, "zscore"), mm, 0.1, 0.3)[0]),
        "mean": (lambda rr, lp, o, mm: masked_mean(lp, mm)),
    }
    for name, fn in checks.items():
        batch = float(fn(r, logp, old, mask))
        assert math.isfinite(batch), name
        assert batch == pytest.approx(mean_of_singles(fn), abs=1e-10), name
    assert torch.isfinite(adv).all()


def test_empty_groups_are_left_out():
    # a query whose every sequence was filtered away neither counts nor produces NaN
    r = t([[1, 0], [PAD, PAD]])
    m = torch.tensor([[True, True], [False, False]])
    logp = t([[-1, -2], [float("nan"), float("nan")]])
    assert rce_loss(logp, r, m, 1.0).item() == pytest.approx(1.2689414, abs=1e-6)
    loss, stats = ppo_loss(logp, logp, group_advantages(r, m, "rank"), m)
    assert loss.item() == pytest.approx(0.0)
    assert stats["ratio_mean"] == pytest.approx(1.0)
    assert group_advantages(r, m, "zscore")[1].tolist() == [0.0, 0.0]
