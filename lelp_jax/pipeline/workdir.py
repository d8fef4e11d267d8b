"""The workdir: where each artifact lives, which config owns it, and the identity of shared artifacts.

:data:`LAYOUT` names every file and folder a run writes (docs are generated from it:
:meth:`Workdir.layout`); :class:`Workdir` gives their paths. A workdir belongs to one config
(:func:`check_workdir`). Teacher-derived artifacts (teacher_outputs, statistics, projections)
are stored once, content-addressed by exactly the config keys they depend on
(:func:`artifact_parts`), in ``TEACHER/derived/`` and hard-linked into each workdir
(:mod:`lelp_jax.runtime.store`): sweep points that differ only in student-side keys share them.

Multi-host: only process 0 writes JSON/npz artifacts (:func:`is_main_process`), and
:func:`sync` is the barrier after which every process sees them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils

from lelp_jax.core import atomic
from lelp_jax.config import base_config, config_to_dict, identity_dict
from lelp_jax.runtime.errors import ArtifactError, WorkdirError
from lelp_jax.runtime.store import Store

__all__ = ["WorkdirError", "Workdir", "LAYOUT", "check_workdir", "init_workdir", "read_json", "is_main_process",
           "sync", "teacher_source_dir", "teacher_identity", "artifact_parts", "derived_store"]

# (path relative to the workdir, what it holds); upper-case words are placeholders.
LAYOUT: tuple[tuple[str, str], ...] = (
    ("config.json", "the resolved config; another config's workdir is refused"),
    ("teacher/", "the teacher: Orbax checkpoints/ (a trained one) + teacher.json (accuracy, params, data)"),
    ("teacher/derived/KIND-HASH.npz", "teacher_outputs, statistics, projections stored once per teacher, named "
                                      "by a hash of exactly the keys each depends on (lelp_jax/runtime/store.py, "
                                      "pipeline.artifact_parts); the workdir files below are hard links to them"),
    ("teacher_outputs/SPLIT.npz", "cached teacher embeddings + logits, by example index (teacher_cache)"),
    ("statistics.npz", "per-class count, mean, M2 of the teacher embeddings"),
    ("projections.npz", "LELP's fitted directions"),
    ("projections_VARIANT.npz", "an ablation's directions (projections_random.npz, projections_pca.npz)"),
    ("subclass_teacher/", "method `subclass`: the C*S-head teacher (Orbax checkpoints, result.json)"),
    ("runs/METHOD/seed_K/", "one student run: checkpoints, metrics.jsonl, TensorBoard events, result.json"),
    ("results.json", '{"dataset", "config_name", "teacher": {...}, "runs": [result, ...]}'),
)


class Workdir:
    """Paths of the artifacts in one workdir (no I/O); :data:`LAYOUT` says what each holds."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @staticmethod
    def layout() -> tuple[tuple[str, str], ...]:
        """Rows ``(path relative to the workdir, what it holds)`` of every artifact, in pipeline order."""
        return LAYOUT

    @staticmethod
    def artifact_globs() -> tuple[str, ...]:
        """Glob patterns of the workdir's top-level entries this pipeline writes (``--force`` deletes these)."""
        return tuple(dict.fromkeys(re.sub(r"[A-Z]+(-[A-Z]+)?", "*", path.split("/")[0]) for path, _ in LAYOUT))

    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def teacher_dir(self) -> Path:
        return self.root / "teacher"

    @property
    def teacher_json(self) -> Path:
        return self.teacher_dir / "teacher.json"

    def teacher_outputs(self, split: str) -> Path:
        return self.root / "teacher_outputs" / f"{split}.npz"

    @property
    def statistics(self) -> Path:
        return self.root / "statistics.npz"

    def projections(self, variant: str = "lelp") -> Path:
        """``projections.npz`` for LELP itself, ``projections_VARIANT.npz`` for an ablation."""
        return self.root / ("projections.npz" if variant == "lelp" else f"projections_{variant}.npz")

    @property
    def subclass_teacher(self) -> Path:
        return self.root / "subclass_teacher"

    def run_dir(self, method: str, seed: int) -> Path:
        return self.root / "runs" / method / f"seed_{seed}"

    def run_result(self, method: str, seed: int) -> Path:
        return self.run_dir(method, seed) / "result.json"

    def runs(self) -> list[Path]:
        """The ``result.json`` of every finished run (``runs/*/seed_*/``), in path order: what the eval
        stage, the report and the protocol's pooling read."""
        return sorted(self.root.glob("runs/*/seed_*/result.json"))

    @property
    def results(self) -> Path:
        return self.root / "results.json"


def is_main_process() -> bool:
    """Process 0 of a multi-host job (or the only process) writes the JSON artifacts."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier across processes (no-op with one), so later readers see process 0's files."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"lelp_pipeline_{name}")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; a truncated or corrupt file is an :class:`ArtifactError` naming it and the fix."""
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{os.fspath(path)} is truncated or corrupt ({e}); move it away (or delete it) and "
                            "rerun the same command: the stage that wrote it recomputes it.") from None


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _describe_difference(stored: Mapping, wanted: Mapping, limit: int = 3) -> str:
    a, b = _flat(stored), _flat(wanted)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    parts = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys[:limit]]
    more = f", and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more


def _fill_missing(stored: Mapping, wanted: Mapping, defaults: Mapping) -> dict[str, Any]:
    """``stored`` plus each key it lacks that ``wanted`` sets to its ``defaults`` value (nested).

    Such a key did not exist when the workdir was made; at its default it changes
    nothing. A key set to anything else, or one without a default (free-form
    sections such as ``model_kwargs``), stays missing, so the difference is reported.
    """
    out = dict(stored)
    for k, v in wanted.items():
        if k not in defaults:
            continue
        if k not in out:
            if v == defaults[k]:
                out[k] = v
        elif isinstance(v, Mapping) and isinstance(out[k], Mapping) and isinstance(defaults[k], Mapping):
            out[k] = _fill_missing(out[k], v, defaults[k])
    return out


def check_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """Refuse a workdir made by a different config; read-only (touches nothing).

    Configs agree when ``identity_dict`` agrees: they may differ only in
    ``methods``, ``seeds``, ``mesh`` and ``distributed``. A key that the stored
    config lacks (the workdir predates it) is accepted at its ``base_config()``
    default, so upgrading lelp_jax does not orphan finished workdirs.
    """
    wd = Workdir(workdir)
    if wd.root.exists() and not wd.root.is_dir():
        raise WorkdirError(f"workdir {str(wd.root)!r} exists and is not a directory; pick another --workdir.")
    if not wd.config_json.exists():
        return
    try:
        stored = read_json(wd.config_json)
    except (OSError, json.JSONDecodeError) as e:
        raise WorkdirError(
            f"workdir {str(wd.root)!r} has an unreadable config.json ({e}); use a new --workdir or --force."
        ) from None
    stored = _fill_missing(stored, config_to_dict(config), config_to_dict(base_config()))
    if identity_dict(stored) != identity_dict(config):
        raise WorkdirError(
            f"workdir {str(wd.root)!r} was made by config {stored.get('name', '?')!r} with other settings "
            f"({_describe_difference(identity_dict(stored), identity_dict(config))}); "
            "use a new --workdir or --force."
        )


def init_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, force: bool = False) -> Workdir:
    """Check the workdir (unless ``force``), then create it and store ``config.json``.

    ``force`` deletes the artifacts this pipeline writes (:meth:`Workdir.artifact_globs`, nothing
    else) before starting over. A matching workdir keeps its artifacts; its config.json is
    rewritten with the current methods/seeds.
    """
    wd = Workdir(workdir)
    if not force:
        check_workdir(config, wd.root)
    if is_main_process():
        if force and wd.root.is_dir():
            for pattern in Workdir.artifact_globs():
                for target in wd.root.glob(pattern):
                    if target.is_dir():
                        shutil.rmtree(target)
                    else:
                        target.unlink()
        wd.root.mkdir(parents=True, exist_ok=True)
        wanted = config_to_dict(config)
        if not (wd.config_json.exists() and read_json(wd.config_json) == wanted):
            atomic.write_json(wd.config_json, wanted)
    sync("init_workdir")
    return wd


# ----------------------------------------------------------------------------- identity of shared artifacts


def teacher_source_dir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """Where the teacher's checkpoints live: ``teacher.checkpoint`` or ``WORKDIR/teacher``.

    ``teacher.checkpoint`` may name a teacher folder (one holding ``checkpoints/``)
    or the root of an earlier workdir (its ``teacher/`` is used).
    """
    if config.teacher.checkpoint:
        path = Path(config.teacher.checkpoint).expanduser()
        if (path / "teacher" / "checkpoints").is_dir() and not (path / "checkpoints").is_dir():
            return path / "teacher"
        return path
    return Workdir(workdir).teacher_dir


def teacher_identity(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
    """A string naming the teacher (model + where its weights, or its exported outputs, are)."""
    if config.teacher.model == "precomputed":
        return f"precomputed@{Path(config.teacher.outputs.train).expanduser().resolve()}"
    return f"{config.teacher.model}@{teacher_source_dir(config, workdir).resolve()}"


def derived_store(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Store:
    """The content-addressed store of the teacher's derived artifacts: ``TEACHER/derived/`` (:mod:`lelp_jax.runtime.store`)."""
    return Store(teacher_source_dir(config, workdir) / "derived")


# data keys that say how examples are read, not which: artifacts made either way are the same
_LOADING_ONLY = ("in_memory",)


def artifact_parts(config: ml_collections.ConfigDict, workdir: str | os.PathLike, kind: str,
                   method: Any = None) -> dict[str, Any]:
    """Exactly the config keys a teacher-derived artifact depends on (hashed into its stored name).

    ``teacher_outputs``: the teacher (identity = model @ weights folder, model kwargs), the data
    section less its ``_LOADING_ONLY`` keys, the compute dtype. ``statistics``: those + the fit
    labels + whether the cached outputs or the online teacher fed them. ``projections``: the statistics' keys + the method,
    its fit options (S, null space, rotation, directions, seed), ``lelp.standardize`` and
    ``lelp.target_entropy`` (the calibration's scores and target). Student-side keys (beta, tau,
    alpha, kd.*, train.*, student.*) are in none of them.
    """
    data = {k: v for k, v in config_to_dict(config)["data"].items() if k not in _LOADING_ONLY}
    outputs = {"teacher": teacher_identity(config, workdir),
               "teacher_model_kwargs": config.teacher.model_kwargs.to_dict(),
               "data": data, "compute_dtype": config.train.compute_dtype}
    if kind == "teacher_outputs":
        return outputs
    stats = {**outputs, "fit_labels": config.lelp.fit_labels, "teacher_cache": bool(config.teacher_cache)}
    if kind == "statistics":
        return stats
    if kind == "projections":
        return {"statistics": stats, "method": method.name, "fit": dict(method.fit_options(config)),
                "standardize": bool(config.lelp.standardize), "target_entropy": config.lelp.target_entropy}
    raise ValueError(f"artifact_parts: unknown kind {kind!r}.")
