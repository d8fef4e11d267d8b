"""`lelp sweep`: a grid of config overrides, each point a resumable sub-workdir; selection on validation.

    lelp sweep --config configs/digits_binary.py --workdir /tmp/sw \\
        --grid lelp.num_subclasses=1,2,4,8,16 --grid lelp.beta=0.5,1,2 \\
        [--methods kd,lelp] [--seeds 0,1,2] [--config.a.b=VALUE ...]

    lelp sweep --config configs/digits_binary.py --workdir /tmp/sel --methods ce,kd,lelp \\
        --default-grids [--grid kd:kd.tau=1,2,4,8 ...] --seeds 0,1,2 --test-seeds 10,11,12,13,14

Axes (:mod:`lelp_jax.protocol.grids`): ``--grid KEY=V1,V2`` applies to every method; ``--grid METHOD:KEY=V1,V2`` to METHOD
only; ``--default-grids`` gives every method without a ``METHOD:`` axis its grid from
``config.selection.grids.METHOD`` (space-separated ``KEY=V1,V2`` axes; docs/PROTOCOL.md). A
method's grid is the Cartesian product of the shared axes and its own; the grids of the
methods that have own axes must have equal sizes (every method gets as many tries), a
method without own axes runs at the config's settings. A point is one set of overrides and
runs every method whose grid holds it, in its own workdir ``WORKDIR/sweep/KEY=VALUE,.../``
(``WORKDIR/sweep/defaults/`` for no overrides; keys in axis order). Resumable: a point
whose results.json already holds each of its methods x seeds is skipped without touching
the pipeline; an interrupted point resumes through the pipeline's own stage skipping and
checkpoints. After every point ``WORKDIR/sweep/summary.json`` is rewritten atomically:

    {"axes": [key, ...] (first-seen order), "grid": {key: [values]}, "seeds": [...] (selection seeds),
     "test_seeds": [...], "methods": [...], "grid_sizes": {method: points}, "dataset", "config_name",
     "teacher": path or null,
     "points": [{"name", "overrides": {key: typed value}, "methods": [...], "workdir",
                 "status": done|pending|failed, "error"?, "seconds"? (wall time of its run),
                 "summary": {method: {"test_accuracy_last": {"mean","std"}, "test_accuracy_best_val": {...},
                                      "best_val_accuracy": {...}, "n"}}}],   (over the selection seeds)
     "selection": {method: {"point", "overrides", "val_accuracy", "status"}}   (with test seeds)}

Selection (``--test-seeds``): once every point is done on the selection seeds, each method's
settings are chosen by the mean validation accuracy over those seeds
(:func:`lelp_jax.protocol.selection.choose`), and the chosen point is run again on the test seeds,
which must not overlap the selection seeds; ``lelp report --select-on validation`` reports
the chosen settings' test accuracy on them, paired by seed.

Shared teacher: unless a grid key changes the teacher or the data (``teacher.*``,
``data.*``, ``smoke``) or the config already names ``teacher.checkpoint`` (or a
precomputed teacher, whose outputs every point reads), the teacher
is trained once in ``WORKDIR/sweep/_teacher/`` and every point loads it via
``teacher.checkpoint``, so the points differ only in what the grid changes. The points
then share its recorded accuracy (no re-evaluation), its cached outputs, the statistics
and, where the fit settings agree, the projections (content-addressed, :mod:`lelp_jax.runtime.store`).
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import jax
import ml_collections

from lelp_jax import pipeline
from lelp_jax.core import atomic
from lelp_jax.runtime import sharding
from lelp_jax.config import load_config
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.protocol.grids import default_grids, grid_points, method_grids, parse_grids, point_config, point_name
from lelp_jax.config.overrides import get_value, split_overrides, split_values
from lelp_jax.protocol.paired import method_summary
from lelp_jax.protocol.selection import choose
from lelp_jax.student.export import export_and_log, protocol_choice

__all__ = ["check_test_seeds", "protocol_parser", "parse_protocol", "run_sweep", "main"]

_TEACHER_KEYS = ("teacher.", "data.", "smoke")
def _summarize(results: Mapping[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
    """Per method, over the runs of ``seeds``: mean/std of both test accuracies and of the validation accuracy."""
    keep = {int(s) for s in seeds}
    return method_summary([r for r in results.get("runs", []) if int(r["seed"]) in keep])


def _finished(workdir: Path, methods: Sequence[str], seeds: Sequence[int]) -> Optional[dict]:
    """The point's results.json if it holds every method x seed, else None."""
    path = workdir / "results.json"
    if not path.exists():
        return None
    results = pipeline.read_json(path)
    have = {(r["method"], int(r["seed"])) for r in results.get("runs", [])}
    return results if all((m, int(s)) in have for m in methods for s in seeds) else None


def _plan(config: ml_collections.ConfigDict, grids: Mapping[str, Mapping[str, Sequence[Any]]],
          sweep_dir: Path, seeds: Sequence[int], teacher: Optional[str]) -> list[dict[str, Any]]:
    """The points: typed overrides, the methods that run there, their configs (built and validated now)."""
    points: dict[str, dict[str, Any]] = {}
    for m, grid in grids.items():
        names = []
        for ov in grid_points(grid):
            probe = point_config(config, ov, seeds=seeds, teacher=teacher)
            typed = {k: get_value(probe, k) for k in grid}
            name = point_name(typed)
            names.append(name)
            point = points.setdefault(name, {"name": name, "overrides": typed, "methods": [],
                                             "workdir": str(sweep_dir / name)})
            point["methods"].append(m)
        if len(set(names)) != len(names):
            raise ConfigError(f"grid values of {m} collide after typing (e.g. 1 and 1.0): {names}; "
                              "list each value once.")
    for point in points.values():
        point["config"] = point_config(config, point["overrides"], seeds=seeds, teacher=teacher,
                                       methods=point["methods"])
    return list(points.values())


def check_test_seeds(seeds: Sequence[int], test_seeds: Optional[Sequence[int]]) -> list[int]:
    """The test seeds as ints; refused when they repeat, are negative or overlap the selection ``seeds``."""
    test_seeds = [int(s) for s in (test_seeds or [])]
    overlap = sorted({int(s) for s in seeds} & set(test_seeds))
    if overlap:
        raise ConfigError(f"test seeds {overlap} are also selection seeds; the chosen settings must be tested on "
                          "fresh seeds: pick --test-seeds disjoint from --seeds.")
    if len(set(test_seeds)) != len(test_seeds) or any(s < 0 for s in test_seeds):
        raise ConfigError(f"--test-seeds must be distinct non-negative ints, got {test_seeds}.")
    return test_seeds


def protocol_parser(prog: str, description: str, *, workdir: str,
                    switch: tuple[str, str]) -> argparse.ArgumentParser:
    """The command line of ``lelp sweep`` and ``lelp kfold``: ``--config``, ``--workdir`` (``workdir``: its help),
    the selection flags ``--grid``, ``--default-grids``, ``--test-seeds``, then ``--methods``, ``--seeds``, the
    command's own ``switch`` (flag, help) and ``--quiet``; read it with :func:`parse_protocol`."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", required=True, help="Python config file or a name in configs/")
    p.add_argument("--workdir", required=True, help=workdir)
    p.add_argument("--grid", action="append", default=[],
                   help="one axis: lelp.beta=0.5,1,2 (every method) or kd:kd.tau=1,2,4 (one method); repeat")
    p.add_argument("--default-grids", action="store_true",
                   help="methods without a METHOD: axis take config.selection.grids.METHOD (docs/PROTOCOL.md)")
    p.add_argument("--test-seeds", default=None,
                   help="comma-separated fresh seeds: each method's settings chosen on validation over --seeds "
                        "are run again on these")
    p.add_argument("--methods", default=None, help="comma-separated methods (default: the config's)")
    p.add_argument("--seeds", default=None, help="comma-separated (selection) seeds (default: the config's)")
    p.add_argument(switch[0], action="store_true", help=switch[1])
    p.add_argument("--quiet", action="store_true")
    return p


def parse_protocol(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]
                   ) -> tuple[argparse.Namespace, ml_collections.ConfigDict, dict[str, list[str]],
                              dict[str, dict[str, list[str]]], list[int]]:
    """(flags, config, shared axes, {method: own axes}, test seeds) of a :func:`protocol_parser` command line:
    the config with its ``--config.K=V`` overrides, ``--methods`` and ``--seeds``; ``--default-grids`` fills
    every method of ``config.methods`` without a ``METHOD:`` axis; test seeds checked against ``config.seeds``."""
    rest, overrides = split_overrides(list(argv) if argv is not None else [])
    args = parser.parse_args(rest)
    config = load_config(args.config, overrides, methods=args.methods, seeds=args.seeds)
    shared, own = parse_grids(args.grid)
    if args.default_grids:
        own = {**{m: g for m, g in default_grids(config, config.methods).items() if m not in own}, **own}
    try:
        test_seeds = [int(x) for x in split_values(args.test_seeds or "")]
    except ValueError:
        raise ConfigError(f"--test-seeds must be comma-separated ints, got {args.test_seeds!r}.") from None
    return args, config, shared, own, check_test_seeds(config.seeds, test_seeds)


def run_sweep(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    grid: Mapping[str, Sequence[Any]],
    seeds: Optional[Sequence[int]] = None,
    *,
    own_grids: Optional[Mapping[str, Mapping[str, Sequence[Any]]]] = None,
    test_seeds: Optional[Sequence[int]] = None,
    share_teacher: bool = True,
    run_fn: Optional[Callable[..., Any]] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every grid point (skipping finished ones) and return the sweep summary.

    ``grid`` maps dotted config keys to value lists for every method, ``own_grids`` maps
    a method to its own axes (strings are parsed by the field's type, other values are
    formatted first); ``seeds`` (the selection seeds) replaces ``config.seeds``. With
    ``test_seeds``, each method's point with the best mean validation accuracy is then
    run on those seeds. ``run_fn(config, workdir, log=...)`` runs one point (default
    ``pipeline.run_all``). Every point's config is built and validated before anything
    runs, so a bad value fails fast. An exception (or Ctrl-C) marks the point failed in
    the summary and is re-raised; rerunning the same sweep resumes.
    """
    own_grids = {m: dict(g) for m, g in (own_grids or {}).items()}
    if not grid and not any(own_grids.values()):
        raise ConfigError("lelp sweep needs at least one --grid KEY=V1,V2 axis (or --default-grids).")
    run_fn = run_fn or pipeline.run_all
    root = Path(workdir)
    sweep_dir = root / "sweep"
    seeds = [int(s) for s in (config.seeds if seeds is None else seeds)]
    test_seeds = check_test_seeds(seeds, test_seeds)
    methods = list(config.methods)
    grids = method_grids(methods, grid, own_grids)
    keys = list(dict.fromkeys(k for g in grids.values() for k in g))
    shared = share_teacher and not config.teacher.checkpoint and config.teacher.model != "precomputed" and not any(
        k.startswith(p) or k == p for k in keys for p in _TEACHER_KEYS)
    teacher_dir = (sweep_dir / "_teacher").resolve() if shared else None
    planned = _plan(config, grids, sweep_dir, seeds, str(teacher_dir) if shared else None)
    configs = {p["name"]: p.pop("config") for p in planned}
    axes: dict[str, list[Any]] = {k: [] for k in keys}
    for p in planned:
        for k, v in p["overrides"].items():
            if v not in axes[k]:
                axes[k].append(v)
    summary: dict[str, Any] = {
        "axes": keys,  # first-seen key order (JSON objects are written with sorted keys)
        "grid": axes,
        "seeds": seeds, "test_seeds": test_seeds, "methods": methods,
        "grid_sizes": {m: len(grid_points(g)) for m, g in grids.items()},
        "dataset": config.data.name, "config_name": config.name,
        "teacher": str(teacher_dir) if shared else config.teacher.checkpoint,
        "points": [{**p, "status": "pending", "summary": {}} for p in planned],
    }
    summary_path = sweep_dir / "summary.json"

    def save() -> None:
        if pipeline.is_main_process():
            atomic.write_json(summary_path, summary)

    # Statuses of points already finished are filled in before any work, so a report
    # made during a long sweep shows them.
    for point in summary["points"]:
        done = _finished(Path(point["workdir"]), point["methods"], seeds)
        if done is not None:
            point.update(status="done", summary=_summarize(done, seeds))
    save()
    if shared and not any(p["status"] == "pending" for p in summary["points"]) and not test_seeds:
        shared = False
    if shared:
        base = point_config(config, {}, seeds=seeds)
        pipeline.run_stages(base, teacher_dir, stages=["teacher"], log=lambda m: log(f"[sweep teacher] {m}"))

    def run_point(point: Mapping[str, Any], cfg, methods_: Sequence[str], seeds_: Sequence[int], tag: str) -> dict:
        try:
            run_fn(cfg, point["workdir"], log=lambda m, _t=tag: log(f"{_t} {m}"))
        except BaseException as e:
            point.update(status="failed", error=f"{type(e).__name__}: {e}")
            save()
            raise
        results = _finished(Path(point["workdir"]), methods_, seeds_)
        if results is None:
            point.update(status="failed", error="the point finished without every method x seed in results.json")
            save()
            raise RuntimeError(f"{tag}: {point['error']} ({point['workdir']})")
        return results

    for i, point in enumerate(summary["points"]):
        tag = f"[sweep {i + 1}/{len(planned)} {point['name']}]"
        if point["status"] == "done":
            log(f"{tag} already done, skipped")
            continue
        t0 = time.perf_counter()
        results = run_point(point, configs[point["name"]], point["methods"], seeds, tag)
        point.update(status="done", summary=_summarize(results, seeds), seconds=round(time.perf_counter() - t0, 1))
        point.pop("error", None)
        save()
        best = ", ".join(f"{m} {100 * s['test_accuracy_best_val']['mean']:.2f}%" for m, s in point["summary"].items())
        log(f"{tag} done in {point['seconds']:.1f} s: {best}")
    if not test_seeds:
        return summary
    # Selection on validation, then the chosen settings on the fresh test seeds.
    chosen: dict[str, list[str]] = {}
    summary["selection"] = {}
    for m in methods:
        pick = choose(summary["points"], m, seeds)
        summary["selection"][m] = {"point": pick.point, "overrides": pick.overrides,
                                   "val_accuracy": pick.val_accuracy, "status": "pending"}
        chosen.setdefault(pick.point, []).append(m)
    save()
    by_name = {p["name"]: p for p in summary["points"]}
    for j, (name, ms) in enumerate(chosen.items()):
        point = by_name[name]
        tag = f"[sweep test {j + 1}/{len(chosen)} {name}: {','.join(ms)}]"
        if _finished(Path(point["workdir"]), ms, test_seeds) is None:
            cfg = point_config(config, point["overrides"], seeds=test_seeds, methods=ms,
                               teacher=str(teacher_dir) if teacher_dir is not None else None)
            run_point(point, cfg, ms, test_seeds, tag)
        else:
            log(f"{tag} already done, skipped")
        for m in ms:
            summary["selection"][m]["status"] = "done"
        save()
    log(f"[sweep] settings chosen on validation (seeds {seeds}) and run on test seeds {test_seeds}: "
        + ", ".join(f"{m}: {s['point']}" for m, s in summary["selection"].items()))
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``lelp sweep --config FILE --workdir DIR --grid [METHOD:]KEY=V1,V2 ... [--default-grids] [--methods]
    [--seeds] [--test-seeds] [--config.k=v ...]``."""
    p = protocol_parser("lelp sweep", "Run a grid of config overrides, one workdir per point.",
                        workdir="the sweep's root; points go to WORKDIR/sweep/KEY=VALUE,.../",
                        switch=("--no-share-teacher", "train a teacher in every point"))
    args, config, shared, own, test_seeds = parse_protocol(p, argv)
    sharding.initialize_distributed(config.distributed)
    sharding.enable_compilation_cache()  # every point compiles the same steps: later points hit the cache
    log = (lambda m: None) if args.quiet else (lambda m: print(m, flush=True))
    summary = run_sweep(config, args.workdir, shared, own_grids=own, test_seeds=test_seeds,
                        share_teacher=not args.no_share_teacher, log=log)
    log(f"[sweep] {len(summary['points'])} points done; summary {Path(args.workdir) / 'sweep' / 'summary.json'}; "
        f"`lelp report {args.workdir}{' --select-on validation' if test_seeds else ''}` for tables and plots")
    if test_seeds and jax.process_index() == 0:
        export_selected(summary, args.workdir, log)
    return 0


def export_selected(summary: Mapping[str, Any], workdir: str | os.PathLike, log: Callable[[str], None]) -> None:
    """Export the protocol's choice to ``WORKDIR/student``: the method whose chosen settings have the best mean
    validation accuracy, its best-validation run among the test seeds of its chosen point."""
    selection = summary["selection"]
    method = protocol_choice({m: s["val_accuracy"] for m, s in selection.items()})
    point = next(p for p in summary["points"] if p["name"] == selection[method]["point"])
    export_and_log(point["workdir"], log, method=method, seeds=summary["test_seeds"], out=Path(workdir) / "student")
