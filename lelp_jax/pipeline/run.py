"""The driver: pre-flight checks, then the named stages in order, one log line each.

``run_all`` is the whole experiment (``lelp run``); ``run_stages`` any part of it (the other
``lelp`` stage commands). Stages and their artifacts: :mod:`lelp_jax.pipeline.stages`,
:data:`lelp_jax.pipeline.workdir.LAYOUT`.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from lelp_jax.pipeline.context import Run, preflight
from lelp_jax.pipeline.stages import STAGES
from lelp_jax.pipeline.workdir import init_workdir, is_main_process, read_json
from lelp_jax.runtime import lock

__all__ = ["run_stages", "run_all"]


def _describe(name: str, out: Mapping) -> str:
    if name == "teacher":
        acc = out.get("test_accuracy")
        params = f", {out['params']:,} params" if out.get("params") is not None else ""
        extra = f", test acc {100 * acc:.1f}%{params}" if acc is not None else ""
        notes = "".join(f"; {n}" for n in out.get("notes", ()))  # a precomputed teacher: how its exports were read
        return f"{out.get('source', '')} teacher {out.get('model', '')}{extra}{notes}"
    if name == "eval":
        parts = [f"{m} {100 * s['mean']:.1f}±{100 * s['std']:.1f}% (n={s['n']})" for m, s in out["summary"].items()]
        return f"{out['runs']} runs -> {out['results']}: " + ", ".join(parts)
    return str(out.get("message", ""))


def run_stages(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, stages: Sequence[str],
               force: bool = False, overrides: Mapping[str, Any] | None = None,
               log: Callable[[str], None] = print, run: Run | None = None,
               command: str | None = None) -> dict[str, dict]:
    """Pre-flight checks, ``init_workdir``, then each named stage in order; returns their summaries.

    Nothing is written before every check passed. From ``init_workdir`` on, the main process holds
    the workdir lock (:func:`lelp_jax.runtime.lock.hold`; ``command`` is what it records, e.g.
    ``lelp run``): a second command on the same workdir stops at once instead of interleaving.
    The stages share one :class:`Run` of ``config`` and ``workdir``: ``run`` when the caller built it already (the CLI's own
    ``preflight`` loaded data into it), else a new one. Each stage logs one line,
    e.g. ``[teacher] done in 12.3 s, trained teacher mlp, test acc 97.5%``.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {list(STAGES)}.")
    if run is None:
        run = Run(config, workdir)
    elif run.config is not config or run.workdir.root != Path(workdir):
        raise ValueError("run_stages: `run` was built from another config or workdir; build it from these "
                         "(Run(config, workdir)) or pass none.")
    preflight(run, force=force, data=any(s != "eval" for s in stages))
    with lock.hold(workdir, command) if is_main_process() else contextlib.nullcontext():
        return _run_locked(run, stages, force=force, overrides=overrides, log=log)


def _run_locked(run: Run, stages: Sequence[str], *, force: bool, overrides: Mapping[str, Any] | None,
                log: Callable[[str], None]) -> dict[str, dict]:
    """``run_stages`` once the checks passed and the lock is held."""
    init_workdir(run.config, run.workdir.root, force=force)
    outputs: dict[str, dict] = {}
    for name in stages:
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {}
        if name == "distill":
            kwargs["overrides"] = dict(overrides or {})
            kwargs["log"] = lambda m: log(f"[distill] {m}")
        out = STAGES[name](run, **kwargs)
        outputs[name] = out
        dt = time.perf_counter() - t0
        if out.get("not_needed"):
            log(f"[{name}] not needed ({out.get('message', '')})")
        elif out.get("skipped"):
            log(f"[{name}] already done, skipped ({_describe(name, out)})")
        else:
            log(f"[{name}] done in {dt:.1f} s, {_describe(name, out)}")
    return outputs


def run_all(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, force: bool = False,
            overrides: Mapping[str, Any] | None = None, log: Callable[[str], None] = print) -> dict:
    """The whole experiment (teacher, outputs, statistics, fit, distill, eval); returns results.json.

    ``overrides`` ({dotted key: value}) is recorded in every new run's result.
    """
    outputs = run_stages(config, workdir, stages=list(STAGES), force=force, overrides=overrides, log=log)
    return read_json(outputs["eval"]["results"])
