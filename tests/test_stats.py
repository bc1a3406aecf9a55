"""rba.stats against hand computations and an independent numpy bootstrap."""

from math import comb, sqrt

import numpy as np
import pytest

from rba.stats import binomial_se, holm, mcnemar, mean_difference, mean_se, paired_bootstrap


def test_standard_errors_by_hand():
    assert binomial_se([1, 1, 1, 0]) == pytest.approx(sqrt(0.75 * 0.25 / 4))
    assert binomial_se(np.ones(10, bool)) == 0.0
    values = [1.0, 2.0, 3.0, 4.0]
    s = sqrt(sum((v - 2.5) ** 2 for v in values) / 3)
    assert mean_se(values) == pytest.approx(s / 2)
    assert np.isnan(mean_se([0.5]))
    with pytest.raises(ValueError, match="1-D"):
        binomial_se([])


def _binom_cdf_half(k, n):
    return sum(comb(n, x) for x in range(k + 1)) / 2**n


@pytest.mark.parametrize("a_only, b_only, both, neither", [(1, 6, 3, 2), (9, 2, 20, 5), (4, 4, 1, 0), (0, 5, 0, 0)])
def test_mcnemar_by_hand(a_only, b_only, both, neither):
    a = [1] * a_only + [0] * b_only + [1] * both + [0] * neither
    b = [0] * a_only + [1] * b_only + [1] * both + [0] * neither
    r = mcnemar(np.array(a, bool), np.array(b, bool))
    n, k, d = len(a), min(a_only, b_only), a_only + b_only
    assert (r.n, r.a_only, r.b_only) == (n, a_only, b_only)
    assert r.difference == pytest.approx((b_only - a_only) / n)
    exact = min(1.0, 2 * _binom_cdf_half(k, d))
    mid = 2 * (_binom_cdf_half(k, d) - 0.5 * comb(d, k) / 2**d)
    assert r.p_exact == pytest.approx(exact)
    assert r.p_mid == pytest.approx(mid)
    assert r.p_mid <= r.p_exact


def test_mcnemar_without_discordant_pairs_and_bad_input():
    r = mcnemar([1, 0, 1], [1, 0, 1])
    assert (r.p_exact, r.p_mid, r.difference) == (1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="one value per sample"):
        mcnemar([1, 0, 1], [1, 0])


def test_holm_by_hand():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (monotone)
    assert np.allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    out = holm([0.2, np.nan, 0.9])  # m = 2: NaN is no comparison
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], [0.4, 0.9])
    assert np.allclose(holm([0.6, 0.7]), [1.0, 1.0])
    assert holm([]).shape == (0,)


def test_bootstrap_keeps_pairs_together():
    # B = A + 1 sample by sample, A spread widely: a paired resample always differs by exactly 1; an unpaired one
    # would give an interval as wide as A's spread
    a = np.random.default_rng(0).normal(0, 10, size=300)
    r = paired_bootstrap(lambda x, y: y.mean() - x.mean(), a, a + 1, resamples=500)
    assert r.estimate == pytest.approx(1) and r.low == pytest.approx(1) and r.high == pytest.approx(1)
    assert r.p == pytest.approx(2 / 501)  # no resample at or below 0
    # a table: rows reach the statistic rows first, whole
    table = np.column_stack([a, a + 0.5, a * 2])

    def stat(t):
        assert t.shape == table.shape
        return t[:, 1].mean() - t[:, 0].mean()

    r = paired_bootstrap(stat, table, resamples=200)
    assert (r.low, r.high) == (pytest.approx(0.5), pytest.approx(0.5))


def test_bootstrap_interval_matches_an_independent_numpy_bootstrap():
    x = np.random.default_rng(1).normal(0.3, 1.0, size=400)
    r = mean_difference(np.zeros_like(x), x, resamples=4000, seed=3)
    rng = np.random.default_rng(12345)
    means = x[rng.integers(0, len(x), size=(4000, len(x)))].mean(1)
    low, high = np.percentile(means, [2.5, 97.5])
    se = x.std(ddof=1) / sqrt(len(x))
    assert r.estimate == pytest.approx(x.mean())
    # Monte-Carlo error of a 2.5% percentile over 4000 resamples is ~0.04 SE each
    assert abs(r.low - low) < 0.25 * se and abs(r.high - high) < 0.25 * se
    # and the normal-theory interval
    assert abs(r.low - (x.mean() - 1.96 * se)) < 0.25 * se
    assert r.p < 0.01  # 0.3 is ~6 SE away from 0
    zero = mean_difference(x, x + np.random.default_rng(2).normal(0, 1, size=400), resamples=2000)
    assert zero.low < 0 < zero.high and zero.p > 0.05


def test_bootstrap_seed_and_inputs():
    x = np.random.default_rng(4).normal(size=50)
    r1 = paired_bootstrap(np.median, x, resamples=300, seed=7)
    assert r1 == paired_bootstrap(np.median, x, resamples=300, seed=7)
    assert r1 != paired_bootstrap(np.median, x, resamples=300, seed=8)
    assert r1.estimate == pytest.approx(np.median(x))
    with pytest.raises(ValueError, match="same number of rows"):
        paired_bootstrap(lambda a, b: 0.0, x, x[:10])
    with pytest.raises(ValueError, match="at least two"):
        paired_bootstrap(np.mean, x[:1])
