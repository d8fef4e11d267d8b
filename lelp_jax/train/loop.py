"""The training loop: train, evaluate, checkpoint, resume; the run's result record.

``train_and_evaluate`` runs the loop with Orbax checkpoints and automatic resume:
a run killed at any moment (even SIGKILL) and restarted with the same call ends
with the same result, because the data order is a function of the iterator state
(checkpointed) and all randomness of the step comes from ``fold_in(state.rng,
state.step)``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Optional, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import serialization
from jax.sharding import Mesh

from lelp_jax.core import atomic
from lelp_jax.data.iterator import eval_batches
from lelp_jax.methods.registry import Method, PyTree
from lelp_jax.runtime import sharding as shd
from lelp_jax.models.summary import count_params
from lelp_jax.runtime.progress import Progress
from lelp_jax.train.checkpoints import Checkpoints, checkpoint_tree
from lelp_jax.train.metrics import MetricsLog
from lelp_jax.train.optim import make_optimizer, num_train_steps, train_config
from lelp_jax.runtime.errors import DivergenceError
from lelp_jax.train.feed import make_feed
from lelp_jax.train.step import (TrainState, evaluate, init_train_state, make_eval_step, make_train_step, strip,
                                 train_step_fn)

if TYPE_CHECKING:
    from lelp_jax.data.iterator import BatchIterator

__all__ = ["train_and_evaluate", "failed", "succeeded"]

log = logging.getLogger(__name__)


class Source(Protocol):
    """A random-access split (:mod:`lelp_jax.data.sources`): ``len(source)``, ``source[i]`` -> one example."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Mapping[str, np.ndarray]: ...


class TeacherLookup(Protocol):
    """Cached teacher outputs over the train split (:class:`lelp_jax.pipeline.teacher.TeacherCache`)."""

    embedding_dim: int

    def lookup(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The run's sizes and intervals, resolved from ``train_config`` (0 intervals: only at the end)."""

    batch_size: int
    eval_batch_size: int
    num_steps: int
    eval_every: int
    checkpoint_every: int
    log_every: int
    steps_per_call: int
    on_nonfinite: str


def _plan(c: Mapping[str, Any], cfg: ml_collections.ConfigDict, mesh: Mesh, num_train: int) -> _Plan:
    """Batch sizes (each divisible by the mesh's devices; eval: ``train.eval_batch_size``, else
    ``data.eval_batch_size``, else the batch size), steps and intervals."""
    batch_size = int(c["batch_size"])
    eval_bs = int(c["eval_batch_size"]) or int(cfg.data.eval_batch_size or batch_size)
    n_dev = mesh.devices.size
    for name, bs in (("batch_size", batch_size), ("eval_batch_size", eval_bs)):
        if bs % n_dev:
            raise ValueError(f"train.{name}={bs} is not divisible by the {n_dev} devices of the mesh; "
                             f"use a multiple of {n_dev}.")
    num_steps = num_train_steps(c, num_train)
    return _Plan(batch_size=batch_size, eval_batch_size=eval_bs, num_steps=num_steps,
                 eval_every=int(c["eval_every"]) or num_steps,
                 checkpoint_every=int(c["checkpoint_every"]) or num_steps, log_every=max(1, int(c["log_every"])),
                 steps_per_call=int(c["steps_per_call"]), on_nonfinite=str(c["on_nonfinite"]))


def _check_teacher_args(method: Method, teacher_apply: Optional[Callable], teacher_variables: Optional[PyTree],
                        teacher_cache: Optional[TeacherLookup]) -> None:
    if method.needs_teacher and teacher_variables is None and teacher_cache is None:
        raise ValueError(f"method {method.name!r} needs a teacher: pass teacher_apply+teacher_variables "
                         "or teacher_cache.")
    if teacher_variables is not None and teacher_apply is None:
        raise ValueError("teacher_variables given without teacher_apply.")


def _initial_state(*, model: nn.Module, method: Method, optimizer: optax.GradientTransformation,
                   train_source: Source, seed: int, cfg: ml_collections.ConfigDict,
                   teacher_apply: Optional[Callable], teacher_variables: Optional[PyTree],
                   teacher_cache: Optional[TeacherLookup],
                   init_variables: Optional[Mapping[str, PyTree]]) -> TrainState:
    """``init_train_state`` on one training row; the teacher's embedding width when the method needs it."""
    sample = _sample_batch(train_source)
    t_dim = None
    if method.needs_teacher:
        t_dim = (teacher_cache.embedding_dim if teacher_cache is not None else int(jax.eval_shape(
            lambda v: teacher_apply(v, {k: jnp.asarray(x) for k, x in sample.items()}, train=False),
            teacher_variables)[0].shape[-1]))
    return init_train_state(model=model, method=method, optimizer=optimizer, sample_batch=sample, seed=seed,
                            method_cfg=cfg, teacher_embedding_dim=t_dim, init_variables=init_variables)


class _Loop:
    """Steps ``start + 1 .. num_steps``: train, log, keep the best-val variables, checkpoint.

    ``meta`` (checkpointed with the state) holds the history, the best-val bookkeeping, the
    running train-loss sum since the last evaluation and the count of skipped non-finite steps.
    Steps run in calls of up to ``feed.max_steps_per_call``, each ending at or before the next
    log, evaluation or checkpoint step, so the cadence is that of one step per call.
    """

    def __init__(self, *, plan: _Plan, state: TrainState, best: dict, meta: dict, feed: Any,
                 validate: Callable[[PyTree, PyTree], float], ckpts: Checkpoints, metrics: MetricsLog,
                 bar: Optional[Progress], online_teacher: Optional[PyTree], aux: PyTree, what: str):
        self.plan, self.state, self.best, self.meta = plan, state, best, meta
        self.feed, self.validate = feed, validate
        self.ckpts, self.metrics, self.bar = ckpts, metrics, bar
        self.online_teacher, self.aux, self.what = online_teacher, aux, what
        self.pending: list[tuple[int, dict]] = []  # (first step, stacked metrics) per call, read when logged
        self.last_loss = self.last_acc = float("nan")
        self.t_log, self.n_log = time.time(), 0

    def run(self, start: int) -> None:
        p = self.plan
        step = start
        while step < p.num_steps:
            count = min(self.feed.max_steps_per_call, p.num_steps - step,
                        *(every - step % every for every in (p.log_every, p.eval_every, p.checkpoint_every)))
            self.state, metrics = self.feed.run(self.state, count, self.online_teacher, self.aux)
            self.pending.append((step + 1, metrics))
            self.n_log += count * p.batch_size
            step += count
            last = step == p.num_steps
            if step % p.log_every == 0 or last:
                self.log(step)
            if step % p.eval_every == 0 or last:
                self.evaluate(step)
            if step % p.checkpoint_every == 0 or last:
                self.flush_losses()
                self.ckpts.save(step, checkpoint_tree(self.state, self.best),
                                {**self.meta, "data": self.feed.get_state()})
            if self.bar is not None:
                self.bar.update(step, count * p.batch_size)

    def flush_losses(self) -> None:
        """Bring the pending step losses to the host (one transfer) into the running sum; a non-finite
        step stops the run (:class:`DivergenceError`) or, with ``on_nonfinite='skip_step'``, is counted."""
        for first, metrics in zip([f for f, _ in self.pending], shd.to_host([m for _, m in self.pending])):
            for i, (loss, acc, finite, clean) in enumerate(zip(*(np.atleast_1d(metrics[k]) for k in (
                    "loss", "accuracy", "finite", "finite_inputs")))):
                if not finite:
                    if self.plan.on_nonfinite == "stop":
                        self.pending.clear()
                        raise DivergenceError(divergence_message(self.what, first + i, float(loss), bool(clean)))
                    self.meta["skipped_steps"] = self.meta.get("skipped_steps", 0) + 1
                    continue
                self.meta["loss_sum"] += float(loss)
                self.meta["loss_count"] += 1
                self.last_loss, self.last_acc = float(loss), float(acc)
        self.pending.clear()

    def log(self, step: int) -> None:
        self.flush_losses()
        now = time.time()
        rate = self.n_log / max(now - self.t_log, 1e-9)
        self.t_log, self.n_log = now, 0
        if self.bar is not None:
            self.bar.postfix(loss=f"{self.last_loss:.4f}", acc=f"{self.last_acc:.3f}",
                             best_val=f"{self.meta['best_val_accuracy']:.3f}", ex_s=f"{rate:.0f}")
        self.metrics.emit(step, {"train_loss_last": self.last_loss, "train_accuracy_last": self.last_acc,
                                 "examples_per_s": rate})

    def evaluate(self, step: int) -> None:
        """Validation accuracy; the mean train loss since the last evaluation; keep the best-val variables."""
        self.flush_losses()
        meta = self.meta
        val_acc = self.validate(self.state.params, self.state.batch_stats)
        train_loss = meta["loss_sum"] / max(meta["loss_count"], 1)
        meta["loss_sum"], meta["loss_count"] = 0.0, 0
        meta["history"].append({"step": step, "train_loss": train_loss, "val_accuracy": val_acc})
        if val_acc > meta["best_val_accuracy"]:
            meta["best_val_accuracy"], meta["best_step"] = val_acc, step
            self.best = _copy({"params": self.state.params, "batch_stats": self.state.batch_stats})
        self.metrics.emit(step, {"train_loss": train_loss, "val_accuracy": val_acc})


def divergence_message(what: str, step: int, loss: float, inputs_finite: bool) -> str:
    """The one line a diverged run stops with: which run, the first non-finite step, the likely cause."""
    if not inputs_finite:
        cause = ("its batch holds inf/NaN inputs or teacher outputs: clean the data (or the exported "
                 "teacher outputs)")
    else:
        cause = ("the loss, gradients or parameters overflowed: the learning rate is likely too high "
                 "(train.learning_rate), or the inputs are badly scaled: lower it or standardise the inputs")
    return (f"{what} diverged at step {step} (loss {loss:.4g}): {cause}; or set train.on_nonfinite='skip_step' "
            "to skip such steps.")


def _resume(ckpts: Checkpoints, state: TrainState, best: dict, batches: BatchIterator, meta: dict,
            workdir: str) -> tuple[TrainState, dict, bool]:
    """Restore state, best-val variables, iterator position and ``meta`` from the newest readable checkpoint."""
    restored = ckpts.restore_latest(checkpoint_tree(state, best))
    if restored is None:
        return state, best, False
    rstep, tree, rmeta = restored
    state = serialization.from_state_dict(state, tree["state"])
    best = serialization.from_state_dict(best, tree["best"])
    batches.set_state(rmeta.pop("data"))
    meta.update(rmeta)
    log.info("resumed from step %d in %s", rstep, workdir)
    return state, best, True


def train_and_evaluate(*, model: nn.Module, method: Method, cfg: ml_collections.ConfigDict, train_source: Source,
                       val_source: Source, test_source: Source, mesh: Mesh, workdir: str, seed: int,
                       num_classes: int, teacher_apply: Optional[Callable] = None,
                       teacher_variables: Optional[PyTree] = None, teacher_cache: Optional[TeacherLookup] = None,
                       aux: PyTree = None, train_cfg: Optional[ml_collections.ConfigDict] = None,
                       record_extra: Optional[Mapping[str, Any]] = None, progress: bool = True,
                       progress_desc: Optional[str] = None,
                       make_iterator: Optional[Callable] = None,
                       init_variables: Optional[Mapping[str, PyTree]] = None) -> dict[str, Any]:
    """Train ``model`` with ``method``, evaluate, checkpoint, resume; return the result record.

    ``init_variables``: start from these params/batch_stats (fine-tuning a pretrained
    model) instead of a random init; a resumed run restores its checkpoint instead.

    Steps: ``train.num_steps`` or ``ceil(num_epochs * len(train) / batch_size)``.
    Every ``train.eval_every`` steps (and at the end) validation accuracy is measured
    and the best-val variables kept; at the end test accuracy with the last and the
    best-val variables. Checkpoints (Orbax, max 2 kept) every ``train.checkpoint_every``
    steps and at the end, under ``workdir/checkpoints``; a later call with the same
    arguments resumes from the newest readable one. Process 0 writes
    ``workdir/metrics.jsonl``, TensorBoard events and ``workdir/result.json`` (atomic).
    An interval of 0 means only at the end.

    Teacher outputs: online (``teacher_apply`` + ``teacher_variables``), or cached
    (``teacher_cache``: a TeacherCache over ``train_source``, looked up by ``index``).
    ``cfg`` is the run's locked, complete config (``cfg.train`` unless ``train_cfg`` is given;
    the method parses its own options from it once). ``record_extra`` is merged into the record
    (e.g. overrides, teacher accuracy). Also used for supervised teacher training
    (method 'ce').

    ``progress`` (process 0): a tqdm bar on a terminal, else a line with step, examples/s
    and ETA at least every 30 s (:class:`lelp_jax.runtime.progress.Progress`), labelled
    ``progress_desc`` (default ``'METHOD seed K'``); a resumed run prints
    ``resumed from step N`` and records it as ``resumed_from_step`` (None: a fresh start).
    """
    t_start = time.time()
    if train_cfg is None:
        train_cfg = cfg.train
    else:
        cfg = _with_train_section(cfg, train_cfg)
    c = train_config(train_cfg)
    _check_teacher_args(method, teacher_apply, teacher_variables, teacher_cache)
    make_iterator = make_iterator or _default_make_iterator()
    pidx, pcount = jax.process_index(), jax.process_count()
    plan = _plan(c, cfg, mesh, len(train_source))
    os.makedirs(workdir, exist_ok=True)

    optimizer = make_optimizer(train_cfg, num_steps=plan.num_steps)
    state = shd.replicate(_initial_state(
        model=model, method=method, optimizer=optimizer, train_source=train_source, seed=seed, cfg=cfg,
        teacher_apply=teacher_apply, teacher_variables=teacher_variables, teacher_cache=teacher_cache,
        init_variables=init_variables), mesh)
    best = _copy({"params": state.params, "batch_stats": state.batch_stats})
    aux = shd.replicate(aux, mesh) if aux is not None else None
    online_teacher = shd.shard_params(teacher_variables, mesh) if (method.needs_teacher and teacher_variables
                                                                   is not None and teacher_cache is None) else None
    teacher_sharding = None if online_teacher is None else shd.param_shardings(online_teacher, mesh)
    step_args = dict(model=model, method=method, optimizer=optimizer, num_classes=num_classes, method_cfg=cfg,
                     teacher_apply=teacher_apply, compute_dtype=c["compute_dtype"], on_nonfinite=c["on_nonfinite"])
    train_step = make_train_step(**step_args, mesh=mesh, teacher_sharding=teacher_sharding)
    eval_step = make_eval_step(model=model, method=method, num_classes=num_classes, mesh=mesh,
                               compute_dtype=c["compute_dtype"])

    def accuracy(source: Source, params: PyTree, batch_stats: PyTree) -> float:
        batches = eval_batches(source, plan.eval_batch_size, process_index=pidx, process_count=pcount,
                               make_iterator=make_iterator)
        return evaluate(eval_step, params, batch_stats, batches, mesh)

    it = make_iterator(train_source, global_batch_size=plan.batch_size, seed=seed, shuffle=True, num_epochs=None,
                       process_index=pidx, process_count=pcount)
    cache = teacher_cache if method.needs_teacher else None
    feed = make_feed(mode=str(cfg.data.device_resident), max_mb=float(cfg.data.device_resident_max_mb),
                     steps_per_call=plan.steps_per_call, iterator=it, mesh=mesh,
                     step_fn=train_step_fn(**step_args), train_step=train_step, teacher_cache=cache,
                     teacher_sharding=teacher_sharding)
    meta: dict[str, Any] = {"history": [], "best_val_accuracy": -1.0, "best_step": 0,
                            "loss_sum": 0.0, "loss_count": 0, "skipped_steps": 0}
    ckpts = Checkpoints(os.path.join(workdir, "checkpoints"))
    state, best, resumed = _resume(ckpts, state, best, feed, meta, workdir)
    start = int(shd.to_host(state.step))
    desc = progress_desc or f"{method.name} seed {seed}"
    is_main = pidx == 0
    if resumed and progress and is_main:
        print(f"{desc}: resumed from step {start}", flush=True)

    metrics = MetricsLog(workdir, start, enabled=is_main)
    bar = Progress(plan.num_steps, desc=desc, initial=start) if progress and is_main else None
    loop = _Loop(plan=plan, state=state, best=best, meta=meta, feed=feed,
                 validate=lambda params, stats: accuracy(val_source, params, stats), ckpts=ckpts,
                 metrics=metrics, bar=bar, online_teacher=online_teacher, aux=aux, what=desc)
    try:
        loop.run(start)
    except DivergenceError as e:
        if is_main:
            metrics.close()
            atomic.write_json(os.path.join(workdir, "result.json"), {
                "method": method.name, "seed": int(seed), "steps": plan.num_steps, "status": "failed",
                "failure": str(e), "history": meta["history"], "wall_time_s": time.time() - t_start,
                **dict(record_extra or {})})
        raise
    finally:
        if bar is not None:
            bar.close()
        ckpts.close()
    state, best = loop.state, loop.best

    test_last = accuracy(test_source, state.params, state.batch_stats)
    test_best = accuracy(test_source, best["params"], best["batch_stats"])
    record = {
        "method": method.name,
        "seed": int(seed),
        "status": "ok",
        "steps": plan.num_steps,
        "test_accuracy_last": test_last,
        "test_accuracy_best_val": test_best,
        "best_val_accuracy": meta["best_val_accuracy"],
        "best_step": meta["best_step"],
        "student_params": count_params(state.variables()),
        "history": meta["history"],
        "skipped_steps": int(meta["skipped_steps"]),
        "resumed_from_step": start if resumed else None,
        "wall_time_s": time.time() - t_start,
    }
    record.update(dict(record_extra or {}))
    if is_main:
        metrics.emit(plan.num_steps, {"test_accuracy_last": test_last, "test_accuracy_best_val": test_best})
        metrics.close()
        atomic.write_json(os.path.join(workdir, "result.json"), record)
    return record


def failed(record: Mapping[str, Any]) -> bool:
    """Whether a run's result record is a failed run (it diverged): shown as failed, never averaged."""
    return record.get("status") == "failed"


def succeeded(records: Any) -> list:
    """The records of runs that finished (the ones any mean, table row or selection may use)."""
    return [r for r in records if not failed(r)]


def _default_make_iterator():
    from lelp_jax.data import make_iterator  # imported late: train sits above data

    return make_iterator


def _sample_batch(source: Source) -> dict[str, np.ndarray]:
    """One-row batch from ``source[0]`` (for shape inference at init); numeric entries only."""
    return strip({k: np.asarray(v)[None] for k, v in source[0].items()})


def _with_train_section(cfg: ml_collections.ConfigDict,
                        train_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``cfg`` with its ``train`` section replaced (teacher training reads ``cfg.teacher.train``:
    the method's hard-label terms then see that section's ``label_smoothing``)."""
    if cfg.train is train_cfg:
        return cfg
    out = cfg.copy_and_resolve_references()
    with out.unlocked():
        out.train = train_cfg
    return out


def _copy(tree: PyTree) -> PyTree:
    """Fresh buffers (the train step donates the state's, so a kept reference must not alias them)."""
    return jax.tree_util.tree_map(lambda x: x.copy(), tree)
