"""Statistics for repeated train/test splits: the corrected resampled t-test and mean ± std."""

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
