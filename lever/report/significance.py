"""Paired significance over the same questions: bootstrap interval, sign-flip test, McNemar, Holm.

The vector functions take two aligned vectors ``a`` (baseline) and ``b`` (plan): entry i of
both is the same question. ``align`` builds them from question ids. Accuracies are VQA
accuracies in [0, 1] (fractional: 0.3, 0.6, ...); deltas are reported in percentage points.

``paired_test`` and ``accuracy_interval`` take matrices [seeds, questions]. With one seed on
each side they are the question-level tests above. Where a side has two or more seeds they
resample both levels (``two_level_deltas``): the questions, and the seeds of each side (the same
seed draws for both sides when they have the same seeds, which share their start). The interval
then covers seed variance as well as question variance, and p is read off the same resamples.

Every verdict (p below alpha, an interval that excludes 0) is checked for Monte Carlo error: one
within ``MC_Z`` standard errors of its threshold is drawn again with ten times the resamples, up to
``MAX_RESAMPLES``, and is marked borderline when it is still that close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_CHUNK = 1000  # resamples per vectorised block: bounds memory at ~_CHUNK * n floats
N_RESAMPLES = 10_000  # the one default of every interval and test (run, sweep, compare, leaderboard)
MAX_RESAMPLES = 100_000  # a borderline verdict is drawn again with up to this many
MC_Z = 3.0  # a verdict within this many Monte Carlo standard errors of its threshold is drawn again
ALPHA = 0.05  # every interval is the 1 - ALPHA percentile interval; every verdict tests at ALPHA


def align(
    ids_a: np.ndarray, acc_a: np.ndarray, ids_b: np.ndarray, acc_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair two per-question vectors by question id; only ids present in both are kept.

    Returns (ids [m], a [m], b [m]) sorted by id.
    """
    ids_a, ids_b = np.asarray(ids_a), np.asarray(ids_b)
    common, ia, ib = np.intersect1d(ids_a, ids_b, assume_unique=False, return_indices=True)
    return common, np.asarray(acc_a, dtype=np.float64)[ia], np.asarray(acc_b, dtype=np.float64)[ib]


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired vectors must be 1-d and of equal length, got {a.shape} and {b.shape}")
    return b - a


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, n_resamples: int = N_RESAMPLES, alpha: float = ALPHA, seed: int = 0
) -> tuple[float, float, float]:
    """Delta of mean accuracy (b - a) in points, with a paired percentile bootstrap interval.

    d_i = b_i - a_i;  delta = 100 * mean(d).
    Resample question indices with replacement R times: delta*_r = 100 * mean(d[idx_r]).
    (lo, hi) = the alpha/2 and 1 - alpha/2 quantiles of delta*.
    Empty input gives (nan, nan, nan).
    """
    d = _diff(a, b)
    if d.shape[0] == 0:
        return float("nan"), float("nan"), float("nan")
    means = _bootstrap_means(d, n_resamples, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(d.mean() * 100.0), float(lo * 100.0), float(hi * 100.0)


def _bootstrap_means(d: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """mean(d[idx_r]) for R resampled question index vectors idx_r (with replacement), seeded."""
    n = d.shape[0]
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, _CHUNK):
        stop = min(start + _CHUNK, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))  # [chunk, n]
        means[start:stop] = d[idx].mean(axis=1)
    return means


def paired_permutation_pvalue(a: np.ndarray, b: np.ndarray, n_permutations: int = N_RESAMPLES, seed: int = 0) -> float:
    """Two-sided sign-flip permutation test of the mean paired difference.

    Under H0 (no difference) each d_i = b_i - a_i is as likely as -d_i, so
      p = P(|sum_i s_i d_i| >= |sum_i d_i|),  s_i uniform in {-1, +1}.
    Zero differences do not change any flipped sum, so only the m non-zero d_i are flipped.
    If 2^m <= n_permutations every sign vector is enumerated (exact p); otherwise
    p = (1 + #{|T*| >= |T|}) / (1 + n_permutations) over random flips (never 0).
    Identical vectors (m = 0) give p = 1.0.
    """
    d = _diff(a, b)
    d = d[d != 0.0]
    m = d.shape[0]
    if m == 0:
        return 1.0
    observed = abs(d.sum())
    tol = 1e-9 * max(1.0, observed)  # why: float sums of 0.3/0.6/... must count exact ties as ties
    if 2**m <= n_permutations:
        # all 2^m sign vectors: bit j of k decides the sign of d_j
        k = np.arange(2**m, dtype=np.int64)[:, None]  # [2^m, 1]
        signs = 1.0 - 2.0 * ((k >> np.arange(m)) & 1)  # [2^m, m]
        sums = np.abs(signs @ d)
        return float(np.mean(sums >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_permutations, _CHUNK):
        size = min(_CHUNK, n_permutations - start)
        signs = rng.integers(0, 2, size=(size, m), dtype=np.int8) * 2 - 1  # [chunk, m] in {-1, +1}
        hits += int(np.sum(np.abs(signs.astype(np.float64) @ d) >= observed - tol))
    return (1 + hits) / (1 + n_permutations)


def mcnemar_pvalue(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact McNemar test on correct/incorrect pairs (two-sided binomial on discordant pairs).

    n01 = #(a wrong, b right), n10 = #(a right, b wrong), n = n01 + n10;
    p = min(1, 2 * sum_{k=0}^{min(n01, n10)} C(n, k) / 2^n).  No discordant pair -> 1.0.
    """
    ca, cb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if ca.shape != cb.shape:
        raise ValueError(f"paired vectors must be of equal length, got {ca.shape} and {cb.shape}")
    n01 = int(np.sum(~ca & cb))
    n10 = int(np.sum(ca & ~cb))
    n = n01 + n10
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(n01, n10) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact: Python ints, then one true division


def within_noise(lo: float, hi: float) -> bool:
    """True when the interval [lo, hi] contains 0 (the delta is not distinguishable from noise)."""
    return bool(lo <= 0.0 <= hi)


def _tail_share(deltas: np.ndarray) -> tuple[float, float]:
    """(share of resampled deltas <= 0, share >= 0): an interval excludes 0 when one of them is below ALPHA / 2."""
    return float(np.mean(deltas <= 0.0)), float(np.mean(deltas >= 0.0))


def bootstrap_pvalue(deltas: np.ndarray) -> float:
    """Two-sided p of "delta = 0" read off bootstrap resamples: the inverted percentile interval,
    p = min(1, 2 (1 + min(#{delta* <= 0}, #{delta* >= 0})) / (R + 1)) (never 0). The 1 - alpha interval excludes 0
    exactly when this p is below alpha (up to the +1 of the floor)."""
    r = deltas.shape[0]
    below, above = int(np.sum(deltas <= 0.0)), int(np.sum(deltas >= 0.0))
    return min(1.0, 2.0 * (1 + min(below, above)) / (r + 1))


def two_level_deltas(
    a: np.ndarray, b: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0, paired_seeds: bool = True
) -> np.ndarray:
    """Resampled deltas (points) of b [Sb, n] - a [Sa, n], over questions and seeds.

    Resample r draws n question indices I with replacement (one draw for both sides: the questions are paired) and
    seed indices for each side with replacement: the same draw for both when `paired_seeds` and Sa = Sb (row s of
    both is the same seed, which shares its start and data order), independent draws otherwise. Then
      delta*_r = 100 * (mean_{s in S*_b} mean_{i in I} b[s, i] - mean_{s in S*_a} mean_{i in I} a[s, i]).
    With one seed a side's seed draw is always that seed; with one seed on both sides this is the question
    bootstrap of `paired_bootstrap_ci` (the same question draws, summed in another order).
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    n = a.shape[1]
    if b.shape[1] != n:
        raise ValueError(f"paired matrices must cover the same questions, got {a.shape} and {b.shape}")
    rng = np.random.default_rng(seed)
    seeds_rng = np.random.default_rng([seed, 1])  # why: the question draws stay those of the one-seed bootstrap
    sa, sb = a.shape[0], b.shape[0]
    out = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))  # [chunk, n]
        qa = a[:, idx].mean(axis=2)  # [Sa, chunk]: each seed's mean over the drawn questions
        qb = b[:, idx].mean(axis=2)  # [Sb, chunk]
        draw_a = seeds_rng.integers(0, sa, size=(size, sa))  # [chunk, Sa]
        draw_b = draw_a if paired_seeds and sa == sb else seeds_rng.integers(0, sb, size=(size, sb))
        cols = np.arange(size)[:, None]
        out[start : start + size] = qb[draw_b, cols].mean(axis=1) - qa[draw_a, cols].mean(axis=1)
    return out * 100.0


@dataclass
class PairedTest:
    """A paired comparison of plan b against baseline a over their common questions."""

    n: int  # questions in both
    delta: float  # points, mean(b) - mean(a)
    lo: float  # the 1 - ALPHA interval of delta
    hi: float
    p: float  # one seed a side: sign-flip permutation test; else the two-level bootstrap p (bootstrap_pvalue)
    p_mcnemar: float | None  # one seed a side: McNemar with correct = accuracy > 0; else None (see p_mcnemar_seeds)
    p_mcnemar_seeds: list[float] | None = None  # the same seeds on both sides: McNemar of each seed pair, in seed order
    interval: str = "questions"  # what the interval resamples: "questions" or "seeds and questions"
    resamples: int = N_RESAMPLES  # how many were drawn (more where a verdict was near its threshold)
    borderline: bool = False  # a verdict (p < ALPHA, 0 outside the interval) within MC_Z errors at MAX_RESAMPLES
    exact: bool = False  # p came from every sign vector (no Monte Carlo error)

    @property
    def within_noise(self) -> bool:
        return within_noise(self.lo, self.hi)

    @property
    def significant_gain(self) -> bool:
        return self.lo > 0.0


def near(value: float, threshold: float, n_resamples: int, scale: float = 1.0) -> bool:
    """True when a Monte Carlo share `value` (times `scale`) lies within MC_Z standard errors of `threshold`:
    se = scale * sqrt(v (1 - v) / R), with v the share itself (never below 1 / R, so a share of 0 next to a
    threshold of 0 is not near)."""
    v = min(max(value / scale, 1.0 / n_resamples), 1.0)
    se = scale * math.sqrt(v * (1.0 - v) / n_resamples)
    return abs(value - threshold) < MC_Z * se


def _draw(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int, alpha: float, paired_seeds: bool) -> tuple:
    """(delta, lo, hi, p, whether a verdict is within MC_Z Monte Carlo errors of its threshold) with `n_resamples`."""
    if a.shape[0] == 1 and b.shape[0] == 1:  # one seed a side: the question bootstrap and the sign-flip test
        d = b[0] - a[0]
        means = _bootstrap_means(d, n_resamples, seed)
        lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2]) * 100.0  # as paired_bootstrap_ci: the same digits
        deltas = means * 100.0
        delta = float(d.mean() * 100.0)
        p = paired_permutation_pvalue(a[0], b[0], n_permutations=n_resamples, seed=seed)
        exact = 2 ** int(np.count_nonzero(d)) <= n_resamples  # every sign vector was enumerated: no Monte Carlo error
    else:
        deltas = two_level_deltas(a, b, n_resamples, seed, paired_seeds)
        delta = float((b.mean() - a.mean()) * 100.0)
        p = bootstrap_pvalue(deltas)
        exact = False
        lo, hi = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    low, high = _tail_share(deltas)
    unsure = (
        (not exact and near(p, alpha, n_resamples)) or near(low, alpha / 2, n_resamples) or near(high, alpha / 2, n_resamples)
    )
    return delta, float(lo), float(hi), p, unsure, exact


def paired_test(
    a: np.ndarray,
    b: np.ndarray,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    alpha: float = ALPHA,
    paired_seeds: bool = True,
) -> PairedTest:
    """Interval, p and McNemar p of plan b against baseline a over the same questions.

    `a` [Sa, n] and `b` [Sb, n] are per-seed accuracies (a 1-d vector is one seed). With one seed a side: the question
    bootstrap, the sign-flip test and McNemar. With more: the two-level bootstrap (`two_level_deltas`), its p, and
    McNemar per seed pair when the seeds are paired (`paired_seeds`: row s of both is the same seed).
    A verdict near its threshold is drawn again with 10x the resamples up to MAX_RESAMPLES (`near`).
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=np.float64)), np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired vectors must be of equal length, got {a.shape} and {b.shape}")
    n = int(a.shape[1])
    interval = "questions" if a.shape[0] == b.shape[0] == 1 else "seeds and questions"
    if n == 0:
        nan = float("nan")
        return PairedTest(0, nan, nan, nan, nan, None, None, interval, 0)
    r = n_resamples
    delta, lo, hi, p, unsure, exact = _draw(a, b, r, seed, alpha, paired_seeds)
    while unsure and r < MAX_RESAMPLES:
        r = min(r * 10, MAX_RESAMPLES)
        delta, lo, hi, p, unsure, exact = _draw(a, b, r, seed, alpha, paired_seeds)
    p_mc, p_seeds = None, None
    if interval == "questions":
        p_mc = mcnemar_pvalue(a[0] > 0, b[0] > 0)
    elif paired_seeds and a.shape[0] == b.shape[0]:
        p_seeds = [mcnemar_pvalue(x > 0, y > 0) for x, y in zip(a, b)]
    return PairedTest(n, delta, lo, hi, p, p_mc, p_seeds, interval, r, unsure, exact)


def mean_ci(x: np.ndarray, n_resamples: int = N_RESAMPLES, alpha: float = ALPHA, seed: int = 0) -> tuple[float, float, float]:
    """Mean accuracy of one vector in percent, with its percentile bootstrap interval over questions.

    The paired bootstrap of `x` against zeros: resample question indices with replacement R times,
    mean*_r = 100 * mean(x[idx_r]); (lo, hi) = the alpha/2 and 1 - alpha/2 quantiles of mean*.
    """
    x = np.asarray(x, dtype=np.float64)
    return paired_bootstrap_ci(np.zeros_like(x), x, n_resamples=n_resamples, alpha=alpha, seed=seed)


def accuracy_interval(
    x: np.ndarray, n_resamples: int = N_RESAMPLES, alpha: float = ALPHA, seed: int = 0
) -> tuple[float, float, float]:
    """Mean accuracy (percent) of per-seed accuracies x [S, n] with its 1 - alpha interval: over questions with one
    seed (`mean_ci`), over seeds and questions with more (`two_level_deltas` against zeros)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if x.shape[0] == 1:
        return mean_ci(x[0], n_resamples, alpha, seed)
    if x.shape[1] == 0:
        return float("nan"), float("nan"), float("nan")
    means = two_level_deltas(np.zeros_like(x), x, n_resamples, seed)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(x.mean() * 100.0), float(lo), float(hi)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values of m tests, in the order given.

    Sort ascending, p_(1) <= ... <= p_(m); adjusted p_(i) = min(1, max_{j <= i} (m - j + 1) * p_(j)).
    Rejecting where the adjusted p < alpha keeps the chance of any false rejection among the m at most alpha.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
