"""The six stages of an experiment, each resumable, with its artifact in the workdir.

Each stage is a function ``stage_X(run)`` (X = a ``lelp`` command's stage: teacher,
teacher_outputs, statistics, fit, distill, eval) of the command's
:class:`~lelp_jax.pipeline.context.Run` that reads its inputs from the run (its workdir, data
and teacher), writes its artifact atomically and returns a summary dict; when its artifact is
already there it does nothing and returns the stored summary with ``skipped=True``
(:mod:`lelp_jax.pipeline.run` chains them). Where each artifact lives: :data:`lelp_jax.pipeline.workdir.LAYOUT`.

Multi-host: every process runs every stage (sharded compute is collective); only
process 0 writes JSON/npz artifacts. Skips are decided from files every process
can see (a shared filesystem, as Orbax needs anyway).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from lelp_jax import train
from lelp_jax.core import atomic
from lelp_jax.runtime import sharding
from lelp_jax.config import config_to_dict
from lelp_jax.runtime.errors import ConfigError, DivergenceError
from lelp_jax.data.input_spec import input_spec
from lelp_jax.data.splits import source_labels
from lelp_jax.methods import Method, get_method
from lelp_jax.models import build_model, count_params
from lelp_jax.pipeline.context import Run, evaluate_split, model_kwargs, train_teacher
from lelp_jax.pipeline.fits import build_fit, method_aux, split_diagnostics, workdir_inputs
from lelp_jax.pipeline.workdir import (WorkdirError, artifact_parts, derived_store, is_main_process, read_json,
                                       sync, teacher_identity)
from lelp_jax.core.projections import save_projections
from lelp_jax.pipeline.teacher import accumulate_moments, cache_teacher_outputs

__all__ = ["STAGES", "stage_teacher", "stage_teacher_outputs", "stage_statistics", "stage_fit", "stage_distill",
           "stage_eval", "summarize", "student_record"]

_HOW = {"new": "computed", "shared": "shared (content-addressed)", "local": "already here"}


def stage_teacher(run: Run) -> dict:
    """Train the teacher (method 'ce' on ``teacher.model``) or take ``teacher.checkpoint``.

    Writes ``WORKDIR/teacher/teacher.json``: model, params, test/val accuracy, where
    the weights are, the data section it was measured on. A trained teacher keeps its
    Orbax checkpoints in ``WORKDIR/teacher/checkpoints`` (and resumes there if
    interrupted). A loaded teacher is evaluated only when its own teacher.json does not
    already hold its accuracy on this data (:func:`_recorded_teacher`).
    """
    config, wd = run.config, run.workdir
    if wd.teacher_json.exists():
        return {**read_json(wd.teacher_json), "skipped": True}
    t0 = time.perf_counter()
    if config.teacher.model == "precomputed":
        record = _precomputed_record(run)
    elif config.teacher.checkpoint and (known := _recorded_teacher(run)) is not None:
        record = {"source": "checkpoint", "checkpoint": str(run.teacher_dir.resolve()),
                  **{k: known[k] for k in ("test_accuracy", "val_accuracy", "params")}, "evaluated": False}
    elif config.teacher.checkpoint:
        src = run.teacher_dir
        variables = train.load_variables(str(src), which="best", mesh=run.mesh)
        eval_step = train.make_eval_step(model=run.teacher_model, method=get_method("ce"),
                                         num_classes=run.info.num_classes, mesh=run.mesh)
        sources = run.sources()
        test_acc = evaluate_split(eval_step, variables, sources["test_source"], run)
        val_acc = evaluate_split(eval_step, variables, sources["val_source"], run)
        record = {"source": "checkpoint", "checkpoint": str(src.resolve()), "test_accuracy": test_acc,
                  "val_accuracy": val_acc, "params": count_params(variables["params"])}
    else:
        result = train_teacher(run, model=run.teacher_model, method=get_method("ce"), folder=wd.teacher_dir,
                               desc="teacher")
        record = {"source": "trained", "checkpoint": str(wd.teacher_dir.resolve()),
                  "test_accuracy": result["test_accuracy_best_val"], "test_accuracy_last": result["test_accuracy_last"],
                  "val_accuracy": result["best_val_accuracy"], "params": result["student_params"],
                  "steps": result["steps"]}
    if record["source"] == "trained":
        record.update(train_on=config.teacher.train_on, train_examples=len(run.teacher_sources()["train_source"]))
    record.update(**run.transfer_counts)
    record.update(model=config.teacher.model, model_kwargs=config.teacher.model_kwargs.to_dict(),
                  identity=teacher_identity(config, wd.root), dataset=config.data.name,
                  data=config_to_dict(config)["data"], num_classes=run.info.num_classes,
                  seconds=time.perf_counter() - t0)
    if is_main_process():
        atomic.write_json(wd.teacher_json, record)
    sync("teacher")
    return {**record, "skipped": False}


def _precomputed_record(run: Run) -> dict:
    """teacher.json of exported outputs: accuracy of their logits' argmax on each split, the head's size."""
    teacher = run.precomputed
    acc = {name: teacher.accuracy(name, source_labels(run.split(name)[0])[0]) for name in teacher.caches}
    return {"source": "precomputed", "outputs": dict(teacher.paths), "test_accuracy": acc["test"],
            "val_accuracy": acc["validation"], "train_accuracy": acc["train"], "params": None,
            "embedding_dim": int(teacher.kernel.shape[0]), **({"notes": list(teacher.notes)} if teacher.notes else {})}


def _recorded_teacher(run: Run) -> dict | None:
    """The loaded teacher's own teacher.json when it holds test/val accuracy and params measured on
    this config's data (its recorded ``data`` section, or, for a record older than that field, the
    data section of the config.json of the workdir it was trained in), else None."""
    src = run.teacher_dir
    try:
        rec = read_json(src / "teacher.json")
    except (OSError, json.JSONDecodeError):
        return None
    if any(rec.get(k) is None for k in ("test_accuracy", "val_accuracy", "params")):
        return None
    data = config_to_dict(run.config)["data"]
    if "data" in rec:
        return rec if rec["data"] == data else None
    try:
        made_by = read_json(src.parent / "config.json")
    except (OSError, json.JSONDecodeError):
        return None
    return rec if made_by.get("data") == data else None


def _provide(run: Run, path: Path, kind: str, produce: Callable[[Path], None], method: Method | None = None) -> str:
    """``path`` from the teacher's content-addressed store (``produce`` writes it when no workdir has yet):
    'new', 'shared' or 'local' (:meth:`lelp_jax.runtime.store.Store.provide`)."""
    root = run.workdir.root
    return derived_store(run.config, root).provide(path, kind, artifact_parts(run.config, root, kind, method),
                                                   produce, main=is_main_process())


def _methods(config: ml_collections.ConfigDict) -> list[Method]:
    return [get_method(m) for m in config.methods]


def stage_teacher_outputs(run: Run) -> dict:
    """Cached mode (``teacher_cache=True``): teacher (embedding, logits) of every train example.

    Written once to ``WORKDIR/teacher_outputs/train.npz`` (row = example ``index``);
    statistics, k-means and every student run read it instead of running the
    teacher again. Students still read their own inputs from the dataset.
    """
    config = run.config
    if config.teacher.model == "precomputed":
        return {"not_needed": True, "message": "precomputed teacher: its outputs are read from teacher.outputs"}
    if not config.teacher_cache:
        return {"not_needed": True, "message": "teacher_cache is off; teacher runs inside each step"}
    path = run.workdir.teacher_outputs("train")
    if path.exists():
        return {"skipped": True, "message": str(path)}

    def produce(target: Path) -> None:
        model, variables = run.teacher
        target.parent.mkdir(parents=True, exist_ok=True)
        cache_teacher_outputs(model.apply, variables, run.split("train")[0], mesh=run.mesh,
                              batch_size=int(config.data.eval_batch_size), path=str(target),
                              compute_dtype=config.train.compute_dtype)

    how = _provide(run, path, "teacher_outputs", produce)
    sync("teacher_outputs")
    return {"skipped": how == "shared", "message": f"{_HOW[how]} -> {path}"}


def stage_statistics(run: Run) -> dict:
    """Per-class moments (count, mean, M2) of the teacher embedding over the train split.

    Labels are the ground truth or the teacher's argmax (``lelp.fit_labels``).
    Written to ``WORKDIR/statistics.npz`` only when a requested method fits projections.
    """
    config, wd = run.config, run.workdir
    if not any(m.needs_projections for m in _methods(config)):
        return {"not_needed": True, "message": "no requested method fits projections"}
    if wd.statistics.exists():
        return {"skipped": True, "message": str(wd.statistics)}

    def produce(target: Path) -> None:
        source, info = run.split("train")
        cache = run.teacher_cache
        model, variables = (None, None) if cache is not None else run.teacher
        moments = accumulate_moments(model.apply if model is not None else None, variables, source, mesh=run.mesh,
                                     num_classes=info.num_classes, batch_size=int(config.data.eval_batch_size),
                                     fit_labels=config.lelp.fit_labels, cache=cache,
                                     compute_dtype=config.train.compute_dtype)
        host = sharding.to_host(moments)
        meta = {"fit_labels": config.lelp.fit_labels, "teacher": teacher_identity(config, wd.root),
                "split": "train", "dataset": config.data.name}
        if is_main_process():
            atomic.save_npz(target, count=np.asarray(host.count), mean=np.asarray(host.mean),
                            m2=np.asarray(host.m2), metadata=np.array(json.dumps(meta)))

    how = _provide(run, wd.statistics, "statistics", produce)
    sync("statistics")
    with np.load(wd.statistics, allow_pickle=False) as f:
        counts, dim = ", ".join(f"{int(c)}" for c in f["count"]), f["mean"].shape[-1]
    return {"skipped": how == "shared", "message": f"{_HOW[how]}: class counts [{counts}], D={dim}{_rows_line(run)} "
                                                   f"-> {wd.statistics}"}


def _rows_line(run: Run) -> str:
    """', N labelled + M transfer rows (their class: the teacher's argmax)' with transfer rows, else ''."""
    counts = run.transfer_counts
    if not counts["transfer_examples"]:
        return ""
    return (f", {counts['labelled_examples']} labelled + {counts['transfer_examples']} transfer rows "
            "(their class: the teacher's argmax)")


def stage_fit(run: Run) -> dict:
    """Fit the projections of every requested projection method from ``statistics.npz``.

    ``lelp`` -> ``projections.npz``; an ablation (``random``, ``pca``) ->
    ``projections_METHOD.npz``, each with the method's own fit options. Settings
    stored with them (what the artifact depends on, not the loss-time beta, tau,
    alpha): S, standardize, target entropy, seed, label source, teacher identity.
    Points of a sweep with the same fit settings share one stored fit (:mod:`lelp_jax.runtime.store`).
    """
    config, wd = run.config, run.workdir
    todo = [m for m in _methods(config) if m.needs_projections]
    if not todo:
        return {"not_needed": True, "message": "no requested method fits projections"}
    missing = [m for m in todo if not wd.projections(m.name).exists()]
    if not missing:
        return {"skipped": True, "message": ", ".join(str(wd.projections(m.name)) for m in todo)}
    inputs = functools.cache(lambda: workdir_inputs(run))  # built only when a fit is computed
    written = []
    for method in missing:
        def produce(target: Path, method=method) -> None:
            proj = build_fit(method, inputs())
            if is_main_process():
                save_projections(target, proj)

        how = _provide(run, wd.projections(method.name), "projections", produce, method)
        opts = dict(method.fit_options(config))
        written.append(f"{method.name} ({_HOW[how]}; S={opts.get('num_subclasses')}, "
                       f"null_space={opts.get('null_space')}, rotate={opts.get('rotate')}, {opts.get('directions')})")
    sync("fit")
    return {"skipped": False, "message": "; ".join(written) + _rows_line(run)}


def stage_distill(run: Run, *, methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                  overrides: Mapping[str, Any] | None = None, log: Callable[[str], None] | None = None) -> dict:
    """One student run per method x seed under ``WORKDIR/runs/METHOD/seed_K`` (``train_and_evaluate``).

    A run with a ``result.json`` is skipped; an interrupted one resumes from its
    last checkpoint. The teacher runs inside the step (online) or its cached
    outputs are looked up by example index (``teacher_cache``). Each result
    records the overrides, the teacher's accuracy and size.
    """
    config, wd = run.config, run.workdir
    methods = list(config.methods if methods is None else methods)
    seeds = [int(x) for x in (config.seeds if seeds is None else seeds)]
    todo = [(m, s) for m in methods for s in seeds if not wd.run_result(m, s).exists()]
    if not todo:
        return {"skipped": True, "message": f"{len(methods) * len(seeds)} runs already finished"}
    sources, info = run.sources(), run.info
    teacher = read_json(wd.teacher_json)
    extra = {"overrides": dict(overrides or {}), "teacher_params": teacher.get("params"),
             "teacher_test_accuracy": teacher.get("test_accuracy"), "dataset": config.data.name,
             "config_name": config.name, **run.transfer_counts}
    done: list[str] = []
    failed: list[str] = []
    for name in dict.fromkeys(m for m, _ in todo):
        method = get_method(name)
        if method.needs_fine_labels and info.num_fine_classes is None:
            raise ConfigError(f"method {name!r} needs fine labels, and dataset {config.data.name!r} has none; "
                              "drop it from --methods.")
        cache = run.teacher_cache if method.needs_teacher else None
        t_model, t_variables = run.teacher if method.needs_teacher and cache is None else (None, None)
        aux = method_aux(method, run)
        head = method.student_outputs(info.num_classes, config, aux)
        # A method that learns from labels alone (ce: no teacher, no fit) trains on the labelled rows only.
        labels_only = not method.needs_teacher and method.fit is None
        method_sources = run.sources(labelled_only=True) if labels_only else sources
        method_extra = {**extra, **split_diagnostics(method, aux, run),
                        "train_examples": len(method_sources["train_source"]),
                        "student": student_record(config, info, method, head,
                                                  {k.removesuffix("_source"): len(v)
                                                   for k, v in method_sources.items()})}
        student = build_model(config.student.model, num_outputs=head, **model_kwargs(config.student))
        for m, seed in todo:
            if m != name:
                continue
            t0 = time.perf_counter()
            try:
                result = train.train_and_evaluate(
                    **method_sources, model=student, method=method, cfg=config, mesh=run.mesh,
                    workdir=str(wd.run_dir(name, seed)), seed=seed, num_classes=info.num_classes,
                    teacher_apply=t_model.apply if t_model is not None else None, teacher_variables=t_variables,
                    teacher_cache=cache, aux=aux, record_extra=method_extra,
                )
            except DivergenceError as e:  # recorded failed in its result.json; the other runs go on
                failed.append(f"{name}/seed_{seed}")
                if log is not None:
                    log(f"{name}/seed_{seed}: FAILED: {e}")
                continue
            done.append(f"{name}/seed_{seed}")
            if log is not None:
                log(f"{name}/seed_{seed}: test acc {100 * result['test_accuracy_best_val']:.1f}% (best val), "
                    f"{100 * result['test_accuracy_last']:.1f}% (last), {time.perf_counter() - t0:.1f} s")
    sync("distill")
    message = f"{len(done)} runs trained" + (f", {len(failed)} failed ({', '.join(failed)})" if failed else "")
    return {"skipped": False, "message": message}


def student_record(config: ml_collections.ConfigDict, info: Any, method: Method, head_outputs: int,
                   examples: Mapping[str, int]) -> dict:
    """What serving the student needs, recorded in each run's result.json (``lelp export`` reads it):
    class names (sorted string labels, ``data.class_names`` or the tfds names), C, S = head / C (the head is
    class-major, class c's logits at c*S .. c*S+S-1), the architecture (registry name + kwargs), the input
    spec (:func:`lelp_jax.data.input_spec.input_spec`), the method and its resolved options, and ``examples``
    (split -> number of examples)."""
    options = method.parse_options(config)
    settings = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}
    return {"class_names": [str(c) for c in info.class_names], "num_classes": int(info.num_classes),
            "head_outputs": int(head_outputs), "num_subclasses": int(head_outputs) // int(info.num_classes),
            "model": {"name": config.student.model, "kwargs": config.student.model_kwargs.to_dict()},
            "input": input_spec(config.data, info), "method": method.name,
            "settings": json.loads(json.dumps(settings, default=str)),
            "compute_dtype": str(config.train.compute_dtype),
            "examples": dict(examples),
            "eval_batch_size": int(config.train.eval_batch_size) or int(config.data.eval_batch_size
                                                                       or config.train.batch_size)}


def _run_order(config: ml_collections.ConfigDict, method: str, seed: int) -> tuple:
    methods = list(config.methods)
    return (methods.index(method) if method in methods else len(methods), method, seed)


def stage_eval(run: Run, *, methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> dict:
    """Aggregate every finished run into ``WORKDIR/results.json`` (rewritten each time).

    ``{"dataset", "config_name", "teacher": teacher.json, "runs": [result.json, ...]}``,
    runs ordered as ``config.methods`` then by seed. Every requested
    ``methods x seeds`` run must be finished; runs of other methods/seeds already in
    the workdir are kept too. A run that diverged is listed with ``"status": "failed"``;
    after writing, the stage raises :class:`DivergenceError` naming them (the command exits non-zero).
    """
    config, wd = run.config, run.workdir
    methods = list(config.methods if methods is None else methods)
    seeds = list(config.seeds if seeds is None else seeds)
    missing = [f"{m}/seed_{s}" for m in methods for s in seeds if not wd.run_result(m, s).exists()]
    if missing:
        raise WorkdirError(
            f"runs not finished in {str(wd.root)!r}: {', '.join(missing)}; run `lelp distill` (or `lelp run`) first."
        )
    if not wd.teacher_json.exists():
        raise WorkdirError(f"no teacher in {str(wd.root)!r}; run `lelp teacher` (or `lelp run`) first.")
    runs = [read_json(path) for path in wd.runs()]
    runs.sort(key=lambda r: _run_order(config, r["method"], int(r["seed"])))
    results = {"dataset": config.data.name, "config_name": config.name, "teacher": read_json(wd.teacher_json),
               "runs": runs}
    unchanged = wd.results.exists() and read_json(wd.results) == json.loads(json.dumps(results))
    if is_main_process() and not unchanged:
        atomic.write_json(wd.results, results)
    sync("eval")
    wanted = {(m, int(s)) for m in methods for s in seeds}
    failed = [r for r in runs if train.failed(r) and (r["method"], int(r["seed"])) in wanted]
    if failed:
        raise DivergenceError(
            f"{len(failed)} of {len(wanted)} runs failed (results.json lists them as failed, averaged nowhere): "
            + "; ".join(r["failure"] for r in failed))
    return {"runs": len(runs), "results": str(wd.results), "summary": summarize(results), "skipped": unchanged}


def summarize(results: Mapping) -> dict[str, dict[str, float]]:
    """Per method: mean and std over seeds of ``test_accuracy_best_val`` and the number of seeds
    (finished runs only: a failed run is averaged nowhere)."""
    by_method: dict[str, list[float]] = {}
    for r in train.succeeded(results["runs"]):
        by_method.setdefault(r["method"], []).append(float(r["test_accuracy_best_val"]))
    return {m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for m, v in by_method.items()}


# The stages in pipeline order, under the names the ``lelp`` commands use (cli.STAGE_COMMANDS).
STAGES: dict[str, Callable[..., dict]] = {
    "teacher": stage_teacher,
    "teacher_outputs": stage_teacher_outputs,
    "statistics": stage_statistics,
    "fit": stage_fit,
    "distill": stage_distill,
    "eval": stage_eval,
}
