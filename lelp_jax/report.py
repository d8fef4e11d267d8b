"""`lelp report WORKDIR...`: Markdown tables and PNG plots from result files only.

Reads, per workdir (never a checkpoint, never a model):
  results.json (or, without it, every runs/METHOD/seed_K/result.json), teacher/teacher.json,
  projections.npz (eigenvalues for the spectrum plot), runs/*/seed_*/metrics.jsonl (curves,
  when a result carries no history), sweep/summary.json (accuracy against each swept key).

Writes to OUT_DIR:
  report.md                        one table per dataset: each workdir's teacher, then every
                                   method's test accuracy (mean ± std over seeds) at the last step
                                   and at the best-validation step, student parameters, number of
                                   seeds (rows prefixed by the config name when several workdirs
                                   share a dataset); per workdir the paired differences of every
                                   method to kd and ce (95 % t-interval over shared seeds, "inside
                                   noise" when it covers 0; lelp_jax.paired) and the fraction of the
                                   oracle's room; one table per sweep
  TAG_spectrum.png                 per-class eigen-spectrum of the teacher embeddings (log scale)
  TAG_curves.png                   validation accuracy and train loss against step, per method
                                   (mean over seeds)
  TAG_sweep_KEY.png                test accuracy (best val) against each swept key, one line
                                   per method and combination of the other keys; error bars = std;
                                   kd and ce as reference bands (mean ± 95 % t-interval) when the
                                   key is another method's; log axis for scales, logit axis for
                                   entropy targets
With ``--select-on validation`` (sweeps run with ``--test-seeds``), each sweep's section also
gives every method's settings chosen on validation, their test accuracy on the fresh seeds and
the paired differences (lelp_jax.selection, docs/PROTOCOL.md).
TAG is ``DATASET_CONFIGNAME`` made file-name safe (with a counter if two workdirs clash).
Std is the population std over seeds (numpy's default, ddof=0): 0 for one seed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lelp_jax import atomic
from lelp_jax.paired import paired_table

__all__ = ["load_workdir", "method_table", "per_seed", "table_rows", "format_table", "build_report", "main"]

_METRICS = ("test_accuracy_last", "test_accuracy_best_val")
# What a splitting method taught (lelp_jax.pipeline.split_diagnostics), the same for every seed of a fit.
_SPLIT_KEYS = ("split_entropy", "split_top_share", "split_nmi")


def _read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill: the rest is still usable
                    continue
    return rows


def load_workdir(workdir: str | os.PathLike) -> dict[str, Any]:
    """Everything the report needs from one workdir, as plain Python/NumPy.

    Returns ``{"root", "dataset", "config_name", "teacher", "runs", "eigenvalues", "sweep",
    "subclass_teacher"}``; ``eigenvalues`` is ``(C, D)`` or None, ``sweep`` the sweep summary
    or None, ``subclass_teacher`` the result of the Subclass-Distillation teacher or None. A run without
    a ``history`` gets one from its metrics.jsonl. Raises ValueError when the folder holds
    no results at all.
    """
    root = Path(workdir)
    if not root.is_dir():
        raise ValueError(f"lelp report: {str(root)!r} is not a folder; pass workdirs written by `lelp run`.")
    out: dict[str, Any] = {"root": root, "dataset": None, "config_name": None, "teacher": {}, "runs": [],
                           "eigenvalues": None, "sweep": None, "subclass_teacher": None}
    if (root / "results.json").exists():
        res = _read_json(root / "results.json")
        out.update(dataset=res.get("dataset"), config_name=res.get("config_name"), teacher=res.get("teacher") or {},
                   runs=list(res.get("runs", [])))
    else:
        out["runs"] = [_read_json(p) for p in sorted(root.glob("runs/*/seed_*/result.json"))]
        if (root / "teacher" / "teacher.json").exists():
            out["teacher"] = _read_json(root / "teacher" / "teacher.json")
    if (root / "config.json").exists() and (out["dataset"] is None or out["config_name"] is None):
        cfg = _read_json(root / "config.json")
        out["dataset"] = out["dataset"] or cfg.get("data", {}).get("name")
        out["config_name"] = out["config_name"] or cfg.get("name")
    for run in out["runs"]:
        if not run.get("history"):
            mpath = root / "runs" / str(run.get("method")) / f"seed_{run.get('seed')}" / "metrics.jsonl"
            if mpath.exists():
                run["history"] = [r for r in _read_jsonl(mpath) if "val_accuracy" in r]
    if (root / "subclass_teacher" / "result.json").exists():
        out["subclass_teacher"] = _read_json(root / "subclass_teacher" / "result.json")
    if (root / "projections.npz").exists():
        with np.load(root / "projections.npz", allow_pickle=False) as z:
            if "eigenvalues" in z:
                out["eigenvalues"] = np.asarray(z["eigenvalues"], np.float64)
    if (root / "sweep" / "summary.json").exists():
        out["sweep"] = _read_json(root / "sweep" / "summary.json")
        out["dataset"] = out["dataset"] or out["sweep"].get("dataset")
        out["config_name"] = out["config_name"] or out["sweep"].get("config_name")
    if not out["runs"] and out["sweep"] is None and out["eigenvalues"] is None:
        raise ValueError(
            f"lelp report: no results in {str(root)!r} (no results.json, runs/*/seed_*/result.json, "
            "projections.npz or sweep/summary.json); run `lelp run` or `lelp sweep` there first."
        )
    out["dataset"] = out["dataset"] or "unknown"
    out["config_name"] = out["config_name"] or root.name
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(float(x))], np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std())


def method_table(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per method (in first-seen order): mean/std over seeds of both test accuracies and of
    the best validation accuracy, student parameters (a range if seeds differ), seeds, and the mean
    of what its split taught (``split_entropy``, ``split_top_share``, ``split_nmi``; NaN for methods
    that do not split)."""
    by: dict[str, list[Mapping]] = {}
    for r in runs:
        by.setdefault(str(r["method"]), []).append(r)
    rows = []
    for method, rs in by.items():
        row: dict[str, Any] = {"method": method, "n": len(rs), "seeds": sorted(int(r.get("seed", 0)) for r in rs)}
        for key in (*_METRICS, "best_val_accuracy"):
            row[key] = _mean_std([r.get(key) for r in rs])
        for key in _SPLIT_KEYS:
            row[key] = _mean_std([r.get(key) for r in rs])[0]
        params = sorted({int(r["student_params"]) for r in rs if r.get("student_params") is not None})
        row["student_params"] = params
        rows.append(row)
    return rows


def per_seed(runs: Sequence[Mapping[str, Any]], metric: str = "test_accuracy_best_val") -> dict[str, dict[int, float]]:
    """method -> {seed: ``metric``} (methods in first-seen order; runs without the metric left out)."""
    out: dict[str, dict[int, float]] = {}
    for r in runs:
        v = r.get(metric)
        if v is not None and not math.isnan(float(v)):
            out.setdefault(str(r["method"]), {})[int(r.get("seed", 0))] = float(v)
    return out


_PAIRED_NOTE = ("test accuracy (best val) of each method minus kd's and ce's on the same seeds, in percentage "
                "points, with a 95 % Student-t interval over seeds; 'inside noise' = the interval covers 0. "
                "Oracle room = (method - ce) / (oracle - ce).")


def _pct(ms: tuple[float, float]) -> str:
    m, s = ms
    return "n/a" if math.isnan(m) else f"{100 * m:.2f} ± {100 * s:.2f}"


def _params(p: Sequence[int]) -> str:
    if not p:
        return "n/a"
    return f"{p[0]:,}" if len(p) == 1 else f"{p[0]:,}–{p[-1]:,}"


_TABLE_HEAD = ("| model | test acc % (last) | test acc % (best val) | params | seeds | split entropy | top share | NMI |",
               "|---|---|---|---|---|---|---|---|")
_SPLIT_NOTE = ("split entropy: the split's mean normalised entropy H(t_y / p_y) / log S on the train split (1 = "
               "uniform, i.e. KD with a C·S head); top share: mean max_s t_{y,s} / p_y; NMI: normalised mutual "
               "information of the hard pseudo-subclass and the fine label (– where a method does not split or "
               "the data has no fine labels).")


def _diag(v: Any) -> str:
    return "–" if v is None or math.isnan(float(v)) else f"{float(v):.2f}"


def table_rows(teacher: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
               subclass_teacher: Optional[Mapping[str, Any]] = None, *, prefix: str = "") -> list[str]:
    """Markdown rows: the teacher (and the Subclass-Distillation teacher), then one per method;
    ``prefix`` (e.g. ``"config: "``) tells workdirs apart in a dataset's shared table."""
    lines = []
    if teacher:
        acc = teacher.get("test_accuracy", teacher.get("teacher_test_accuracy"))
        last = teacher.get("test_accuracy_last", acc)
        acc_s = "n/a" if acc is None else f"{100 * float(acc):.2f}"
        last_s = "n/a" if last is None else f"{100 * float(last):.2f}"
        name = f"teacher ({teacher['model']})" if teacher.get("model") else "teacher"
        tp = teacher.get("params", teacher.get("teacher_params"))
        lines.append(f"| {prefix}{name} | {last_s} | {acc_s} | {_params([int(tp)] if tp is not None else [])} | – "
                     "| – | – | – |")
    if subclass_teacher:
        st = subclass_teacher
        lines.append(f"| {prefix}subclass teacher (C*S head) | {100 * float(st['test_accuracy_last']):.2f} | "
                     f"{100 * float(st['test_accuracy_best_val']):.2f} | {_params([int(st['student_params'])])} | – "
                     "| – | – | – |")
    for r in rows:
        lines.append(
            f"| {prefix}{r['method']} | {_pct(r['test_accuracy_last'])} | {_pct(r['test_accuracy_best_val'])} | "
            f"{_params(r['student_params'])} | {r['n']} | "
            + " | ".join(_diag(r.get(k)) for k in _SPLIT_KEYS) + " |"
        )
    return lines


def format_table(teacher: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                 subclass_teacher: Optional[Mapping[str, Any]] = None) -> str:
    """One workdir's Markdown table (header + :func:`table_rows`)."""
    return "\n".join([*_TABLE_HEAD, *table_rows(teacher, rows, subclass_teacher)])


def _tag(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


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
    """Validation accuracy and train loss against step, per method (mean over seeds at shared steps)."""
    fig = _figure(figsize=(9, 3.5))
    ax_acc, ax_loss = fig.subplots(1, 2)
    by: dict[str, list[Mapping]] = {}
    for r in runs:
        by.setdefault(str(r["method"]), []).append(r)
    for method, rs in by.items():
        for key, ax in (("val_accuracy", ax_acc), ("train_loss", ax_loss)):
            per_step: dict[int, list[float]] = {}
            for r in rs:
                for h in r.get("history") or []:
                    if h.get(key) is not None:
                        per_step.setdefault(int(h["step"]), []).append(float(h[key]))
            if per_step:
                steps = sorted(per_step)
                ax.plot(steps, [np.mean(per_step[s]) for s in steps], marker=".", label=method)
    for ax, name in ((ax_acc, "validation accuracy"), (ax_loss, "train loss")):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(_wrap(title, 100), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _point_stats(point: Mapping[str, Any], metric: str) -> dict[str, tuple[float, float]]:
    """Per method (mean, std) of ``metric`` at a sweep point."""
    out = {}
    for method, s in (point.get("summary") or {}).items():
        if metric in s:
            out[method] = (float(s[metric]["mean"]), float(s[metric]["std"]))
    return out


# Keys whose values are scales (temperatures, weights, rates): drawn on a log axis.
_SCALE_KEYS = ("beta", "tau", "student_tau", "temperature", "aux_temperature", "learning_rate", "weight",
               "distance_weight", "angle_weight", "weight_decay")
# Sections every method reads; a reference method swept along any other section's key does not change.
_COMMON_SECTIONS = ("train", "student", "data", "teacher", "smoke", "teacher_cache")
_REFERENCES = ("kd", "ce")


def _wrap(text: str, width: int = 70) -> str:
    """A title broken into lines of at most ``width`` characters (so it is never cut off)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def _reference_band(sweep: Mapping[str, Any], method: str, metric: str) -> Optional[tuple[float, float, int]]:
    """(mean, 95 % t half-width, n) of a reference method at its point chosen on validation (its first
    point when the summary predates validation accuracies), from the sweep summary; None if it never ran."""
    from lelp_jax.paired import t_quantile

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
    half = t_quantile(0.975, n - 1) * std * math.sqrt(n / (n - 1)) / math.sqrt(n) if n > 1 else 0.0
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
        for method, (m, s) in _point_stats(point, metric).items():
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


def _axes(sweep: Mapping[str, Any]) -> list[str]:
    """The swept keys in the order they were given (``axes``), else as stored."""
    return list(sweep.get("axes") or sweep["grid"])


def _sweep_table(sweep: Mapping[str, Any]) -> str:
    keys = _axes(sweep)
    methods: list[str] = []
    for p in sweep.get("points", []):
        for m in p.get("summary") or {}:
            if m not in methods:
                methods.append(m)
    lines = ["| " + " | ".join(keys + [f"{m} (best val)" for m in methods] + ["status"]) + " |",
             "|" + "---|" * (len(keys) + len(methods) + 1)]
    for p in sweep.get("points", []):
        stats = _point_stats(p, "test_accuracy_best_val")
        n = {m: (p.get("summary") or {}).get(m, {}).get("n") for m in methods}
        cells = [str(p["overrides"][k]) if k in p["overrides"] else "–" for k in keys]
        cells += [f"{_pct(stats[m])} (n={n[m]})" if m in stats else "–" for m in methods]
        lines.append("| " + " | ".join(cells + [str(p.get("status"))]) + " |")
    return "\n".join(lines)


def _labels(ws: Sequence[Mapping[str, Any]]) -> list[str]:
    """Row/section labels: the config name, or the folder name where config names repeat."""
    names = [str(w["config_name"]) for w in ws]
    return [n if names.count(n) == 1 else f"{n} [{Path(w['root']).name}]" for n, w in zip(names, ws)]


def build_report(workdirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 select_on: Optional[str] = None) -> dict[str, Any]:
    """Write ``report.md`` and the PNG plots for ``workdirs`` into ``out_dir``.

    ``select_on='validation'``: every workdir must hold a sweep run with ``--test-seeds``; its
    section gives each method's settings chosen on validation and their test accuracy on the
    fresh seeds, paired by seed (:func:`lelp_jax.selection.selection_section`).

    Returns ``{"markdown": path, "plots": [paths], "tables": {dataset: markdown}}``.
    """
    if not workdirs:
        raise ValueError("lelp report: pass at least one workdir.")
    if select_on not in (None, "validation"):
        raise ValueError(f"lelp report: --select-on must be 'validation' (never test), got {select_on!r}.")
    loaded = [load_workdir(w) for w in workdirs]  # every input checked before anything is written
    selected = {}
    if select_on:
        from lelp_jax.selection import selection_section

        for w in loaded:
            if w["sweep"] is None:
                raise ValueError(f"lelp report --select-on validation: {str(w['root'])!r} holds no sweep; pass the "
                                 "--workdir of a `lelp sweep ... --test-seeds ...`.")
            selected[w["root"]] = selection_section(Path(w["root"]), w["sweep"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_dataset: dict[str, list[dict]] = {}
    for w in loaded:
        by_dataset.setdefault(str(w["dataset"]), []).append(w)
    md = ["# lelp report", "", "Test accuracy in %, mean ± std over seeds (population std); "
          "'last' = final step, 'best val' = the step with the best validation accuracy.", ""]
    plots: list[str] = []
    tables: dict[str, str] = {}
    used: set[str] = set()
    for dataset, ws in by_dataset.items():
        md += [f"## {dataset}", ""]
        labels = _labels(ws)
        with_rows = [(w, lab) for w, lab in zip(ws, labels) if w["runs"] or w["teacher"]]
        if with_rows:
            lines = list(_TABLE_HEAD)
            for w, lab in with_rows:
                lines += table_rows(w["teacher"], method_table(w["runs"]), w["subclass_teacher"],
                                    prefix=f"{lab}: " if len(with_rows) > 1 else "")
            tables[dataset] = "\n".join(lines)
            md += [tables[dataset], "", _SPLIT_NOTE, ""]
            for w, lab in with_rows:
                rows = paired_table(per_seed(w["runs"]))
                if rows:
                    md += [f"Paired by seed{f' ({lab})' if len(with_rows) > 1 else ''}: {_PAIRED_NOTE}", "",
                           *rows, ""]
        for w, lab in zip(ws, labels):
            tag = _tag(f"{dataset}_{w['config_name']}")
            base, i = tag, 1
            while tag in used:
                i += 1
                tag = f"{base}_{i}"
            used.add(tag)
            section = []
            if w["eigenvalues"] is not None:
                p = plot_spectrum(w["eigenvalues"], out / f"{tag}_spectrum.png",
                                  title=f"{dataset} / {lab}: teacher-embedding spectrum per class")
                plots.append(str(p))
                section.append(f"![spectrum]({p.name})")
            if any(r.get("history") for r in w["runs"]):
                p = plot_curves(w["runs"], out / f"{tag}_curves.png", title=f"{dataset} / {lab}")
                plots.append(str(p))
                section.append(f"![curves]({p.name})")
            if w["root"] in selected:
                lines, acc = selected[w["root"]]
                section += [*lines, ""]
                rows = paired_table(acc)
                if rows:
                    section += [f"Chosen settings paired by test seed: {_PAIRED_NOTE}", "", *rows, ""]
            if w["sweep"] is not None and w["sweep"].get("points"):
                sweep = w["sweep"]
                section += ["", f"Sweep over {', '.join(_axes(sweep))} (seeds {sweep.get('seeds')}):", "",
                            _sweep_table(sweep), ""]
                for key in _axes(sweep):
                    p = plot_sweep(sweep, key, out / f"{tag}_sweep_{_tag(key)}.png",
                                   title=f"{dataset} / {lab}: accuracy against {key}")
                    plots.append(str(p))
                    section.append(f"![sweep {key}]({p.name})")
            if section:
                md += [f"### {lab} (`{w['root']}`)", ""] + section + [""]
    md_path = out / "report.md"
    atomic.write_text(md_path, "\n".join(md) + "\n")
    return {"markdown": str(md_path), "plots": plots, "tables": tables}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``lelp report WORKDIR... [--out DIR]``: write report.md and plots (default DIR: FIRST_WORKDIR/report)."""
    p = argparse.ArgumentParser(prog="lelp report", description="Markdown tables and PNG plots from result files.")
    p.add_argument("workdirs", nargs="+", help="workdirs written by `lelp run` / `lelp sweep`")
    p.add_argument("--out", default=None, help="output folder (default: FIRST_WORKDIR/report)")
    p.add_argument("--select-on", choices=["validation"], default=None,
                   help="for sweeps run with --test-seeds: each method's settings chosen on validation, "
                        "their test accuracy on the fresh seeds, paired (docs/PROTOCOL.md)")
    args = p.parse_args(list(argv) if argv is not None else None)
    out = args.out or os.path.join(args.workdirs[0], "report")
    res = build_report(args.workdirs, out, select_on=args.select_on)
    print(f"wrote {res['markdown']} and {len(res['plots'])} plots")
    print(Path(res["markdown"]).read_text())
    return 0
