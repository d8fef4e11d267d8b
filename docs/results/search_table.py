"""The hidden-structure search table: per sweep point, ce and oracle on validation and test, and the gaps.

A setting is chosen by the *validation* gap oracle − ce (best-validation accuracy, mean over the
sweep's seeds); the test gap is shown beside it, never used to choose.

    python docs/results/search_table.py "LABEL=WORKDIR" ... > docs/results/fashion_hidden/search.md
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _mean(workdir: Path, method: str, key: str) -> float | None:
    vals = [json.loads(p.read_text())[key] for p in sorted((workdir / "runs" / method).glob("seed_*/result.json"))]
    return 100 * statistics.mean(vals) if vals else None


def main(argv=None) -> int:
    rows = []
    for spec in (argv or sys.argv[1:]):
        label, wd = spec.split("=", 1)
        wd = Path(wd)
        teacher = wd / "teacher" / "teacher.json"
        t = 100 * json.loads(teacher.read_text())["test_accuracy"] if teacher.exists() else None
        v = {m: _mean(wd, m, "best_val_accuracy") for m in ("ce", "oracle")}
        te = {m: _mean(wd, m, "test_accuracy_best_val") for m in ("ce", "oracle")}
        gap_v = None if None in v.values() else v["oracle"] - v["ce"]
        gap_t = None if None in te.values() else te["oracle"] - te["ce"]
        status = "done" if gap_v is not None else "not finished"
        rows.append((gap_v, label, t, v, te, gap_t, status))
    f = lambda x, sign=False: "–" if x is None else (f"{x:+.2f}" if sign else f"{x:.2f}")  # noqa: E731
    lines = ["| setting | teacher test % | ce val % | oracle val % | oracle − ce (val) | ce test % | oracle test % | "
             "oracle − ce (test) | status |", "|---|---|---|---|---|---|---|---|---|"]
    done = [r for r in rows if r[0] is not None]
    best = max(done, key=lambda r: r[0]) if done else None
    for r in rows:
        mark = " **(largest validation gap)**" if r is best else ""
        lines.append(f"| {r[1]}{mark} | {f(r[2])} | {f(r[3]['ce'])} | {f(r[3]['oracle'])} | {f(r[0], True)} | "
                     f"{f(r[4]['ce'])} | {f(r[4]['oracle'])} | {f(r[5], True)} | {r[6]} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
