"""Choose each method's setting on validation, train it on fresh seeds, write the paired table.

The protocol of docs/RESULTS.md (small fixed grids, one axis per method, equal sizes):

    chosen(m) = argmax over candidate workdirs P of mean_{s in selection seeds} best_val_accuracy(m, P, s)

(the config's own workdir `--main` first, so it wins a tie; the candidates are `--main` and every
point of every `--grid` sweep workdir that ran m). The chosen setting is then trained on
`--test-seeds` (disjoint from the selection seeds) in its own workdir, and only those runs give test
accuracy (at the best-validation step). The output table pairs methods by test seed
(lelp_jax.paired: difference to kd and ce with a 95 % t-interval, fraction of the oracle's room) and
lists what each method's split taught where the run recorded it (split_entropy, split_top_share,
split_nmi in result.json).

    python docs/results/select_fresh.py --config configs/synthetic_subclasses.py \\
        --main /work/results-bench/synth/main --grid /work/results-bench/synth/grid_beta ... \\
        --methods ce,kd,lelp --select-seeds 0,1 --test-seeds 10,11,12,13,14 [--run] \\
        [--override data.synthetic.modes_per_class=2 ...] --out docs/results/synthetic/selection.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from lelp_jax.paired import paired_table


def _runs(workdir: Path, method: str, seeds: list[int]) -> dict[int, dict]:
    out = {}
    for s in seeds:
        p = workdir / "runs" / method / f"seed_{s}" / "result.json"
        if p.exists():
            out[s] = json.loads(p.read_text())
    return out


def candidates(main: Path, grids: list[Path]) -> list[tuple[Path, dict]]:
    """(workdir, overrides) of the config's own workdir, then of every sweep point."""
    out = [(main, {})]
    for g in grids:
        summary = json.loads((g / "sweep" / "summary.json").read_text())
        teacher = summary.get("teacher")
        for p in summary["points"]:
            ov = dict(p["overrides"])
            if teacher:
                ov["teacher.checkpoint"] = teacher
            out.append((Path(p["workdir"]), ov))
    return out


def choose(method: str, cands: list[tuple[Path, dict]], seeds: list[int]):
    best = None
    for wd, ov in cands:
        runs = _runs(wd, method, seeds)
        if len(runs) != len(seeds):
            continue
        val = statistics.mean(r["best_val_accuracy"] for r in runs.values())
        if best is None or val > best[2]:
            best = (wd, ov, val)
    return best


def _fmt(v) -> str:
    return "[" + ",".join(str(x) for x in v) + "]" if isinstance(v, (list, tuple)) else str(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--main", required=True, type=Path)
    p.add_argument("--grid", action="append", default=[], type=Path)
    p.add_argument("--methods", required=True)
    p.add_argument("--select-seeds", required=True)
    p.add_argument("--test-seeds", required=True)
    p.add_argument("--override", action="append", default=[], help="KEY=VALUE the --main workdir was run with")
    p.add_argument("--run", action="store_true", help="train the chosen settings on the test seeds")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    sel = [int(s) for s in a.select_seeds.split(",")]
    test = [int(s) for s in a.test_seeds.split(",")]
    if set(sel) & set(test):
        raise SystemExit("select_fresh: the test seeds overlap the selection seeds; the test would take part in the choice.")
    cands = candidates(a.main, a.grid)
    base = dict(kv.split("=", 1) for kv in a.override)
    chosen = {}
    for m in a.methods.split(","):
        c = choose(m, cands, sel)
        if c is None:
            print(f"{m}: no candidate has every selection seed {sel}; skipped", file=sys.stderr)
            continue
        chosen[m] = c
        if a.run and len(_runs(c[0], m, test)) != len(test):
            ov = {**base, **c[1]}
            cmd = [sys.executable, "-m", "lelp_jax.cli", "run", "--config", a.config, "--workdir", str(c[0]),
                   "--methods", m, "--seeds", ",".join(map(str, test)), "--quiet"]
            cmd += [f"--config.{k}={_fmt(v)}" for k, v in ov.items()]
            print(" ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
    acc, lines = {}, []
    lines += [f"Selection seeds {sel}, test seeds {test}; test accuracy at the best-validation step.", "",
              "| method | chosen (validation) | val acc % | test acc % (mean ± std) | n | entropy | top share | NMI |",
              "|---|---|---|---|---|---|---|---|"]
    for m, (wd, ov, val) in chosen.items():
        runs = _runs(wd, m, test)
        if not runs:
            continue
        acc[m] = {s: r["test_accuracy_best_val"] for s, r in runs.items()}
        t = [100 * v for v in acc[m].values()]
        setting = ", ".join(f"{k}={_fmt(v)}" for k, v in ov.items() if k != "teacher.checkpoint") or "config"
        diag = [{**r, **(r.get("diagnostics") or {})} for r in runs.values()]

        def mean_of(key):
            vals = [d[key] for d in diag if d.get(key) is not None]
            return f"{statistics.mean(vals):.2f}" if vals else "–"

        sd = statistics.pstdev(t) if len(t) > 1 else 0.0
        lines.append(f"| {m} | {setting} | {100 * val:.2f} | {statistics.mean(t):.2f} ± {sd:.2f} | {len(t)} | "
                     f"{mean_of('split_entropy')} | {mean_of('split_top_share')} | {mean_of('split_nmi')} |")
    lines += ["", "Paired by test seed (percentage points):", ""] + paired_table(acc)
    lines += ["", f"Validation accuracy of every candidate (mean over selection seeds {sel}; * = chosen):", "",
              "| method | setting | val acc % |", "|---|---|---|"]
    for m in chosen:
        for wd, ov in cands:
            runs = _runs(wd, m, sel)
            if len(runs) != len(sel):
                continue
            val = statistics.mean(r["best_val_accuracy"] for r in runs.values())
            setting = ", ".join(f"{k}={_fmt(v)}" for k, v in ov.items() if k != "teacher.checkpoint") or "config"
            lines.append(f"| {m} | {setting}{' *' if wd == chosen[m][0] else ''} | {100 * val:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
        (a.out.with_suffix(".json")).write_text(json.dumps(
            {"selection_seeds": sel, "test_seeds": test, "accuracy": acc,
             "chosen": {m: {"workdir": str(c[0]), "overrides": c[1], "val": c[2]} for m, c in chosen.items()}},
            indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
