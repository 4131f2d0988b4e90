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
  undecided claim says how many seeds per side would decide the observed difference with 80 %
  power (if the true difference and spreads were the observed ones);
- the two-sided p-value of Welch's t-test (p < 0.05 exactly when the interval excludes zero),
  and :func:`holm` for a family of claims (the README's headline claims): Holm's step-down
  correction of their verdicts at the same level.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

HOLDS, DOES_NOT_HOLD, UNDECIDED = "holds", "does not hold", "undecided"
LEVEL = 0.95
POWER = 0.8


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
    p: float = math.nan  # two-sided p-value of Welch's t-test (NaN without an interval)

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
                f"{format_p(self.p)} | "
                f"**{self.verdict}**{': ' + self.reason if self.reason else ''} |")


VERDICT_HEADER = ("| claim (paper's direction) | claimed better | claimed worse | difference "
                  "[95 % CI] | p | verdict |\n|---|---|---|---|---|---|")


def format_p(p: float) -> str:
    """A p-value for a table: '—' when there is none, '< 0.0001' below that."""
    if math.isnan(p):
        return "—"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


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


def _welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """(mean(a) − mean(b), its squared standard error, Welch-Satterthwaite df)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("Welch's interval needs at least two values on each side")
    diff = statistics.fmean(a) - statistics.fmean(b)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = va + vb
    if se2 == 0.0:
        return diff, 0.0, math.inf
    return diff, se2, se2 * se2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL
                   ) -> tuple[float, float, float]:
    """mean(a) − mean(b) and its ``level`` confidence interval by Welch's t (≥ 2 values each)."""
    diff, se2, df = _welch(a, b)
    if se2 == 0.0:  # both sides exactly repeatable: the interval is the point itself
        return diff, diff, diff
    half = t_quantile(0.5 + level / 2.0, df) * math.sqrt(se2)
    return diff, diff - half, diff + half


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sided p-value of Welch's t-test of mean(a) = mean(b) (≥ 2 values each)."""
    diff, se2, df = _welch(a, b)
    if se2 == 0.0:
        return 1.0 if diff == 0.0 else 0.0
    return min(1.0, 2.0 * (1.0 - t_cdf(abs(diff) / math.sqrt(se2), df)))


def holm(verdicts: Sequence[Verdict], level: float = LEVEL) -> list[str]:
    """The verdicts of a family of claims after Holm's step-down correction: in order of
    increasing p, the k-th smallest (of m) keeps its verdict while p ≤ (1 − level)/(m − k + 1);
    from the first that fails, it and the rest are undecided. Claims without a p-value count in
    m and are undecided."""
    alpha = 1.0 - level
    m = len(verdicts)
    order = sorted(range(m), key=lambda i: (math.isnan(verdicts[i].p), verdicts[i].p))
    out = [UNDECIDED] * m
    for k, i in enumerate(order):
        p = verdicts[i].p
        if math.isnan(p) or p > alpha / (m - k):
            break
        out[i] = verdicts[i].verdict
    return out


def seeds_needed(a: Sequence[float], b: Sequence[float], level: float = LEVEL,
                 most: int = 1000, power: float = POWER) -> int | None:
    """Seeds per side with which a true difference equal to the observed one (and the observed
    spreads) would be decided with probability ``power`` (``power=0.5``: the n at which the
    observed difference itself would just lie outside its interval); None when the means are
    equal (no number of seeds decides it) or more than ``most`` would be needed."""
    diff = abs(statistics.fmean(a) - statistics.fmean(b))
    var = statistics.variance(a) + statistics.variance(b)
    if diff == 0.0:
        return None
    squares = statistics.variance(a) ** 2 + statistics.variance(b) ** 2

    def decides(n: int) -> bool:
        df = (n - 1) * var * var / squares if var > 0 else 2 * n - 2
        df = max(df, 1.0)
        z = t_quantile(0.5 + level / 2.0, df) + (t_quantile(power, df) if power != 0.5 else 0.0)
        return z * math.sqrt(var / n) < diff

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
    p = welch_p(a, b)
    if low > 0:
        return Verdict(claim, better, than, diff, low, high, HOLDS, "", p)
    if high < 0:
        return Verdict(claim, better, than, diff, low, high, DOES_NOT_HOLD, "", p)
    need = seeds_needed(a, b, level)
    if statistics.fmean(a) == statistics.fmean(b):
        reason = "no difference between the means"
    elif need is None:
        reason = "the interval covers 0; more than 1000 seeds per side would be needed"
    else:
        reason = (f"the interval covers 0; ≈ {need} seeds per side would decide a difference "
                  "this large with 80 % power")
    return Verdict(claim, better, than, diff, low, high, UNDECIDED, reason, p)


def verdict_table(claims: Sequence[Claim], finals: dict[str, Sequence[dict[str, Any]]]) -> str:
    """The markdown table of every claim's verdict."""
    return "\n".join([VERDICT_HEADER, *(judge(c, finals).line() for c in claims)])


__all__ = ["DOES_NOT_HOLD", "HOLDS", "UNDECIDED", "Claim", "Side", "Verdict", "format_p", "holm",
           "judge", "seeds_needed", "t_cdf", "t_quantile", "verdict_table", "welch_interval",
           "welch_p"]
