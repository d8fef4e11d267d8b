"""Distillation losses: pure, jittable, differentiable.

Every loss takes an optional ``mask (B,)`` of row weights (1 real row, 0 padding)
and a ``reduction`` of the per-example losses l_b:

- ``'mean'`` (default): ``sum_b m_b l_b / sum_b m_b`` (0 when the mask is all zero);
- ``'sum'``: ``sum_b m_b l_b``: under ``shard_map`` with uneven padding, ``psum`` the
  shards' sums and divide by the ``psum`` of their masks for the global mean (a
  ``pmean`` of shard means weighs a half-empty shard like a full one);
- ``'none'``: the ``(B,)`` vector ``m_b l_b``, whose sum is ``'sum'``.

Array arguments may be traced; ``reduction``, ``num_classes`` and
``scale_by_tau_squared`` are static. Temperatures and ``alpha`` may be traced (no
recompilation per value), except that an ``alpha`` that may be > 0 needs ``labels``:
that is checked while tracing, so a traced ``alpha`` without labels raises.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from lelp_jax.core.targets import class_log_probs
from lelp_jax.core.validation import host_value, require, require_labels, require_rank

__all__ = ["REDUCTIONS", "soft_cross_entropy", "cross_entropy", "kd_loss", "lelp_loss"]

REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_example: jax.Array, mask: Optional[jax.Array], reduction: str) -> jax.Array:
    if mask is None:
        return {"mean": jnp.mean, "sum": jnp.sum, "none": lambda x: x}[reduction](per_example)
    mask = mask.astype(per_example.dtype)
    weighted = mask * per_example
    if reduction == "none":
        return weighted
    if reduction == "sum":
        return jnp.sum(weighted)
    total = jnp.sum(mask)
    return jnp.sum(weighted) / jnp.where(total > 0, total, 1.0)


def _check_options(fn: str, rows: int, mask, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    if mask is not None and np.shape(mask) != (rows,):
        raise ValueError(f"{fn}: mask must be ({rows},) (one weight per row), got {np.shape(mask)}.")


def _check_alpha(alpha, labels, fn: str) -> None:
    """alpha in [0, 1]; an alpha that may be > 0 (a positive or a traced one) needs labels."""
    require((alpha >= 0) & (alpha <= 1), f"{fn}: alpha must be in [0, 1] (weight of the hard-label term), got {{}}.",
            alpha)
    if labels is None and _hard_term(alpha, True):
        if host_value(alpha) is None:
            raise ValueError(f"{fn}: alpha is traced, so it may be > 0, and the hard-label term needs labels; "
                             "pass labels=..., or pass alpha as a Python number (alpha=0 needs no labels).")
        raise ValueError(f"{fn}: alpha={alpha} > 0 needs labels; pass labels=batch['label'] or alpha=0.")


def _hard_term(alpha, labels) -> bool:
    """Whether the hard-label term is computed: labels given and alpha not a concrete 0."""
    a = host_value(alpha)
    return labels is not None and (a is None or float(a) != 0.0)


def _check_temperature(name: str, value, fn: str) -> None:
    require(value > 0, f"{fn}: {name} must be > 0, got {{}}; it is the softmax temperature (try 1.0).", value)


def soft_cross_entropy(logits: jax.Array, target_probs: jax.Array, *,
                       mask: Optional[jax.Array] = None, reduction: str = "mean") -> jax.Array:
    """Soft-target cross-entropy ``l_b = -sum_k t_{b,k} log softmax(r_b)_k``, reduced over the batch.

    Equals KL(t || softmax(r)) + H(t); H(t) does not depend on r, so the gradient is the KL's.

    Args:
      logits: ``(B, K)`` student logits r.
      target_probs: ``(B, K)`` target probabilities t (rows sum to 1).
      mask: optional ``(B,)`` row weights (0 for padding rows).
      reduction: ``'mean'`` (over the weighted rows), ``'sum'`` or ``'none'`` (static).
    Returns:
      A scalar, or ``(B,)`` for ``'none'``.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> r, t = np.zeros((2, 2), np.float32), np.array([[0.25, 0.75], [1.0, 0.0]], np.float32)
      >>> print(round(float(lj.soft_cross_entropy(r, t)), 4))  # uniform q: log 2 for any t
      0.6931
    """
    fn = "soft_cross_entropy"
    require_rank(logits, 2, fn, "logits", "(B, K)")
    if logits.shape != target_probs.shape:
        raise ValueError(f"{fn}: logits {logits.shape} and target_probs {target_probs.shape} "
                         "must have the same shape (B, K).")
    _check_options(fn, logits.shape[0], mask, reduction)
    return _soft_ce(logits, target_probs, mask, reduction=reduction)


@functools.partial(jax.jit, static_argnames=("reduction",))
def _soft_ce(logits, target_probs, mask, *, reduction):
    per = -jnp.sum(target_probs * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    return _reduce(per, mask, reduction)


def cross_entropy(logits: jax.Array, labels: jax.Array, *, mask: Optional[jax.Array] = None,
                  reduction: str = "mean") -> jax.Array:
    """Hard-label cross-entropy ``l_b = -log softmax(r_b)_{y_b}``, reduced over the batch.

    Labels outside ``[0, K)`` raise for concrete inputs and under :func:`lelp_jax.checked`;
    under plain jit they give NaN (never a silent 0).

    Args:
      logits: ``(B, K)`` logits r.
      labels: ``(B,)`` int labels y in ``[0, K)``.
      mask: optional ``(B,)`` row weights (0 for padding rows).
      reduction: ``'mean'``, ``'sum'`` or ``'none'`` (static).
    Returns:
      A scalar, or ``(B,)`` for ``'none'``.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> r, y = np.array([[0., 0.], [2., 0.]], np.float32), np.array([0, 1])
      >>> print(np.round(np.asarray(lj.cross_entropy(r, y, reduction="none")), 4))  # log 2, log(1 + e^2)
      [0.6931 2.1269]
      >>> print(round(float(lj.cross_entropy(r, y, mask=np.array([1., 0.]))), 4))  # the padding row is ignored
      0.6931
    """
    fn = "cross_entropy"
    require_rank(logits, 2, fn, "logits", "(B, K)")
    k = logits.shape[-1]
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"{fn}: labels must be ({logits.shape[0]},), got {labels.shape}.")
    _check_options(fn, logits.shape[0], mask, reduction)
    require_labels(labels, k, fn, "check the label column or the number of logits")
    return _hard_ce(logits, labels, mask, reduction=reduction)


@functools.partial(jax.jit, static_argnames=("reduction",))
def _hard_ce(logits, labels, mask, *, reduction):
    logp = jax.nn.log_softmax(logits, axis=-1)
    per = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return _reduce(per, mask, reduction)


def kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    tau,
    labels: Optional[jax.Array] = None,
    alpha=0.0,
    mask: Optional[jax.Array] = None,
    student_tau=None,
    scale_by_tau_squared: bool = True,
    reduction: str = "mean",
) -> jax.Array:
    """Hinton knowledge distillation (Hinton, Vinyals, Dean 2015, arXiv 1503.02531).

        loss = (1 - alpha) * tau^2 * CE(softmax(l / tau), log_softmax(r / tau_s)) + alpha * CE(y, r)

    ``tau_s = student_tau`` (default ``tau``, Hinton's choice). The tau^2 factor
    (on by default, ``scale_by_tau_squared``) keeps the soft-term gradients at the
    hard-term scale as tau changes. The soft term is the cross-entropy, equal to
    KL(p || q) up to the teacher entropy (a constant in the student). LELP's
    student has no temperature: ``kd_loss(r, l, tau=tau, student_tau=1,
    scale_by_tau_squared=False)`` is exactly ``lelp_loss`` with S = 1.

    Args:
      student_logits: ``(B, C)`` r.
      teacher_logits: ``(B, C)`` l.
      tau: teacher temperature > 0 (may be traced).
      labels: ``(B,)`` int labels y, needed when ``alpha`` may be > 0.
      alpha: weight of the hard-label term in [0, 1].
      mask: optional ``(B,)`` row weights; ``reduction``: ``'mean'``, ``'sum'`` or ``'none'``.
      student_tau: student temperature > 0 (default ``tau``).
      scale_by_tau_squared: multiply the soft term by tau^2 (static).
    Returns:
      A scalar, or ``(B,)`` for ``'none'``.

    Examples:
      >>> import jax, numpy as np, lelp_jax as lj
      >>> l = np.array([[2., 0.]], np.float32)
      >>> print(round(float(lj.kd_loss(l, l, tau=2.0)), 3))  # r = l: tau^2 * H(softmax(l / 2))
      2.329
      >>> r = np.array([[0.5, -1.0]], np.float32)
      >>> kd = lj.kd_loss(r, l, tau=2.0, student_tau=1.0, scale_by_tau_squared=False)
      >>> bool(np.isclose(kd, lj.lelp_loss(r, jax.nn.softmax(l / 2.0))))  # LELP with S = 1
      True
    """
    fn = "kd_loss"
    _check_alpha(alpha, labels, fn)
    _check_temperature("tau", tau, fn)
    student_tau = tau if student_tau is None else student_tau
    _check_temperature("student_tau", student_tau, fn)
    require_rank(student_logits, 2, fn, "student_logits", "(B, C)")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"{fn}: student_logits {student_logits.shape} and teacher_logits "
                         f"{teacher_logits.shape} must both be (B, C).")
    teacher_probs = jax.nn.softmax(teacher_logits / tau, axis=-1)
    soft = soft_cross_entropy(student_logits / student_tau, teacher_probs, mask=mask, reduction=reduction)
    if scale_by_tau_squared:
        soft = soft * tau ** 2
    if not _hard_term(alpha, labels):
        return (1.0 - alpha) * soft
    return (1.0 - alpha) * soft + alpha * cross_entropy(student_logits, labels, mask=mask, reduction=reduction)


def lelp_loss(
    student_logits: jax.Array,
    targets: jax.Array,
    *,
    labels: Optional[jax.Array] = None,
    alpha=0.0,
    num_classes: Optional[int] = None,
    mask: Optional[jax.Array] = None,
    reduction: str = "mean",
) -> jax.Array:
    """LELP loss (Loo et al. 2024, arXiv 2409.20449) on a C*S-way student head.

        loss = (1 - alpha) * ( -sum_{c,s} t_{c,s} log q_{c,s} ) + alpha * CE(y, log q_c)
        q = softmax(r) over all C*S logits,  log q_c = logsumexp_s log q_{c,s}

    ``alpha = 0`` (default) is the paper's loss; ``alpha = 0.5`` is a half-and-half
    mix of soft targets and hard labels (the mix is convex, like ``kd_loss``).
    No student temperature. Also the loss of every pseudo-subclass method (k-means,
    oracle) given its targets.

    Args:
      student_logits: ``(B, C*S)`` r, class-major.
      targets: ``(B, C*S)`` t, e.g. :func:`~lelp_jax.core.targets.subclass_targets`.
      labels: ``(B,)`` int class labels y, needed when ``alpha`` may be > 0 (a traced one too).
      alpha: weight of the hard-label term in [0, 1].
      num_classes: C (static), needed with ``labels`` to aggregate the logits into classes.
      mask: optional ``(B,)`` row weights; ``reduction``: ``'mean'``, ``'sum'`` or ``'none'``.
    Returns:
      A scalar, or ``(B,)`` for ``'none'``.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> r = np.zeros((2, 4), np.float32)  # uniform q over C*S = 4: the soft term is log 4
      >>> t = np.array([[0.1, 0.4, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]], np.float32)
      >>> print(round(float(lj.lelp_loss(r, t)), 4))
      1.3863
      >>> print(round(float(lj.lelp_loss(r, t, labels=np.array([0, 1]), alpha=0.5, num_classes=2)), 4))
      1.0397
    """
    _check_alpha(alpha, labels, "lelp_loss")
    soft = soft_cross_entropy(student_logits, targets, mask=mask, reduction=reduction)
    if not _hard_term(alpha, labels):
        return (1.0 - alpha) * soft
    if num_classes is None:
        raise ValueError("lelp_loss: labels given, so num_classes is needed to aggregate the C*S logits "
                         "into classes; pass num_classes=C.")
    hard = cross_entropy(class_log_probs(student_logits, num_classes=num_classes), labels, mask=mask,
                         reduction=reduction)
    return (1.0 - alpha) * soft + alpha * hard
