"""`lelp kfold`: run every fold of a k-fold config and pool the folds' test sets.

    lelp kfold --config configs/digits_kfold.py --workdir /tmp/kf [--methods ce,kd,lelp] [--seeds 0,1,2]
               [--grid lelp.beta=0.5,1] [--config.a.b=VALUE ...]

For every fold f of ``data.num_folds`` (lelp_jax.data.folds) the pipeline runs in
``WORKDIR/fold_f/`` with ``data.fold = f``: its own teacher, trained and selected
without fold f, and its students. With ``--grid`` axes each fold is a
``lelp sweep`` of them over that fold's one shared teacher
(``WORKDIR/fold_f/sweep/POINT/``). Because the k test folds partition the
dataset, pooling is exact: for each setting, method and seed,

    pooled test accuracy = sum_f n_f · acc_f / sum_f n_f,   n_f = |test fold f|

(the accuracy over all N examples, each predicted by the model that did not see
it), and the pooled validation accuracy likewise over the validation carves
(what a setting is chosen on; never the test accuracy). ``WORKDIR/kfold.json``:

    {"dataset", "config_name", "num_folds", "axes": [...], "n_test": [n_f...], "n_validation": [...],
     "rows": [{"setting": {key: value}, "method", "seed", "test_accuracy", "validation_accuracy",
               "test_accuracy_last", "folds": [acc_f...]}]}
"""
from __future__ import annotations

import argparse
import copy
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import ml_collections
import numpy as np

from lelp_jax import atomic, pipeline, sweep
from lelp_jax.config import load_config, validate_config
from lelp_jax.data import load_split
from lelp_jax.data.splits import data_config
from lelp_jax.errors import ConfigError
from lelp_jax.grids import parse_grid
from lelp_jax.overrides import apply_overrides, split_overrides
from lelp_jax.paired import paired_table
from lelp_jax.pipeline import read_json

__all__ = ["fold_config", "run_kfold", "pool_folds", "main"]


def fold_config(config: ml_collections.ConfigDict, fold: int) -> ml_collections.ConfigDict:
    """A validated, locked copy of ``config`` with ``data.fold = fold``."""
    cfg = copy.deepcopy(config)
    apply_overrides(cfg, [("data.fold", str(int(fold)))])
    validate_config(cfg)
    cfg.lock()
    return cfg


def _point_dirs(fold_dir: Path, grid: Mapping[str, Sequence[Any]]) -> list[tuple[dict, Path]]:
    """(setting, workdir) of every grid point of one fold (one point, the fold's own workdir, without a grid)."""
    if not grid:
        return [({}, fold_dir)]
    summary = read_json(fold_dir / "sweep" / "summary.json")
    return [(dict(p["overrides"]), Path(p["workdir"])) for p in summary["points"]]


def _split_sizes(config: ml_collections.ConfigDict) -> tuple[int, int]:
    _, info = load_split(data_config(config.data), "test")
    return int(info.split_sizes["test"]), int(info.split_sizes["validation"])


def pool_folds(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
               grid: Mapping[str, Sequence[Any]] | None = None) -> dict[str, Any]:
    """Pool finished folds into ``WORKDIR/kfold.json`` (rows for settings/methods/seeds done in every fold)."""
    root = Path(workdir)
    k = int(config.data.num_folds)
    grid = dict(grid or {})
    n_test, n_val, per_fold = [], [], []
    for f in range(k):
        cfg = fold_config(config, f)
        nt, nv = _split_sizes(cfg)
        n_test.append(nt)
        n_val.append(nv)
        runs: dict[tuple, dict] = {}
        for setting, wd in _point_dirs(root / f"fold_{f}", grid):
            for path in sorted(wd.glob("runs/*/seed_*/result.json")):
                r = read_json(path)
                key = (json.dumps(setting, sort_keys=True), r["method"], int(r["seed"]))
                runs[key] = r
        per_fold.append(runs)
    rows = []
    for key in sorted(set.intersection(*(set(r) for r in per_fold)) if per_fold else set()):
        rs = [per_fold[f][key] for f in range(k)]
        rows.append({
            "setting": json.loads(key[0]), "method": key[1], "seed": key[2],
            "test_accuracy": sum(n * r["test_accuracy_best_val"] for n, r in zip(n_test, rs)) / sum(n_test),
            "test_accuracy_last": sum(n * r["test_accuracy_last"] for n, r in zip(n_test, rs)) / sum(n_test),
            "validation_accuracy": sum(n * r["best_val_accuracy"] for n, r in zip(n_val, rs)) / sum(n_val),
            "folds": [r["test_accuracy_best_val"] for r in rs],
        })
    out = {"dataset": config.data.name, "config_name": config.name, "num_folds": k, "axes": list(grid),
           "n_test": n_test, "n_validation": n_val, "rows": rows}
    atomic.write_json(root / "kfold.json", out)
    return out


def run_kfold(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
              grid: Mapping[str, Sequence[Any]] | None = None, *,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (resumably) every fold, then pool them (:func:`pool_folds`)."""
    if int(config.data.num_folds) < 2:
        raise ConfigError("lelp kfold needs data.num_folds >= 2 (e.g. --config.data.num_folds=10).")
    if config.teacher.model == "precomputed":
        raise ConfigError("lelp kfold trains a teacher per fold, and teacher.model='precomputed' gives one set of "
                          "outputs; export them per fold and run `lelp run` with --config.data.fold=F for each.")
    if any(k.startswith("data.") or k.startswith("teacher.") for k in (grid or {})):
        raise ConfigError("lelp kfold: grid keys must be student-side (not data.* or teacher.*): every fold "
                          "shares one teacher across its grid.")
    root = Path(workdir)
    for f in range(int(config.data.num_folds)):
        cfg = fold_config(config, f)
        tag = f"[fold {f + 1}/{config.data.num_folds}]"
        if grid:
            sweep.run_sweep(cfg, root / f"fold_{f}", grid, log=lambda m, _t=tag: log(f"{_t} {m}"))
        else:
            pipeline.run_all(cfg, root / f"fold_{f}", log=lambda m, _t=tag: log(f"{_t} {m}"))
    return pool_folds(config, workdir, grid)


def table(pooled: Mapping[str, Any]) -> str:
    """Markdown: per setting and method, the pooled test (and validation) accuracy, mean ± std over seeds;
    with one setting, the methods' paired differences to kd and ce (lelp_jax.paired)."""
    groups: dict[tuple, list[dict]] = {}
    for r in pooled["rows"]:
        groups.setdefault((json.dumps(r["setting"], sort_keys=True), r["method"]), []).append(r)
    n = sum(pooled["n_test"])
    lines = [f"{pooled['num_folds']}-fold, {n} test examples pooled (test acc at each fold's best-val step)", "",
             "| setting | method | pooled test acc % | pooled val acc % | seeds |", "|---|---|---|---|---|"]
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
    """``lelp kfold --config FILE --workdir DIR [--grid KEY=V1,V2] [--methods] [--seeds] [--pool-only]``."""
    rest, overrides = split_overrides(list(argv) if argv is not None else [])
    p = argparse.ArgumentParser(prog="lelp kfold", description="Run every fold of a k-fold config and pool them.")
    p.add_argument("--config", required=True, help="Python config file or a name in configs/")
    p.add_argument("--workdir", required=True, help="root; fold f goes to WORKDIR/fold_f/")
    p.add_argument("--grid", action="append", default=[], help="student-side axis, e.g. lelp.beta=0.5,1 (repeatable)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: the config's)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's)")
    p.add_argument("--pool-only", action="store_true", help="only pool the folds already finished")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(rest)
    config = load_config(args.config, overrides, methods=args.methods, seeds=args.seeds)
    grid = parse_grid(args.grid) if args.grid else {}
    log = (lambda m: None) if args.quiet else (lambda m: print(m, flush=True))
    pooled = pool_folds(config, args.workdir, grid) if args.pool_only else run_kfold(config, args.workdir, grid, log=log)
    print(table(pooled))
    return 0
