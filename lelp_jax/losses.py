"""Distillation losses: pure, jittable, differentiable; mean over the batch.

Every loss takes an optional ``mask (B,)`` of row weights (1 real row, 0 padding);
the batch mean is ``sum_b m_b loss_b / sum_b m_b`` (0 when the mask is all zero).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from lelp_jax.statistics import _host_value
from lelp_jax.targets import class_log_probs

__all__ = ["soft_cross_entropy", "cross_entropy", "kd_loss", "lelp_loss"]


def _masked_mean(per_example: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    if mask is None:
        return jnp.mean(per_example)
    if mask.shape != per_example.shape:
        raise ValueError(f"mask must be {per_example.shape} (one weight per row), got {mask.shape}.")
    mask = mask.astype(per_example.dtype)
    total = jnp.sum(mask)
    return jnp.sum(mask * per_example) / jnp.where(total > 0, total, 1.0)


def _check_alpha(alpha, labels, fn: str) -> None:
    if isinstance(alpha, jax.core.Tracer):
        return
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"{fn}: alpha must be in [0, 1] (weight of the hard-label term), got {alpha!r}.")
    if float(alpha) > 0 and labels is None:
        raise ValueError(f"{fn}: alpha={alpha} > 0 needs labels; pass labels=batch['label'] or alpha=0.")


def soft_cross_entropy(logits: jax.Array, target_probs: jax.Array, *,
                       mask: Optional[jax.Array] = None) -> jax.Array:
    """``mean_b [ -sum_k t_{b,k} log softmax(r_b)_k ]`` for logits r and target probabilities t (B, K).

    Equals KL(t || softmax(r)) + H(t); H(t) does not depend on r, so the gradient is the KL's.
    """
    if logits.shape != target_probs.shape:
        raise ValueError(f"soft_cross_entropy: logits {logits.shape} and target_probs {target_probs.shape} "
                         "must have the same shape (B, K).")
    per = -jnp.sum(target_probs * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    return _masked_mean(per, mask)


def cross_entropy(logits: jax.Array, labels: jax.Array, *, mask: Optional[jax.Array] = None) -> jax.Array:
    """Hard-label cross-entropy ``mean_b [ -log softmax(r_b)_{y_b} ]`` for logits (B, K), int labels (B,).

    Labels outside ``[0, K)`` raise for concrete inputs; under jit they give NaN (never a silent 0).
    """
    k = logits.shape[-1]
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"cross_entropy: labels must be ({logits.shape[0]},), got {labels.shape}.")
    lab = _host_value(labels)
    if lab is not None:
        if lab.size and (lab.min() < 0 or lab.max() >= k):
            raise ValueError(f"cross_entropy: labels must lie in [0, {k}), got range [{lab.min()}, "
                             f"{lab.max()}]; check the label column or the number of logits.")
    logp = jax.nn.log_softmax(logits, axis=-1)
    per = -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return _masked_mean(per, mask)


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
) -> jax.Array:
    """Hinton knowledge distillation (Hinton, Vinyals, Dean 2015, arXiv 1503.02531).

        loss = (1 - alpha) * tau^2 * CE(softmax(l / tau), log_softmax(r / tau_s)) + alpha * CE(y, r)

    ``tau_s = student_tau`` (default ``tau``, Hinton's choice). The tau^2 factor
    (on by default, ``scale_by_tau_squared``) keeps the soft-term gradients at the
    hard-term scale as tau changes. The soft term is the cross-entropy, equal to
    KL(p || q) up to the teacher entropy (a constant in the student). LELP's
    student has no temperature: ``kd_loss(r, l, tau=tau, student_tau=1,
    scale_by_tau_squared=False)`` is exactly ``lelp_loss`` with S = 1.
    """
    _check_alpha(alpha, labels, "kd_loss")
    if not isinstance(tau, jax.core.Tracer) and not float(tau) > 0:
        raise ValueError(f"kd_loss: tau must be > 0, got {tau!r}; it is the softmax temperature (try 1.0).")
    student_tau = tau if student_tau is None else student_tau
    if not isinstance(student_tau, jax.core.Tracer) and not float(student_tau) > 0:
        raise ValueError(f"kd_loss: student_tau must be > 0, got {student_tau!r}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"kd_loss: student_logits {student_logits.shape} and teacher_logits "
                         f"{teacher_logits.shape} must both be (B, C).")
    teacher_probs = jax.nn.softmax(teacher_logits / tau, axis=-1)
    soft = soft_cross_entropy(student_logits / student_tau, teacher_probs, mask=mask)
    if scale_by_tau_squared:
        soft = soft * tau ** 2
    if labels is None or (not isinstance(alpha, jax.core.Tracer) and float(alpha) == 0.0):
        return (1.0 - alpha) * soft
    return (1.0 - alpha) * soft + alpha * cross_entropy(student_logits, labels, mask=mask)


def lelp_loss(
    student_logits: jax.Array,
    targets: jax.Array,
    *,
    labels: Optional[jax.Array] = None,
    alpha=0.0,
    num_classes: Optional[int] = None,
    mask: Optional[jax.Array] = None,
) -> jax.Array:
    """LELP loss (Loo et al. 2024, arXiv 2409.20449) on a C*S-way student head.

        loss = (1 - alpha) * ( -sum_{c,s} t_{c,s} log q_{c,s} ) + alpha * CE(y, log q_c)
        q = softmax(r) over all C*S logits,  log q_c = logsumexp_s log q_{c,s}

    ``alpha = 0`` (default) is the paper's loss; ``alpha = 0.5`` is a half-and-half
    mix of soft targets and hard labels (the mix is convex, like ``kd_loss``).
    The hard term needs ``labels`` and ``num_classes``. No student temperature.
    Also the loss of every pseudo-subclass method (k-means, oracle) given its targets.
    """
    _check_alpha(alpha, labels, "lelp_loss")
    soft = soft_cross_entropy(student_logits, targets, mask=mask)
    if labels is None or (not isinstance(alpha, jax.core.Tracer) and float(alpha) == 0.0):
        return (1.0 - alpha) * soft
    if num_classes is None:
        raise ValueError("lelp_loss: labels given, so num_classes is needed to aggregate the C*S logits "
                         "into classes; pass num_classes=C.")
    hard = cross_entropy(class_log_probs(student_logits, num_classes=num_classes), labels, mask=mask)
    return (1.0 - alpha) * soft + alpha * hard
