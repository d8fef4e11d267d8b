"""The Markdown of `lelp report`: each dataset's method table, the sweep table, their notes."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from lelp_jax.protocol.paired import SPLIT_KEYS, fmt_mean_std

__all__ = ["TABLE_HEAD", "SPLIT_NOTE", "PAIRED_NOTE", "table_rows", "format_table", "point_stats", "sweep_axes",
           "sweep_table"]


PAIRED_NOTE = ("test accuracy (best val) of each method minus kd's and ce's on the same seeds, in percentage "
                "points, with a 95 % Student-t interval over seeds; 'inside noise' = the interval covers 0. "
                "Oracle room = (method - ce) / (oracle - ce).")


def _params(p: Sequence[int]) -> str:
    if not p:
        return "n/a"
    return f"{p[0]:,}" if len(p) == 1 else f"{p[0]:,}–{p[-1]:,}"


TABLE_HEAD = ("| model | test acc % (last) | test acc % (best val) | params | seeds | split entropy | top share | NMI |",
               "|---|---|---|---|---|---|---|---|")
SPLIT_NOTE = ("split entropy: the split's mean normalised entropy H(t_y / p_y) / log S on the train split (1 = "
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
        name = r["method"] + (f" (failed: seeds {r['failed']}, diverged; not averaged)" if r.get("failed") else "")
        lines.append(
            f"| {prefix}{name} | {fmt_mean_std(r['test_accuracy_last'])} | {fmt_mean_std(r['test_accuracy_best_val'])} | "
            f"{_params(r['student_params'])} | {r['n']} | "
            + " | ".join(_diag(r.get(k)) for k in SPLIT_KEYS) + " |"
        )
    return lines


def format_table(teacher: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                 subclass_teacher: Optional[Mapping[str, Any]] = None) -> str:
    """One workdir's Markdown table (header + :func:`table_rows`)."""
    return "\n".join([*TABLE_HEAD, *table_rows(teacher, rows, subclass_teacher)])


def point_stats(point: Mapping[str, Any], metric: str) -> dict[str, tuple[float, float]]:
    """Per method (mean, std) of ``metric`` at a sweep point."""
    out = {}
    for method, s in (point.get("summary") or {}).items():
        if metric in s:
            out[method] = (float(s[metric]["mean"]), float(s[metric]["std"]))
    return out


def sweep_axes(sweep: Mapping[str, Any]) -> list[str]:
    """The swept keys in the order they were given (``axes``), else as stored."""
    return list(sweep.get("axes") or sweep["grid"])


def sweep_table(sweep: Mapping[str, Any]) -> str:
    keys = sweep_axes(sweep)
    methods: list[str] = []
    for p in sweep.get("points", []):
        for m in p.get("summary") or {}:
            if m not in methods:
                methods.append(m)
    lines = ["| " + " | ".join(keys + [f"{m} (best val)" for m in methods] + ["status"]) + " |",
             "|" + "---|" * (len(keys) + len(methods) + 1)]
    for p in sweep.get("points", []):
        stats = point_stats(p, "test_accuracy_best_val")
        n = {m: (p.get("summary") or {}).get(m, {}).get("n") for m in methods}
        cells = [str(p["overrides"][k]) if k in p["overrides"] else "–" for k in keys]
        cells += [f"{fmt_mean_std(stats[m])} (n={n[m]})" if m in stats else "–" for m in methods]
        lines.append("| " + " | ".join(cells + [str(p.get("status"))]) + " |")
    return "\n".join(lines)
