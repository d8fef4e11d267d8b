"""Train state, the one compiled train step for every method, the eval step.

The train step is a single jitted function

    (state, batch, teacher_variables | None, aux) -> (state, metrics)

compiled once per input shape. Teacher outputs come either from a teacher
forward pass inside the step (``teacher_variables`` given; online mode) or from
the batch keys ``teacher_embedding`` / ``teacher_logits`` (cached mode: the loop
adds them from a :class:`lelp_jax.pipeline.teacher.TeacherCache`). The method (see
:mod:`lelp_jax.methods`) turns student and teacher outputs into a scalar loss;
optax applies the update. Params, optimizer state and RNG are replicated over the
``'data'`` mesh, the batch is split along it; XLA inserts the gradient all-reduce.

A batch is a dict of arrays: the model's inputs, ``label``, optionally ``mask``
(1 for real rows, 0 for padding) and the cached teacher outputs;
:mod:`lelp_jax.data.batch` is the one reading of that format.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh

from lelp_jax.core.validation import unstaged_checks
from lelp_jax.runtime import sharding as shd
from lelp_jax.data.batch import TEACHER_KEYS, batch_mask, cast_floats, model_inputs
from lelp_jax.methods.registry import Batch, LossInputs, Method, PyTree

__all__ = [
    "TrainState",
    "model_variables",
    "strip",
    "train_step_fn",
    "make_train_step",
    "make_eval_step",
    "init_train_state",
    "evaluate",
]


@struct.dataclass
class TrainState:
    """Everything that changes during training; replicated over the mesh.

    ``params``: the model's params (float32 master copy); ``method_params``: extra
    trainable params owned by the method (e.g. a FitNet adapter; ``{}`` if none);
    ``opt_state`` covers both; ``rng``: a raw uint32[2] key, per-step keys are
    ``fold_in(rng, step)``.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: optax.OptState
    rng: jax.Array
    method_params: PyTree = dataclasses.field(default_factory=dict)

    def variables(self) -> dict[str, PyTree]:
        """The model variables (``params`` and, when present, ``batch_stats``)."""
        return model_variables(self.params, self.batch_stats)


def model_variables(params: PyTree, batch_stats: PyTree) -> dict[str, PyTree]:
    """Flax variables ``{'params'[, 'batch_stats']}`` (``batch_stats`` only when non-empty)."""
    out = {"params": params}
    if batch_stats:
        out["batch_stats"] = batch_stats
    return out


def strip(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Drop non-array entries (strings, e.g. raw text) that cannot be sharded."""
    return {k: v for k, v in batch.items() if np.asarray(v).dtype.kind in "biuf"}


def _forward(apply_fn: Callable, params: PyTree, batch_stats: PyTree, batch: Batch, *, train: bool,
             rng: Optional[jax.Array], dtype: jnp.dtype) -> tuple[jax.Array, jax.Array, PyTree]:
    """(embedding, logits) in float32 and the updated batch_stats (train mode)."""
    variables = model_variables(cast_floats(params, dtype), batch_stats)
    inputs = model_inputs(batch, dtype)
    kwargs = {"rngs": {"dropout": rng}} if rng is not None else {}
    if train and batch_stats:
        (emb, logits), updates = apply_fn(variables, inputs, train=True, mutable=["batch_stats"], **kwargs)
        new_stats = cast_floats(updates["batch_stats"], jnp.float32)
    else:
        emb, logits = apply_fn(variables, inputs, train=train, **kwargs)
        new_stats = batch_stats
    return emb.astype(jnp.float32), logits.astype(jnp.float32), new_stats


def _teacher_outputs(teacher_apply: Optional[Callable], teacher_variables: Optional[PyTree], batch: Batch,
                     dtype: jnp.dtype) -> tuple[Optional[jax.Array], Optional[jax.Array]]:
    if teacher_variables is not None:
        if teacher_apply is None:
            raise ValueError("teacher_variables were given but make_train_step got no teacher_apply.")
        emb, logits = teacher_apply(cast_floats(teacher_variables, dtype), model_inputs(batch, dtype),
                                    train=False)
        return jax.lax.stop_gradient(emb.astype(jnp.float32)), jax.lax.stop_gradient(logits.astype(jnp.float32))
    if all(k in batch for k in TEACHER_KEYS):
        return (jax.lax.stop_gradient(batch["teacher_embedding"].astype(jnp.float32)),
                jax.lax.stop_gradient(batch["teacher_logits"].astype(jnp.float32)))
    return None, None


def _masked_accuracy(method: Method, logits: jax.Array, batch: Batch,
                     num_classes: int) -> tuple[jax.Array, jax.Array]:
    """(sum of correct, sum of mask): prediction = argmax_c of ``method.class_log_probs(logits)``."""
    mask = batch_mask(batch)
    predicted = jnp.argmax(method.class_log_probs(logits, num_classes), axis=-1)
    correct = (predicted == batch["label"]).astype(jnp.float32)
    return jnp.sum(correct * mask), jnp.sum(mask)


def unstaged(fn: Callable) -> Callable:
    """``fn`` traced without the core's staged value checks (:func:`lelp_jax.core.validation.unstaged_checks`):
    the pipeline checks its inputs before training, and a program without effects keeps JAX's C++
    dispatch path (one Python-side dispatch per step costs more than a small student's arithmetic)."""

    @functools.wraps(fn)
    def traced(*args):
        with unstaged_checks():
            return fn(*args)

    return traced


def train_step_fn(*, model: nn.Module, method: Method, optimizer: optax.GradientTransformation,
                  num_classes: int, method_cfg: ml_collections.ConfigDict,
                  teacher_apply: Optional[Callable] = None, compute_dtype: str = "float32",
                  on_nonfinite: str = "stop") -> Callable:
    """The un-jitted train step ``(state, batch, teacher_variables, aux) -> (state, metrics)``
    (:func:`make_train_step` compiles it; :mod:`lelp_jax.train.feed` compiles it with an on-device
    gather and a scan over several steps).

    ``metrics['finite']`` is 1 when the loss, the gradients and the updated parameters are all
    finite; ``metrics['finite_inputs']`` when the batch's floating inputs are (the likely cause). ``on_nonfinite='skip_step'``: a step that is not finite leaves params, optimizer state
    and batch_stats as they were (``where(finite, new, old)``; the step counter still advances, so
    the data order is unchanged); ``'stop'`` applies it and the loop stops the run.
    """
    if on_nonfinite not in ("stop", "skip_step"):
        raise ValueError(f"train.on_nonfinite must be 'stop' or 'skip_step', got {on_nonfinite!r}.")
    dtype = jnp.dtype(compute_dtype)
    options = method.parse_options(method_cfg)

    def step_fn(state: TrainState, batch: Batch, teacher_variables: Optional[PyTree], aux: PyTree):
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

        def loss_fn(trainable: tuple[PyTree, PyTree]):
            params, method_params = trainable
            emb, logits, new_stats = _forward(model.apply, params, state.batch_stats, batch, train=True,
                                              rng=rng, dtype=dtype)
            inputs = LossInputs(student_logits=logits, student_embedding=emb, batch=batch, teacher_embedding=t_emb,
                                teacher_logits=t_logits, aux=aux, method_params=method_params)
            return method.loss(inputs, options), (logits, new_stats)

        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            (state.params, state.method_params))
        updates, opt_state = optimizer.update(grads, state.opt_state, (state.params, state.method_params))
        params, method_params = optax.apply_updates((state.params, state.method_params), updates)
        correct, count = _masked_accuracy(method, logits, batch, num_classes)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite((params, method_params, new_stats))
        new_state = state.replace(step=state.step + 1, params=params, method_params=method_params,
                                  batch_stats=new_stats, opt_state=opt_state)
        if on_nonfinite == "skip_step":
            kept = state.replace(step=state.step + 1)
            new_state = jax.tree_util.tree_map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
        metrics = {"loss": loss, "accuracy": correct / jnp.maximum(count, 1.0),
                   "grad_norm": grad_norm, "finite": finite.astype(jnp.int32),
                   "finite_inputs": _all_finite(batch).astype(jnp.int32)}
        return new_state, metrics

    return step_fn


def _all_finite(tree: PyTree) -> jax.Array:
    """True when every element of every floating leaf of ``tree`` is finite."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(x)) for x in leaves], jnp.bool_(True))


def make_train_step(*, model: nn.Module, method: Method, optimizer: optax.GradientTransformation,
                    num_classes: int, method_cfg: ml_collections.ConfigDict,
                    teacher_apply: Optional[Callable] = None, mesh: Optional[Mesh] = None,
                    compute_dtype: str = "float32", teacher_sharding: Optional[PyTree] = None,
                    on_nonfinite: str = "stop") -> Callable:
    """Build the one jitted train step ``(state, batch, teacher_variables, aux) -> (state, metrics)``.

    Per step: key = fold_in(state.rng, state.step) (dropout); teacher outputs from a
    forward pass (``teacher_variables`` not None) or from ``batch['teacher_*']``;
    loss = ``method.loss(LossInputs(...), options)``; grads of (params, method_params); optax update.
    Metrics (replicated scalars): ``loss``, ``accuracy`` (masked, class argmax of
    ``method.class_log_probs``), ``grad_norm``, ``finite`` (see :func:`train_step_fn`).
    ``options = method.parse_options(method_cfg)`` (the locked, complete config) is parsed here,
    once, and closed over (static hyper-parameters); ``aux`` (e.g. projections) is a traced pytree.
    With ``mesh``, state/teacher/aux are declared replicated and the batch split
    over ``'data'`` (``teacher_sharding``, e.g. ``sharding.param_shardings(teacher_variables,
    mesh)``, declares the teacher split along ``'model'`` instead); without it,
    shardings follow the inputs.
    """
    step_fn = train_step_fn(model=model, method=method, optimizer=optimizer, num_classes=num_classes,
                            method_cfg=method_cfg, teacher_apply=teacher_apply, compute_dtype=compute_dtype,
                            on_nonfinite=on_nonfinite)
    if mesh is None:
        return jax.jit(unstaged(step_fn), donate_argnums=(0,))
    rep, bat = shd.replicated_sharding(mesh), shd.batch_sharding(mesh)
    teacher = rep if teacher_sharding is None else teacher_sharding
    return jax.jit(unstaged(step_fn), in_shardings=(rep, bat, teacher, rep), out_shardings=(rep, rep),
                   donate_argnums=(0,))


def make_eval_step(*, model: nn.Module, method: Method, num_classes: int, mesh: Optional[Mesh] = None,
                   compute_dtype: str = "float32") -> Callable:
    """Jitted ``(params, batch_stats, batch) -> {'correct', 'count'}`` (sums over real rows).

    Prediction: argmax_c of ``method.class_log_probs(student_logits)``; padding rows
    (``mask`` 0) count for nothing. Accuracy = sum correct / sum count over a split.
    """
    dtype = jnp.dtype(compute_dtype)

    def eval_fn(params: PyTree, batch_stats: PyTree, batch: Batch):
        _, logits, _ = _forward(model.apply, params, batch_stats, batch, train=False, rng=None, dtype=dtype)
        correct, count = _masked_accuracy(method, logits, batch, num_classes)
        return {"correct": correct, "count": count}

    if mesh is None:
        return jax.jit(unstaged(eval_fn))
    rep, bat = shd.replicated_sharding(mesh), shd.batch_sharding(mesh)
    return jax.jit(unstaged(eval_fn), in_shardings=(rep, rep, bat), out_shardings=rep)


def init_train_state(*, model: nn.Module, method: Method, optimizer: optax.GradientTransformation,
                     sample_batch: Mapping[str, np.ndarray], seed: int, method_cfg: ml_collections.ConfigDict,
                     teacher_embedding_dim: Optional[int] = None,
                     init_variables: Optional[Mapping[str, PyTree]] = None) -> TrainState:
    """Initial (host-local) state: model.init on a sample batch with key(seed).

    Keys: ``init, dropout, method_init, train = split(PRNGKey(seed), 4)``; ``method.init_params``
    (if the method has trainable params) gets the student/teacher embedding widths and the options
    parsed from ``method_cfg``.
    ``init_variables`` (e.g. a pretrained encoder + fresh head) replaces the random
    ``params``/``batch_stats``; its tree must match the model's. ``model.init`` is jitted:
    un-jitted it runs op by op, dozens of small compilations for a deep model.
    """
    k_init, k_drop, k_method, k_train = jax.random.split(jax.random.PRNGKey(seed), 4)
    inputs = model_inputs({k: jnp.asarray(v) for k, v in sample_batch.items()})
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
                                           teacher_embedding_dim=teacher_embedding_dim,
                                           options=method.parse_options(method_cfg))
    opt_state = optimizer.init((params, method_params))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=opt_state, rng=k_train, method_params=method_params)


def _checked_init_variables(fresh: Mapping[str, PyTree], given: Mapping[str, PyTree]) -> dict[str, PyTree]:
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


def evaluate(eval_step: Callable, params: PyTree, batch_stats: PyTree, batches: Iterable[Mapping[str, np.ndarray]],
             mesh: Mesh) -> float:
    """Accuracy over a split: sum of correct / sum of mask over (host-local, padded) batches."""
    correct = count = 0.0
    for host_batch in batches:
        out = shd.to_host(eval_step(params, batch_stats, shd.shard_batch(strip(host_batch), mesh)))
        correct += float(out["correct"])
        count += float(out["count"])
    if count == 0:
        raise ValueError("evaluate: the split has no examples (sum of mask is 0).")
    return correct / count
