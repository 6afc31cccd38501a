import numpy as np
import pytest
from scipy import stats as scipy_stats

from keras_pnil.stats import corrected_resampled_ttest, mean_std


def test_corrected_resampled_ttest_matches_its_formula_and_limits():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.8, 0.02, 10), rng.normal(0.7, 0.02, 10)
    t, p = corrected_resampled_ttest(a, b, n_train=30000, n_test=30000)
    d = a - b
    expected_t = d.mean() / np.sqrt((1 / 10 + 1.0) * d.var(ddof=1))
    assert t == pytest.approx(expected_t) and p == pytest.approx(2 * scipy_stats.t.sf(abs(expected_t), 9))
    # Without overlap between splits the correction vanishes: the paired t-test.
    t0, p0 = corrected_resampled_ttest(a, b, n_train=10**12, n_test=1)
    ref = scipy_stats.ttest_rel(a, b)
    assert t0 == pytest.approx(ref.statistic, rel=1e-6) and p0 == pytest.approx(ref.pvalue, rel=1e-4)
    assert corrected_resampled_ttest(a, a, 1, 1) == (0.0, 1.0)
    assert corrected_resampled_ttest(a + 0.1, a, 1, 1) == (np.inf, 0.0)
    with pytest.raises(ValueError, match="n_train and n_test must be positive"):
        corrected_resampled_ttest(a, b, 0, 1)


def test_mean_std_uses_the_sample_deviation():
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, np.std([0.5, 0.7], ddof=1)))
    assert mean_std([0.4]) == (0.4, 0.0)
