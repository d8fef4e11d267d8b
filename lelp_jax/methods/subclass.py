"""Subclass Distillation (Muller et al. 2020): a teacher trained with a C*S head and an auxiliary
contrastive loss (``SUBCLASS_TEACHER``, trained by the pipeline), then distilled at the subclass
level into a C*S-head student (``SUBCLASS``)."""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lelp_jax.core import subclass_distillation, targets
from lelp_jax.data.batch import model_inputs
from lelp_jax.methods.registry import LossInputs, Method, batch_mask, mix_hard_labels, subclass_class_log_probs
from lelp_jax.models import build_model

__all__ = ["SUBCLASS", "SUBCLASS_TEACHER", "SubclassOptions", "subclass_teacher_model"]


@dataclasses.dataclass(frozen=True)
class SubclassOptions:
    """``cfg.subclass`` (S = ``num_subclasses``, ``aux_weight``, ``aux_temperature``, the student's ``tau`` and
    ``alpha``), ``train.label_smoothing``, and the teacher's architecture (``teacher.model``, its kwargs)."""

    num_subclasses: int
    aux_weight: float
    aux_temperature: float
    tau: float
    alpha: float
    label_smoothing: float
    teacher_model: str
    teacher_model_kwargs: tuple[tuple[str, Any], ...]


def subclass_options(config: ml_collections.ConfigDict) -> SubclassOptions:
    sub = config.subclass
    kwargs = tuple((k, tuple(v) if isinstance(v, list) else v)
                   for k, v in config.teacher.model_kwargs.to_dict().items())
    return SubclassOptions(num_subclasses=int(sub.num_subclasses), aux_weight=float(sub.aux_weight),
                           aux_temperature=float(sub.aux_temperature), tau=float(sub.tau), alpha=float(sub.alpha),
                           label_smoothing=float(config.train.label_smoothing),
                           teacher_model=str(config.teacher.model), teacher_model_kwargs=kwargs)


def _subclass_head(num_classes: int, options: SubclassOptions) -> int:
    return num_classes * options.num_subclasses


def _teacher_model(options: SubclassOptions, num_classes: int) -> nn.Module:
    return build_model(options.teacher_model, num_outputs=_subclass_head(num_classes, options),
                       **dict(options.teacher_model_kwargs))


def subclass_teacher_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The Subclass-Distillation teacher: ``cfg.teacher.model`` with a C*S head (S = subclass.num_subclasses)."""
    return _teacher_model(subclass_options(config), num_classes)


def _subclass_teacher_loss(inputs: LossInputs, options: SubclassOptions) -> jax.Array:
    """Training the subclass teacher: CE on logsumexp-aggregated classes + ``subclass.aux_weight`` * the
    contrastive auxiliary loss at ``subclass.aux_temperature`` (:func:`lelp_jax.core.subclass_distillation.subclass_teacher_loss`)."""
    logits = inputs.student_logits
    return subclass_distillation.subclass_teacher_loss(
        logits, inputs.batch["label"], num_classes=logits.shape[-1] // options.num_subclasses,
        aux_weight=options.aux_weight, aux_temperature=options.aux_temperature, mask=batch_mask(inputs.batch))


def _subclass_student_loss(inputs: LossInputs, options: SubclassOptions) -> jax.Array:
    """Subclass Distillation student: KD at ``subclass.tau`` on the subclass teacher's C*S logits (its
    forward pass runs here on the step's batch; ``aux`` holds its variables) + ``subclass.alpha`` * class
    CE (:func:`lelp_jax.core.subclass_distillation.subclass_student_loss`)."""
    if inputs.aux is None:
        raise ValueError("method 'subclass' needs the trained subclass teacher's variables as the step's aux.")
    logits, batch = inputs.student_logits, inputs.batch
    num_classes = logits.shape[-1] // options.num_subclasses
    _, t_logits = _teacher_model(options, num_classes).apply(inputs.aux, model_inputs(batch), train=False)
    soft = subclass_distillation.subclass_student_loss(
        logits, jax.lax.stop_gradient(t_logits.astype(jnp.float32)), tau=options.tau, num_classes=num_classes,
        mask=batch_mask(batch))
    return mix_hard_labels(soft, targets.class_log_probs(logits, num_classes=num_classes), batch,
                           alpha=options.alpha, label_smoothing=options.label_smoothing)


# Not registered: the pipeline trains the subclass teacher with it (fit 'subclass_teacher').
SUBCLASS_TEACHER = Method(
    name="subclass_teacher", needs_teacher=False, parse_options=subclass_options, loss=_subclass_teacher_loss,
    head_outputs=_subclass_head, class_log_probs=subclass_class_log_probs,
    description="Subclass-Distillation teacher (C*S head + aux loss)",
)
SUBCLASS = Method(
    name="subclass", needs_teacher=False, parse_options=subclass_options, loss=_subclass_student_loss,
    head_outputs=_subclass_head, class_log_probs=subclass_class_log_probs, fit="subclass_teacher",
    description="Subclass Distillation: student distils a C*S-head teacher's subclass logits",
)
