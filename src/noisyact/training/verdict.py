"""The paper's claims as data, and a verdict for each by a stated rule.

A :class:`Claim` says that one row beats another on one final metric ("NAN test ppl <
reference test ppl"). :func:`judge` compares the two rows' seeds:

- both sides as mean ± sample std over their n seeds;
- the difference of the means, oriented so that a positive value is the paper's direction, with a
  95 % confidence interval from Welch's t (unequal variances, Welch-Satterthwaite degrees of
  freedom);
- the verdict: **holds** when the interval lies above zero, **does not hold** when it lies below
  zero (the data contradict the paper's direction), **undecided** when it covers zero. A side
  with fewer than two seeds has no spread, so the claim is undecided whatever its means; an
  undecided claim says roughly how many seeds per side would decide the observed difference.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

HOLDS, DOES_NOT_HOLD, UNDECIDED = "holds", "does not hold", "undecided"
LEVEL = 0.95


@dataclass(frozen=True)
class Claim:
    """``better`` beats ``than`` on the final metric ``metric`` (lower or higher is better).

    ``missing_as`` names a final.json key whose value stands in for a seed that has no value of
    ``metric`` (e.g. a run that never solved the task counts as solving at its last update,
    ``missing_as="steps"``), so that unsuccessful seeds are not silently dropped.
    """

    better: str
    than: str
    metric: str
    label: str
    lower_is_better: bool = True
    missing_as: str | None = None

    @property
    def text(self) -> str:
        op = "<" if self.lower_is_better else ">"
        return f"{self.better} {op} {self.than} ({self.label})"


@dataclass(frozen=True)
class Side:
    """One row's seeds for a claim."""

    row: str
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else math.nan

    def __str__(self) -> str:
        if not self.values:
            return "no finished seed"
        digits = _digits(self.mean)
        spread = f" ± {self.std:.{digits}f}" if self.n > 1 else ""
        return f"{self.mean:.{digits}f}{spread} (n={self.n})"


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`judge` for one claim."""

    claim: Claim
    better: Side
    than: Side
    diff: float  # in the paper's direction: > 0 means the claimed winner is ahead
    low: float
    high: float
    verdict: str
    reason: str

    def line(self) -> str:
        """A markdown table row: claim, both sides, the difference with its interval, verdict."""
        if math.isnan(self.diff):
            interval = "—"
        elif math.isnan(self.low):
            interval = f"{_fmt(self.diff, signed=True)} (no interval)"
        else:
            interval = (f"{_fmt(self.diff, signed=True)} [{_fmt(self.low, signed=True)}, "
                        f"{_fmt(self.high, signed=True)}]")
        return (f"| {self.claim.text} | {self.better} | {self.than} | {interval} | "
                f"**{self.verdict}**{': ' + self.reason if self.reason else ''} |")


VERDICT_HEADER = ("| claim (paper's direction) | claimed better | claimed worse | difference "
                  "[95 % CI] | verdict |\n|---|---|---|---|---|")


def _digits(x: float) -> int:
    return 2 if abs(x) < 1000 else 0


def _fmt(x: float, signed: bool = False) -> str:
    if math.isnan(x):
        return "—"
    digits = _digits(x)
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


# --- Student's t quantile (no SciPy): regularised incomplete beta by continued fraction ---------

def _betacf(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` (real, > 0) degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-13 * hi:  # ≈ 45 halvings: to double precision's last few digits
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL
                   ) -> tuple[float, float, float]:
    """mean(a) − mean(b) and its ``level`` confidence interval by Welch's t (≥ 2 values each)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's interval needs at least two values on each side")
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = va + vb
    if se2 == 0.0:  # both sides exactly repeatable: the interval is the point itself
        return diff, diff, diff
    df = se2 * se2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    half = t_quantile(0.5 + level / 2.0, df) * math.sqrt(se2)
    return diff, diff - half, diff + half


def seeds_needed(a: Sequence[float], b: Sequence[float], level: float = LEVEL,
                 most: int = 1000) -> int | None:
    """Seeds per side for which the observed difference would lie outside its interval (same
    means and spreads); None when the means are equal (no number of seeds decides it)."""
    diff = abs(statistics.fmean(a) - statistics.fmean(b))
    var = statistics.variance(a) + statistics.variance(b)
    if diff == 0.0:
        return None
    squares = statistics.variance(a) ** 2 + statistics.variance(b) ** 2

    def decides(n: int) -> bool:
        df = (n - 1) * var * var / squares if var > 0 else 2 * n - 2
        return t_quantile(0.5 + level / 2.0, max(df, 1.0)) * math.sqrt(var / n) < diff

    # the interval's half-width shrinks as n grows (both factors do): bisect for the first n
    if not decides(most):
        return None
    lo, hi = 1, most  # decides(hi); n <= lo does not (n = 1 has no interval)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if decides(mid) else (mid, hi)
    return hi


def _side_values(claim: Claim, finals: Sequence[dict[str, Any]]) -> tuple[float, ...]:
    out = []
    for f in finals:
        if f.get("failed"):
            continue
        if claim.metric not in f:  # a run that does not record this metric (older code)
            continue
        v = f[claim.metric]
        if v is None and claim.missing_as is not None:
            v = f.get(claim.missing_as)
        if v is not None:
            out.append(float(v))
    return tuple(out)


def judge(claim: Claim, finals: dict[str, Sequence[dict[str, Any]]],
          level: float = LEVEL) -> Verdict:
    """The verdict on ``claim`` from the ``final.json`` dicts of each row's seeds."""
    better = Side(claim.better, _side_values(claim, finals.get(claim.better, ())))
    than = Side(claim.than, _side_values(claim, finals.get(claim.than, ())))
    if not better.values or not than.values:
        return Verdict(claim, better, than, math.nan, math.nan, math.nan, UNDECIDED,
                       "a side has no finished seed")
    sign = 1.0 if claim.lower_is_better else -1.0
    # oriented so that > 0 is the paper's direction
    a, b = [sign * v for v in than.values], [sign * v for v in better.values]
    diff = statistics.fmean(a) - statistics.fmean(b)
    if better.n < 2 or than.n < 2:
        return Verdict(claim, better, than, diff, math.nan, math.nan, UNDECIDED,
                       "one seed on a side has no spread to compare with; run ≥ 2 (better 3+)")
    diff, low, high = welch_interval(a, b, level)
    if low > 0:
        return Verdict(claim, better, than, diff, low, high, HOLDS, "")
    if high < 0:
        return Verdict(claim, better, than, diff, low, high, DOES_NOT_HOLD, "")
    need = seeds_needed(a, b, level)
    if need is None:
        reason = "no difference between the means"
    else:
        reason = (f"the interval covers 0; ≈ {need} seeds per side would decide a difference "
                  "this large")
    return Verdict(claim, better, than, diff, low, high, UNDECIDED, reason)


def verdict_table(claims: Sequence[Claim], finals: dict[str, Sequence[dict[str, Any]]]) -> str:
    """The markdown table of every claim's verdict."""
    return "\n".join([VERDICT_HEADER, *(judge(c, finals).line() for c in claims)])


__all__ = ["DOES_NOT_HOLD", "HOLDS", "UNDECIDED", "Claim", "Side", "Verdict", "judge",
           "seeds_needed", "t_cdf", "t_quantile", "verdict_table", "welch_interval"]
