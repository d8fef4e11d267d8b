"""The teacher interface: a sharded forward step, cached outputs, streaming statistics.

A teacher is any ``apply_fn(variables, batch, train=False) -> (embedding, logits)``
(a ``lelp_jax.models`` module's ``apply``). Its outputs are needed three ways:

- inside the student's train step (online mode; see :mod:`lelp_jax.train`);
- once per example, stored in the workdir (cached mode: a frozen teacher's
  outputs never change, so computing them once saves one teacher forward per
  student step): :func:`cache_teacher_outputs`, :class:`TeacherCache`;
- as per-class moments of the embedding over the distillation set, the input of
  the LELP fit: :func:`accumulate_moments`.

Every computation runs under ``jax.jit`` with the batch split over the ``'data'``
axis of the mesh and the teacher variables replicated, so it scales from one CPU
to a pod. On a mesh with a ``'model'`` axis (``mesh.model > 1``) the teacher's
large kernels are split along it instead (:func:`lelp_jax.runtime.sharding.shard_params`):
a teacher larger than one device's memory runs in the same one jitted step.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from lelp_jax.runtime import sharding as shd
from lelp_jax.core.atomic import save_npz
from lelp_jax.data.batch import cast_floats, model_inputs
from lelp_jax.data.iterator import eval_batches
from lelp_jax.runtime.progress import Progress
from lelp_jax.core.statistics import ClassMoments, all_reduce_moments, batch_moments, init_moments, merge_moments

__all__ = [
    "FIT_LABELS",
    "make_teacher_step",
    "TeacherCache",
    "cache_teacher_outputs",
    "load_teacher_cache",
    "accumulate_moments",
]

FIT_LABELS = ("labels", "teacher")
_NUMERIC = "biuf"


def make_teacher_step(apply_fn: Callable, mesh: Mesh, *, gather: bool = False,
                      compute_dtype: str = "float32", variables: Any = None) -> Callable:
    """Jitted ``(variables, batch) -> (embedding, logits)`` in float32, eval mode.

    Variables replicated, or, given ``variables`` (arrays or ``ShapeDtypeStruct``s:
    only their shapes are read), declared with :func:`lelp_jax.runtime.sharding.param_shardings`
    (on a mesh with a ``'model'`` axis: large kernels split along it; pass them
    placed by :func:`~lelp_jax.runtime.sharding.shard_params`). Batch split over ``'data'``;
    outputs stay split (``gather=False``) or are replicated on every device of every
    host (``gather=True``, an all-gather; used to fill a cache on every host).
    """
    dtype = jnp.dtype(compute_dtype)

    def step(variables, batch):
        emb, logits = apply_fn(cast_floats(variables, dtype), model_inputs(batch, dtype), train=False)
        return emb.astype(jnp.float32), logits.astype(jnp.float32)

    rep, bat = shd.replicated_sharding(mesh), shd.batch_sharding(mesh)
    out = rep if gather else bat
    var_sharding = rep if variables is None else shd.param_shardings(variables, mesh)
    return jax.jit(step, in_shardings=(var_sharding, bat), out_shardings=(out, out))


@dataclasses.dataclass(frozen=True)
class TeacherCache:
    """Teacher embeddings ``(N, D)`` and logits ``(N, C)`` of one split, row = example ``index``."""

    embeddings: np.ndarray
    logits: np.ndarray

    def __post_init__(self):
        if self.embeddings.ndim != 2 or self.logits.ndim != 2 or len(self.embeddings) != len(self.logits):
            raise ValueError(f"TeacherCache: embeddings {self.embeddings.shape} and logits {self.logits.shape} "
                             "must be (N, D) and (N, C) with the same N.")

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.embeddings)

    def lookup(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, logits) of the examples ``index`` (a batch's ``index`` column)."""
        index = np.asarray(index)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise ValueError(f"TeacherCache.lookup: index range [{index.min()}, {index.max()}] outside the cached "
                             f"split of {len(self)} examples; was the cache built for another split?")
        return self.embeddings[index], self.logits[index]

    def save(self, path: str) -> None:
        """Write ``path`` (.npz) atomically (:func:`lelp_jax.core.atomic.save_npz`)."""
        save_npz(path, embeddings=self.embeddings, logits=self.logits)


def load_teacher_cache(path: str) -> TeacherCache:
    """Read a cache written by :meth:`TeacherCache.save`."""
    with np.load(path) as f:
        return TeacherCache(embeddings=f["embeddings"], logits=f["logits"])


def _eval_batches(source, *, batch_size: int, mesh: Mesh, process_index: Optional[int],
                  process_count: Optional[int], make_iterator: Optional[Callable], desc: Optional[str] = None):
    """Host-local padded batches over the whole split, once, in order (numeric entries only).

    ``desc``: process 0 shows progress under this label (a bar on a terminal, else a line
    with step, examples/s and ETA every 30 s: :class:`lelp_jax.runtime.progress.Progress`)."""
    if batch_size % mesh.devices.size:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {mesh.devices.size} mesh devices; "
                         f"use a multiple of {mesh.devices.size}.")
    it = eval_batches(source, batch_size, process_index=process_index, process_count=process_count,
                      make_iterator=make_iterator)
    shown = Progress(-(-len(source) // batch_size), desc=desc) if desc and jax.process_index() == 0 else None
    try:
        for step, batch in enumerate(it, 1):
            yield {k: v for k, v in batch.items() if np.asarray(v).dtype.kind in _NUMERIC}
            if shown is not None:
                shown.update(step, batch_size)
    finally:
        if shown is not None:
            shown.close()


def cache_teacher_outputs(apply_fn: Callable, variables: Any, source: Any, *, mesh: Mesh, batch_size: int,
                          path: Optional[str] = None, process_index: Optional[int] = None,
                          process_count: Optional[int] = None, make_iterator: Optional[Callable] = None,
                          compute_dtype: str = "float32") -> TeacherCache:
    """Teacher (embedding, logits) for every example of ``source``, stored by its ``index``.

    One pass of a padded eval iterator; outputs are gathered to every host, real
    rows (``mask`` 1) written at row ``index``. Process 0 writes ``path`` (.npz,
    atomic) when given. Every example must be covered exactly once.
    """
    variables = shd.shard_params(variables, mesh)
    step = make_teacher_step(apply_fn, mesh, gather=True, compute_dtype=compute_dtype, variables=variables)
    gather = jax.jit(lambda x: x, out_shardings=shd.replicated_sharding(mesh))
    n = len(source)
    emb_out = logit_out = None
    seen = np.zeros(n, bool)
    for host_batch in _eval_batches(source, batch_size=batch_size, mesh=mesh, process_index=process_index,
                                    process_count=process_count, make_iterator=make_iterator,
                                    desc="teacher outputs"):
        if "index" not in host_batch:
            raise ValueError("cache_teacher_outputs: batches need an 'index' column (the example's position).")
        g = shd.shard_batch(host_batch, mesh)
        emb, logits = shd.to_host(step(variables, g))
        index = shd.to_host(gather(g["index"]))
        mask = shd.to_host(gather(g["mask"])) > 0 if "mask" in g else np.ones(len(index), bool)
        if emb_out is None:
            emb_out = np.zeros((n, emb.shape[1]), np.float32)
            logit_out = np.zeros((n, logits.shape[1]), np.float32)
        rows = index[mask]
        emb_out[rows], logit_out[rows] = emb[mask], logits[mask]
        seen[rows] = True
    if emb_out is None or not seen.all():
        raise ValueError(f"cache_teacher_outputs: {int((~seen).sum())} of {n} examples never appeared; the "
                         "iterator must cover the split once (shuffle=False, num_epochs=1, padded last batch).")
    cache = TeacherCache(embeddings=emb_out, logits=logit_out)
    if path is not None and jax.process_index() == 0:
        cache.save(path)
    return cache


def accumulate_moments(apply_fn: Optional[Callable], variables: Any, source: Any, *, mesh: Mesh,
                       num_classes: int, batch_size: int, fit_labels: str = "labels",
                       cache: Optional[TeacherCache] = None, process_index: Optional[int] = None,
                       process_count: Optional[int] = None, make_iterator: Optional[Callable] = None,
                       compute_dtype: str = "float32") -> ClassMoments:
    """Per-class moments of the teacher embedding over ``source`` (the LELP fit's input).

    For each padded batch: h = teacher embedding (online forward, or ``cache``
    lookup by ``index``), y = ground-truth ``label`` (``fit_labels='labels'``) or
    the teacher's argmax (``'teacher'``, and on every row without a label, -1); each device's share of the batch becomes
    its batch moments (``batch_moments`` inside ``shard_map``), combined across
    devices and hosts by ``all_reduce_moments`` and merged into the running,
    replicated moments. Padding rows have weight 0.
    """
    if fit_labels not in FIT_LABELS:
        raise ValueError(f"fit_labels={fit_labels!r}; choose one of {FIT_LABELS}.")
    if cache is None and (apply_fn is None or variables is None):
        raise ValueError("accumulate_moments needs apply_fn and variables (online teacher) or a TeacherCache.")
    rep, bat = shd.replicated_sharding(mesh), shd.batch_sharding(mesh)
    if cache is None:
        variables = shd.shard_params(variables, mesh)
        teacher_step = make_teacher_step(apply_fn, mesh, compute_dtype=compute_dtype, variables=variables)

    def update(moments, emb, logits, labels, mask):
        # Each device's rows -> its batch moments (B/k·D² work), then one psum of C·D² per batch.
        # An unlabelled transfer row (label -1) takes the teacher's argmax whatever fit_labels says.
        argmax = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        y = jnp.where(labels >= 0, labels, argmax) if fit_labels == "labels" else argmax
        local = batch_moments(emb, y, num_classes=moments.num_classes, mask=mask)
        return merge_moments(moments, all_reduce_moments(local, shd.DATA_AXIS))

    spec = PartitionSpec(shd.DATA_AXIS)
    update = jax.jit(jax.shard_map(update, mesh=mesh, in_specs=(PartitionSpec(), spec, spec, spec, spec),
                                   out_specs=PartitionSpec()),
                     in_shardings=(rep, bat, bat, bat, bat), out_shardings=rep)
    moments = None
    for host_batch in _eval_batches(source, batch_size=batch_size, mesh=mesh, process_index=process_index,
                                    process_count=process_count, make_iterator=make_iterator, desc="statistics"):
        if cache is not None:
            emb, logits = cache.lookup(host_batch["index"])
            host_batch = {**host_batch, "teacher_embedding": emb, "teacher_logits": logits}
        if "mask" not in host_batch:
            host_batch = {**host_batch, "mask": np.ones(len(host_batch["label"]), np.float32)}
        g = shd.shard_batch(host_batch, mesh)
        if cache is None:
            emb, logits = teacher_step(variables, g)
        else:
            emb, logits = g["teacher_embedding"], g["teacher_logits"]
        if moments is None:
            moments = shd.replicate(init_moments(num_classes, int(emb.shape[1])), mesh)
        moments = update(moments, emb, logits, g["label"].astype(jnp.int32), g["mask"].astype(jnp.float32))
    if moments is None:
        raise ValueError("accumulate_moments: the source yielded no batches.")
    return moments
