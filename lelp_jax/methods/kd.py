"""Methods with a C-way head: ``ce`` (hard labels), ``kd`` (Hinton), and KD plus a feature
term: ``fitnet`` (adapter MSE) and ``rkd`` (relational distances and angles)."""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from lelp_jax.core import feature_losses, losses
from lelp_jax.methods.registry import (Method, batch_mask, hard_label_loss, mix_hard_labels, option,
                                       plain_class_log_probs, plain_head)

__all__ = ["CE", "KD", "FITNET", "RKD"]


def _ce_loss(*, student_logits, batch, cfg, **_: Any) -> jax.Array:
    """Hard labels only: ``mean_b -log softmax(r_b)_{y_b}`` (:func:`lelp_jax.core.losses.cross_entropy`)."""
    return hard_label_loss(student_logits, batch, cfg)


CE = Method(
    name="ce", needs_teacher=False, loss=_ce_loss, head_outputs=plain_head,
    class_log_probs=plain_class_log_probs, description="cross-entropy on hard labels (no teacher)",
)


def _kd_loss(*, student_logits, batch, teacher_logits, cfg, **_: Any) -> jax.Array:
    """Hinton KD with ``cfg.kd.tau``, ``cfg.kd.alpha`` and ``cfg.kd.student_tau`` (:func:`lelp_jax.core.losses.kd_loss`)."""
    return _kd_term(student_logits, batch, teacher_logits, cfg)


KD = Method(
    name="kd", needs_teacher=True, loss=_kd_loss, head_outputs=plain_head,
    class_log_probs=plain_class_log_probs, description="Hinton KD (tau, alpha)",
)


def _kd_term(student_logits, batch, teacher_logits, cfg) -> jax.Array:
    """KD as configured: the soft term of :func:`lelp_jax.core.losses.kd_loss` at ``kd.tau``, scaled by
    tau^2 when ``kd.tau_squared_scaling`` (Hinton's), with ``kd.student_tau`` (unset: ``kd.tau``,
    Hinton's convention; 1 is LELP's) as the student's temperature, mixed with
    :func:`hard_label_loss` by ``kd.alpha``."""
    student_tau = option(cfg, "kd", "student_tau")
    soft = losses.kd_loss(student_logits, teacher_logits, tau=float(option(cfg, "kd", "tau")),
                          mask=batch_mask(batch), student_tau=None if student_tau is None else float(student_tau),
                          scale_by_tau_squared=bool(option(cfg, "kd", "tau_squared_scaling")))
    return mix_hard_labels(soft, student_logits, batch, cfg, float(option(cfg, "kd", "alpha")))


def _fitnet_init(key: jax.Array, *, student_embedding_dim: int, teacher_embedding_dim: Optional[int],
                 cfg: Any) -> dict[str, Any]:
    """The FitNet adapter ``{'kernel' (D_s, D_t) LeCun-normal, 'bias' (D_t,) zeros}`` (a Dense layer's layout)."""
    if not teacher_embedding_dim:
        raise ValueError("method 'fitnet' needs the teacher embedding width to build its adapter.")
    kernel = jax.nn.initializers.lecun_normal()(key, (student_embedding_dim, teacher_embedding_dim), jnp.float32)
    return {"kernel": kernel, "bias": jnp.zeros((teacher_embedding_dim,), jnp.float32)}


def _fitnet_loss(*, student_logits, student_embedding, batch, teacher_embedding, teacher_logits, method_params,
                 cfg, **_: Any) -> jax.Array:
    """KD (``cfg.kd``) + ``fitnet.weight`` * :func:`lelp_jax.core.feature_losses.fitnet_loss` (student embedding ->
    trainable linear adapter ``method_params`` -> teacher embedding, MSE)."""
    hint = feature_losses.fitnet_loss(student_embedding, teacher_embedding, method_params,
                                      mask=batch_mask(batch))
    return _kd_term(student_logits, batch, teacher_logits, cfg) + float(option(cfg, "fitnet", "weight")) * hint


def _rkd_loss(*, student_logits, student_embedding, batch, teacher_embedding, teacher_logits, cfg,
              **_: Any) -> jax.Array:
    """KD (``cfg.kd``) + RKD-DA on the embeddings (:func:`lelp_jax.core.feature_losses.rkd_loss`,
    weights ``rkd.distance_weight`` and ``rkd.angle_weight``)."""
    rel = feature_losses.rkd_loss(student_embedding, teacher_embedding,
                                  distance_weight=float(option(cfg, "rkd", "distance_weight")),
                                  angle_weight=float(option(cfg, "rkd", "angle_weight")), mask=batch_mask(batch))
    return _kd_term(student_logits, batch, teacher_logits, cfg) + rel


FITNET = Method(
    name="fitnet", needs_teacher=True, loss=_fitnet_loss, head_outputs=plain_head,
    class_log_probs=plain_class_log_probs, init_params=_fitnet_init,
    description="FitNet: KD + MSE from a linear adapter of the student embedding to the teacher's",
)
RKD = Method(
    name="rkd", needs_teacher=True, loss=_rkd_loss, head_outputs=plain_head,
    class_log_probs=plain_class_log_probs, description="RKD: KD + distance and angle relational losses",
)
