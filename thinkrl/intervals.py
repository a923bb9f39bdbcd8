"""Intervals over seeds: the 95% Student-t interval of a mean, for the report's tables and plot bands.

    mean, half = t_interval([0.40, 0.42, 0.47])   # 0.43, 0.0896: the report shows 43.0% ± 9.0%
    t_quantile(0.975, 2)                          # 4.3027

A scheme run with n seeds gives n values of a figure (final accuracy, samples to reach the baseline, a curve
at one x). The interval is mean ± t_{0.975, n-1} · s / √n with s the sample std (ddof = 1): a t-interval over
seeds, not a bootstrap. With the 2-5 seeds a CPU budget allows, a percentile bootstrap can never leave
[min, max] of the values and is too narrow (with 3 values it has 10 distinct resamples); the t-interval
widens with few seeds as it should (n = 2: ±12.7 s/√2). It assumes the seed-to-seed spread is roughly normal.
Fewer than 2 values: no interval.

The quantile is exact for integer degrees of freedom: the two-sided t CDF A(t|ν) = P(|T| < t) has a finite
closed form in θ = atan(t/√ν) (Abramowitz & Stegun 26.7.3-4), solved for A = 2p − 1 by bisection; no scipy.

Against the paper: reporting, not part of the method (docs/PAPER.md). The paper reports single runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

LEVEL = 0.95  # two-sided coverage of every interval the report shows


def t_two_sided_cdf(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df >= 1 (A & S 26.7.3 odd df, 26.7.4 even df)."""
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:  # odd: (2/π)(θ + sinθ cosθ (1 + 2/3 cos²θ + 2·4/(3·5) cos⁴θ + ...)), df - 3 the last power
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)
    term, total = 1.0, 1.0  # even: sinθ (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + ...), df - 2 the last power
    for k in range(1, df // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        total += term
    return math.sin(theta) * total


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p in (0.5, 1)) of Student's t with integer df >= 1, to float precision."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1 (got p={p}, df={df})")
    target, lo, hi = 2 * p - 1, 0.0, 1.0
    while t_two_sided_cdf(hi, df) < target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_two_sided_cdf(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return (lo + hi) / 2


def t_half_width(std: float, n: int, level: float = LEVEL) -> float:
    """Half-width t_{(1+level)/2, n-1} · std / √n of the interval of a mean of n values with sample std `std`."""
    return t_quantile((1 + level) / 2, n - 1) * std / math.sqrt(n)


def t_interval(values: Iterable[float], level: float = LEVEL) -> tuple[float, float | None]:
    """(mean, half-width) of the t-interval of the values' mean; half-width None for fewer than 2 values."""
    xs = np.asarray(list(values), dtype=np.float64)
    if xs.size == 0:
        raise ValueError("t_interval of no values")
    if xs.size < 2:
        return float(xs.mean()), None
    return float(xs.mean()), t_half_width(float(xs.std(ddof=1)), int(xs.size), level)
