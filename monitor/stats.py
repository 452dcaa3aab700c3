"""Exact small-sample statistics the rollout's promotion gates and the drift detector rest on.

Responsible for confidence bounds on proportions (Wilson score, Clopper-Pearson), for
the exact conditional test of a Poisson rate ratio, and for the binomial and chi-square
tails behind them. Pure maths with no imports from the rest of the project, so both
the data plane (:mod:`monitor.drift`) and the control plane (:mod:`rollout.gates`) use
it without ``monitor`` importing ``rollout``. Gates decide on bounds, never on point
estimates alone, so that a handful of lucky reviews cannot pass a gate.

The binomial and beta functions come from SciPy when it is installed and are computed
here otherwise (the regularized incomplete beta function by its continued fraction,
inverted by bisection); both paths are tested against each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_UNSET = object()
_scipy_betainc_cache: object = _UNSET

_CF_MAX_ITERATIONS = 100_000
_CF_EPSILON = 3e-16
_TINY = 1e-300
_BISECTIONS = 200


def z_for(confidence: float) -> float:
    """The two-sided normal quantile for a confidence level (1.96 for 0.95).

    Raises:
        ValueError: ``confidence`` is not strictly between 0 and 1.
    """
    _check_confidence(confidence)
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")


def _check_counts(successes: int, trials: int) -> None:
    if trials < 0 or successes < 0 or successes > trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _CF_MAX_ITERATIONS + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _CF_EPSILON:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")


def betainc_pure(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), without SciPy.

    Args:
        a: first shape, > 0.
        b: second shape, > 0.
        x: in [0, 1].

    Returns:
        I_x(a, b) in [0, 1].

    Raises:
        ValueError: shapes not positive or x outside [0, 1].
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"beta shapes must be positive, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    # The continued fraction converges fast only on one side of the mean; use the
    # symmetry I_x(a, b) = 1 - I_{1-x}(b, a) on the other.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def scipy_betainc():
    """SciPy's regularized incomplete beta, or None when SciPy is not installed.

    Imported on first use, not at import time: SciPy is optional and slow to import.
    """
    global _scipy_betainc_cache
    if _scipy_betainc_cache is _UNSET:
        try:
            from scipy.special import betainc as found
        except ImportError:  # pragma: no cover - depends on the environment
            found = None
        _scipy_betainc_cache = found
    return _scipy_betainc_cache


def betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b): SciPy's when installed, else :func:`betainc_pure`."""
    function = scipy_betainc()
    if function is not None:
        return float(function(a, b, x))
    return betainc_pure(a, b, x)


def beta_ppf(q: float, a: float, b: float, *, pure: bool = False) -> float:
    """The q-quantile of Beta(a, b), by bisection on I_x(a, b) (monotone in x).

    Args:
        q: probability in [0, 1].
        a: first shape, > 0.
        b: second shape, > 0.
        pure: use the SciPy-free incomplete beta even when SciPy is installed (tests).
    """
    if q <= 0.0:
        return 0.0
    if q >= 1.0:
        return 1.0
    function = betainc_pure if pure else betainc
    low, high = 0.0, 1.0
    for _ in range(_BISECTIONS):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if function(a, b, middle) < q:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def binom_cdf(k: int, n: int, p: float, *, pure: bool = False) -> float:
    """P(X <= k) for X ~ Binomial(n, p), exactly."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    function = betainc_pure if pure else betainc
    return function(n - k, k + 1, 1.0 - p)


def binom_sf(k: int, n: int, p: float, *, pure: bool = False) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly."""
    return 1.0 - binom_cdf(k - 1, n, p, pure=pure) if k > 0 else 1.0


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with its two-sided confidence bounds."""

    estimate: float | None
    lower: float
    upper: float


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of a proportion.

    Args:
        successes: e.g. approved positives.
        trials: e.g. decided positives.
        confidence: two-sided level (0.95 gives the usual 95% interval).

    Returns:
        The estimate (None when there are no trials) and bounds ([0, 1] when none).

    Raises:
        ValueError: impossible counts or confidence.
    """
    _check_counts(successes, trials)
    if trials == 0:
        _check_confidence(confidence)
        return Interval(None, 0.0, 1.0)
    z = z_for(confidence)
    share = successes / trials
    z2n = z * z / trials
    centre = (share + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(share * (1 - share) / trials + z2n / (4 * trials))
    return Interval(share, max(0.0, centre - half), min(1.0, centre + half))


def clopper_pearson_interval(successes: int, trials: int, confidence: float = 0.95, *, pure: bool = False) -> Interval:
    """Exact (Clopper-Pearson) interval of a proportion; never narrower than it should be.

    Args:
        successes: e.g. misses found among reviewed negatives.
        trials: e.g. decided negatives.
        confidence: two-sided level.
        pure: compute without SciPy (tests).

    Returns:
        The estimate (None when there are no trials) and bounds ([0, 1] when none).

    Raises:
        ValueError: impossible counts or confidence.
    """
    _check_counts(successes, trials)
    _check_confidence(confidence)
    if trials == 0:
        return Interval(None, 0.0, 1.0)
    tail = (1 - confidence) / 2
    lower = 0.0 if successes == 0 else beta_ppf(tail, successes, trials - successes + 1, pure=pure)
    upper = 1.0 if successes == trials else beta_ppf(1 - tail, successes + 1, trials - successes, pure=pure)
    return Interval(successes / trials, lower, upper)


@dataclass(frozen=True, slots=True)
class RateRatio:
    """Current rate over baseline rate, with an exact interval and one-sided p-values.

    Attributes:
        ratio: the point estimate; None when the baseline has no events.
        lower, upper: exact two-sided bounds (upper is ``math.inf`` when unbounded).
        p_above: P(a ratio this high or higher | the true ratio is ``high``).
        p_below: P(a ratio this low or lower | the true ratio is ``low``).
    """

    ratio: float | None
    lower: float
    upper: float
    p_above: float
    p_below: float


def poisson_rate_ratio(
    events: int,
    exposure: float,
    baseline_events: int,
    baseline_exposure: float,
    *,
    low: float = 0.5,
    high: float = 2.0,
    confidence: float = 0.95,
) -> RateRatio:
    """Compare two Poisson rates exactly, conditioning on their total.

    Given both counts, the current count is Binomial(total, pi) with
    pi = R * E1 / (R * E1 + E0), R being the true rate ratio. A Clopper-Pearson interval
    on pi maps one-to-one onto an interval on R, and the binomial tails at R = ``high``
    and R = ``low`` are the one-sided tests of "significantly above/below the band".

    Args:
        events: positives in the current period (k1).
        exposure: classified stills in the current period (E1), > 0.
        baseline_events: positives in the baseline (k0).
        baseline_exposure: classified stills in the baseline (E0), > 0.
        low: lower edge of the acceptable band of ratios.
        high: upper edge of the acceptable band.
        confidence: two-sided level of the interval.

    Raises:
        ValueError: negative counts, non-positive exposures or a band not around 1.
    """
    if events < 0 or baseline_events < 0:
        raise ValueError("event counts must not be negative")
    if exposure <= 0 or baseline_exposure <= 0:
        raise ValueError("exposures must be positive")
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got {low}, {high}")
    total = events + baseline_events
    scale = baseline_exposure / exposure
    ratio = (events / exposure) / (baseline_events / baseline_exposure) if baseline_events else None
    if total == 0:
        return RateRatio(None, 0.0, math.inf, 1.0, 1.0)
    share = clopper_pearson_interval(events, total, confidence)
    lower = share.lower / (1 - share.lower) * scale if share.lower < 1 else math.inf
    upper = share.upper / (1 - share.upper) * scale if share.upper < 1 else math.inf

    def pi_at(r: float) -> float:
        return r * exposure / (r * exposure + baseline_exposure)

    return RateRatio(
        ratio=ratio,
        lower=lower,
        upper=upper,
        p_above=binom_sf(events, total, pi_at(high)),
        p_below=binom_cdf(events, total, pi_at(low)),
    )


def _gammaincc_pure(a: float, x: float) -> float:
    """Q(a, x), the regularized upper incomplete gamma function (series below a + 1,
    Lentz's continued fraction above), as in Numerical Recipes' gammq."""
    if x <= 0.0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        denominator = a
        for _ in range(_CF_MAX_ITERATIONS):
            denominator += 1.0
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * _CF_EPSILON:
                return max(0.0, 1.0 - total * math.exp(log_front))
        raise ArithmeticError(f"incomplete gamma series did not converge for a={a}, x={x}")
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _CF_MAX_ITERATIONS + 1):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = d if abs(d) > _TINY else _TINY
        c = b + an / c
        c = c if abs(c) > _TINY else _TINY
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _CF_EPSILON:
            return math.exp(log_front) * h
    raise ArithmeticError(f"incomplete gamma fraction did not converge for a={a}, x={x}")


def chi2_sf(statistic: float, dof: int, *, pure: bool = False) -> float:
    """P(X >= statistic) for X ~ chi-square with ``dof`` degrees of freedom.

    SciPy's regularized gamma when installed (and ``pure`` is false), else computed here.

    Raises:
        ValueError: ``dof`` below 1.
    """
    if dof < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {dof}")
    if statistic <= 0.0:
        return 1.0
    if not pure:
        try:
            from scipy.special import gammaincc
        except ImportError:  # pragma: no cover - depends on the environment
            pass
        else:
            return float(gammaincc(dof / 2.0, statistic / 2.0))
    return _gammaincc_pure(dof / 2.0, statistic / 2.0)
