"""`lelp kfold`: run every fold of a k-fold config and pool the folds' test sets, with selection nested per fold.

    lelp kfold --config configs/digits_kfold.py --workdir /tmp/kf [--methods ce,kd,lelp] [--seeds 0,1,2]
               [--grid lelp.beta=0.5,1] [--config.a.b=VALUE ...]
    lelp kfold --config configs/digits_kfold.py --workdir /tmp/kf --methods ce,kd,lelp,oracle \\
               --default-grids [--grid kd:kd.tau=1,2,4,8 ...] --seeds 0 --test-seeds 10,11,12,13,14

For every fold f of ``data.num_folds`` (lelp_jax.data.folds) the pipeline runs in
``WORKDIR/fold_f/`` with ``data.fold = f``: its own teacher, trained and selected
without fold f, and its students. With grid axes (``--grid``, ``--default-grids``: the
flags of ``lelp sweep``, :func:`lelp_jax.protocol.sweep.protocol_parser`) each fold is a
``lelp sweep`` over that fold's one shared teacher (``WORKDIR/fold_f/sweep/POINT/``).
Because the k test folds partition the dataset, pooling is exact: for each setting,
method and seed,

    pooled test accuracy = sum_f n_f · acc_f / sum_f n_f,   n_f = |test fold f|

(the accuracy over all N examples, each predicted by a model that did not see it), and
the pooled validation accuracy likewise over the validation carves.

Nested selection (``--test-seeds``, docs/PROTOCOL.md): each fold's sweep chooses every
method's settings on *that fold's* validation carve (mean over the selection seeds
``--seeds``) and trains the chosen point on the test seeds, so no choice ever sees the
test fold it is scored on; folds may choose different points. The pooled test accuracy
of method m on test seed s is the formula above over acc_f = the test accuracy of fold
f's chosen point for m on seed s. The printed table is then these pooled accuracies,
paired by test seed to kd and ce (95 % t-intervals, oracle-room fraction;
:mod:`lelp_jax.protocol.paired`). ``WORKDIR/kfold.json``:

    {"dataset", "config_name", "num_folds", "axes": [...], "n_test": [n_f...], "n_validation": [...],
     "rows": [{"setting": {key: value}, "method", "seed", "test_accuracy", "validation_accuracy",
               "test_accuracy_last", "folds": [acc_f...]}],     (grid points; with test seeds, selection seeds only)
     with test seeds also "seeds", "test_seeds", "grid_sizes": {method: points},
     "selection": {method: [{"fold", "point", "overrides", "val_accuracy"} per fold]},
     "test_rows": [{"method", "seed", "test_accuracy", "test_accuracy_last", "validation_accuracy",
                    "folds": [acc_f...], "points": [fold f's chosen point...]}]}
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from lelp_jax import pipeline
from lelp_jax.core import atomic
from lelp_jax.runtime import sharding
from lelp_jax.protocol import sweep
from lelp_jax.data import load_split
from lelp_jax.data.splits import data_config
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.protocol.grids import point_config
from lelp_jax.protocol.paired import fmt_mean_std, mean_std, method_summary, paired_table
from lelp_jax.pipeline import read_json
from lelp_jax.protocol.selection import choose
from lelp_jax.student.export import choose_run, export_and_log, protocol_choice

__all__ = ["run_kfold", "pool_folds", "table", "main"]

Grids = Mapping[str, Mapping[str, Sequence[Any]]]


def _fold_runs(folder: Path) -> dict[tuple[str, int], dict]:
    """(method, seed) -> result.json of every run in one workdir."""
    out = {}
    for path in pipeline.Workdir(folder).runs():
        r = read_json(path)
        out[(r["method"], int(r["seed"]))] = r
    return out


def _summary(fold_dir: Path) -> dict:
    path = fold_dir / "sweep" / "summary.json"
    if not path.is_file():
        raise ConfigError(f"lelp kfold: {fold_dir.name} has no sweep summary ({path}); run the same `lelp kfold` "
                          "command without --pool-only to run it.")
    return read_json(path)


def _point_dirs(fold_dir: Path, swept: bool) -> list[tuple[dict, Path]]:
    """(setting, workdir) of every grid point of one fold (one point, the fold's own workdir, without a grid).

    A point's folder is read under this ``fold_dir`` by name (not the summary's recorded
    absolute path), so a copied workdir pools its own files."""
    if not swept:
        return [({}, fold_dir)]
    return [(dict(p["overrides"]), fold_dir / "sweep" / p["name"]) for p in _summary(fold_dir)["points"]]


def _split_sizes(config: ml_collections.ConfigDict) -> tuple[int, int]:
    _, info = load_split(data_config(config.data), "test")
    return int(info.split_sizes["test"]), int(info.split_sizes["validation"])


def _pooled(rs: Sequence[Mapping[str, Any]], n_test: Sequence[int], n_val: Sequence[int]) -> dict[str, Any]:
    """Count-weighted means over the folds of one (setting or chosen points, method, seed)."""
    wmean = lambda key, n: sum(k * r[key] for k, r in zip(n, rs)) / sum(n)  # noqa: E731
    return {"test_accuracy": wmean("test_accuracy_best_val", n_test),
            "test_accuracy_last": wmean("test_accuracy_last", n_test),
            "validation_accuracy": wmean("best_val_accuracy", n_val),
            "folds": [r["test_accuracy_best_val"] for r in rs]}


def _choose(fold_dir: Path, summary: Mapping[str, Any], method: str, seeds: Sequence[int]) -> tuple[Any, int]:
    """Fold's choice for ``method``, recomputed from its points' runs on the selection ``seeds`` (as
    ``lelp report --select-on validation`` does), and the number of grid points it was chosen from."""
    points = []
    for p in summary["points"]:
        if method in p.get("methods", [method]):
            runs = [r for (m, s), r in _fold_runs(fold_dir / "sweep" / p["name"]).items() if m == method and s in seeds]
            points.append({**p, "status": "done", "summary": method_summary(runs)})
    pick = choose(points, method, seeds)
    if pick.candidates < len(points):
        raise ConfigError(f"lelp kfold: {fold_dir.name} has {method!r} on every selection seed {list(seeds)} in only "
                          f"{pick.candidates} of its {len(points)} grid points; rerun the same `lelp kfold` command "
                          "without --pool-only to finish it.")
    recorded = (summary.get("selection") or {}).get(method, {}).get("point", pick.point)
    if recorded != pick.point:
        raise ConfigError(f"lelp kfold: {fold_dir.name}'s sweep summary chose {recorded!r} for {method!r}, but its "
                          f"runs' validation accuracies choose {pick.point!r}; rerun the fold's sweep.")
    return pick, len(points)


def _selected(config: ml_collections.ConfigDict, root: Path, test_seeds: Sequence[int],
              n_test: Sequence[int], n_val: Sequence[int]) -> dict[str, Any]:
    """Each fold's choice per method (on its own validation carve) and the pooled test-seed rows."""
    k, seeds = int(config.data.num_folds), [int(s) for s in config.seeds]
    summaries = [_summary(root / f"fold_{f}") for f in range(k)]
    for f, s in enumerate(summaries):
        if [int(x) for x in s.get("seeds", [])] != seeds:
            raise ConfigError(f"lelp kfold: fold {f} chose its settings on seeds {s.get('seeds')}, not --seeds "
                              f"{seeds}; pass the selection seeds it was run with.")
    selection: dict[str, list[dict]] = {}
    sizes, test_rows = {}, []
    for m in config.methods:
        picks = [_choose(root / f"fold_{f}", s, m, seeds) for f, s in enumerate(summaries)]
        sizes[m] = picks[0][1]
        selection[m] = [{"fold": f, "point": c.point, "overrides": c.overrides, "val_accuracy": c.val_accuracy}
                        for f, (c, _) in enumerate(picks)]
        runs = [_fold_runs(root / f"fold_{f}" / "sweep" / c.point) for f, (c, _) in enumerate(picks)]
        for s in test_seeds:
            if all((m, s) in r for r in runs):
                rs = [r[(m, s)] for r in runs]
                test_rows.append({"method": m, "seed": s, **_pooled(rs, n_test, n_val),
                                  "points": [c.point for c, _ in picks]})
    return {"seeds": seeds, "test_seeds": list(test_seeds), "grid_sizes": sizes, "selection": selection,
            "test_rows": test_rows}


def _axes(config: ml_collections.ConfigDict, grid: Mapping[str, Sequence[Any]] | None, own_grids: Grids | None,
          test_seeds: Optional[Sequence[int]]) -> tuple[dict, dict, bool, list[int]]:
    """(shared axes, own axes, whether folds are swept, test seeds), checked once for running and pooling."""
    grid, own = dict(grid or {}), {m: dict(g) for m, g in (own_grids or {}).items()}
    swept = bool(grid) or any(own.values())
    test_seeds = sweep.check_test_seeds(config.seeds, test_seeds)
    if int(config.data.num_folds) < 2:
        raise ConfigError("lelp kfold needs data.num_folds >= 2 (e.g. --config.data.num_folds=10).")
    if any(k.startswith("data.") or k.startswith("teacher.") for k in [*grid, *(k for g in own.values() for k in g)]):
        raise ConfigError("lelp kfold: grid keys must be student-side (not data.* or teacher.*): every fold "
                          "shares one teacher across its grid.")
    if test_seeds and not swept:
        raise ConfigError("lelp kfold: --test-seeds test the settings chosen on validation, so they need grids: "
                          "add --default-grids (or --grid METHOD:KEY=V1,V2 axes).")
    return grid, own, swept, test_seeds


def pool_folds(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
               grid: Mapping[str, Sequence[Any]] | None = None, *, own_grids: Grids | None = None,
               test_seeds: Optional[Sequence[int]] = None) -> dict[str, Any]:
    """Pool finished folds into ``WORKDIR/kfold.json`` (rows for settings/methods/seeds done in every fold;
    with ``test_seeds``, also each fold's choice and the chosen settings' pooled test rows)."""
    root = Path(workdir)
    grid, own, swept, test_seeds = _axes(config, grid, own_grids, test_seeds)
    keep = {int(s) for s in config.seeds} if test_seeds else None  # grid rows: the selection seeds only
    k = int(config.data.num_folds)
    n_test, n_val, per_fold = [], [], []
    for f in range(k):
        nt, nv = _split_sizes(point_config(config, {"data.fold": f}))
        n_test.append(nt)
        n_val.append(nv)
        runs: dict[tuple, dict] = {}
        for setting, wd in _point_dirs(root / f"fold_{f}", swept):
            for (method, seed), r in _fold_runs(wd).items():
                if keep is None or seed in keep:
                    runs[(json.dumps(setting, sort_keys=True), method, seed)] = r
        per_fold.append(runs)
    rows = []
    for key in sorted(set.intersection(*(set(r) for r in per_fold)) if per_fold else set()):
        rs = [per_fold[f][key] for f in range(k)]
        rows.append({"setting": json.loads(key[0]), "method": key[1], "seed": key[2], **_pooled(rs, n_test, n_val)})
    axes = list(dict.fromkeys([*grid, *(key for g in own.values() for key in g)]))
    out = {"dataset": config.data.name, "config_name": config.name, "num_folds": k, "axes": axes,
           "n_test": n_test, "n_validation": n_val, "rows": rows}
    if test_seeds:
        out.update(_selected(config, root, test_seeds, n_test, n_val))
    atomic.write_json(root / "kfold.json", out)
    return out


def run_kfold(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
              grid: Mapping[str, Sequence[Any]] | None = None, *, own_grids: Grids | None = None,
              test_seeds: Optional[Sequence[int]] = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (resumably) every fold, then pool them (:func:`pool_folds`).

    With grid axes (``grid`` for every method, ``own_grids`` per method) fold f is
    ``sweep.run_sweep`` in ``WORKDIR/fold_f``; with ``test_seeds`` it also chooses on its
    own validation carve and runs the choice on the test seeds (selection nested per fold).
    """
    grid, own, swept, test_seeds = _axes(config, grid, own_grids, test_seeds)
    if config.teacher.model == "precomputed":
        raise ConfigError("lelp kfold trains a teacher per fold, and teacher.model='precomputed' gives one set of "
                          "outputs; export them per fold and run `lelp run` with --config.data.fold=F for each.")
    root = Path(workdir)
    for f in range(int(config.data.num_folds)):
        cfg = point_config(config, {"data.fold": f})
        tag = f"[fold {f + 1}/{config.data.num_folds}]"
        if swept:
            sweep.run_sweep(cfg, root / f"fold_{f}", grid, own_grids=own, test_seeds=test_seeds,
                            log=lambda m, _t=tag: log(f"{_t} {m}"))
        else:
            pipeline.run_all(cfg, root / f"fold_{f}", log=lambda m, _t=tag: log(f"{_t} {m}"))
    return pool_folds(config, workdir, grid, own_grids=own, test_seeds=test_seeds)


def _selection_table(pooled: Mapping[str, Any]) -> list[str]:
    """Per method: each fold's chosen point (its validation accuracy), the pooled test accuracy over the test seeds;
    then the methods paired by test seed."""
    test = [int(s) for s in pooled["test_seeds"]]
    lines = [f"Selection nested in each fold: every fold chose each method's settings on its own validation carve "
             f"(mean over seeds {pooled['seeds']}); the chosen settings' test accuracy (best val) on the fresh seeds "
             f"{test}, pooled over the folds.", "",
             "| method | grid points | chosen settings per fold (val acc %) | pooled test acc % | test seeds |",
             "|---|---|---|---|---|"]
    acc: dict[str, dict[int, float]] = {}
    for m, picks in pooled["selection"].items():
        per = {int(r["seed"]): float(r["test_accuracy"]) for r in pooled["test_rows"] if r["method"] == m}
        acc[m] = per
        fmt = lambda p: p["point"] if p["overrides"] else "(config settings)"  # noqa: E731
        if len({p["point"] for p in picks}) == 1:
            chosen = f"all folds: {fmt(picks[0])} (" + ", ".join(f"{100 * p['val_accuracy']:.2f}" for p in picks) + ")"
        else:
            chosen = "; ".join(f"f{p['fold']}: {fmt(p)} ({100 * p['val_accuracy']:.2f})" for p in picks)
        missing = sorted(set(test) - set(per))
        seeds_s = f"{len(per)}" + (f" (missing {missing})" if missing else "")
        test_s = fmt_mean_std(mean_std(per.values())) if per else "not run"
        lines.append(f"| {m} | {pooled.get('grid_sizes', {}).get(m, '?')} | {chosen} | {test_s} | {seeds_s} |")
    paired = paired_table(acc)
    if paired:
        lines += ["", "Paired by test seed on the pooled test accuracy (percentage points):", ""] + paired
    return lines


def table(pooled: Mapping[str, Any]) -> str:
    """Markdown. With test seeds: the nested selection (:func:`_selection_table`). Without: per setting and
    method, the pooled test (and validation) accuracy, mean ± std over seeds; with one setting, the methods'
    paired differences to kd and ce (lelp_jax.protocol.paired)."""
    n = sum(pooled["n_test"])
    lines = [f"{pooled['num_folds']}-fold, {n} test examples pooled (test acc at each fold's best-val step)", ""]
    if pooled.get("test_seeds"):
        return "\n".join(lines + _selection_table(pooled))
    groups: dict[tuple, list[dict]] = {}
    for r in pooled["rows"]:
        groups.setdefault((json.dumps(r["setting"], sort_keys=True), r["method"]), []).append(r)
    lines += ["| setting | method | pooled test acc % | pooled val acc % | seeds |", "|---|---|---|---|---|"]
    for (setting, method), rs in groups.items():
        t = 100 * np.asarray([r["test_accuracy"] for r in rs])
        v = 100 * np.asarray([r["validation_accuracy"] for r in rs])
        s = ", ".join(f"{k}={val}" for k, val in json.loads(setting).items()) or "–"
        lines.append(f"| {s} | {method} | {t.mean():.2f} ± {t.std():.2f} | {v.mean():.2f} ± {v.std():.2f} | {len(rs)} |")
    settings = {setting for setting, _ in groups}
    if len(settings) == 1:  # one setting per method: pair the methods by seed on the pooled accuracies
        acc = {m: {int(r["seed"]): float(r["test_accuracy"]) for r in rs} for (_, m), rs in groups.items()}
        paired = paired_table(acc)
        if paired:
            lines += ["", "Paired by seed on the pooled test accuracy (percentage points):", ""] + paired
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``lelp kfold --config FILE --workdir DIR [--grid [METHOD:]KEY=V1,V2] [--default-grids] [--methods] [--seeds]
    [--test-seeds] [--pool-only]``."""
    p = sweep.protocol_parser("lelp kfold", "Run every fold of a k-fold config and pool them.",
                              workdir="root; fold f goes to WORKDIR/fold_f/",
                              switch=("--pool-only", "only pool the folds already finished"))
    args, config, grid, own, test_seeds = sweep.parse_protocol(p, argv)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, flush=True))
    if args.pool_only:
        pooled = pool_folds(config, args.workdir, grid, own_grids=own, test_seeds=test_seeds)
    else:
        sharding.enable_compilation_cache()  # every fold (and point) compiles the same steps: later ones hit the cache
        pooled = run_kfold(config, args.workdir, grid, own_grids=own, test_seeds=test_seeds, log=log)
    print(table(pooled))
    if jax.process_index() == 0:
        export_chosen(pooled, config, args.workdir, log)
    return 0


def export_chosen(pooled: Mapping[str, Any], config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                  log: Callable[[str], None]) -> None:
    """Export the protocol's choice to ``WORKDIR/student``: the method with the best mean validation accuracy
    (with test seeds: of its per-fold chosen settings; without a grid: pooled over the folds), its
    best-validation run over the folds (the chosen point's test seeds, or the seeds)."""
    root = Path(workdir)
    if "selection" in pooled:
        sel = pooled["selection"]
        method = protocol_choice({m: float(np.mean([p["val_accuracy"] for p in picks])) for m, picks in sel.items()})
        places = [root / f"fold_{p['fold']}" / "sweep" / p["point"] for p in sel[method]]
        seeds = [int(s) for s in pooled["test_seeds"]]
    else:
        by: dict[str, list[float]] = {}
        for r in pooled["rows"]:
            if not r["setting"]:
                by.setdefault(r["method"], []).append(float(r["validation_accuracy"]))
        if not by:
            log("[export] skipped: a grid without --test-seeds chooses no settings; add --test-seeds, or "
                "`lelp export WORKDIR/fold_F/sweep/POINT` the run you want.")
            return
        method = protocol_choice({m: float(np.mean(v)) for m, v in by.items()})
        places = [root / f"fold_{f}" for f in range(int(config.data.num_folds))]
        seeds = [int(s) for s in config.seeds]
    best = max(places, key=lambda wd: float(choose_run(wd, method=method, seeds=seeds)["best_val_accuracy"]))
    export_and_log(best, log, method=method, seeds=seeds, out=root / "student")
