"""Statistics: the corrected resampled t-test for repeated train/test splits, mean ± std, and the exact tests
that compare two methods' runs over training seeds (Fisher's on counts, Mann-Whitney U on accuracies)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _scipy_stats

# The paper's significance level.
ALPHA = 0.003


def corrected_resampled_ttest(a, b, n_train: int, n_test: int) -> tuple[float, float]:
    """Nadeau and Bengio's corrected resampled t-test for paired scores (two-sided).

    `a[j]` and `b[j]` are the scores of two methods on the j-th of k train/test
    splits. The variance of the mean difference is inflated by n_test/n_train
    because the splits overlap: t = mean(d) / sqrt((1/k + n_test/n_train) · var(d)),
    compared with Student's t with k - 1 degrees of freedom.

    Returns:
        `(t, p)`. Identical results give (0, 1); a constant non-zero
        difference gives (±inf, 0).
    """
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"Need two equally long 1-D score lists with >= 2 splits; got shape {d.shape}.")
    if n_train <= 0 or n_test <= 0:
        raise ValueError(f"n_train and n_test must be positive; got {n_train}, {n_test}.")
    k, mean, var = len(d), d.mean(), d.var(ddof=1)
    if var == 0.0:
        return (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / math.sqrt((1.0 / k + n_test / n_train) * var)
    return float(t), float(2.0 * _scipy_stats.t.sf(abs(t), k - 1))


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def mann_whitney_p(a, b) -> float | None:
    """The exact two-sided Mann-Whitney U test's p-value for two samples (e.g. one method's robust accuracy
    over seeds against another's); None when a sample is empty, 1 when every value is the same.

    Example:
        >>> round(mann_whitney_p([0.70, 0.75, 0.80], [0.05, 0.10, 0.15]), 3)  # completely apart: 2 of 20 orders
        0.1
    """
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        return None
    if len(set(a) | set(b)) == 1:
        return 1.0  # every value equal: nothing to tell apart (the test itself is undefined)
    return float(_scipy_stats.mannwhitneyu(a, b, alternative="two-sided", method="exact").pvalue)


def fisher_exact_p(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """Fisher's exact test (two-sided) that two rates, `hits_a` of `n_a` and `hits_b` of `n_b` (e.g. collapsed
    seeds), are the same.

    Example:
        >>> round(fisher_exact_p(0, 5, 3, 5), 3)  # 20 of the C(10, 3) = 120 tables are as extreme
        0.167
    """
    if not (0 <= hits_a <= n_a and 0 <= hits_b <= n_b):
        raise ValueError(f"counts {hits_a} of {n_a} and {hits_b} of {n_b}: each count must lie in 0..its total")
    table = [[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]]
    return float(_scipy_stats.fisher_exact(table, alternative="two-sided").pvalue)
