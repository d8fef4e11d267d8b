"""Subclass Distillation (Muller et al. 2020): a teacher trained with a C*S head and an auxiliary
contrastive loss (``SUBCLASS_TEACHER``, trained by the pipeline), then distilled at the subclass
level into a C*S-head student (``SUBCLASS``)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from lelp_jax.core import subclass_distillation, targets
from lelp_jax.data.batch import model_inputs
from lelp_jax.methods.registry import Method, batch_mask, mix_hard_labels, option, subclass_class_log_probs
from lelp_jax.models import build_model

__all__ = ["SUBCLASS", "SUBCLASS_TEACHER", "subclass_teacher_model"]


def _subclass_count(cfg: Any) -> int:
    return int(option(cfg, "subclass", "num_subclasses"))


def _subclass_head(num_classes: int, cfg: Any) -> int:
    return num_classes * _subclass_count(cfg)


def subclass_teacher_model(cfg: Any, num_classes: int):
    """The Subclass-Distillation teacher: ``cfg.teacher.model`` with a C*S head (S = subclass.num_subclasses)."""
    kwargs = {k: (tuple(v) if isinstance(v, list) else v)
              for k, v in dict(option(cfg, "teacher", "model_kwargs")).items()}
    return build_model(cfg.teacher.model, num_outputs=_subclass_head(num_classes, cfg), **kwargs)


def _subclass_teacher_loss(*, student_logits, batch, cfg, **_: Any) -> jax.Array:
    """Training the subclass teacher: CE on logsumexp-aggregated classes + ``subclass.aux_weight`` * the
    contrastive auxiliary loss at ``subclass.aux_temperature`` (:func:`lelp_jax.core.subclass_distillation.subclass_teacher_loss`)."""
    num_classes = student_logits.shape[-1] // _subclass_count(cfg)
    return subclass_distillation.subclass_teacher_loss(
        student_logits, batch["label"], num_classes=num_classes,
        aux_weight=float(option(cfg, "subclass", "aux_weight")),
        aux_temperature=float(option(cfg, "subclass", "aux_temperature")), mask=batch_mask(batch))


def _subclass_student_loss(*, student_logits, batch, aux, cfg, **_: Any) -> jax.Array:
    """Subclass Distillation student: KD at ``subclass.tau`` on the subclass teacher's C*S logits (its
    forward pass runs here on the step's batch; ``aux`` holds its variables) + ``subclass.alpha`` * class
    CE (:func:`lelp_jax.core.subclass_distillation.subclass_student_loss`)."""
    if aux is None:
        raise ValueError("method 'subclass' needs the trained subclass teacher's variables as the step's aux.")
    num_classes = student_logits.shape[-1] // _subclass_count(cfg)
    model = subclass_teacher_model(cfg, num_classes)
    _, t_logits = model.apply(aux, model_inputs(batch), train=False)
    soft = subclass_distillation.subclass_student_loss(
        student_logits, jax.lax.stop_gradient(t_logits.astype(jnp.float32)),
        tau=float(option(cfg, "subclass", "tau")), num_classes=num_classes, mask=batch_mask(batch))
    return mix_hard_labels(soft, targets.class_log_probs(student_logits, num_classes=num_classes), batch, cfg,
                           float(option(cfg, "subclass", "alpha")))


# Not registered: the pipeline trains the subclass teacher with it (fit 'subclass_teacher').
SUBCLASS_TEACHER = Method(
    name="subclass_teacher", needs_teacher=False, loss=_subclass_teacher_loss, head_outputs=_subclass_head,
    class_log_probs=subclass_class_log_probs, description="Subclass-Distillation teacher (C*S head + aux loss)",
)
SUBCLASS = Method(
    name="subclass", needs_teacher=False, loss=_subclass_student_loss, head_outputs=_subclass_head,
    class_log_probs=subclass_class_log_probs, fit="subclass_teacher",
    description="Subclass Distillation: student distils a C*S-head teacher's subclass logits",
)
