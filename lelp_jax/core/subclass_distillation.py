"""Subclass Distillation (Müller, Kornblith, Hinton, "Subclass Distillation", arXiv 2002.03936, 2020).

The teacher is retrained with a C*S-way head whose logits z_{c,s} are *subclass*
logits (class-major: index c*S + s); its class probabilities are the sums of its
subclass probabilities, i.e. its class logits are

    zbar_c = logsumexp_s z_{c,s},     p_c = softmax(zbar)_c = sum_s softmax(z)_{c,s}.

Teacher loss = CE(y, softmax(zbar)) + aux_weight * L_aux(z), with L_aux the
contrastive "subclass splitting" loss (:func:`lelp_jax.core.feature_losses.subclass_aux_loss`):
without it nothing makes the S subclasses of a class differ. The student has a
C*S head too and distils the teacher's subclass distribution with temperature tau:

    L_student = (1 - alpha) tau^2 CE(softmax(z / tau), log_softmax(r / tau)) + alpha CE(y, log q_c),
    log q_c   = logsumexp_s log_softmax(r)_{c,s}.

Convention note: the paper writes the student loss as a mix with the distillation
term weighted by alpha; here alpha weights the hard-label term, like ``kd_loss``
and ``lelp_loss`` in this library (alpha = 0: pure subclass distillation).
"""
from __future__ import annotations

from typing import Optional

import jax

from lelp_jax.core import losses, targets
from lelp_jax.core.feature_losses import subclass_aux_loss

__all__ = ["subclass_class_logits", "subclass_teacher_loss", "subclass_student_loss"]


def subclass_class_logits(logits: jax.Array, *, num_classes: int) -> jax.Array:
    """Class logits ``zbar_c = logsumexp_s z_{c,s}`` of a class-major ``(B, C*S)`` subclass head -> ``(B, C)``.

    ``softmax(zbar) = sum_s softmax(z)_{c,s}``, and ``log_softmax(zbar)`` equals
    :func:`lelp_jax.core.targets.class_log_probs` of the same logits.
    """
    b, k = logits.shape
    if num_classes < 1 or k % num_classes:
        raise ValueError(f"subclass_class_logits: {k} logits are not a multiple of num_classes={num_classes}; "
                         "a subclass head needs C*S outputs.")
    return jax.nn.logsumexp(logits.reshape(b, num_classes, k // num_classes), axis=-1)


def subclass_teacher_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    aux_weight: float = 1.0,
    aux_temperature: float = 1.0,
    mask: Optional[jax.Array] = None,
) -> jax.Array:
    """Teacher objective: ``CE(y, softmax(logsumexp_s z_{c,s})) + aux_weight * L_aux(z; T)``."""
    ce = losses.cross_entropy(subclass_class_logits(logits, num_classes=num_classes), labels, mask=mask)
    if aux_weight == 0:
        return ce
    return ce + aux_weight * subclass_aux_loss(logits, temperature=aux_temperature, mask=mask)


def subclass_student_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    tau: float,
    num_classes: int,
    labels: Optional[jax.Array] = None,
    alpha: float = 0.0,
    mask: Optional[jax.Array] = None,
) -> jax.Array:
    """Student objective (module docstring): KD on the C*S subclass logits at temperature tau,
    plus ``alpha`` times the class-level hard-label CE."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"subclass_student_loss: student {student_logits.shape} and teacher {teacher_logits.shape} "
                         "logits must both be (B, C*S); give the student the teacher's subclass head width.")
    soft = losses.kd_loss(student_logits, teacher_logits, tau=tau, mask=mask)
    if labels is None or float(alpha) == 0.0:
        return soft
    hard = losses.cross_entropy(targets.class_log_probs(student_logits, num_classes=num_classes), labels, mask=mask)
    return (1.0 - alpha) * soft + alpha * hard
