"""The tables of one `lelp sweep --default-grids ... --test-seeds ...` workdir, for docs/RESULTS.md.

`lelp report WORKDIR --select-on validation` gives the chosen settings, their test accuracy and
the paired differences; this script adds what each split taught and writes the numbers as JSON
for docs/results/summary.py. The choice is the library's (lelp_jax.protocol.selection.choose):

    chosen(m) = argmax over m's grid points g of mean_{s in selection seeds} best_val_accuracy(m, g, s)

Writes OUT (markdown): per method its grid size, chosen point, validation accuracy, test accuracy
on the test seeds (at the best-validation step) and the chosen runs' mean split_entropy,
split_top_share and split_nmi (result.json); the paired table (lelp_jax.protocol.paired); the split
diagnostics of every splitting method at the point given by --at (the config's own settings),
over the selection seeds; the validation accuracy of every point. OUT with suffix .json holds
the per-seed test accuracies, the choices and those diagnostics.

    python docs/results/sweep_selection.py /work/results-bench/rt_sel \\
        --at lelp.beta=1 --at lelp.num_subclasses=4 --at lelp.alpha=0 --out docs/results/rt_selection/selection.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from lelp_jax.protocol.paired import paired_table
from lelp_jax.report import method_table
from lelp_jax.protocol.selection import choose, point_runs

_DIAG = ("split_entropy", "split_top_share", "split_nmi")


def _diag(runs: list[dict]) -> dict[str, float | None]:
    """Mean of each split diagnostic over ``runs`` (None where no run recorded it)."""
    out = {}
    for key in _DIAG:
        vals = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.mean(vals) if vals else None
    return out


def _cell(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _same(a, b) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-9
    except (TypeError, ValueError):
        return str(a) == str(b)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("--at", action="append", default=[], help="KEY=VALUE of the point whose splits are diagnosed")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    sweep = json.loads((a.workdir / "sweep" / "summary.json").read_text())
    sel, test = [int(s) for s in sweep["seeds"]], [int(s) for s in sweep.get("test_seeds") or []]
    if not test or set(sel) & set(test):
        raise SystemExit("sweep_selection: the sweep needs --test-seeds disjoint from its selection seeds.")
    runs_of, points = {}, []
    for pt in sweep["points"]:
        runs = point_runs(a.workdir, pt)
        runs_of[pt["name"]] = runs
        summ = {row["method"]: {"best_val_accuracy": {"mean": row["best_val_accuracy"][0]}, "n": row["n"]}
                for row in method_table([r for r in runs if int(r["seed"]) in sel])}
        points.append({**pt, "status": "done" if summ else pt.get("status"), "summary": summ})
    methods = [m for m in sweep["methods"] if any(m in pt["summary"] for pt in points)]
    sizes = sweep.get("grid_sizes") or {}
    lines = [f"Selection seeds {sel}, test seeds {test}; test accuracy at the best-validation step; entropy, top "
             "share and NMI: the chosen runs' split of the train set (– for methods that do not split).", "",
             "| method | grid points | chosen (validation) | val acc % | test acc % (mean ± std) | n | entropy | "
             "top share | NMI |", "|---|---|---|---|---|---|---|---|---|"]
    acc, chosen = {}, {}
    for m in methods:
        c = choose(points, m, sel)
        runs = [r for r in runs_of[c.point] if r["method"] == m and int(r["seed"]) in test]
        setting = ", ".join(f"{k}={v}" for k, v in c.overrides.items()) or "config"
        chosen[m] = {"point": c.point, "overrides": c.overrides, "val": c.val_accuracy}
        if not runs:
            lines.append(f"| {m} | {sizes.get(m, c.candidates)} | {setting} | {100 * c.val_accuracy:.2f} | not run | 0 "
                         "| – | – | – |")
            continue
        acc[m] = {int(r["seed"]): float(r["test_accuracy_best_val"]) for r in runs}
        t = [100 * v for v in acc[m].values()]
        sd = statistics.pstdev(t) if len(t) > 1 else 0.0
        d = _diag(runs)
        lines.append(f"| {m} | {sizes.get(m, c.candidates)} | {setting} | {100 * c.val_accuracy:.2f} | "
                     f"{statistics.mean(t):.2f} ± {sd:.2f} | {len(t)} | "
                     + " | ".join(_cell(d[k]) for k in _DIAG) + " |")
    lines += ["", "Paired by test seed (percentage points):", ""] + paired_table(acc)

    at = dict(kv.split("=", 1) for kv in a.at)
    defaults = {}
    if at:
        match = [pt for pt in points if set(pt["overrides"]) == set(at)
                 and all(_same(pt["overrides"][k], v) for k, v in at.items())]
        if match:
            runs = [r for r in runs_of[match[0]["name"]] if int(r["seed"]) in sel]
            split = sorted({r["method"] for r in runs if r.get("split_entropy") is not None},
                           key=lambda m: methods.index(m) if m in methods else len(methods))
            lines += ["", f"What each split taught at {', '.join(f'{k}={v}' for k, v in at.items())} (the config's "
                      f"settings; mean over the selection seeds {sel}; train split):", "",
                      "| method | split entropy | top-subclass share | NMI with the fine label | seeds |",
                      "|---|---|---|---|---|"]
            for m in split:
                mr = [r for r in runs if r["method"] == m]
                defaults[m] = _diag(mr)
                lines.append(f"| {m} | " + " | ".join(_cell(defaults[m][k]) for k in _DIAG) + f" | {len(mr)} |")

    names = [pt["name"] for pt in points if pt["summary"]]
    lines += ["", f"Validation accuracy % of every grid point (mean over the selection seeds {sel}; * = chosen; "
              "blank: not in the method's grid):", "",
              "| point | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for pt in points:
        if pt["name"] not in names:
            continue
        cells = []
        for m in methods:
            s = pt["summary"].get(m)
            if not s or int(s["n"]) != len(sel):
                cells.append("")
                continue
            star = " *" if chosen.get(m, {}).get("point") == pt["name"] else ""
            cells.append(f"{100 * s['best_val_accuracy']['mean']:.2f}{star}")
        lines.append(f"| {pt['name']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    a.out.with_suffix(".json").write_text(json.dumps(
        {"selection_seeds": sel, "test_seeds": test, "accuracy": acc, "chosen": chosen,
         "diagnostics_at": at, "diagnostics": defaults}, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
