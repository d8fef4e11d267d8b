"""`lelp sweep`: a grid of config overrides, each point a resumable sub-workdir.

    lelp sweep --config configs/digits_binary.py --workdir /tmp/sw \\
        --grid lelp.num_subclasses=1,2,4,8,16 --grid lelp.beta=0.5,1,2 \\
        [--methods kd,lelp] [--seeds 0,1,2] [--config.a.b=VALUE ...]

Every point of the Cartesian product of the ``--grid`` axes runs the whole pipeline
(``pipeline.run_all``) in its own workdir ``WORKDIR/sweep/KEY=VALUE,KEY=VALUE/`` (keys in
grid order). Resumable: a point whose results.json already holds every requested
method x seed is skipped without touching the pipeline; an interrupted point resumes
through the pipeline's own stage skipping and checkpoints. After every point
``WORKDIR/sweep/summary.json`` is rewritten atomically:

    {"axes": [key, ...] (grid order), "grid": {key: [values]}, "seeds": [...], "methods": [...],
     "dataset", "config_name",
     "teacher": path or null,
     "points": [{"name", "overrides": {key: typed value}, "workdir", "status": done|pending|failed,
                 "error"?, "summary": {method: {"test_accuracy_last": {"mean","std"},
                                               "test_accuracy_best_val": {"mean","std"}, "n"}}}]}

Shared teacher: unless a grid key changes the teacher or the data (``teacher.*``,
``data.*``, ``smoke``) or the config already names ``teacher.checkpoint`` (or a
precomputed teacher, whose outputs every point reads), the teacher
is trained once in ``WORKDIR/sweep/_teacher/`` and every point loads it via
``teacher.checkpoint``, so the points differ only in what the grid changes.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import ml_collections

from lelp_jax import atomic
from lelp_jax.config import ConfigError, apply_overrides, load_config, validate_config

__all__ = ["parse_grid", "grid_points", "point_name", "point_config", "run_sweep", "main"]

_TEACHER_KEYS = ("teacher.", "data.", "smoke")


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """``["lelp.beta=0.5,1,2", ...]`` -> ``{"lelp.beta": ["0.5", "1", "2"], ...}`` (values unparsed).

    Values are typed later by the config field they override. Commas inside brackets
    belong to one value: ``student.model_kwargs.hidden=[16],[64,64]`` is two values.
    """
    grid: dict[str, list[str]] = {}
    for spec in specs:
        text = spec[len("--grid="):] if spec.startswith("--grid=") else spec
        if "=" not in text:
            raise ConfigError(f"grid axis {spec!r} has no values; write --grid lelp.beta=0.5,1,2.")
        key, values = text.split("=", 1)
        key = key.strip()
        for prefix in ("--config.", "config."):
            key = key[len(prefix):] if key.startswith(prefix) else key
        if not key:
            raise ConfigError(f"grid axis {spec!r} has an empty key; write --grid lelp.beta=0.5,1,2.")
        if key in grid:
            raise ConfigError(f"grid key {key!r} is given twice; list all its values in one --grid {key}=a,b,c.")
        vals = _split_values(values)
        if not vals:
            raise ConfigError(f"grid axis {spec!r} has no values; write --grid {key}=a,b,c.")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"grid axis {key!r} repeats a value: {vals}.")
        grid[key] = vals
    return grid


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets: ``1,2`` -> [1, 2]; ``[16],[16,16]`` -> ['[16]', '[16,16]']."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [v for v in out if v]


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of the axes as override dicts (first key varies slowest)."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(grid[k]) for k in keys))]


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def point_name(overrides: Mapping[str, Any]) -> str:
    """``{"lelp.num_subclasses": 4, "lelp.beta": 0.5}`` -> ``lelp.num_subclasses=4,lelp.beta=0.5``."""
    name = ",".join(f"{k}={_fmt(v)}" for k, v in overrides.items())
    return name.replace("/", "_").replace(" ", "")


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, tuple) else node


def point_config(config: ml_collections.ConfigDict, overrides: Mapping[str, Any], *,
                 seeds: Optional[Sequence[int]] = None, teacher: Optional[str] = None) -> ml_collections.ConfigDict:
    """A validated, locked copy of ``config`` with the point's overrides (typed by their fields)."""
    cfg = copy.deepcopy(config)
    pairs = [(k, v if isinstance(v, str) else _fmt(v)) for k, v in overrides.items()]
    if seeds is not None:
        pairs.append(("seeds", ",".join(str(int(s)) for s in seeds)))
    if teacher is not None:
        pairs.append(("teacher.checkpoint", teacher))
    apply_overrides(cfg, pairs)
    validate_config(cfg)
    cfg.lock()
    return cfg


def _summarize(results: Mapping[str, Any]) -> dict[str, Any]:
    from lelp_jax.report import method_table

    out = {}
    for row in method_table(results.get("runs", [])):
        out[row["method"]] = {
            **{k: {"mean": row[k][0], "std": row[k][1]} for k in ("test_accuracy_last", "test_accuracy_best_val")},
            "n": row["n"],
        }
    return out


def _finished(workdir: Path, methods: Sequence[str], seeds: Sequence[int]) -> Optional[dict]:
    """The point's results.json if it holds every method x seed, else None."""
    from lelp_jax.pipeline import read_json

    path = workdir / "results.json"
    if not path.exists():
        return None
    results = read_json(path)
    have = {(r["method"], int(r["seed"])) for r in results.get("runs", [])}
    return results if all((m, int(s)) in have for m in methods for s in seeds) else None


def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    grid: Mapping[str, Sequence[Any]],
    seeds: Optional[Sequence[int]] = None,
    *,
    share_teacher: bool = True,
    run_fn: Optional[Callable[..., Any]] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every grid point (skipping finished ones) and return the sweep summary.

    ``grid`` maps dotted config keys to value lists (strings are parsed by the field's
    type, other values are formatted first); ``seeds`` replaces ``config.seeds``.
    ``run_fn(config, workdir, log=...)`` runs one point (default ``pipeline.run_all``).
    Every point's config is built and validated before anything runs, so a bad value
    fails fast. An exception (or Ctrl-C) marks the point failed in the summary and is
    re-raised; rerunning the same sweep resumes.
    """
    from lelp_jax import pipeline

    if not grid:
        raise ConfigError("lelp sweep needs at least one --grid KEY=V1,V2 axis.")
    run_fn = run_fn or pipeline.run_all
    root = Path(workdir)
    sweep_dir = root / "sweep"
    seeds = list(config.seeds if seeds is None else seeds)
    methods = list(config.methods)
    shared = share_teacher and not config.teacher.checkpoint and config.teacher.model != "precomputed" and not any(
        k.startswith(p) or k == p for k in grid for p in _TEACHER_KEYS)
    teacher_dir = (sweep_dir / "_teacher").resolve() if shared else None
    points = grid_points(grid)
    configs = [point_config(config, ov, seeds=seeds, teacher=str(teacher_dir) if shared else None) for ov in points]
    typed = [{k: _get(cfg, k) for k in grid} for cfg in configs]
    axes: dict[str, list[Any]] = {k: [] for k in grid}
    for t in typed:
        for k, v in t.items():
            if v not in axes[k]:
                axes[k].append(v)
    summary: dict[str, Any] = {
        "axes": list(grid),  # the grid's key order (JSON objects are written with sorted keys)
        "grid": axes,
        "seeds": seeds, "methods": methods, "dataset": config.data.name, "config_name": config.name,
        "teacher": str(teacher_dir) if shared else config.teacher.checkpoint,
        "points": [{"name": point_name(t), "overrides": t, "workdir": str(sweep_dir / point_name(t)),
                    "status": "pending", "summary": {}} for t in typed],
    }
    names = [p["name"] for p in summary["points"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"grid values collide after typing (e.g. 1 and 1.0): {names}; list each value once.")
    summary_path = sweep_dir / "summary.json"

    def save() -> None:
        if pipeline.is_main_process():
            atomic.write_json(summary_path, summary)

    # Statuses of points already finished are filled in before any work, so a report
    # made during a long sweep shows them.
    for point in summary["points"]:
        done = _finished(Path(point["workdir"]), methods, seeds)
        if done is not None:
            point.update(status="done", summary=_summarize(done))
    save()
    if shared and not any(p["status"] == "pending" for p in summary["points"]):
        shared = False
    if shared:
        base = point_config(config, {}, seeds=seeds)
        pipeline.run_stages(base, teacher_dir, stages=["teacher"], log=lambda m: log(f"[sweep teacher] {m}"))
    for i, (point, cfg) in enumerate(zip(summary["points"], configs)):
        tag = f"[sweep {i + 1}/{len(points)} {point['name']}]"
        if point["status"] == "done":
            log(f"{tag} already done, skipped")
            continue
        try:
            run_fn(cfg, point["workdir"], log=lambda m, _t=tag: log(f"{_t} {m}"))
        except BaseException as e:
            point.update(status="failed", error=f"{type(e).__name__}: {e}")
            save()
            raise
        results = _finished(Path(point["workdir"]), methods, seeds)
        if results is None:
            point.update(status="failed", error="the point finished without every method x seed in results.json")
            save()
            raise RuntimeError(f"{tag}: {point['error']} ({point['workdir']})")
        point.update(status="done", summary=_summarize(results))
        point.pop("error", None)
        save()
        best = ", ".join(f"{m} {100 * s['test_accuracy_best_val']['mean']:.2f}%" for m, s in point["summary"].items())
        log(f"{tag} done: {best}")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``lelp sweep --config FILE --workdir DIR --grid KEY=V1,V2 ... [--methods] [--seeds] [--config.k=v ...]``."""
    from lelp_jax.cli import split_overrides

    rest, overrides = split_overrides(list(argv) if argv is not None else [])
    p = argparse.ArgumentParser(prog="lelp sweep", description="Run a grid of config overrides, one workdir per point.")
    p.add_argument("--config", required=True, help="Python config file or a name in configs/")
    p.add_argument("--workdir", required=True, help="the sweep's root; points go to WORKDIR/sweep/KEY=VALUE,.../")
    p.add_argument("--grid", action="append", default=[], required=True,
                   help="one axis, e.g. lelp.beta=0.5,1,2 (repeat for more axes)")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: the config's)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the config's)")
    p.add_argument("--no-share-teacher", action="store_true", help="train a teacher in every point")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(rest)
    extra = list(overrides)
    if args.methods is not None:
        extra.append(f"--config.methods={args.methods}")
    if args.seeds is not None:
        extra.append(f"--config.seeds={args.seeds}")
    config = load_config(args.config, extra)
    grid = parse_grid(args.grid)
    from lelp_jax import sharding

    sharding.initialize_distributed(config.distributed)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, flush=True))
    summary = run_sweep(config, args.workdir, grid, share_teacher=not args.no_share_teacher, log=log)
    log(f"[sweep] {len(summary['points'])} points done; summary {Path(args.workdir) / 'sweep' / 'summary.json'}; "
        f"`lelp report {args.workdir}` for tables and plots")
    return 0

