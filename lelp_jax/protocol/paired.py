"""Statistics over seeds: per-method mean ± std, Student-t intervals of per-seed differences, the oracle's room.

Per method, over its seeds, every report table and sweep summary gives the mean and the
population std (numpy's default, ddof = 0: 0 for one seed) of each metric (:func:`method_table`,
:func:`method_summary`).

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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import numpy as np

from lelp_jax.train import failed, succeeded

__all__ = ["mean_std", "fmt_mean_std", "by_method", "method_table", "method_summary", "per_seed", "t_cdf",
           "t_quantile", "t_half_width", "PairedDifference", "paired_difference", "room_fraction", "paired_table"]

METRICS = ("test_accuracy_last", "test_accuracy_best_val")
# What a splitting method taught (lelp_jax.pipeline.split_diagnostics), the same for every seed of a fit.
SPLIT_KEYS = ("split_entropy", "split_top_share", "split_nmi")


def mean_std(values: Iterable[Optional[float]]) -> tuple[float, float]:
    """(mean, population std) of ``values``, None and NaN left out; (nan, nan) when none is left."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(float(x))], np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())


def fmt_mean_std(ms: tuple[float, float]) -> str:
    """``(mean, std)`` of accuracies as ``"mm.mm ± s.ss"`` percent (``"n/a"`` for a nan mean)."""
    m, s = ms
    return "n/a" if math.isnan(m) else f"{100 * m:.2f} ± {100 * s:.2f}"


def by_method(runs: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Result records grouped by ``method``, methods in first-seen order."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for r in runs:
        out.setdefault(str(r["method"]), []).append(r)
    return out


def method_table(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per method (in first-seen order): mean/std over seeds of both test accuracies and of
    the best validation accuracy, student parameters (a range if seeds differ), seeds, and the mean
    of what its split taught (``split_entropy``, ``split_top_share``, ``split_nmi``; NaN for methods
    that do not split). A failed (diverged) run counts in no mean and not in ``n``: its seed is listed
    under ``failed``."""
    rows = []
    for method, all_rs in by_method(runs).items():
        rs = succeeded(all_rs)
        row: dict[str, Any] = {"method": method, "n": len(rs), "seeds": sorted(int(r.get("seed", 0)) for r in rs),
                               "failed": sorted(int(r.get("seed", 0)) for r in all_rs if failed(r))}
        for key in (*METRICS, "best_val_accuracy"):
            row[key] = mean_std(r.get(key) for r in rs)
        for key in SPLIT_KEYS:
            row[key] = mean_std(r.get(key) for r in rs)[0]
        row["student_params"] = sorted({int(r["student_params"]) for r in rs if r.get("student_params") is not None})
        rows.append(row)
    return rows


def method_summary(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """A sweep point's summary: method -> ``{metric: {"mean", "std"}, "n"}`` for both test accuracies and
    the best validation accuracy (:func:`method_table`); a metric no run has is left out; ``failed``:
    the seeds whose run diverged (not in ``n``, so selection skips the point)."""
    return {row["method"]: {**{k: {"mean": row[k][0], "std": row[k][1]}
                               for k in (*METRICS, "best_val_accuracy") if not math.isnan(row[k][0])},
                            "n": row["n"], **({"failed": row["failed"]} if row["failed"] else {})}
            for row in method_table(runs)}


def per_seed(runs: Sequence[Mapping[str, Any]], metric: str = "test_accuracy_best_val") -> dict[str, dict[int, float]]:
    """method -> {seed: ``metric``} (methods in first-seen order; runs without the metric left out)."""
    out: dict[str, dict[int, float]] = {}
    for r in runs:
        v = r.get(metric)
        if v is not None and not math.isnan(float(v)):
            out.setdefault(str(r["method"]), {})[int(r.get("seed", 0))] = float(v)
    return out


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


def t_half_width(sample_sd: float, n: int, *, level: float = 0.95) -> float:
    """Half-width of the ``level`` Student-t interval of a mean over ``n`` values:
    t_{(1+level)/2, n-1} * sample_sd / sqrt(n) (nan for n < 2)."""
    if n < 2:
        return float("nan")
    return t_quantile(0.5 + level / 2, n - 1) * sample_sd / math.sqrt(n)


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
    return PairedDifference(seeds, mean, t_half_width(sd, n, level=level), level)


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
