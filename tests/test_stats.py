import numpy as np
import pytest
from scipy import stats as scipy_stats

from keras_pnil import stats
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


def test_corrected_resampled_ttest_on_a_hand_computed_case():
    # d = (0.1, 0.2, 0.3): mean 0.2, variance 0.01, k = 3, n_test / n_train = 1, so
    # t = 0.2 / √((1/3 + 1) · 0.01) = √3; Student's t with 2 degrees of freedom has the closed form
    # P(T > t) = 1/2 - t / (2√(t² + 2)), so p = 1 - √3/√5. The uncorrected (paired) t would be 2√3.
    t, p = corrected_resampled_ttest([0.6, 0.7, 0.8], [0.5, 0.5, 0.5], n_train=1000, n_test=1000)
    assert t == pytest.approx(np.sqrt(3)) and p == pytest.approx(1 - np.sqrt(3 / 5))
    # With a tenth of the test images, the correction shrinks: t = 0.2 / √((1/3 + 0.1) · 0.01).
    t, _ = corrected_resampled_ttest([0.6, 0.7, 0.8], [0.5] * 3, n_train=1000, n_test=100)
    assert t == pytest.approx(0.2 / np.sqrt(13 / 3000))


def test_fisher_exact_p_by_hand_and_its_bad_counts():
    # 1 of 4 against 4 of 4: C(8, 5) = 56 tables; P(k) = C(4, k) C(4, 5 - k) / 56 for our k = 1..4 hits, i.e.
    # 4, 24, 24, 4 ways; the tables at most as likely as the observed one (4 ways): k = 1 and k = 4, p = 8 / 56.
    assert stats.fisher_exact_p(1, 4, 4, 4) == pytest.approx(8 / 56)
    assert stats.fisher_exact_p(2, 5, 2, 5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="each count must lie in 0..its total"):
        stats.fisher_exact_p(6, 5, 0, 5)


def test_mann_whitney_p_is_exact_two_sided_and_none_for_an_empty_sample():
    assert stats.mann_whitney_p([0.9, 0.8], [0.1, 0.2]) == pytest.approx(2 / 6)  # 1 of C(4, 2) = 6 orders each way
    assert stats.mann_whitney_p([0.1, 0.9], [0.5, 0.5]) == pytest.approx(1.0)
    assert stats.mann_whitney_p([], [0.5]) is None
    assert stats.mann_whitney_p([0.3], [0.3]) == 1.0
