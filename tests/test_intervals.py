"""thinkrl.intervals: the Student-t quantile against closed forms, the 95% interval of 3 values by hand."""

from __future__ import annotations

import math

import pytest

from thinkrl.intervals import t_half_width, t_interval, t_quantile, t_two_sided_cdf


def test_t_quantile_closed_forms():
    # df = 1 (Cauchy): t_p = tan(pi (p - 1/2)); df = 2: P(|T| < t) = t / sqrt(2 + t^2), so t = a sqrt(2 / (1 - a^2))
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-10)  # 12.7062
    assert t_quantile(0.975, 2) == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95 ** 2)), rel=1e-10)  # 4.3027
    assert t_quantile(0.95, 2) == pytest.approx(0.9 * math.sqrt(2 / (1 - 0.9 ** 2)), rel=1e-10)
    # printed tables (4 decimals): odd and even df, and the normal limit 1.96
    for df, t in ((3, 3.1824), (4, 2.7764), (5, 2.5706), (10, 2.2281), (30, 2.0423)):
        assert t_quantile(0.975, df) == pytest.approx(t, abs=6e-5)
    assert 1.959 < t_quantile(0.975, 5000) < 1.961
    assert t_two_sided_cdf(0.0, 3) == 0.0 and t_two_sided_cdf(1e9, 3) == pytest.approx(1.0)


def test_interval_of_three_values_by_hand():
    # mean 0.43; deviations -0.03, -0.01, +0.04: s^2 = (9 + 1 + 16) e-4 / 2 = 13e-4; s / sqrt(3) = 0.0208167;
    # t_0.975,2 = 0.95 sqrt(2 / 0.0975) = 4.3026527 -> half-width 0.0895669
    mean, half = t_interval([0.40, 0.42, 0.47])
    assert mean == pytest.approx(0.43)
    assert half == pytest.approx(4.3026527 * math.sqrt(13e-4) / math.sqrt(3), rel=1e-7)
    assert half == pytest.approx(0.0895669, abs=1e-7)
    assert t_half_width(math.sqrt(13e-4), 3) == pytest.approx(half)


def test_one_value_has_no_interval_and_bad_p_is_refused():
    assert t_interval([0.5]) == (0.5, None)
    with pytest.raises(ValueError):
        t_interval([])
    with pytest.raises(ValueError):
        t_quantile(0.4, 3)
