"""Methods with a C-way head: ``ce`` (hard labels), ``kd`` (Hinton), and KD plus a feature
term: ``fitnet`` (adapter MSE) and ``rkd`` (relational distances and angles)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections

from lelp_jax.core import feature_losses, losses
from lelp_jax.methods.registry import (LossInputs, Method, PyTree, batch_mask, hard_label_loss, mix_hard_labels,
                                       plain_class_log_probs, plain_head)

__all__ = ["CE", "KD", "FITNET", "RKD", "CEOptions", "KDOptions", "FitNetOptions", "RKDOptions"]


@dataclasses.dataclass(frozen=True)
class CEOptions:
    """``label_smoothing``: ``train.label_smoothing`` (every hard-label term's)."""

    label_smoothing: float


@dataclasses.dataclass(frozen=True)
class KDOptions(CEOptions):
    """``cfg.kd``: ``tau``, ``alpha``, ``student_tau`` (None: ``tau``), ``tau_squared_scaling``."""

    tau: float
    alpha: float
    student_tau: Optional[float]
    tau_squared_scaling: bool


@dataclasses.dataclass(frozen=True)
class FitNetOptions(KDOptions):
    """KD's options and ``fitnet.weight``."""

    weight: float


@dataclasses.dataclass(frozen=True)
class RKDOptions(KDOptions):
    """KD's options and ``rkd.distance_weight``, ``rkd.angle_weight``."""

    distance_weight: float
    angle_weight: float


def ce_options(config: ml_collections.ConfigDict) -> CEOptions:
    return CEOptions(label_smoothing=float(config.train.label_smoothing))


def _kd_fields(config: ml_collections.ConfigDict) -> dict:
    kd = config.kd
    return dict(label_smoothing=float(config.train.label_smoothing), tau=float(kd.tau), alpha=float(kd.alpha),
                student_tau=None if kd.student_tau is None else float(kd.student_tau),
                tau_squared_scaling=bool(kd.tau_squared_scaling))


def kd_options(config: ml_collections.ConfigDict) -> KDOptions:
    return KDOptions(**_kd_fields(config))


def _ce_loss(inputs: LossInputs, options: CEOptions) -> jax.Array:
    """Hard labels only: ``mean_b -log softmax(r_b)_{y_b}`` (:func:`lelp_jax.core.losses.cross_entropy`)."""
    return hard_label_loss(inputs.student_logits, inputs.batch, options.label_smoothing)


CE = Method(
    name="ce", needs_teacher=False, parse_options=ce_options, loss=_ce_loss, head_outputs=plain_head,
    class_log_probs=plain_class_log_probs, description="cross-entropy on hard labels (no teacher)",
)


def _kd_loss(inputs: LossInputs, options: KDOptions) -> jax.Array:
    """KD as configured: the soft term of :func:`lelp_jax.core.losses.kd_loss` at ``kd.tau``, scaled by
    tau^2 when ``kd.tau_squared_scaling`` (Hinton's), with ``kd.student_tau`` (unset: ``kd.tau``,
    Hinton's convention; 1 is LELP's) as the student's temperature, mixed with
    :func:`hard_label_loss` by ``kd.alpha``."""
    soft = losses.kd_loss(inputs.student_logits, inputs.teacher_logits, tau=options.tau,
                          mask=batch_mask(inputs.batch), student_tau=options.student_tau,
                          scale_by_tau_squared=options.tau_squared_scaling)
    return mix_hard_labels(soft, inputs.student_logits, inputs.batch, alpha=options.alpha,
                           label_smoothing=options.label_smoothing)


KD = Method(
    name="kd", needs_teacher=True, parse_options=kd_options, loss=_kd_loss, head_outputs=plain_head,
    class_log_probs=plain_class_log_probs, description="Hinton KD (tau, alpha)",
)


def _fitnet_init(key: jax.Array, *, student_embedding_dim: int, teacher_embedding_dim: Optional[int],
                 options: FitNetOptions) -> PyTree:
    """The FitNet adapter ``{'kernel' (D_s, D_t) LeCun-normal, 'bias' (D_t,) zeros}`` (a Dense layer's layout)."""
    if not teacher_embedding_dim:
        raise ValueError("method 'fitnet' needs the teacher embedding width to build its adapter.")
    kernel = jax.nn.initializers.lecun_normal()(key, (student_embedding_dim, teacher_embedding_dim), jnp.float32)
    return {"kernel": kernel, "bias": jnp.zeros((teacher_embedding_dim,), jnp.float32)}


def _fitnet_loss(inputs: LossInputs, options: FitNetOptions) -> jax.Array:
    """KD (``cfg.kd``) + ``fitnet.weight`` * :func:`lelp_jax.core.feature_losses.fitnet_loss` (student embedding ->
    trainable linear adapter ``method_params`` -> teacher embedding, MSE)."""
    hint = feature_losses.fitnet_loss(inputs.student_embedding, inputs.teacher_embedding, inputs.method_params,
                                      mask=batch_mask(inputs.batch))
    return _kd_loss(inputs, options) + options.weight * hint


def _rkd_loss(inputs: LossInputs, options: RKDOptions) -> jax.Array:
    """KD (``cfg.kd``) + RKD-DA on the embeddings (:func:`lelp_jax.core.feature_losses.rkd_loss`,
    weights ``rkd.distance_weight`` and ``rkd.angle_weight``)."""
    rel = feature_losses.rkd_loss(inputs.student_embedding, inputs.teacher_embedding,
                                  distance_weight=options.distance_weight, angle_weight=options.angle_weight,
                                  mask=batch_mask(inputs.batch))
    return _kd_loss(inputs, options) + rel


FITNET = Method(
    name="fitnet", needs_teacher=True, loss=_fitnet_loss, head_outputs=plain_head,
    parse_options=lambda config: FitNetOptions(**_kd_fields(config), weight=float(config.fitnet.weight)),
    class_log_probs=plain_class_log_probs, init_params=_fitnet_init,
    description="FitNet: KD + MSE from a linear adapter of the student embedding to the teacher's",
)
RKD = Method(
    name="rkd", needs_teacher=True, loss=_rkd_loss, head_outputs=plain_head,
    parse_options=lambda config: RKDOptions(**_kd_fields(config), distance_weight=float(config.rkd.distance_weight),
                                            angle_weight=float(config.rkd.angle_weight)),
    class_log_probs=plain_class_log_probs, description="RKD: KD + distance and angle relational losses",
)
