"""Paired comparisons over seeds: Student-t intervals of per-seed differences, the oracle's room.

Methods of one comparison share, per seed, the data order and (where the shapes agree) the
student's initialisation (``train.init_train_state`` and the data iterator are keyed by the seed
alone), so the per-seed difference d_s = acc_A(s) - acc_B(s) removes the noise both share. Over the
n seeds both have run:

    mean d = (1/n) sum_s d_s,   sd = sqrt(sum_s (d_s - mean d)^2 / (n - 1)),
    95 % interval = mean d -/+ t_{0.975, n-1} * sd / sqrt(n)

(Student's t with n - 1 degrees of freedom). An interval that covers 0 is "inside noise": no
difference shown. The t quantile is computed here (regularised incomplete beta by a continued
fraction, inverted by bisection), so scipy is not needed at run time.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Optional

__all__ = ["t_cdf", "t_quantile", "PairedDifference", "paired_difference", "room_fraction", "paired_table"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), converges for x < (a+1)/(a+b+2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for a, b > 0, 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom: 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0."""
    if df <= 0:
        raise ValueError(f"t_cdf: degrees of freedom must be > 0, got {df}.")
    tail = 0.5 * _betainc(0.5 * df, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`, |error| < 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), got {p}.")
    if df <= 0:
        raise ValueError(f"t_quantile: degrees of freedom must be > 0, got {df}.")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-11 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """mean of d_s = a(s) - b(s) over ``seeds`` and its ``level`` t-interval [low, high] (nan for one seed)."""

    seeds: tuple[int, ...]
    mean: float
    half_width: float
    level: float

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def inside_noise(self) -> bool:
        """True when the interval covers 0 (or there is no interval: one seed)."""
        return math.isnan(self.half_width) or self.low <= 0.0 <= self.high

    @property
    def verdict(self) -> str:
        if math.isnan(self.half_width):
            return "one seed: no interval"
        if self.inside_noise:
            return "inside noise"
        return "above" if self.mean > 0 else "below"


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], *, level: float = 0.95
                      ) -> Optional[PairedDifference]:
    """The paired difference a - b over the seeds both have (None when they share no seed)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"paired_difference: level must be in (0, 1), got {level}.")
    seeds = tuple(sorted(set(a) & set(b)))
    if not seeds:
        return None
    d = [float(a[s]) - float(b[s]) for s in seeds]
    n = len(d)
    mean = sum(d) / n
    if n == 1:
        return PairedDifference(seeds, mean, float("nan"), level)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    return PairedDifference(seeds, mean, t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n), level)


def room_fraction(method: Mapping[int, float], ce: Mapping[int, float], oracle: Mapping[int, float]
                  ) -> Optional[float]:
    """(method - ce) / (oracle - ce), means over the seeds all three have: the share of the oracle's
    room over hard labels that the method captures (None without common seeds or without room)."""
    seeds = sorted(set(method) & set(ce) & set(oracle))
    if not seeds:
        return None
    mean = lambda d: sum(float(d[s]) for s in seeds) / len(seeds)  # noqa: E731
    room = mean(oracle) - mean(ce)
    return None if room <= 0 else (mean(method) - mean(ce)) / room


def _fmt_diff(d: Optional[PairedDifference]) -> str:
    if d is None:
        return "– | –"
    if math.isnan(d.half_width):
        return f"{100 * d.mean:+.2f} (n=1) | {d.verdict}"
    return f"{100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}] (n={d.n}) | {d.verdict}"


def paired_table(acc: Mapping[str, Mapping[int, float]], *, references: Sequence[str] = ("kd", "ce"),
                 level: float = 0.95) -> list[str]:
    """Markdown rows: per method its paired difference to each present reference (percentage points,
    ``level`` t-interval, verdict) and, with ``ce`` and ``oracle`` present, its fraction of the oracle's room.

    ``acc`` maps method -> {seed: accuracy in [0, 1]}. Empty when no reference is present.
    """
    refs = [r for r in references if r in acc]
    if not refs:
        return []
    room = "ce" in acc and "oracle" in acc
    head = ["method"] + [f"Δ vs {r} (pp) [{round(100 * level)} % CI] | vs {r}" for r in refs]
    head += ["oracle room"] if room else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * (1 + 2 * len(refs) + room)]
    for method, per_seed in acc.items():
        cells = [method] + ["– | –" if method == r else _fmt_diff(paired_difference(per_seed, acc[r], level=level))
                            for r in refs]
        if room:
            f = room_fraction(per_seed, acc["ce"], acc["oracle"])
            cells.append("n/a" if f is None else f"{f:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
