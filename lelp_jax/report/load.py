"""What `lelp report` reads from one workdir (result files only: never a checkpoint, never a model).

Paths are the pipeline's own (:class:`lelp_jax.pipeline.workdir.Workdir`), so a run the pipeline writes is a
run the report finds.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lelp_jax.pipeline.workdir import Workdir, read_json

__all__ = ["load_workdir"]


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill: the rest is still usable
                    continue
    return rows


def load_workdir(workdir: str | os.PathLike) -> dict[str, Any]:
    """Everything the report needs from one workdir, as plain Python/NumPy.

    Returns ``{"root", "dataset", "config_name", "teacher", "runs", "eigenvalues", "sweep",
    "subclass_teacher"}``; ``eigenvalues`` is ``(C, D)`` or None, ``sweep`` the sweep summary
    or None, ``subclass_teacher`` the result of the Subclass-Distillation teacher or None. A run without
    a ``history`` gets one from its metrics.jsonl. Raises ValueError when the folder holds
    no results at all.
    """
    wd = Workdir(workdir)
    root = wd.root
    if not root.is_dir():
        raise ValueError(f"lelp report: {str(root)!r} is not a folder; pass workdirs written by `lelp run`.")
    out: dict[str, Any] = {"root": root, "dataset": None, "config_name": None, "teacher": {}, "runs": [],
                           "eigenvalues": None, "sweep": None, "subclass_teacher": None}
    if wd.results.exists():
        res = read_json(wd.results)
        out.update(dataset=res.get("dataset"), config_name=res.get("config_name"), teacher=res.get("teacher") or {},
                   runs=list(res.get("runs", [])))
    else:
        out["runs"] = [read_json(p) for p in wd.runs()]
        if wd.teacher_json.exists():
            out["teacher"] = read_json(wd.teacher_json)
    if wd.config_json.exists() and (out["dataset"] is None or out["config_name"] is None):
        cfg = read_json(wd.config_json)
        out["dataset"] = out["dataset"] or cfg.get("data", {}).get("name")
        out["config_name"] = out["config_name"] or cfg.get("name")
    for run in out["runs"]:
        if not run.get("history"):
            mpath = wd.run_dir(str(run.get("method")), run.get("seed")) / "metrics.jsonl"
            if mpath.exists():
                run["history"] = [r for r in _read_jsonl(mpath) if "val_accuracy" in r]
    if (wd.subclass_teacher / "result.json").exists():
        out["subclass_teacher"] = read_json(wd.subclass_teacher / "result.json")
    if wd.projections().exists():
        with np.load(wd.projections(), allow_pickle=False) as z:
            if "eigenvalues" in z:
                out["eigenvalues"] = np.asarray(z["eigenvalues"], np.float64)
    if (root / "sweep" / "summary.json").exists():
        out["sweep"] = read_json(root / "sweep" / "summary.json")
        out["dataset"] = out["dataset"] or out["sweep"].get("dataset")
        out["config_name"] = out["config_name"] or out["sweep"].get("config_name")
    if not out["runs"] and out["sweep"] is None and out["eigenvalues"] is None:
        raise ValueError(
            f"lelp report: no results in {str(root)!r} (no results.json, runs/*/seed_*/result.json, "
            "projections.npz or sweep/summary.json); run `lelp run` or `lelp sweep` there first."
        )
    out["dataset"] = out["dataset"] or "unknown"
    out["config_name"] = out["config_name"] or root.name
    return out
