"""One row per workdir (a point of a hand-made sweep): mean test accuracy of each method over the
seeds every method shares, oracle - ce, paired differences and each method's share of the oracle's room.

    python docs/results/points_table.py "K=2, width 8=/path/K2" "K=8, width 8=/path/main" ... \\
        --methods ce,kd,lelp,oracle --seeds 0,1,2 [--diagnostics lelp] > docs/results/NAME/points.md

Accuracy: test accuracy at the best-validation step (%); paired differences and the room fraction
(method - ce) / (oracle - ce) by lelp_jax.protocol.paired, over the given seeds. With --diagnostics METHOD,
the split entropy, top share and NMI of METHOD's split on the train split (docs/results/diagnose.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from lelp_jax.protocol.paired import paired_difference, room_fraction


def _acc(workdir: Path, method: str, seeds: list[int]) -> dict[int, float]:
    out = {}
    for s in seeds:
        p = workdir / "runs" / method / f"seed_{s}" / "result.json"
        if p.exists():
            out[s] = json.loads(p.read_text())["test_accuracy_best_val"]
    return out


def _diff(d) -> str:
    if d is None:
        return "–"
    return f"{100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("points", nargs="+", help="LABEL=WORKDIR")
    p.add_argument("--methods", required=True)
    p.add_argument("--seeds", required=True)
    p.add_argument("--diagnostics", default=None, help="a splitting method whose split diagnostics to add")
    p.add_argument("--json-out", default=None, help="also write {label: {method: {seed: accuracy}}} here")
    a = p.parse_args(argv)
    methods = a.methods.split(",")
    seeds = [int(s) for s in a.seeds.split(",")]
    head = ["point", "teacher %"] + [f"{m} %" for m in methods] + ["oracle − ce", "lelp − kd [95 % CI]",
                                                                     "lelp − ce [95 % CI]"]
    head += [f"room: {m}" for m in methods if m not in ("ce", "oracle")]
    if a.diagnostics:
        head += [f"{a.diagnostics} entropy", "top share", "NMI"]
    lines = [f"Test accuracy at the best-validation step, mean over seeds {seeds}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    dump = {}
    for spec in a.points:
        label, wd = spec.split("=", 1) if "=" in spec else (spec, spec)
        wd = Path(wd)
        acc = {m: _acc(wd, m, seeds) for m in methods}
        dump[label] = acc
        teacher = json.loads((wd / "teacher" / "teacher.json").read_text()) if (wd / "teacher" / "teacher.json").exists() \
            else json.loads((Path(json.loads((wd / "config.json").read_text())["teacher"]["checkpoint"]) / "teacher"
                             / "teacher.json").read_text())
        cells = [label, f"{100 * teacher['test_accuracy']:.2f}"]
        cells += [f"{100 * statistics.mean(v.values()):.2f}" if v else "–" for v in acc.values()]
        if acc.get("ce") and acc.get("oracle"):
            cells.append(f"{100 * (statistics.mean(acc['oracle'].values()) - statistics.mean(acc['ce'].values())):+.2f}")
        else:
            cells.append("–")
        cells.append(_diff(paired_difference(acc.get("lelp", {}), acc.get("kd", {}))))
        cells.append(_diff(paired_difference(acc.get("lelp", {}), acc.get("ce", {}))))
        for m in methods:
            if m in ("ce", "oracle"):
                continue
            f = room_fraction(acc[m], acc.get("ce", {}), acc.get("oracle", {})) if acc[m] else None
            cells.append("n/a" if f is None else f"{f:.2f}")
        if a.diagnostics:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from diagnose import diagnose

            d = diagnose(wd, [a.diagnostics])[a.diagnostics]
            cells += [f"{d['split_entropy']:.2f}", f"{d['split_top_share']:.2f}",
                      "–" if d.get("split_nmi") is None else f"{d['split_nmi']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(dump, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
