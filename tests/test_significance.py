"""Paired significance: bootstrap interval, sign-flip permutation test, McNemar, alignment."""

from __future__ import annotations

import numpy as np
import pytest

from lever.report.significance import (
    accuracy_interval,
    align,
    bootstrap_pvalue,
    mcnemar_pvalue,
    near,
    paired_bootstrap_ci,
    paired_permutation_pvalue,
    paired_test,
    two_level_deltas,
    within_noise,
)


def test_align_keeps_common_questions_in_id_order():
    ids, a, b = align(np.array([3, 1, 2]), np.array([0.3, 0.1, 0.2]), np.array([2, 4, 3]), np.array([1.0, 0.0, 0.6]))
    assert ids.tolist() == [2, 3]
    assert a.tolist() == [0.2, 0.3]
    assert b.tolist() == [1.0, 0.6]


def test_identical_results():
    a = np.array([1.0, 0.0, 0.6, 0.3, 1.0])
    assert paired_bootstrap_ci(a, a.copy()) == (0.0, 0.0, 0.0)
    assert paired_permutation_pvalue(a, a.copy()) == 1.0
    assert mcnemar_pvalue(a > 0, a > 0) == 1.0
    assert within_noise(0.0, 0.0)


def test_all_better():
    # d = +1 on all 10 questions: every resample mean is 1 -> CI [100, 100];
    # exact enumeration over 2^10 sign vectors: only all-plus and all-minus reach |sum| = 10 -> p = 2/1024
    a, b = np.zeros(10), np.ones(10)
    assert paired_bootstrap_ci(a, b) == (100.0, 100.0, 100.0)
    assert paired_permutation_pvalue(a, b) == pytest.approx(2 / 1024)
    # McNemar: 10 discordant pairs, all one way: p = 2 * C(10,0) / 2^10 = 2/1024
    assert mcnemar_pvalue(a > 0, b > 0) == pytest.approx(2 / 1024)
    assert not within_noise(100.0, 100.0)


def test_all_worse():
    a, b = np.ones(10), np.full(10, 0.7)
    delta, lo, hi = paired_bootstrap_ci(a, b)
    # d = -0.3 everywhere -> -30 points, no spread
    assert (delta, lo, hi) == pytest.approx((-30.0, -30.0, -30.0))
    assert paired_permutation_pvalue(a, b) == pytest.approx(2 / 1024)
    # 0.7 > 0 is still "correct": no discordant pair for McNemar
    assert mcnemar_pvalue(a > 0, b > 0) == 1.0


def test_many_questions_uses_monte_carlo_and_never_returns_zero():
    a, b = np.zeros(200), np.ones(200)  # 2^200 sign vectors: sampled, not enumerated
    p = paired_permutation_pvalue(a, b, n_permutations=2000)
    # no random flip reaches |sum| = 200 (chance 2^-199), so p = (1 + 0) / (1 + 2000)
    assert p == pytest.approx(1 / 2001)


def test_sign_flips_enumerated_by_hand():
    # d = b - a = [0.3, 0.1, -0.2, 0.0]; the zero is dropped; observed |sum| = 0.2.
    # The 8 sign choices for (0.3, 0.1, -0.2) give sums
    #   +++ 0.2  ++- 0.6  +-+ 0.0  +-- 0.4  -++ -0.4  -+- 0.0  --+ -0.6  --- -0.2
    # |sum| >= 0.2 in 6 of 8 -> p = 0.75
    a = np.array([0.0, 0.6, 0.5, 1.0])
    b = np.array([0.3, 0.7, 0.3, 1.0])
    assert paired_permutation_pvalue(a, b) == pytest.approx(0.75)


def test_sign_flips_three_equal_gains():
    # d = [1, 1, 1]: only +++ and --- reach |sum| = 3 -> p = 2/8
    assert paired_permutation_pvalue(np.zeros(3), np.ones(3)) == pytest.approx(0.25)


def test_bootstrap_interval_of_two_questions():
    # d = [0, 1]: a resample mean is 0, 0.5 or 1 with chance 1/4, 1/2, 1/4,
    # so the 2.5% quantile is 0 and the 97.5% quantile is 1 (in points: 0 and 100).
    delta, lo, hi = paired_bootstrap_ci(np.array([1.0, 0.0]), np.array([1.0, 1.0]))
    assert (delta, lo, hi) == (50.0, 0.0, 100.0)
    assert within_noise(lo, hi)


def test_bootstrap_is_seeded_and_brackets_delta():
    rng = np.random.default_rng(1)
    a, b = rng.random(300), rng.random(300)
    first = paired_bootstrap_ci(a, b, n_resamples=2000, seed=7)
    assert first == paired_bootstrap_ci(a, b, n_resamples=2000, seed=7)
    delta, lo, hi = first
    assert delta == pytest.approx((b.mean() - a.mean()) * 100)
    assert lo < delta < hi


def test_mcnemar_known_counts():
    # n01 = 8 (a wrong, b right), n10 = 2 -> n = 10
    # p = 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10 = 2 * 56 / 1024 = 0.109375
    a = np.array([0] * 8 + [1] * 2 + [1] * 5 + [0] * 5, dtype=bool)
    b = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 5, dtype=bool)
    assert mcnemar_pvalue(a, b) == pytest.approx(0.109375)
    # symmetric in direction
    assert mcnemar_pvalue(b, a) == pytest.approx(0.109375)
    # n01 = 5, n10 = 0: p = 2 * 1/32 = 0.0625
    assert mcnemar_pvalue(np.zeros(5, bool), np.ones(5, bool)) == pytest.approx(0.0625)
    # n01 = 1, n10 = 0: p = min(1, 2 * 1/2) = 1
    assert mcnemar_pvalue(np.array([False]), np.array([True])) == 1.0


def test_paired_test_bundle_and_empty_input():
    t = paired_test(np.zeros(10), np.ones(10), n_resamples=500)
    assert (t.n, t.delta, t.lo, t.hi) == (10, 100.0, 100.0, 100.0)
    assert t.significant_gain and not t.within_noise
    empty = paired_test(np.zeros(0), np.zeros(0))
    assert empty.n == 0 and np.isnan(empty.delta) and np.isnan(empty.p)


def test_mismatched_lengths_are_a_programming_error():
    with pytest.raises(ValueError):
        paired_bootstrap_ci(np.zeros(3), np.zeros(4))


# ---------------------------------------------------------------- the interval's level, seeds, Monte Carlo error


def test_question_interval_is_the_95_percent_one():
    # d = 1 on 20 of 40 questions: a resample mean is k / 40 with k ~ Binomial(40, 1/2), whose CDF is
    # P(k <= 13) = 0.019, P(k <= 14) = 0.040, P(k <= 15) = 0.077. The 2.5% quantile is k = 14 (35.0 points) and the
    # 97.5% one k = 26 (65.0); a 90% interval would be k = 15 and 25 (37.5, 62.5).
    a, b = np.zeros(40), np.array([1.0] * 20 + [0.0] * 20)
    assert paired_bootstrap_ci(a, b) == (50.0, 35.0, 65.0)
    t = paired_test(a, b)
    assert (t.delta, t.lo, t.hi, t.interval) == (50.0, 35.0, 65.0, "questions")


def test_seed_interval_is_the_95_percent_one_over_seeds():
    # One question, 40 seeds of the plan: 20 right, 20 wrong; the baseline (one seed) wrong. Only the seed draw
    # varies: the mean of 40 seeds drawn with replacement is k / 40, k ~ Binomial(40, 1/2), as above.
    a, b = np.zeros((1, 1)), np.array([[1.0]] * 20 + [[0.0]] * 20)
    t = paired_test(a, b)
    assert (t.delta, t.lo, t.hi, t.interval) == (50.0, 35.0, 65.0, "seeds and questions")
    assert accuracy_interval(b) == (50.0, 35.0, 65.0)


def test_seed_variance_widens_the_interval():
    # plan seed 0 right on all 10 questions, seed 1 on none; the baseline (one seed) on none. Seed-averaged, the plan
    # is 0.5 everywhere: the question-only interval is [50, 50]. Over seeds: two draws of {0, 1} give a mean of
    # 0, 0.5, 1 with chance 1/4, 1/2, 1/4 -> [0, 100], and p = 2 (1 + #{delta* <= 0}) / (R + 1) ~ 2 * 1/4.
    a, b = np.zeros((1, 10)), np.stack([np.ones(10), np.zeros(10)])
    assert paired_bootstrap_ci(a[0], b.mean(axis=0))[1:] == (50.0, 50.0)
    t = paired_test(a, b)
    assert (t.delta, t.lo, t.hi) == (50.0, 0.0, 100.0)
    assert t.p == pytest.approx(0.5, abs=0.03) and t.within_noise
    deltas = two_level_deltas(a, b, 4000, seed=3)
    assert np.mean(deltas == 0.0) == pytest.approx(0.25, abs=0.03) and np.mean(deltas == 50.0) == pytest.approx(0.5, abs=0.03)


def test_paired_seeds_draw_the_same_seed_on_both_sides():
    # seed 0: both right everywhere; seed 1: both wrong everywhere -> every per-seed gain is 0. Paired seeds (the same
    # draw on both sides) give delta* = 0 always; unpaired draws give -100..+100.
    a = b = np.stack([np.ones(5), np.zeros(5)])
    paired = paired_test(a, b.copy())
    assert (paired.lo, paired.hi, paired.p) == (0.0, 0.0, 1.0)
    unpaired = paired_test(a, b.copy(), paired_seeds=False)
    assert (unpaired.lo, unpaired.hi) == (-100.0, 100.0)


def test_bootstrap_pvalue_by_hand():
    # 3 of 9 resamples at or below 0, 7 at or above (one exactly 0): p = 2 (1 + 3) / 10 = 0.8
    assert bootstrap_pvalue(np.array([-2.0, -1.0, 0.0, 1, 2, 3, 4, 5, 6])) == pytest.approx(0.8)
    assert bootstrap_pvalue(np.ones(99)) == pytest.approx(2 / 100)  # never 0
    assert bootstrap_pvalue(np.zeros(9)) == 1.0


def test_mcnemar_per_seed_never_on_any_seed_correct():
    # two seeds a side, paired: seed 0 differs on 5 questions all one way (p = 2/32), seed 1 agrees everywhere (p = 1).
    # "correct if any seed got it" would pool them; per seed, each pair is its own test.
    a = np.stack([np.zeros(10), np.ones(10)])
    b = np.stack([np.array([1.0] * 5 + [0.0] * 5), np.ones(10)])
    t = paired_test(a, b, n_resamples=500)
    assert t.p_mcnemar is None and t.p_mcnemar_seeds == pytest.approx([2 / 32, 1.0])
    assert paired_test(a, b, n_resamples=500, paired_seeds=False).p_mcnemar_seeds is None
    one = paired_test(a[:1], b[:1], n_resamples=500)
    assert one.p_mcnemar == pytest.approx(2 / 32) and one.p_mcnemar_seeds is None


def test_near_threshold_verdicts_are_drawn_again():
    # 60 questions, d = +1 on 12: 2^12 sign vectors, more than 200, so sampled; exact p = 2 / 4096, far from 0.05
    # (and no bootstrap resample near 0). d = +1 on 20 and -1 on 9 gives p about 0.06, within 3 Monte Carlo errors
    # of 0.05 at 200 flips: drawn again with 10x the flips.
    far = paired_test(np.zeros(60), np.array([1.0] * 12 + [0.0] * 48), n_resamples=200)
    assert far.resamples == 200 and not far.borderline
    a = np.zeros(60)
    b = np.array([1.0] * 20 + [-1.0] * 9 + [0.0] * 31)
    first = paired_test(a, b, n_resamples=200)
    assert first.resamples > 200  # drawn again
    assert near(0.06, 0.05, 200) and not near(0.06, 0.05, 100_000) and not near(0.0, 0.05, 200)
