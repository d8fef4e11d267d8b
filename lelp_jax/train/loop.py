"""Train state, one compiled train step for every method, eval step, the loop.

The train step is a single jitted function

    (state, batch, teacher_variables | None, aux) -> (state, metrics)

compiled once per input shape. Teacher outputs come either from a teacher
forward pass inside the step (``teacher_variables`` given; online mode) or from
the batch keys ``teacher_embedding`` / ``teacher_logits`` (cached mode: the loop
adds them from a :class:`lelp_jax.teacher.TeacherCache`). The method (see
:mod:`lelp_jax.methods`) turns student and teacher outputs into a scalar loss;
optax applies the update. Params, optimizer state and RNG are replicated over the
``'data'`` mesh, the batch is split along it; XLA inserts the gradient all-reduce.

``train_and_evaluate`` runs the loop with Orbax checkpoints and automatic resume:
a run killed at any moment (even SIGKILL) and restarted with the same call ends
with the same result, because the data order is a function of the iterator state
(checkpointed) and all randomness of the step comes from ``fold_in(state.rng,
state.step)``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

import flax.linen as nn
import ml_collections
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import serialization, struct
from jax.sharding import Mesh

from lelp_jax import atomic
from lelp_jax import sharding as shd
from lelp_jax.progress import Progress

__all__ = [
    "TrainState",
    "TRAIN_DEFAULTS",
    "train_config",
    "make_optimizer",
    "make_train_step",
    "make_eval_step",
    "init_train_state",
    "evaluate",
    "train_and_evaluate",
    "load_variables",
]

log = logging.getLogger(__name__)

# Keys read from ``cfg.train`` and their defaults (a missing key takes its default).
TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 64,  # global batch (all hosts together)
    "eval_batch_size": 0,  # 0: cfg.data.eval_batch_size if present, else batch_size
    "num_steps": 1000,
    "num_epochs": None,  # if set: steps = ceil(num_epochs * len(train) / batch_size), replacing num_steps
    "optimizer": "adam",  # 'adam' | 'adamw' | 'sgd' (momentum, nesterov)
    "learning_rate": 1e-3,
    "schedule": "cosine",  # 'cosine' | 'constant'
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "momentum": 0.9,
    "nesterov": False,
    "grad_clip_norm": None,  # None/0: no clipping
    "label_smoothing": 0.0,  # hard-label CE terms (read by the methods from cfg.train)
    "eval_every": 0,  # 0: only at the end
    "checkpoint_every": 0,  # 0: only at the end
    "log_every": 50,
    "compute_dtype": "float32",  # 'bfloat16' on accelerators: bf16 forward, float32 master params
}


def train_config(train_cfg: Any) -> dict[str, Any]:
    """``TRAIN_DEFAULTS`` overridden by the entries of ``train_cfg`` (ConfigDict, Mapping or None)."""
    out = dict(TRAIN_DEFAULTS)
    if train_cfg is not None:
        items = train_cfg.items() if hasattr(train_cfg, "items") else vars(train_cfg).items()
        for k, v in items:
            if v is not None:
                out[k] = v
    if out["optimizer"] not in ("adam", "adamw", "sgd"):
        raise ValueError(f"train.optimizer={out['optimizer']!r}; choose 'adam', 'adamw' or 'sgd'.")
    if out["schedule"] not in ("cosine", "constant"):
        raise ValueError(f"train.schedule={out['schedule']!r}; choose 'cosine' or 'constant'.")
    if out["compute_dtype"] not in ("float32", "bfloat16"):
        raise ValueError(f"train.compute_dtype={out['compute_dtype']!r}; choose 'float32' or 'bfloat16'.")
    if int(out["batch_size"]) < 1:
        raise ValueError(f"train.batch_size={out['batch_size']} must be >= 1.")
    return out


@struct.dataclass
class TrainState:
    """Everything that changes during training; replicated over the mesh.

    ``params``: the model's params (float32 master copy); ``method_params``: extra
    trainable params owned by the method (e.g. a FitNet adapter; ``{}`` if none);
    ``opt_state`` covers both; ``rng``: a raw uint32[2] key, per-step keys are
    ``fold_in(rng, step)``.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    method_params: Any = dataclasses.field(default_factory=dict)

    def variables(self) -> dict[str, Any]:
        """The model variables (``params`` and, when present, ``batch_stats``)."""
        return _variables(self.params, self.batch_stats)


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    out = {"params": params}
    if batch_stats:
        out["batch_stats"] = batch_stats
    return out


def make_optimizer(train_cfg: Any, *, num_steps: int) -> optax.GradientTransformation:
    """optax AdamW or SGD(momentum) with linear warmup then cosine decay (or constant).

    lr(t) = lr0 * t / warmup for t < warmup, then lr0 * (1 + cos(pi * u)) / 2 with
    u the fraction of the remaining steps (cosine) or lr0 (constant).
    Weight decay is decoupled (AdamW) / added to the gradient (Adam, SGD).
    """
    c = train_config(train_cfg)
    lr0 = float(c["learning_rate"])
    warmup = int(c["warmup_steps"])
    if num_steps < 1:
        raise ValueError(f"make_optimizer: num_steps={num_steps} must be >= 1.")
    if c["schedule"] == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr0, peak_value=lr0, warmup_steps=warmup,
            decay_steps=max(num_steps, warmup + 1), end_value=0.0,
        )
    elif warmup:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr0, warmup), optax.constant_schedule(lr0)], [warmup]
        )
    else:
        schedule = optax.constant_schedule(lr0)
    wd = float(c["weight_decay"])
    if c["optimizer"] == "adam":  # L2 added to the gradient (coupled), as torch's Adam
        opt = optax.chain(optax.add_decayed_weights(wd) if wd else optax.identity(), optax.adam(schedule))
    elif c["optimizer"] == "adamw":
        opt = optax.adamw(schedule, weight_decay=wd)
    else:
        opt = optax.chain(
            optax.add_decayed_weights(wd) if wd else optax.identity(),
            optax.sgd(schedule, momentum=float(c["momentum"]) or None, nesterov=bool(c["nesterov"])),
        )
    if c["grad_clip_norm"]:
        opt = optax.chain(optax.clip_by_global_norm(float(c["grad_clip_norm"])), opt)
    return opt


def _cast_floats(tree: Any, dtype) -> Any:
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


_TEACHER_KEYS = ("teacher_embedding", "teacher_logits")


def _model_inputs(batch: Mapping[str, jax.Array], dtype) -> dict[str, jax.Array]:
    """The batch without teacher outputs, float inputs cast to the compute dtype."""
    return {k: (v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) and k != "mask" else v)
            for k, v in batch.items() if k not in _TEACHER_KEYS}


def _forward(apply_fn: Callable, params: Any, batch_stats: Any, batch: Mapping, *, train: bool,
             rng: Optional[jax.Array], dtype) -> tuple[jax.Array, jax.Array, Any]:
    """(embedding, logits) in float32 and the updated batch_stats (train mode)."""
    variables = _variables(_cast_floats(params, dtype), batch_stats)
    inputs = _model_inputs(batch, dtype)
    kwargs = {"rngs": {"dropout": rng}} if rng is not None else {}
    if train and batch_stats:
        (emb, logits), updates = apply_fn(variables, inputs, train=True, mutable=["batch_stats"], **kwargs)
        new_stats = _cast_floats(updates["batch_stats"], jnp.float32)
    else:
        emb, logits = apply_fn(variables, inputs, train=train, **kwargs)
        new_stats = batch_stats
    return emb.astype(jnp.float32), logits.astype(jnp.float32), new_stats


def _teacher_outputs(teacher_apply: Optional[Callable], teacher_variables: Any, batch: Mapping,
                     dtype) -> tuple[Optional[jax.Array], Optional[jax.Array]]:
    if teacher_variables is not None:
        if teacher_apply is None:
            raise ValueError("teacher_variables were given but make_train_step got no teacher_apply.")
        emb, logits = teacher_apply(_cast_floats(teacher_variables, dtype), _model_inputs(batch, dtype),
                                    train=False)
        return jax.lax.stop_gradient(emb.astype(jnp.float32)), jax.lax.stop_gradient(logits.astype(jnp.float32))
    if all(k in batch for k in _TEACHER_KEYS):
        return (jax.lax.stop_gradient(batch["teacher_embedding"].astype(jnp.float32)),
                jax.lax.stop_gradient(batch["teacher_logits"].astype(jnp.float32)))
    return None, None


def _masked_accuracy(class_log_probs: jax.Array, labels: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    correct = (jnp.argmax(class_log_probs, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(correct * mask), jnp.sum(mask)


def make_train_step(*, model: nn.Module, method: Any, optimizer: optax.GradientTransformation,
                    num_classes: int, method_cfg: Any, teacher_apply: Optional[Callable] = None,
                    mesh: Optional[Mesh] = None, compute_dtype: str = "float32",
                    teacher_sharding: Any = None) -> Callable:
    """Build the one jitted train step ``(state, batch, teacher_variables, aux) -> (state, metrics)``.

    Per step: key = fold_in(state.rng, state.step) (dropout); teacher outputs from a
    forward pass (``teacher_variables`` not None) or from ``batch['teacher_*']``;
    loss = ``method.loss(...)``; grads of (params, method_params); optax update.
    Metrics (replicated scalars): ``loss``, ``accuracy`` (masked, class argmax of
    ``method.class_log_probs``), ``grad_norm``. ``method_cfg`` is closed over
    (static hyper-parameters); ``aux`` (e.g. projections) is a traced pytree.
    With ``mesh``, state/teacher/aux are declared replicated and the batch split
    over ``'data'`` (``teacher_sharding``, e.g. ``sharding.param_shardings(teacher_variables,
    mesh)``, declares the teacher split along ``'model'`` instead); without it,
    shardings follow the inputs.
    """
    dtype = jnp.dtype(compute_dtype)

    def step_fn(state: TrainState, batch: dict, teacher_variables: Any, aux: Any):
        rng = jax.random.fold_in(state.rng, state.step)
        if method.needs_teacher:
            t_emb, t_logits = _teacher_outputs(teacher_apply, teacher_variables, batch, dtype)
            if t_emb is None:
                raise ValueError(
                    f"method {method.name!r} needs teacher outputs: pass teacher_variables (online) or put "
                    "'teacher_embedding'/'teacher_logits' in the batch (cached mode)."
                )
        else:
            t_emb = t_logits = None
        mask = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones(batch["label"].shape, jnp.float32)

        def loss_fn(trainable):
            params, method_params = trainable
            emb, logits, new_stats = _forward(model.apply, params, state.batch_stats, batch, train=True,
                                              rng=rng, dtype=dtype)
            loss = method.loss(student_logits=logits, student_embedding=emb, batch=batch,
                               teacher_embedding=t_emb, teacher_logits=t_logits, aux=aux,
                               method_params=method_params, cfg=method_cfg)
            return loss, (logits, new_stats)

        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            (state.params, state.method_params))
        updates, opt_state = optimizer.update(grads, state.opt_state, (state.params, state.method_params))
        params, method_params = optax.apply_updates((state.params, state.method_params), updates)
        correct, count = _masked_accuracy(method.class_log_probs(logits, num_classes, method_cfg),
                                          batch["label"], mask)
        new_state = state.replace(step=state.step + 1, params=params, method_params=method_params,
                                  batch_stats=new_stats, opt_state=opt_state)
        metrics = {"loss": loss, "accuracy": correct / jnp.maximum(count, 1.0),
                   "grad_norm": optax.tree.norm(grads)}
        return new_state, metrics

    if mesh is None:
        return jax.jit(step_fn, donate_argnums=(0,))
    rep, bat = shd.replicated_sharding(mesh), shd.batch_sharding(mesh)
    teacher = rep if teacher_sharding is None else teacher_sharding
    return jax.jit(step_fn, in_shardings=(rep, bat, teacher, rep), out_shardings=(rep, rep), donate_argnums=(0,))


def make_eval_step(*, model: nn.Module, method: Any, num_classes: int, method_cfg: Any,
                   mesh: Optional[Mesh] = None, compute_dtype: str = "float32") -> Callable:
    """Jitted ``(params, batch_stats, batch) -> {'correct', 'count'}`` (sums over real rows).

    Prediction: argmax_c of ``method.class_log_probs(student_logits)``; padding rows
    (``mask`` 0) count for nothing. Accuracy = sum correct / sum count over a split.
    """
    dtype = jnp.dtype(compute_dtype)

    def eval_fn(params, batch_stats, batch):
        _, logits, _ = _forward(model.apply, params, batch_stats, batch, train=False, rng=None, dtype=dtype)
        mask = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones(batch["label"].shape, jnp.float32)
        correct, count = _masked_accuracy(method.class_log_probs(logits, num_classes, method_cfg),
                                          batch["label"], mask)
        return {"correct": correct, "count": count}

    if mesh is None:
        return jax.jit(eval_fn)
    rep, bat = shd.replicated_sharding(mesh), shd.batch_sharding(mesh)
    return jax.jit(eval_fn, in_shardings=(rep, rep, bat), out_shardings=rep)


def _default_make_iterator():
    from lelp_jax.data import make_iterator  # imported late: train sits above data

    return make_iterator


def _sample_batch(source: Any) -> dict[str, np.ndarray]:
    """One-row batch from ``source[0]`` (for shape inference at init); numeric entries only."""
    return _strip({k: np.asarray(v)[None] for k, v in source[0].items()})


def init_train_state(*, model: nn.Module, method: Any, optimizer: optax.GradientTransformation,
                     sample_batch: Mapping[str, np.ndarray], seed: int, method_cfg: Any,
                     teacher_embedding_dim: Optional[int] = None,
                     init_variables: Optional[Mapping[str, Any]] = None) -> TrainState:
    """Initial (host-local) state: model.init on a sample batch with key(seed).

    Keys: ``init, dropout, method_init, train = split(PRNGKey(seed), 4)``; ``method.init_params``
    (if the method has trainable params) gets the student/teacher embedding widths.
    ``init_variables`` (e.g. a pretrained encoder + fresh head) replaces the random
    ``params``/``batch_stats``; its tree must match the model's. ``model.init`` is jitted:
    un-jitted it runs op by op, dozens of small compilations for a deep model.
    """
    k_init, k_drop, k_method, k_train = jax.random.split(jax.random.PRNGKey(seed), 4)
    inputs = {k: jnp.asarray(v) for k, v in sample_batch.items() if k not in _TEACHER_KEYS}
    variables = jax.jit(lambda rngs, x: model.init(rngs, x, train=False))(
        {"params": k_init, "dropout": k_drop}, inputs)
    if init_variables is not None:
        variables = _checked_init_variables(variables, init_variables)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    emb, _ = jax.eval_shape(lambda v: model.apply(v, inputs, train=False), variables)
    method_params = {}
    if method.init_params is not None:
        method_params = method.init_params(k_method, student_embedding_dim=int(emb.shape[-1]),
                                           teacher_embedding_dim=teacher_embedding_dim, cfg=method_cfg)
    opt_state = optimizer.init((params, method_params))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=opt_state, rng=k_train, method_params=method_params)


def _checked_init_variables(fresh: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` params/batch_stats in place of ``fresh`` ones, after checking tree and shapes agree."""
    out = dict(fresh)
    for col in ("params", "batch_stats"):
        if col not in given:
            continue
        want = jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), fresh.get(col, {}))
        got = jax.tree_util.tree_map(lambda x: (tuple(np.shape(x)), str(np.asarray(x).dtype)), given[col])
        if want != got:
            raise ValueError(f"init_variables[{col!r}] does not match the model's {col}: the tree structure, "
                             "shapes or dtypes differ; build them from the same model (e.g. "
                             "minilm_init_variables(model, key)).")
        out[col] = jax.tree_util.tree_map(jnp.asarray, given[col])
    return out


def evaluate(eval_step: Callable, params: Any, batch_stats: Any, batches: Iterable[Mapping[str, np.ndarray]],
             mesh: Mesh) -> float:
    """Accuracy over a split: sum of correct / sum of mask over (host-local, padded) batches."""
    correct = count = 0.0
    for host_batch in batches:
        out = shd.to_host(eval_step(params, batch_stats, shd.shard_batch(_strip(host_batch), mesh)))
        correct += float(out["correct"])
        count += float(out["count"])
    if count == 0:
        raise ValueError("evaluate: the split has no examples (sum of mask is 0).")
    return correct / count


def _strip(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Drop non-array entries (strings, e.g. raw text) that cannot be sharded."""
    return {k: v for k, v in batch.items() if np.asarray(v).dtype.kind in "biuf"}


def _count_params(tree: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(tree)))


def _with_train_section(cfg: Any, train_cfg: Any) -> Any:
    """``cfg`` with its ``train`` section replaced (teacher training reads ``cfg.teacher.train``:
    the method's hard-label terms then see that section's ``label_smoothing``)."""
    if isinstance(cfg, ml_collections.ConfigDict):
        if cfg.get("train") is train_cfg:
            return cfg
        out = cfg.copy_and_resolve_references()
        with out.unlocked():
            out.train = train_cfg
        return out
    if isinstance(cfg, Mapping):
        return {**cfg, "train": train_cfg}
    if cfg is None:
        return {"train": train_cfg}
    raise ValueError(f"cfg must be a ConfigDict or a Mapping, got {type(cfg).__name__}.")


def _data_eval_batch_size(cfg: Any) -> Optional[int]:
    data = cfg.get("data") if hasattr(cfg, "get") else getattr(cfg, "data", None)
    if data is None:
        return None
    return data.get("eval_batch_size") if hasattr(data, "get") else getattr(data, "eval_batch_size", None)


def _num_steps(c: Mapping[str, Any], num_train: int) -> int:
    if c["num_epochs"] is not None:
        steps = math.ceil(float(c["num_epochs"]) * num_train / int(c["batch_size"]))
    else:
        steps = int(c["num_steps"])
    if steps < 1:
        raise ValueError(f"train: {steps} steps; set train.num_steps > 0 or train.num_epochs > 0.")
    return steps


def _item_handlers() -> dict[str, Any]:
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


class _Checkpoints:
    """Orbax CheckpointManager holding {'state': arrays, 'meta': JSON} per step.

    'state' = TrainState + best-val variables (StandardSave); 'meta' = data-iterator
    state, history, best-val bookkeeping (JsonSave). Orbax writes each step to a
    temporary directory and renames it when complete, so a killed save leaves no
    visible step. ``restore_latest`` walks steps newest first and skips (and deletes)
    unreadable ones with a warning.
    """

    def __init__(self, directory: str, *, max_to_keep: int = 2):
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                 enable_async_checkpointing=False,
                                                 cleanup_tmp_directories=True),  # leftovers of a killed save
            item_handlers=_item_handlers(),
        )

    def save(self, step: int, tree: Any, meta: Mapping[str, Any]) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                        meta=ocp.args.JsonSave(dict(meta))), force=True)

    def restore_latest(self, target: Any) -> Optional[tuple[int, Any, dict]]:
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
                return step, out["state"], dict(out["meta"])
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back
                warnings.warn(f"checkpoint at step {step} in {self.manager.directory} is unreadable "
                              f"({type(e).__name__}: {e}); deleting it and falling back to the previous one.",
                              RuntimeWarning, stacklevel=2)
                self.manager.delete(step)
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _ckpt_tree(state: TrainState, best: Mapping[str, Any]) -> dict:
    """Plain-dict pytree for Orbax (flax state dict; empty collections dropped by flax are kept explicit)."""
    return {"state": serialization.to_state_dict(state), "best": serialization.to_state_dict(dict(best))}


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch.

    tensorboardX imports torch (if installed) only to accept torch tensors; we log
    Python floats, and importing torch costs seconds per process, so torch is
    hidden from that one import unless it is already loaded.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _copy(tree: Any) -> Any:
    """Fresh buffers (the train step donates the state's, so a kept reference must not alias them)."""
    return jax.tree_util.tree_map(lambda x: x.copy(), tree)


def _truncate_jsonl(path: str, max_step: int) -> None:
    """Drop metric lines written after the restored step, and final test lines (they will be written again)."""
    if not os.path.exists(path):
        return
    lines = []
    with open(path) as f:
        for ln in f:
            try:
                row = json.loads(ln)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
            if row.get("step", 0) <= max_step and "test_accuracy_last" not in row:
                lines.append(ln if ln.endswith("\n") else ln + "\n")
    atomic.write_text(path, "".join(lines))


def train_and_evaluate(*, model: nn.Module, method: Any, cfg: Any, train_source: Any, val_source: Any,
                       test_source: Any, mesh: Mesh, workdir: str, seed: int, num_classes: int,
                       teacher_apply: Optional[Callable] = None, teacher_variables: Any = None,
                       teacher_cache: Any = None, aux: Any = None, train_cfg: Any = None,
                       record_extra: Optional[Mapping[str, Any]] = None, progress: bool = True,
                       progress_desc: Optional[str] = None,
                       make_iterator: Optional[Callable] = None,
                       init_variables: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
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

    Teacher outputs: online (``teacher_apply`` + ``teacher_variables``), or cached
    (``teacher_cache``: a TeacherCache over ``train_source``, looked up by ``index``).
    ``cfg`` is the full config (``cfg.train`` unless ``train_cfg`` is given; the
    method reads its own section). ``record_extra`` is merged into the record
    (e.g. overrides, teacher accuracy). Also used for supervised teacher training
    (method 'ce').

    ``progress`` (process 0): a tqdm bar on a terminal, else a line with step, examples/s
    and ETA at least every 30 s (:class:`lelp_jax.progress.Progress`), labelled
    ``progress_desc`` (default ``'METHOD seed K'``); a resumed run prints
    ``resumed from step N`` and records it as ``resumed_from_step`` (None: a fresh start).
    """
    t_start = time.time()
    if train_cfg is None:
        train_cfg = cfg.get("train") if hasattr(cfg, "get") else getattr(cfg, "train", None)
    else:
        cfg = _with_train_section(cfg, train_cfg)
    c = train_config(train_cfg)
    if method.needs_teacher and teacher_variables is None and teacher_cache is None:
        raise ValueError(f"method {method.name!r} needs a teacher: pass teacher_apply+teacher_variables "
                         "or teacher_cache.")
    if teacher_variables is not None and teacher_apply is None:
        raise ValueError("teacher_variables given without teacher_apply.")
    make_iterator = make_iterator or _default_make_iterator()
    pidx, pcount = jax.process_index(), jax.process_count()
    batch_size = int(c["batch_size"])
    eval_bs = int(c["eval_batch_size"]) or int(_data_eval_batch_size(cfg) or batch_size)
    n_dev = mesh.devices.size
    for name, bs in (("batch_size", batch_size), ("eval_batch_size", eval_bs)):
        if bs % n_dev:
            raise ValueError(f"train.{name}={bs} is not divisible by the {n_dev} devices of the mesh; "
                             f"use a multiple of {n_dev}.")
    num_steps = _num_steps(c, len(train_source))
    eval_every = int(c["eval_every"]) or num_steps
    ckpt_every = int(c["checkpoint_every"]) or num_steps
    log_every = max(1, int(c["log_every"]))
    os.makedirs(workdir, exist_ok=True)

    use_teacher = method.needs_teacher
    optimizer = make_optimizer(train_cfg, num_steps=num_steps)
    sample = _sample_batch(train_source)
    t_dim = None
    if use_teacher:
        t_dim = (teacher_cache.embedding_dim if teacher_cache is not None else int(jax.eval_shape(
            lambda v: teacher_apply(v, {k: jnp.asarray(x) for k, x in sample.items()}, train=False),
            teacher_variables)[0].shape[-1]))
    state = init_train_state(model=model, method=method, optimizer=optimizer, sample_batch=sample, seed=seed,
                             method_cfg=cfg, teacher_embedding_dim=t_dim, init_variables=init_variables)
    state = shd.replicate(state, mesh)
    best = _copy({"params": state.params, "batch_stats": state.batch_stats})
    aux = shd.replicate(aux, mesh) if aux is not None else None
    online_teacher = shd.shard_params(teacher_variables, mesh) if (use_teacher and teacher_variables is not None
                                                                    and teacher_cache is None) else None
    train_step = make_train_step(model=model, method=method, optimizer=optimizer, num_classes=num_classes,
                                 method_cfg=cfg, teacher_apply=teacher_apply, mesh=mesh,
                                 compute_dtype=c["compute_dtype"],
                                 teacher_sharding=None if online_teacher is None
                                 else shd.param_shardings(online_teacher, mesh))
    eval_step = make_eval_step(model=model, method=method, num_classes=num_classes, method_cfg=cfg, mesh=mesh,
                               compute_dtype=c["compute_dtype"])

    it = make_iterator(train_source, global_batch_size=batch_size, seed=seed, shuffle=True, num_epochs=None,
                       process_index=pidx, process_count=pcount)
    meta: dict[str, Any] = {"history": [], "best_val_accuracy": -1.0, "best_step": 0,
                            "loss_sum": 0.0, "loss_count": 0}
    ckpts = _Checkpoints(os.path.join(workdir, "checkpoints"))
    restored = ckpts.restore_latest(_ckpt_tree(state, best))
    if restored is not None:
        rstep, tree, rmeta = restored
        state = serialization.from_state_dict(state, tree["state"])
        best = serialization.from_state_dict(best, tree["best"])
        it.set_state(rmeta.pop("data"))
        meta.update(rmeta)
        log.info("resumed from step %d in %s", rstep, workdir)
    start = int(shd.to_host(state.step))
    desc = progress_desc or f"{method.name} seed {seed}"
    if restored is not None and progress and pidx == 0:
        print(f"{desc}: resumed from step {start}", flush=True)

    is_main = pidx == 0
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    writer = None
    if is_main:
        _truncate_jsonl(metrics_path, start)
        # purge_step: events after the restored step (from a killed run) are dropped
        writer = _summary_writer_class()(logdir=os.path.join(workdir, "tensorboard"),
                                         purge_step=start + 1 if start else None)

    def emit(step: int, values: Mapping[str, float]) -> None:
        if not is_main:
            return
        with open(metrics_path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for k, v in values.items():
            writer.add_scalar(k, v, step)

    def eval_batches(source):
        return make_iterator(source, global_batch_size=eval_bs, seed=0, shuffle=False, num_epochs=1,
                             process_index=pidx, process_count=pcount, drop_remainder=False)

    bar = Progress(num_steps, desc=desc, initial=start) if progress and is_main else None
    pending: list[tuple[jax.Array, jax.Array]] = []  # (loss, batch accuracy) per step, read at log/eval time
    last_loss = last_acc = float("nan")
    t_log, n_log = time.time(), 0

    def flush_losses() -> None:
        nonlocal last_loss, last_acc
        for loss, acc in shd.to_host(pending):
            meta["loss_sum"] += float(loss)
            meta["loss_count"] += 1
            last_loss, last_acc = float(loss), float(acc)
        pending.clear()

    try:
        for step in range(start + 1, num_steps + 1):
            host_batch = _strip(next(it))
            if use_teacher and teacher_cache is not None:
                emb, logits = teacher_cache.lookup(host_batch["index"])
                host_batch = {**host_batch, "teacher_embedding": emb, "teacher_logits": logits}
            state, metrics = train_step(state, shd.shard_batch(host_batch, mesh), online_teacher, aux)
            pending.append((metrics["loss"], metrics["accuracy"]))
            n_log += batch_size
            if step % log_every == 0 or step == num_steps:
                flush_losses()
                now = time.time()
                rate = n_log / max(now - t_log, 1e-9)
                t_log, n_log = now, 0
                if bar is not None:
                    bar.postfix(loss=f"{last_loss:.4f}", acc=f"{last_acc:.3f}",
                                best_val=f"{meta['best_val_accuracy']:.3f}", ex_s=f"{rate:.0f}")
                emit(step, {"train_loss_last": last_loss, "train_accuracy_last": last_acc, "examples_per_s": rate})
            if step % eval_every == 0 or step == num_steps:
                flush_losses()
                val_acc = evaluate(eval_step, state.params, state.batch_stats, eval_batches(val_source), mesh)
                train_loss = meta["loss_sum"] / max(meta["loss_count"], 1)
                meta["loss_sum"], meta["loss_count"] = 0.0, 0
                meta["history"].append({"step": step, "train_loss": train_loss, "val_accuracy": val_acc})
                if val_acc > meta["best_val_accuracy"]:
                    meta["best_val_accuracy"], meta["best_step"] = val_acc, step
                    best = _copy({"params": state.params, "batch_stats": state.batch_stats})
                emit(step, {"train_loss": train_loss, "val_accuracy": val_acc})
            if step % ckpt_every == 0 or step == num_steps:
                flush_losses()
                ckpts.save(step, _ckpt_tree(state, best), {**meta, "data": it.get_state()})
            if bar is not None:
                bar.update(step, batch_size)
    finally:
        if bar is not None:
            bar.close()
        ckpts.close()

    test_last = evaluate(eval_step, state.params, state.batch_stats, eval_batches(test_source), mesh)
    test_best = evaluate(eval_step, best["params"], best["batch_stats"], eval_batches(test_source), mesh)
    record = {
        "method": method.name,
        "seed": int(seed),
        "steps": num_steps,
        "test_accuracy_last": test_last,
        "test_accuracy_best_val": test_best,
        "best_val_accuracy": meta["best_val_accuracy"],
        "best_step": meta["best_step"],
        "student_params": _count_params(state.params),
        "history": meta["history"],
        "resumed_from_step": None if restored is None else start,
        "wall_time_s": time.time() - t_start,
    }
    record.update(dict(record_extra or {}))
    if is_main:
        emit(num_steps, {"test_accuracy_last": test_last, "test_accuracy_best_val": test_best})
        writer.close()
        atomic.write_json(os.path.join(workdir, "result.json"), record)
    return record


def load_variables(workdir: str, *, which: str = "last", mesh: Optional[Mesh] = None,
                   step: Optional[int] = None, shard_params: bool = False) -> dict[str, Any]:
    """Model variables ``{'params', ['batch_stats']}`` from a ``train_and_evaluate`` workdir.

    ``which='last'`` gives the final state's variables, ``'best'`` the best-val ones.
    Arrays are restored replicated over ``mesh`` (default: all devices), bit-exact;
    with ``shard_params`` each is restored directly in its
    :func:`lelp_jax.sharding.param_shardings` layout (a teacher on a mesh with a
    ``'model'`` axis: no device ever holds a whole large kernel).
    """
    if which not in ("last", "best"):
        raise ValueError(f"load_variables: which={which!r}; choose 'last' or 'best'.")
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    if not os.path.isdir(directory):
        raise ValueError(f"load_variables: no checkpoint directory {directory}; train first (train_and_evaluate).")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False),
                                    item_handlers=_item_handlers())
    steps = manager.all_steps()
    if not steps:
        raise ValueError(f"load_variables: no checkpoint under {directory}; train first (train_and_evaluate).")
    step = max(steps) if step is None else step
    mesh = mesh or shd.make_mesh()
    rep = shd.replicated_sharding(mesh)
    meta_tree = manager.item_metadata(step)["state"]
    meta_tree = getattr(meta_tree, "tree", meta_tree)
    place = (shd.param_shardings(meta_tree, mesh) if shard_params
             else jax.tree_util.tree_map(lambda _: rep, meta_tree))
    abstract = jax.tree_util.tree_map(lambda m, sh: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sh),
                                      meta_tree, place)
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    manager.close()
    src = out["state"] if which == "last" else out["best"]
    return _variables(src["params"], src.get("batch_stats") or {})
