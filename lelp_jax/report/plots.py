"""The PNG plots of `lelp report`: eigen-spectrum, learning curves, accuracy against each swept key and
against the labelled share of the distillation split."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lelp_jax.protocol.paired import by_method, t_half_width
from lelp_jax.report.tables import point_stats

__all__ = ["plot_spectrum", "plot_curves", "plot_sweep", "labelled_share", "fraction_stats", "plot_fraction"]


def _figure(**kwargs):
    """A figure outside pyplot: no global backend switch, so a notebook's inline plots keep working."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_spectrum(eigenvalues: np.ndarray, path: Path, *, title: str) -> Path:
    """Per-class eigenvalues of the (projected) teacher-embedding covariance, descending, log scale."""
    fig = _figure(figsize=(6, 3.8))
    ax = fig.subplots()
    floor = 1e-12
    for c, ev in enumerate(np.atleast_2d(eigenvalues)):
        ev = np.sort(np.asarray(ev, np.float64))[::-1]
        ax.plot(np.arange(1, ev.size + 1), np.maximum(ev, floor), marker=".", label=f"class {c}")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("eigenvalue")
    ax.set_title(_wrap(title), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_curves(runs: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path:
    """Validation accuracy and train loss against step, per method: the mean over seeds at each step, and
    with several seeds a band of mean ± std (population std over the seeds logged at that step): the
    training trajectory of every workdir, from its runs' metrics."""
    fig = _figure(figsize=(9, 3.5))
    ax_acc, ax_loss = fig.subplots(1, 2)
    for method, rs in by_method(runs).items():
        for key, ax in (("val_accuracy", ax_acc), ("train_loss", ax_loss)):
            per_step: dict[int, list[float]] = {}
            for r in rs:
                for h in r.get("history") or []:
                    if h.get(key) is not None:
                        per_step.setdefault(int(h["step"]), []).append(float(h[key]))
            if per_step:
                steps = sorted(per_step)
                mean = np.asarray([np.mean(per_step[s]) for s in steps])
                (line,) = ax.plot(steps, mean, marker=".", label=method)
                if max(len(v) for v in per_step.values()) > 1:
                    sd = np.asarray([np.std(per_step[s]) for s in steps])
                    ax.fill_between(steps, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, linewidth=0)
    for ax, name in ((ax_acc, "validation accuracy"), (ax_loss, "train loss")):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(_wrap(title, 100), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


# Keys whose values are scales (temperatures, weights, rates): drawn on a log axis.
_SCALE_KEYS = ("beta", "tau", "student_tau", "temperature", "aux_temperature", "learning_rate", "weight",
               "distance_weight", "angle_weight", "weight_decay")
# Sections every method reads; a reference method swept along any other section's key does not change.
_COMMON_SECTIONS = ("train", "student", "data", "teacher", "smoke", "teacher_cache")
_REFERENCES = ("kd", "ce")


def _wrap(text: str, width: int = 70) -> str:
    """A title broken into lines of at most ``width`` characters (so it is never cut off)."""
    return "\n".join(textwrap.wrap(text, width)) or text


def _reference_band(sweep: Mapping[str, Any], method: str, metric: str) -> Optional[tuple[float, float, int]]:
    """(mean, 95 % t half-width, n) of a reference method at its point chosen on validation (its first
    point when the summary predates validation accuracies), from the sweep summary; None if it never ran."""
    best, best_val = None, -math.inf
    for p in sweep.get("points", []):
        s = (p.get("summary") or {}).get(method) if p.get("status") == "done" else None
        if not s or metric not in s:
            continue
        val = float(s.get("best_val_accuracy", {}).get("mean", -1.0))
        if best is None or val > best_val:
            best, best_val = s, val
    if best is None:
        return None
    n, mean, std = int(best.get("n", 1)), float(best[metric]["mean"]), float(best[metric]["std"])
    half = t_half_width(std * math.sqrt(n / (n - 1)), n) if n > 1 else 0.0  # population std -> sample sd
    return mean, half, n


def plot_sweep(sweep: Mapping[str, Any], key: str, path: Path, *, title: str,
               metric: str = "test_accuracy_best_val") -> Path:
    """Test accuracy against grid key ``key``; one line per method x values of the other keys.

    ``kd`` and ``ce``, when ``key`` is not theirs to change (another method's section), are drawn
    as horizontal reference bands: mean ± 95 % t-interval over seeds at their point chosen on
    validation. Scale keys (beta, tau, temperatures, weights) get a log axis, entropy targets a
    logit axis; the title is wrapped to fit and the legend sits beside the axes.
    """
    section = key.split(".", 1)[0]
    bands = [m for m in _REFERENCES if section not in (m, *_COMMON_SECTIONS)]
    fig = _figure(figsize=(7.5, 4.0))
    ax = fig.subplots()
    lines: dict[tuple, list[tuple[Any, float, float]]] = {}
    for point in sweep.get("points", []):
        if point.get("status") != "done":
            continue
        ov = point["overrides"]
        if key not in ov:  # a point of another method's grid
            continue
        rest = tuple((k, ov[k]) for k in sorted(ov) if k != key)
        for method, (m, s) in point_stats(point, metric).items():
            if method not in bands:
                lines.setdefault((method, rest), []).append((ov[key], m, s))
    values = list(sweep["grid"][key])
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    for (method, rest), pts in sorted(lines.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        pts.sort(key=lambda t: t[0] if numeric else str(t[0]))
        xs = [p[0] if numeric else str(p[0]) for p in pts]
        label = method + "".join(f", {k.rsplit('.', 1)[-1]}={v}" for k, v in rest)
        ax.errorbar(xs, [100 * p[1] for p in pts], yerr=[100 * p[2] for p in pts], marker="o", capsize=3, label=label)
    for method in bands:
        color = {"kd": "tab:purple", "ce": "black"}[method]
        band = _reference_band(sweep, method, metric)
        if band is not None:
            mean, half, n = band
            ax.axhline(100 * mean, color=color, lw=1, ls="--", label=f"{method} (band: 95 % CI, n={n})")
            if half > 0:
                ax.axhspan(100 * (mean - half), 100 * (mean + half), color=color, alpha=0.15, lw=0)
    last = key.rsplit(".", 1)[-1]
    if numeric and last == "target_entropy" and all(0 < v < 1 for v in values):
        ax.set_xscale("logit")
    elif numeric and all(v > 0 for v in values) and (last in _SCALE_KEYS or max(values) / min(values) > 8):
        ax.set_xscale("log")
    if numeric and ax.get_xscale() != "linear" and len(values) <= 12:
        ax.set_xticks(sorted(values))
        ax.set_xticklabels([f"{v:g}" for v in sorted(values)])
        ax.minorticks_off()
    ax.set_xlabel(key + ("" if ax.get_xscale() == "linear" else f" ({ax.get_xscale()} axis)"))
    ax.set_ylabel(f"test accuracy % ({'best val' if metric.endswith('best_val') else 'last'})")
    ax.set_title(_wrap(title), fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def labelled_share(runs: Sequence[Mapping[str, Any]]) -> Optional[float]:
    """``labelled_examples / (labelled_examples + transfer_examples)`` of a workdir's runs (their distillation
    split, :mod:`lelp_jax.data.splits`), or None when the runs do not record it."""
    for r in runs:
        if r.get("labelled_examples") is not None:
            n_l, n_t = int(r["labelled_examples"]), int(r.get("transfer_examples") or 0)
            return n_l / (n_l + n_t)
    return None


def fraction_stats(points: Sequence[tuple[float, Sequence[Mapping[str, Any]]]], *,
                   metric: str = "test_accuracy_best_val") -> dict[str, list[tuple[float, float, float, int]]]:
    """Per method, ``(fraction, mean, half-width, n)`` sorted by fraction: the mean of ``metric`` over the seeds
    of each ``(fraction, runs)`` point and its 95 % Student-t half-width t_{0.975, n-1} s / sqrt(n) (s the
    sample std; nan for one seed)."""
    out: dict[str, list[tuple[float, float, float, int]]] = {}
    for fraction, runs in points:
        for method, rs in by_method(runs).items():
            values = np.asarray([float(r[metric]) for r in rs if r.get(metric) is not None], np.float64)
            if values.size:
                sd = float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
                out.setdefault(method, []).append((float(fraction), float(values.mean()),
                                                   t_half_width(sd, values.size), int(values.size)))
    return {m: sorted(v) for m, v in out.items()}


def plot_fraction(points: Sequence[tuple[float, Sequence[Mapping[str, Any]]]], path: Path, *, title: str,
                  xlabel: str = "labelled share of the distillation set") -> Path:
    """Test accuracy (best-validation step) against the fraction, per method, with 95 % interval bars over
    seeds (:func:`fraction_stats`): the paper's Figure 6 left/right form, one point per workdir."""
    fig = _figure(figsize=(6, 3.8))
    ax = fig.subplots()
    for method, rows in fraction_stats(points).items():
        x, mean, half, _ = (np.asarray(v, np.float64) for v in zip(*rows))
        ax.errorbar(x, 100 * mean, yerr=100 * np.nan_to_num(half), marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(_wrap(title), fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
