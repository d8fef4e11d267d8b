"""The summary table of docs/RESULTS.md, computed from the generated per-seed accuracies.

Reads docs/results/{synthetic,fashion_hidden,rt_selection}/selection.json (sweep_selection.py on a
`lelp sweep --default-grids --test-seeds` workdir) and docs/results/digits_nested/kfold.json (`lelp kfold
--default-grids --test-seeds`: selection nested in each fold). Writes docs/results/summary.md: per benchmark
the mean test accuracy of ce, kd, lelp, lelp_kmeans and oracle, the paired differences to KD with their
95 % intervals and what they say, and the share of the oracle's room of lelp, lelp_kmeans and kmeans; and
docs/results/synthetic/per_seed.md (every test seed's accuracy). Run: `python docs/results/summary.py`.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from lelp_jax.protocol.paired import paired_difference, room_fraction

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
    for m in ("lelp", "lelp_kmeans", "kmeans"):
        f = room_fraction(acc[m], acc["ce"], acc["oracle"]) if all(acc.get(k) for k in (m, "ce", "oracle")) else None
        rooms.append("–" if f is None else f"{f:.2f}")
    seeds = sorted(set.intersection(*(set(v) for v in acc.values()))) if acc else []
    return [f"| {name} | {n_test} | {len(seeds)} | {mean('ce')} | {mean('kd')} | {mean('lelp')} | {mean('lelp_kmeans')} | "
            f"{mean('oracle')} | {diff('lelp', 'kd')} | {diff('lelp_kmeans', 'kd')} | {' / '.join(rooms)} |"]


def per_seed(acc: dict[str, dict[int, float]], methods: tuple[str, ...]) -> list[str]:
    """Markdown: each method's test accuracy on every seed (%), for reading outliers."""
    seeds = sorted(set().union(*(acc[m] for m in methods if m in acc)))
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for m in methods:
        if m in acc:
            lines.append(f"| {m} | " + " | ".join(f"{100 * acc[m][s]:.2f}" if s in acc[m] else "–" for s in seeds) + " |")
    return lines


def _selected(folder: str) -> dict[str, dict[int, float]] | None:
    """Per-method, per-test-seed accuracy of a sweep_selection.py JSON (None when not generated)."""
    sel = HERE / folder / "selection.json"
    if not sel.exists():
        return None
    return {m: {int(s): v for s, v in d.items()} for m, d in json.loads(sel.read_text())["accuracy"].items()}


def _kfold(folder: str) -> tuple[dict[str, dict[int, float]], dict] | None:
    """Per-method, per-test-seed pooled accuracy of a nested-selection kfold.json, and the file."""
    kf = HERE / folder / "kfold.json"
    if not kf.exists():
        return None
    pooled = json.loads(kf.read_text())
    acc: dict[str, dict[int, float]] = {}
    for r in pooled["test_rows"]:
        acc.setdefault(r["method"], {})[int(r["seed"])] = r["test_accuracy"]
    return acc, pooled


def main() -> None:
    lines = ["Test accuracy (%) at the best-validation step, mean over the test seeds; every method's settings chosen "
             "on validation from a 12-point grid; Δ = paired difference (percentage points) with its 95 % t-interval; "
             "room = (method − ce) / (oracle − ce).", "",
             "| benchmark | test examples | seeds | ce | kd | lelp | lelp_kmeans | oracle | lelp − kd | lelp_kmeans − kd | "
             "room: lelp / lelp_kmeans / kmeans |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    synthetic = _selected("synthetic")
    if synthetic:
        lines += _bench("synthetic_subclasses (K = 8, width 8)", "10,000", synthetic)
        (HERE / "synthetic" / "per_seed.md").write_text("\n".join(per_seed(
            synthetic, ("ce", "kd", "lelp", "lelp_kmeans", "kmeans", "agglomerative", "subclass", "oracle"))) + "\n")
    digits = _kfold("digits_nested")
    if digits:
        acc, pooled = digits
        lines += _bench(f"digits_binary, {pooled['num_folds']}-fold (chosen in each fold)",
                        f"{sum(pooled['n_test']):,}", acc)
    fashion = _selected("fashion_hidden")
    if fashion:
        lines += _bench("fashion_mnist_hidden ({0,1,4,7,8}, 50 per fine class)", "10,000", fashion)
    rt = _selected("rt_selection")
    if rt:
        lines += _bench("rotten_tomatoes_features (frozen MiniLM, MLP 64)", "1,276", rt)
    (HERE / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
