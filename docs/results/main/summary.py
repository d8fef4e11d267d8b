"""The main job's checked-in summary (docs/results/main/summary.json) and the text rendered from it.

Record a run of `lelp run --config configs/synthetic_main.py` (its workdir and the log of the
command, which starts and ends with an `uptime` line and holds `/usr/bin/time -f "WALL %e s"`):

    python docs/results/main/summary.py WORKDIR LOG --commit HASH   # writes summary.json and summary.md
    python docs/results/sync_tables.py                               # copies summary.md into README.md

:func:`render` is the only source of the README's main-job block (the test accuracies, the
paired differences `lelp run` prints last, the run time); tests/test_docs.py fails when the
README or summary.md differ from ``render(summary.json)``.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from lelp_jax.protocol import paired

HERE = Path(__file__).resolve().parent
SUMMARY = HERE / "summary.json"
RENDERED = HERE / "summary.md"


def collect(workdir: Path, log: Path, commit: str) -> dict:
    """summary.json of a finished main-job workdir: per-method, per-seed test accuracy at the best-validation step,
    the teacher, and the command's wall time and load averages from its log."""
    results = json.loads((workdir / "results.json").read_text())
    config = json.loads((workdir / "config.json").read_text())
    text = log.read_text()
    loads = [float(m) for m in re.findall(r"load average: ([\d.]+)", text)]
    wall = float(re.search(r"WALL ([\d.]+) s", text).group(1))
    return {
        "command": "lelp run --config configs/synthetic_main.py --workdir runs/main",
        "commit": commit,
        "config_name": results["config_name"],
        "test_examples": int(config["data"]["synthetic"]["num_test"]),
        "teacher_test_accuracy": results["teacher"]["test_accuracy"],
        "per_seed": {m: {str(s): a for s, a in sorted(v.items())} for m, v in paired.per_seed(results["runs"]).items()},
        "wall_seconds": wall,
        "load_average": [min(loads), max(loads)],
    }


def runtime(summary: dict) -> str:
    """The run-time sentence the README and configs/synthetic_main.py quote."""
    lo, hi = summary["load_average"]
    return (f"{summary['wall_seconds']:.0f} s on a 2-core CPU at nice 10, load average {lo:.1f}-{hi:.1f} "
            f"(other jobs running; a fresh compilation cache; commit {summary['commit'][:7]})")


def render(summary: dict) -> str:
    """The README block: test accuracy per method (mean ± std over seeds), the paired table, the run time."""
    acc = {m: {int(s): a for s, a in v.items()} for m, v in summary["per_seed"].items()}
    seeds = sorted(next(iter(acc.values())))
    head = " | ".join(acc)
    cells = " | ".join(paired.fmt_mean_std(paired.mean_std(v.values())) for v in acc.values())
    lines = [
        f"Test accuracy (%) on {summary['test_examples']:,} test examples at the best-validation step, mean ± std "
        f"over seeds {seeds[0]}-{seeds[-1]} (teacher {100 * summary['teacher_test_accuracy']:.1f} %):",
        "",
        f"| {head} |",
        "|" + "---|" * len(acc),
        f"| {cells} |",
        "",
        "The last lines of `lelp run` (Δ = method − reference, percentage points, paired by seed, 95 % t-interval):",
        "",
        *paired.paired_table(acc, references=("kd", "ce")),
        "",
        f"Run time: {runtime(summary)}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", type=Path)
    p.add_argument("log", type=Path)
    p.add_argument("--commit", required=True, help="the commit the run was made from")
    args = p.parse_args()
    summary = collect(args.workdir, args.log, args.commit)
    SUMMARY.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    RENDERED.write_text(render(summary))
    print(f"wrote {SUMMARY} and {RENDERED}")


if __name__ == "__main__":
    main()
