"""The summary table of docs/RESULTS.md, computed from the generated per-seed accuracies.

Reads docs/results/synthetic/selection.json (select_fresh.py) and docs/results/digits_kfold/kfold.json
(`lelp kfold`), writes docs/results/summary.md: per benchmark the mean test accuracy of ce, kd,
lelp and oracle, LELP's paired difference to KD with its 95 % interval and what it says, and
each method's share of the oracle's room. Run: `python docs/results/summary.py`.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from lelp_jax.paired import paired_difference, room_fraction

HERE = Path(__file__).resolve().parent


def _bench(name: str, n_test: str, acc: dict[str, dict[int, float]]) -> list[str]:
    def mean(m):
        return f"{100 * statistics.mean(acc[m].values()):.2f}" if acc.get(m) else "–"

    def diff(a, b):
        d = paired_difference(acc.get(a, {}), acc.get(b, {})) if acc.get(a) and acc.get(b) else None
        if d is None:
            return "–"
        verdict = {"above": f"**{a} above {b}**", "below": f"{a} below {b}", "inside noise": "inside noise"}.get(
            d.verdict, d.verdict)
        return f"{100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]: {verdict}"

    rooms = []
    for m in acc:
        if m in ("ce", "oracle"):
            continue
        f = room_fraction(acc[m], acc.get("ce", {}), acc.get("oracle", {})) if acc.get("ce") and acc.get("oracle") else None
        if f is not None:
            rooms.append(f"{m} {f:.2f}")
    seeds = sorted(set.intersection(*(set(v) for v in acc.values()))) if acc else []
    return [f"| {name} | {n_test} | {len(seeds)} | {mean('ce')} | {mean('kd')} | {mean('lelp')} | {mean('oracle')} | "
            f"{diff('lelp', 'kd')} | {diff('lelp', 'ce')} | {', '.join(rooms) or '–'} |"]


def main() -> None:
    lines = ["Test accuracy (%) at the best-validation step, mean over the test seeds; Δ = paired difference "
             "(percentage points) with its 95 % t-interval; room = (method − ce) / (oracle − ce).", "",
             "| benchmark | test examples | seeds | ce | kd | lelp | oracle | lelp − kd | lelp − ce | oracle room |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    sel = HERE / "synthetic" / "selection.json"
    if sel.exists():
        acc = {m: {int(s): v for s, v in d.items()} for m, d in json.loads(sel.read_text())["accuracy"].items()}
        lines += _bench("synthetic_subclasses (K = 8, width 8; chosen on validation)", "10,000", acc)
    kf = HERE / "digits_kfold" / "kfold.json"
    if kf.exists():
        pooled = json.loads(kf.read_text())
        acc: dict[str, dict[int, float]] = {}
        for r in pooled["rows"]:
            acc.setdefault(r["method"], {})[int(r["seed"])] = r["test_accuracy"]
        lines += _bench(f"digits_binary, {pooled['num_folds']}-fold (config settings)", f"{sum(pooled['n_test']):,}",
                        acc)
    (HERE / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
