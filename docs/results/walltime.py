"""Wall-time table (Markdown) from workdirs: teacher seconds and student seconds per method.

    python docs/results/walltime.py WORKDIR... > docs/results/NAME/walltime.md

Reads WORKDIR/teacher/teacher.json ("seconds") and every run's "wall_time_s" in
WORKDIR/results.json (or WORKDIR/sweep/*/results.json for a sweep root, or the finished runs'
runs/*/seed_*/result.json of an interrupted run). If a file
WORKDIR.log ends with a line "WALL <seconds>" (written by the commands in
docs/RESULTS.md), the whole command's wall time is shown too.
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def _runs(wd: Path) -> list[dict]:
    if (wd / "results.json").is_file():
        return json.loads((wd / "results.json").read_text()).get("runs", [])
    sweeps = sorted(wd.glob("sweep/*/results.json"))
    if sweeps:
        return [r for f in sweeps for r in json.loads(f.read_text()).get("runs", [])]
    return [json.loads(f.read_text()) for f in sorted(wd.glob("runs/*/seed_*/result.json"))]


def _command_wall(wd: Path) -> str:
    log = wd.parent / f"{wd.name}.log"
    if log.is_file():
        for line in reversed(log.read_text(errors="replace").splitlines()):
            if line.startswith("WALL "):
                return f"{int(line.split()[1])} s"
    return "–"


def row(wd: Path) -> str:
    tj = wd / "teacher" / "teacher.json"
    teacher = f"{json.loads(tj.read_text())['seconds']:.0f} s" if tj.is_file() else "(shared)"
    per = defaultdict(list)
    for r in _runs(wd):
        per[r["method"]].append(float(r.get("wall_time_s", float("nan"))))
    methods = ", ".join(f"{m} {sum(v) / len(v):.0f} s (n={len(v)})" for m, v in per.items())
    total = sum(sum(v) for v in per.values())
    return f"| `{wd}` | {teacher} | {methods} | {total:.0f} s | {_command_wall(wd)} |"


def main(argv: list[str]) -> None:
    print("| workdir | teacher | student run, mean per method | all student runs | whole command |")
    print("|---|---|---|---|---|")
    for a in argv:
        print(row(Path(a)))


if __name__ == "__main__":
    main(sys.argv[1:])
