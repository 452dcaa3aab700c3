"""The exact statistics under the rollout gates and the drift detector: known values, both code paths, bad input."""

from __future__ import annotations

import math

import pytest

from monitor import stats
from monitor.stats import (
    betainc_pure,
    binom_cdf,
    binom_sf,
    clopper_pearson_interval,
    poisson_rate_ratio,
    wilson_interval,
    z_for,
)

Z95 = 1.959963984540054


def textbook_wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson (1927), written out independently of the module under test."""
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (centre - spread) / denominator, (centre + spread) / denominator


def textbook_binom_cdf(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(0, k + 1))


def test_z_for_95_percent():
    assert z_for(0.95) == pytest.approx(Z95, rel=1e-12)


@pytest.mark.parametrize("successes,trials", [(0, 1), (1, 1), (45, 50), (96, 100), (189, 200), (3, 1000)])
def test_wilson_matches_the_textbook_formula(successes, trials):
    interval = wilson_interval(successes, trials)
    lower, upper = textbook_wilson(successes, trials)
    assert interval.lower == pytest.approx(max(0.0, lower), abs=1e-12)
    assert interval.upper == pytest.approx(min(1.0, upper), abs=1e-12)
    assert interval.estimate == successes / trials


def test_wilson_with_no_trials_knows_nothing():
    interval = wilson_interval(0, 0)
    assert (interval.estimate, interval.lower, interval.upper) == (None, 0.0, 1.0)


@pytest.mark.parametrize("pure", [False, True])
def test_clopper_pearson_zero_successes_has_the_closed_form(pure):
    # With no successes the upper bound solves (1 - u)^n = alpha/2.
    interval = clopper_pearson_interval(0, 10, pure=pure)
    assert interval.lower == 0.0
    assert interval.upper == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)
    assert clopper_pearson_interval(10, 10, pure=pure).lower == pytest.approx(0.025 ** (1 / 10), rel=1e-9)


@pytest.mark.parametrize("pure", [False, True])
@pytest.mark.parametrize("successes,trials", [(1, 20), (3, 10), (12, 300), (45, 50)])
def test_clopper_pearson_bounds_are_where_the_binomial_tails_are_two_and_a_half_percent(pure, successes, trials):
    interval = clopper_pearson_interval(successes, trials, pure=pure)
    # The upper bound u: P(X <= k | u) = 0.025; the lower bound l: P(X >= k | l) = 0.025.
    assert textbook_binom_cdf(successes, trials, interval.upper) == pytest.approx(0.025, rel=1e-7)
    assert 1 - textbook_binom_cdf(successes - 1, trials, interval.lower) == pytest.approx(0.025, rel=1e-7)


@pytest.mark.parametrize("k,n,p", [(0, 5, 0.3), (3, 10, 0.2), (7, 10, 0.5), (40, 60, 0.71), (10, 10, 0.4)])
def test_binomial_tails_are_exact(k, n, p):
    for pure in (False, True):
        assert binom_cdf(k, n, p, pure=pure) == pytest.approx(textbook_binom_cdf(k, n, p), rel=1e-9, abs=1e-15)
        assert binom_sf(k, n, p, pure=pure) == pytest.approx(1 - textbook_binom_cdf(k - 1, n, p), rel=1e-9, abs=1e-15)


@pytest.mark.skipif(stats.scipy_betainc() is None, reason="SciPy not installed: nothing to compare the pure path with")
@pytest.mark.parametrize("a,b,x", [(1, 1, 0.3), (0.5, 0.5, 0.2), (5, 3, 0.9), (200, 1800, 0.1), (50000, 50001, 0.5)])
def test_pure_incomplete_beta_agrees_with_scipy(a, b, x):
    assert betainc_pure(a, b, x) == pytest.approx(stats.betainc(a, b, x), rel=1e-9, abs=1e-14)


def test_rate_ratio_interval_and_tails():
    # Baseline 100 positives in 10000 stills; now 200 in 10000: twice the rate.
    test = poisson_rate_ratio(200, 10_000, 100, 10_000)
    assert test.ratio == pytest.approx(2.0)
    assert test.lower < 2.0 < test.upper
    # Conditional on 300 positives, the share that is current is Binomial(300, 2/3) at R = 2.
    assert test.p_above == pytest.approx(1 - textbook_binom_cdf(199, 300, 2 / 3), rel=1e-9)
    assert test.p_below == pytest.approx(textbook_binom_cdf(200, 300, 1 / 3), rel=1e-9, abs=1e-15)


def test_rate_ratio_accounts_for_different_exposures():
    # Same rate, half the exposure: the ratio is 1 and the interval contains it.
    test = poisson_rate_ratio(50, 5_000, 100, 10_000)
    assert test.ratio == pytest.approx(1.0)
    assert test.lower < 1.0 < test.upper


def test_rate_ratio_with_no_events_at_all_is_unbounded():
    test = poisson_rate_ratio(0, 100, 0, 100)
    assert test.ratio is None and test.lower == 0.0 and math.isinf(test.upper)


@pytest.mark.parametrize(
    "call",
    [
        lambda: wilson_interval(3, 2),
        lambda: wilson_interval(-1, 2),
        lambda: wilson_interval(1, 2, confidence=1.0),
        lambda: clopper_pearson_interval(1, 2, confidence=0.0),
        lambda: poisson_rate_ratio(1, 0, 1, 10),
        lambda: poisson_rate_ratio(-1, 10, 1, 10),
        lambda: poisson_rate_ratio(1, 10, 1, 10, low=2.0, high=0.5),
        lambda: betainc_pure(0, 1, 0.5),
        lambda: betainc_pure(1, 1, 1.5),
    ],
)
def test_impossible_input_is_refused(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("module", ["monitor/stats.py", "monitor/drift.py"])
def test_the_statistics_and_the_drift_detector_do_not_import_rollout(module):
    """The data plane's maths lives in monitor; rollout imports it, never the other way."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).resolve().parents[1] / module).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not {name for name in imported if name == "rollout" or name.startswith("rollout.")}
