"""Selection on validation (docs/PROTOCOL.md): each method's settings chosen from its sweep grid by the
mean validation accuracy over the selection seeds, reported by the test accuracy on fresh seeds.

For method m with grid points g (equal-size grids across methods, checked by ``lelp sweep``):

    chosen(m) = argmax_g  (1/|S_sel|) sum_{s in S_sel} val_acc(m, g, s)     (first point wins a tie)

where val_acc is the run's best validation accuracy (the step whose checkpoint is tested). The
report then gives test_acc(m, chosen(m), s) for s in S_test, a set of seeds disjoint from S_sel
(an overlap is refused: the test seeds would have taken part in the choice), and pairs the
methods by those seeds (:mod:`lelp_jax.protocol.paired`).
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lelp_jax.pipeline.workdir import Workdir
from lelp_jax.protocol.paired import fmt_mean_std, mean_std, method_summary
from lelp_jax.train import failed, succeeded

__all__ = ["Choice", "choose", "point_runs", "selection_section"]


@dataclasses.dataclass(frozen=True)
class Choice:
    """The point chosen for ``method`` and its mean validation accuracy over ``n`` selection seeds."""

    method: str
    point: str
    overrides: Mapping[str, Any]
    val_accuracy: float
    n: int
    candidates: int


def choose(points: Sequence[Mapping[str, Any]], method: str, seeds: Sequence[int]) -> Choice:
    """The done point of ``method`` with the best mean ``best_val_accuracy`` over ``seeds`` (sweep summary points).

    Only points whose summary holds ``method`` on every selection seed take part (a point where a
    seed's run diverged has it in ``failed``, not in ``n``: it is never chosen); a point without a
    ``methods`` list (an older summary) holds every method.
    """
    best, best_val, n_cand = None, -math.inf, 0
    for p in points:
        if method not in p.get("methods", [method]) or p.get("status") != "done":
            continue
        s = (p.get("summary") or {}).get(method)
        if not s or "best_val_accuracy" not in s or int(s.get("n", 0)) != len(seeds):
            continue
        n_cand += 1
        val = float(s["best_val_accuracy"]["mean"])
        if val > best_val:
            best, best_val = p, val
    if best is None:
        raise ValueError(f"selection: no finished sweep point of {method!r} has every selection seed {list(seeds)}; "
                         "finish the sweep (rerun the same `lelp sweep` command) first.")
    return Choice(method, best["name"], dict(best["overrides"]), best_val, len(seeds), n_cand)


def point_runs(root: Path, point: Mapping[str, Any]) -> list[dict]:
    """A point's runs: ``ROOT/sweep/NAME/results.json`` (or the recorded workdir), else its per-run result files."""
    for wd in (Workdir(Path(root) / "sweep" / point["name"]), Workdir(point.get("workdir", ""))):
        if wd.results.is_file():
            return list(json.loads(wd.results.read_text()).get("runs", []))
        files = wd.runs()
        if files:
            return [json.loads(p.read_text()) for p in files]
    return []


def _fmt_overrides(ov: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in ov.items()) or "(config settings)"


def selection_section(root: Path, sweep: Mapping[str, Any]) -> tuple[list[str], dict[str, dict[int, float]]]:
    """Markdown of the select-on-validation protocol for one sweep, and the chosen settings' per-seed
    test accuracies (method -> {test seed: test accuracy at the best-validation step}).

    Recomputes every point's validation means from its runs (never from test accuracy).
    Raises ValueError when the sweep has no test seeds or they overlap the selection seeds.
    """
    seeds = [int(s) for s in sweep.get("seeds", [])]
    test = [int(s) for s in sweep.get("test_seeds") or []]
    overlap = sorted(set(seeds) & set(test))
    if overlap:
        raise ValueError(f"lelp report --select-on validation: test seeds {overlap} were also selection seeds in "
                         f"{str(root)!r}; its test accuracy would be tuned on. Rerun the sweep with --test-seeds "
                         "disjoint from --seeds.")
    if not test:
        raise ValueError(f"lelp report --select-on validation: the sweep in {str(root)!r} has no test seeds; rerun "
                         "the same `lelp sweep` command with --test-seeds (seeds not in --seeds).")
    points, runs_of = [], {}
    for p in sweep.get("points", []):
        runs = point_runs(root, p)
        runs_of[p["name"]] = runs
        sel = [r for r in runs if int(r["seed"]) in seeds]
        summ = method_summary(sel)
        points.append({**p, "status": "done" if summ else p.get("status"), "summary": summ})
    methods = list(sweep.get("methods") or dict.fromkeys(m for p in points for m in p["summary"]))
    sizes = sweep.get("grid_sizes") or {}
    lines = [f"Selected on validation: each method's settings maximise the mean validation accuracy over the "
             f"selection seeds {seeds}; test accuracy (best val) of the chosen settings on the fresh seeds {test}.",
             "", "| method | grid points | chosen settings | val acc % (selection) | test acc % (best val) | test seeds |",
             "|---|---|---|---|---|---|"]
    acc: dict[str, dict[int, float]] = {}
    for m in methods:
        c = choose(points, m, seeds)
        mine = [r for r in runs_of[c.point] if r["method"] == m and int(r["seed"]) in test]
        per = {int(r["seed"]): float(r["test_accuracy_best_val"]) for r in succeeded(mine)}
        bad = sorted(int(r["seed"]) for r in mine if failed(r))
        acc[m] = per
        test_s = fmt_mean_std(mean_std(per.values())) if per else "not run"
        missing = sorted(set(test) - set(per) - set(bad))
        seeds_s = (f"{len(per)}" + (f" (missing {missing})" if missing else "")
                   + (f" (failed {bad}: diverged, not averaged)" if bad else ""))
        lines.append(f"| {m} | {sizes.get(m, c.candidates)} | {_fmt_overrides(c.overrides)} | "
                     f"{100 * c.val_accuracy:.2f} | {test_s} | {seeds_s} |")
    return lines, acc
