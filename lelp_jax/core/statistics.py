"""Streaming per-class moments (count, mean, centred second moment), mergeable.

LELP needs, for every class c, the mean mu_c and covariance Sigma_c of the teacher
embeddings of that class over the whole distillation set. They are accumulated
batch by batch and across devices/hosts as *centred* sufficient statistics

    n_c   = sum_i w_i [y_i = c]
    mu_c  = (1 / n_c) sum_i w_i [y_i = c] h_i
    M2_c  = sum_i w_i [y_i = c] (h_i - mu_c)(h_i - mu_c)^T

and merged with the parallel formula of Chan, Golub & LeVeque (1979), so memory
is O(C D^2) and float32 stays accurate even when the mean dwarfs the spread.
The naive E[hh^T] - mu mu^T is never formed: it cancels catastrophically in
float32 (relative error ~ 1e-7 * (|mu| / sigma)^2).

Counts are float32 weights (masks may be fractional); they are exact up to 2^24
examples per class.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from lelp_jax.core.validation import require_labels, require_rank

__all__ = [
    "ClassMoments",
    "init_moments",
    "batch_moments",
    "update_moments",
    "merge_moments",
    "all_reduce_moments",
    "covariance",
]

_HIGHEST = jax.lax.Precision.HIGHEST  # full float32 matmuls also on TPU (default is bf16 passes)


@struct.dataclass
class ClassMoments:
    """Centred per-class moments, a pytree: ``count (C,)``, ``mean (C, D)``, ``m2 (C, D, D)``.

        n_c    = sum_{i: y_i = c} w_i
        mean_c = (1 / n_c) sum_{i: y_i = c} w_i h_i
        m2_c   = sum_{i: y_i = c} w_i (h_i - mean_c)(h_i - mean_c)^T

    Centred, not raw sums of h h^T, so that float32 stays accurate when the mean dwarfs the
    spread. Classes without examples have count 0, mean 0 and m2 0. ``num_classes`` C and
    ``dim`` D are read from the shapes.

    Examples:
      >>> import lelp_jax as lj
      >>> m = lj.init_moments(num_classes=3, dim=4)
      >>> m.count.shape, m.mean.shape, m.m2.shape, m.num_classes, m.dim
      ((3,), (3, 4), (3, 4, 4), 3, 4)
    """

    count: jax.Array
    mean: jax.Array
    m2: jax.Array

    @property
    def num_classes(self) -> int:
        return self.mean.shape[0]

    @property
    def dim(self) -> int:
        return self.mean.shape[1]


def init_moments(num_classes: int, dim: int, *, dtype=None) -> ClassMoments:
    """Empty moments (all zeros): the start of a stream of :func:`update_moments`.

    Args:
      num_classes: C >= 1.
      dim: D >= 1, the embedding width.
      dtype: defaults to JAX's default float: float32, float64 under ``jax_enable_x64``.
    Returns:
      :class:`ClassMoments` of zeros in ``dtype``: ``count (C,)``, ``mean (C, D)``, ``m2 (C, D, D)``.

    Examples:
      >>> import lelp_jax as lj
      >>> m = lj.init_moments(2, 3)
      >>> m.m2.shape, m.m2.dtype, float(m.count.sum())
      ((2, 3, 3), dtype('float32'), 0.0)
    """
    if num_classes < 1 or dim < 1:
        raise ValueError(
            f"init_moments needs num_classes >= 1 and dim >= 1, got num_classes={num_classes}, "
            f"dim={dim}; pass the number of classes C and the embedding width D."
        )
    dtype = jnp.zeros((), dtype).dtype  # None -> the default float (float64 under x64)
    return ClassMoments(
        count=jnp.zeros((num_classes,), dtype),
        mean=jnp.zeros((num_classes, dim), dtype),
        m2=jnp.zeros((num_classes, dim, dim), dtype),
    )


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den where den > 0, else 0 (empty classes stay at zero)."""
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), 0)


@jax.jit
def merge_moments(a: ClassMoments, b: ClassMoments) -> ClassMoments:
    """Chan et al.'s parallel merge of two sets of centred moments, per class.

        n  = n_a + n_b,   delta = mu_b - mu_a
        mu = mu_a + delta * n_b / n
        M2 = M2_a + M2_b + delta delta^T * n_a n_b / n

    Exact in exact arithmetic; only differences of means are squared, so no
    cancellation. Empty sides (n = 0) leave the other side unchanged.

    Args:
      a: :class:`ClassMoments` ``(C,), (C, D), (C, D, D)``, e.g. of one batch, host or saved run.
      b: :class:`ClassMoments` of the same C and D.
    Returns:
      :class:`ClassMoments` of the examples of ``a`` and ``b`` together.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> h = np.array([[1., 2.], [3., 2.], [0., 1.], [2., 5.]], np.float32)
      >>> y = np.array([0, 0, 1, 1])
      >>> odd, even = (lj.batch_moments(h[i::2], y[i::2], num_classes=2) for i in (0, 1))
      >>> merged = lj.merge_moments(odd, even)
      >>> print(np.asarray(merged.mean))
      [[2. 2.]
       [1. 3.]]
      >>> print(np.asarray(merged.m2[1]))
      [[2. 4.]
       [4. 8.]]
    """
    if a.mean.shape != b.mean.shape:
        raise ValueError(
            f"merge_moments: shapes differ, mean {a.mean.shape} vs {b.mean.shape}; merge moments "
            "built with the same num_classes and dim."
        )
    n = a.count + b.count
    delta = b.mean - a.mean
    frac_b = _safe_div(b.count, n)
    mean = a.mean + delta * frac_b[:, None]
    weight = a.count * frac_b  # n_a n_b / n
    m2 = a.m2 + b.m2 + weight[:, None, None] * delta[:, :, None] * delta[:, None, :]
    return ClassMoments(count=n, mean=mean, m2=m2)


def _class_blocks(y: jax.Array, valid: jax.Array, num_classes: int, block_rows: int):
    """Where each row goes when every class's rows are packed into whole blocks of ``block_rows``.

    ``y``: class ids (any value where ``valid`` is False).

    Class c gets k_c = ceil(n_c / R) consecutive blocks; row i of class c lands at
    R * sum_{c' < c} k_{c'} + (its rank among class c's rows). Returns ``dest`` (B,)
    (past the end for invalid rows, which a ``mode='drop'`` scatter skips), ``ends``
    (C,) = cumulative block counts (block b belongs to class #{c : ends_c <= b}),
    and the static number of blocks K = ceil(B / R) + C - 1 >= sum_c ceil(n_c / R).
    """
    onehot = jax.nn.one_hot(jnp.where(valid, y, num_classes), num_classes, dtype=jnp.int32)
    rank = jnp.take_along_axis(jnp.cumsum(onehot, axis=0) - 1, y[:, None], axis=1)[:, 0]
    blocks = (onehot.sum(axis=0) + block_rows - 1) // block_rows
    ends = jnp.cumsum(blocks)
    num_blocks = -(-y.shape[0] // block_rows) + num_classes - 1
    dest = jnp.where(valid, (ends - blocks)[y] * block_rows + rank, num_blocks * block_rows)
    return dest, ends, num_blocks


@functools.partial(jax.jit, static_argnames=("num_classes", "block_rows"))
def batch_moments(
    embeddings: jax.Array, labels: jax.Array, *, num_classes: int, mask: Optional[jax.Array] = None,
    block_rows: int = 256,
) -> ClassMoments:
    """Per-class moments of one batch, centred on the batch class means, in B·D² work.

        n_c = sum_{i: y_i = c} w_i,  mean_c = sum w_i h_i / n_c,  m2_c = sum w_i (h_i - mean_c)(h_i - mean_c)^T

    A one-hot ``einsum('bc,bd,be->cde')`` would cost C·B·D² multiply-adds: every
    row is multiplied into every class's scatter matrix. Instead the centred,
    sqrt(w)-weighted rows are scattered into class-pure blocks of ``block_rows``
    (static shapes; the padding is at most C - 1 blocks in all) and each used
    block's Gram matrix is added to its own class, one (R x D)^T (R x D) matmul per
    block in a loop that stops at the last used block: at most (B + C·R)·D²
    multiply-adds and O(C D²) extra memory. Jittable; no value checks (see
    :func:`update_moments`): rows with an out-of-range label or weight <= 0 are ignored.

    Args:
      embeddings: ``(B, D)`` float, the teacher embeddings h.
      labels: ``(B,)`` int class ids y.
      num_classes: C (static).
      mask: optional ``(B,)`` row weights w >= 0 (default 1; 0 marks a padding row).
      block_rows: R, rows per class-pure block (static).
    Returns:
      :class:`ClassMoments` ``count (C,)``, ``mean (C, D)``, ``m2 (C, D, D)`` in the embeddings' dtype.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> h = np.array([[1., 2.], [3., 2.], [0., 1.], [2., 5.]], np.float32)
      >>> m = lj.batch_moments(h, np.array([0, 0, 1, 1]), num_classes=2, mask=np.array([1., 1., 1., 0.]))
      >>> print(np.asarray(m.count), np.asarray(m.mean).tolist())
      [2. 1.] [[2.0, 2.0], [0.0, 1.0]]
    """
    _check_batch("batch_moments", embeddings, labels, mask)
    dtype = embeddings.dtype
    w = jnp.ones(labels.shape, dtype) if mask is None else mask.astype(dtype)
    valid = (labels >= 0) & (labels < num_classes) & (w > 0)  # out-of-range labels contribute nothing
    w = jnp.where(valid, w, 0)
    y = jnp.where(valid, labels, 0)
    h = jnp.where(valid[:, None], embeddings, 0)  # padding rows may hold anything, even NaN
    count = jax.ops.segment_sum(w, y, num_segments=num_classes)
    total = jax.ops.segment_sum(w[:, None] * h, y, num_segments=num_classes)
    mean = _safe_div(total, count[:, None])
    # M2_c = sum_i w_i (h_i - mu_c)(h_i - mu_c)^T = sum_i r_i r_i^T with r_i = sqrt(w_i)(h_i - mu_c).
    rows = (h - mean[y]) * jnp.sqrt(w)[:, None]
    dest, ends, num_blocks = _class_blocks(y, valid, num_classes, block_rows)
    packed = jnp.zeros((num_blocks * block_rows, rows.shape[1]), dtype).at[dest].set(rows, mode="drop")
    def owner(b):  # the class of block b; C for a block past the last class
        return jnp.sum(ends <= b)

    def gram(b):
        block = jax.lax.dynamic_slice_in_dim(packed, b * block_rows, block_rows)
        return jnp.matmul(block.T, block, precision=_HIGHEST)

    # Slot C takes unused blocks. The carry starts from block 0 (not zeros) so that inside
    # shard_map it is per-device data like the blocks, as a while loop's carry must be.
    d = rows.shape[1]
    m2 = jnp.zeros((num_classes + 1, d, d), dtype).at[owner(0)].set(gram(0))
    m2 = jax.lax.fori_loop(1, ends[-1], lambda b, acc: acc.at[owner(b)].add(gram(b)), m2)[:num_classes]
    return ClassMoments(count=count, mean=mean, m2=m2)


def update_moments(
    moments: ClassMoments,
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    mask: Optional[jax.Array] = None,
) -> ClassMoments:
    """Add a batch to running moments: ``merge_moments(moments, batch_moments(embeddings, labels))``.

    Args:
      moments: running :class:`ClassMoments`, C classes of dimension D.
      embeddings: ``(B, D)`` teacher embeddings (cast to the moments' dtype).
      labels: ``(B,)`` int class ids in ``[0, C)``.
      mask: optional ``(B,)`` weights >= 0 (1 real row, 0 padding row; rows weighing 0 are ignored).
    Returns:
      :class:`ClassMoments` of the examples seen so far and this batch.

    Jittable. For a batch sharded over a mesh, compute each device's batch moments
    inside ``shard_map`` and combine them with :func:`all_reduce_moments` (as
    ``lelp_jax.pipeline.teacher.accumulate_moments`` does). Labels of weighted rows out of
    ``[0, C)`` raise ``ValueError`` for concrete inputs and under
    :func:`lelp_jax.checked`; inside plain jit they contribute nothing.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> h = np.array([[1., 2.], [3., 2.], [0., 1.], [2., 5.]], np.float32)
      >>> y = np.array([0, 0, 1, 1])
      >>> m = lj.init_moments(2, 2)
      >>> for rows in (slice(0, 3), slice(3, 4)):  # a stream of two batches
      ...     m = lj.update_moments(m, h[rows], y[rows])
      >>> print(np.asarray(m.count), np.asarray(m.mean).tolist())
      [2. 2.] [[2.0, 2.0], [1.0, 3.0]]
      >>> lj.update_moments(m, h, np.array([0, 1, 2, 0]))
      Traceback (most recent call last):
      ...
      ValueError: update_moments: labels must lie in [0, 2), got 2 at row 2; fix the labels or init_moments(num_classes=...).
    """
    fn = "update_moments"
    c, d = moments.mean.shape
    _check_batch(fn, embeddings, labels, mask)
    if embeddings.shape[1] != d:
        raise ValueError(f"{fn}: embeddings must be (B, {d}), got {embeddings.shape}; the moments were "
                         f"initialised with dim={d}.")
    require_labels(labels, c, fn, "fix the labels or init_moments(num_classes=...)", mask=mask)
    batch = batch_moments(embeddings.astype(moments.mean.dtype), labels, num_classes=c, mask=mask)
    return merge_moments(moments, batch)


def _check_batch(fn: str, embeddings, labels, mask) -> None:
    """Ranks and matching lengths of a batch: ``embeddings (B, D)``, ``labels (B,)``, ``mask (B,)``."""
    require_rank(embeddings, 2, fn, "embeddings", "(B, D)")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(f"{fn}: labels must be ({embeddings.shape[0]},), got {labels.shape}; pass one "
                         "int label per embedding row.")
    if mask is not None and mask.shape != labels.shape:
        raise ValueError(f"{fn}: mask must be ({labels.shape[0]},), got {mask.shape}; pass one weight per row.")


def all_reduce_moments(moments: ClassMoments, axis_name) -> ClassMoments:
    """Combine per-device moments inside ``shard_map``/``pmap`` (or a named ``vmap``) over ``axis_name``.

        n  = psum(n_i)
        mu = psum(n_i mu_i) / n
        M2 = psum(M2_i + n_i (mu_i - mu)(mu_i - mu)^T)

    The same Chan merge, written for k parts at once: one psum each, no gather.

    Args:
      moments: this device's :class:`ClassMoments` ``(C,), (C, D), (C, D, D)``.
      axis_name: the mapped axis to reduce over (e.g. ``'data'``).
    Returns:
      :class:`ClassMoments` of all parts, the same (replicated) on every part.

    Examples:
      >>> import jax, numpy as np, lelp_jax as lj
      >>> h = np.array([[1., 2.], [3., 2.], [0., 1.], [2., 5.]], np.float32)
      >>> y = np.array([0, 0, 1, 1])
      >>> per_part = jax.vmap(lambda x, l: lj.all_reduce_moments(lj.batch_moments(x, l, num_classes=2), "parts"),
      ...                     axis_name="parts")
      >>> m = per_part(h.reshape(2, 2, 2), y.reshape(2, 2))  # parts: rows {0, 1} and {2, 3}
      >>> print(np.asarray(m.mean[0]).tolist(), np.asarray(m.m2[0, 1]).tolist())
      [[2.0, 2.0], [1.0, 3.0]] [[2.0, 4.0], [4.0, 8.0]]
    """
    n = jax.lax.psum(moments.count, axis_name)
    mean = _safe_div(jax.lax.psum(moments.count[:, None] * moments.mean, axis_name), n[:, None])
    delta = moments.mean - mean
    local = moments.m2 + moments.count[:, None, None] * delta[:, :, None] * delta[:, None, :]
    return ClassMoments(count=n, mean=mean, m2=jax.lax.psum(local, axis_name))


@functools.partial(jax.jit, static_argnames=("ddof",))
def covariance(moments: ClassMoments, *, ddof: int = 0) -> jax.Array:
    """Per-class covariance ``Sigma_c = M2_c / (n_c - ddof)``.

    ``ddof=0`` is the population covariance (maximum likelihood, what the LELP fit uses),
    ``ddof=1`` the unbiased one. Classes with ``n_c <= ddof`` get a zero matrix (no information).

    Args:
      moments: :class:`ClassMoments` ``count (C,)``, ``mean (C, D)``, ``m2 (C, D, D)``.
      ddof: delta degrees of freedom (static).
    Returns:
      ``(C, D, D)`` covariances in the moments' dtype.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> h = np.array([[1., 2.], [3., 2.], [0., 1.], [2., 5.]], np.float32)
      >>> m = lj.batch_moments(h, np.array([0, 0, 1, 1]), num_classes=2)
      >>> print(np.asarray(lj.covariance(m))[1], np.asarray(lj.covariance(m, ddof=1))[1].tolist())
      [[1. 2.]
       [2. 4.]] [[2.0, 4.0], [4.0, 8.0]]
    """
    den = moments.count - ddof
    return _safe_div(moments.m2, den[:, None, None])
