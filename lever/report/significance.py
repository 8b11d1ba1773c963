"""Paired significance over the same questions: bootstrap interval, sign-flip test, McNemar.

Every function takes two aligned vectors ``a`` (baseline) and ``b`` (plan): entry i of
both is the same question. ``align`` builds them from question ids. Accuracies are VQA
accuracies in [0, 1] (fractional: 0.3, 0.6, ...); deltas are reported in percentage points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_CHUNK = 1000  # resamples per vectorised block: bounds memory at ~_CHUNK * n floats


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
    a: np.ndarray, b: np.ndarray, n_resamples: int = 10000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Delta of mean accuracy (b - a) in points, with a paired percentile bootstrap interval.

    d_i = b_i - a_i;  delta = 100 * mean(d).
    Resample question indices with replacement R times: delta*_r = 100 * mean(d[idx_r]).
    (lo, hi) = the alpha/2 and 1 - alpha/2 quantiles of delta*.
    Empty input gives (nan, nan, nan).
    """
    d = _diff(a, b)
    n = d.shape[0]
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, _CHUNK):
        stop = min(start + _CHUNK, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))  # [chunk, n]
        means[start:stop] = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(d.mean() * 100.0), float(lo * 100.0), float(hi * 100.0)


def paired_permutation_pvalue(a: np.ndarray, b: np.ndarray, n_permutations: int = 10000, seed: int = 0) -> float:
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


@dataclass
class PairedTest:
    """A paired comparison of plan b against baseline a over their common questions."""

    n: int  # questions in both
    delta: float  # points, mean(b) - mean(a)
    lo: float
    hi: float
    p: float  # sign-flip permutation test
    p_mcnemar: float  # correct = accuracy > 0

    @property
    def within_noise(self) -> bool:
        return within_noise(self.lo, self.hi)

    @property
    def significant_gain(self) -> bool:
        return self.lo > 0.0


def paired_test(a: np.ndarray, b: np.ndarray, n_resamples: int = 10000, seed: int = 0) -> PairedTest:
    """Interval, permutation p and McNemar p for aligned vectors a (baseline) and b (plan)."""
    delta, lo, hi = paired_bootstrap_ci(a, b, n_resamples=n_resamples, seed=seed)
    n = int(np.asarray(a).shape[0])
    if n == 0:
        return PairedTest(0, delta, lo, hi, float("nan"), float("nan"))
    p = paired_permutation_pvalue(a, b, n_permutations=n_resamples, seed=seed)
    p_mc = mcnemar_pvalue(np.asarray(a) > 0, np.asarray(b) > 0)
    return PairedTest(n, delta, lo, hi, p, p_mc)


def mean_ci(x: np.ndarray, n_resamples: int = 10000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """Mean accuracy of one vector in percent, with its percentile bootstrap interval over questions.

    The paired bootstrap of `x` against zeros: resample question indices with replacement R times,
    mean*_r = 100 * mean(x[idx_r]); (lo, hi) = the alpha/2 and 1 - alpha/2 quantiles of mean*.
    """
    x = np.asarray(x, dtype=np.float64)
    return paired_bootstrap_ci(np.zeros_like(x), x, n_resamples=n_resamples, alpha=alpha, seed=seed)


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
