"""Pseudo-subclass targets and class aggregation (Loo et al. 2024, arXiv 2409.20449).

Per example, with teacher embedding h (D,) and teacher logits l (C,):

    z_{c,s} = U_c[:, s] . (h - mu_c)                      (divided by scales[c, s] if standardize)
    p_c     = softmax(l / tau)_c
    t_{c,s} = p_c * softmax_s(z_{c,.} / beta_c)_s         so  sum_s t_{c,s} = p_c

beta is one temperature, or one per class (``Projections.betas``, solved at fit time
for a target split entropy by :func:`lelp_jax.core.sharpness.calibrate_betas`).

Targets are flattened class-major: index ``c * S + s``. The student has no
temperature: its C*S logits r give q = softmax(r) directly, and its class
prediction is log q_c = logsumexp_s log q_{c,s}.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lelp_jax.core.projections import Projections
from lelp_jax.core.validation import require, require_rank

__all__ = ["subclass_targets", "projection_scores", "split_targets", "class_log_probs"]

_HIGHEST = jax.lax.Precision.HIGHEST


def _check_positive(name: str, value, fn: str) -> None:
    require(jnp.asarray(value) > 0, f"{fn}: {name} must be > 0, got {{}}; it is a temperature (try 1.0).", value)


def _check_finite(name: str, x, fn: str) -> None:
    require(jnp.isfinite(x), f"{fn}: {name} contains NaN or inf; check the teacher outputs for this batch.")


def split_targets(class_probs: jax.Array, subclass_scores: jax.Array, *, beta) -> jax.Array:
    """Split each class probability over S pseudo-subclasses: ``t_{c,s} = p_c * softmax_s(scores_{c,.} / beta_c)_s``.

    The shared last step of every splitting method (LELP, random, PCA, k-means, oracle):
    one rule, so that ablations compare directions, not temperatures. ``sum_s t_{c,s} = p_c``.

    Args:
      class_probs: ``(B, C)`` teacher class probabilities p.
      subclass_scores: ``(B, C, S)`` scores (LELP projections, negative k-means
        distances, oracle one-hots scaled, ...).
      beta: softmax temperature over the S subclasses (> 0): a scalar, or ``(C,)``
        one per class (e.g. calibrated by :func:`lelp_jax.core.sharpness.calibrate_betas`).
    Returns:
      ``(B, C*S)`` targets, class-major (index c*S + s); rows sum to sum_c p_c.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> t = lj.split_targets(np.array([[0.75, 0.25]]), np.array([[[0., 0.], [1., -1.]]]), beta=1.0)
      >>> print(np.round(np.asarray(t), 4))
      [[0.375  0.375  0.2202 0.0298]]
    """
    fn = "split_targets"
    require_rank(class_probs, 2, fn, "class_probs", "(B, C)")
    if subclass_scores.ndim != 3 or subclass_scores.shape[:2] != class_probs.shape:
        raise ValueError(
            f"{fn}: subclass_scores must be (B, C, S) with (B, C) = {class_probs.shape}, got "
            f"{subclass_scores.shape}; compute one score per class and subclass."
        )
    _check_beta(beta, class_probs.shape[1], fn)
    return _split(class_probs, subclass_scores, beta)


def _check_beta(beta, c: int, fn: str) -> None:
    _check_positive("beta", beta, fn)
    if np.ndim(beta) == 1 and np.shape(beta) != (c,):
        raise ValueError(f"{fn}: per-class beta must be ({c},) for C={c} classes, got {np.shape(beta)}.")
    if np.ndim(beta) > 1:
        raise ValueError(f"{fn}: beta must be a scalar or (C,), got shape {np.shape(beta)}.")


@jax.jit
def _split(class_probs, subclass_scores, beta):
    b, c, s = subclass_scores.shape
    beta = jnp.asarray(beta, subclass_scores.dtype)
    if beta.ndim == 1:
        beta = beta[None, :, None]
    split = jax.nn.softmax(subclass_scores / beta, axis=-1)
    return (class_probs[:, :, None] * split).reshape(b, c * s)


def projection_scores(projections: Projections, embeddings: jax.Array, *, standardize: bool = False) -> jax.Array:
    """LELP subclass scores ``z_{c,s} = U_c[:, s] . (h - mu_c)``, over ``scales[c, s]`` when ``standardize``.

    h is the raw embedding (``U_c`` lies in range(P), so this equals the projection of
    P h - P mu_c). ``scales[c, s] = sqrt(U_c[:, s]^T Sigma_c U_c[:, s])`` is the std of
    z_{c,s} over class c's fit examples, so standardised z has unit variance per
    direction on every teacher (scales of 0 are left undivided). Computed in at least
    float32 (bf16 embeddings are upcast: centring cancels the large class means).

    Args:
      projections: :class:`~lelp_jax.core.projections.Projections` with ``directions (C, D, S)``.
      embeddings: ``(B, D)`` teacher embeddings h (finite).
      standardize: divide by ``scales`` (static).
    Returns:
      ``(B, C, S)`` scores z.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> e01 = np.eye(3, 2, dtype=np.float32)  # U_c: the first two axes of R^3, for both classes
      >>> proj = lj.Projections(directions=np.stack([e01, e01]), means=np.array([[0., 0., 0.], [1., 1., 0.]]),
      ...                       eigenvalues=np.ones((2, 3)), scales=np.array([[1., 2.], [1., 2.]]), counts=np.ones(2))
      >>> z = lj.projection_scores(proj, np.array([[1., 2., 5.]]), standardize=True)
      >>> print(np.asarray(z))  # class 0: (1, 2) / (1, 2); class 1: (1 - 1, 2 - 1) / (1, 2)
      [[[1.  1. ]
        [0.  0.5]]]
    """
    _check_embeddings(projections, embeddings, "projection_scores")
    return _scores(projections, embeddings, standardize=bool(standardize))


def _check_embeddings(projections: Projections, embeddings, fn: str) -> None:
    require_rank(projections.directions, 3, fn, "projections.directions", "(C, D, S) (vmap over stacked fits)")
    require_rank(embeddings, 2, fn, "embeddings", "(B, D)")
    d = projections.dim
    if embeddings.shape[1] != d:
        raise ValueError(f"{fn}: embeddings must be (B, {d}) to match the projections (D={d}), got "
                         f"{embeddings.shape}; pass the teacher embeddings the projections were fitted on.")
    _check_finite("embeddings", embeddings, fn)


@functools.partial(jax.jit, static_argnames=("standardize",))
def _scores(projections: Projections, embeddings: jax.Array, *, standardize: bool) -> jax.Array:
    dtype = jnp.promote_types(jnp.promote_types(embeddings.dtype, jnp.float32), projections.directions.dtype)
    centred = embeddings.astype(dtype)[:, None, :] - projections.means.astype(dtype)[None]  # (B, C, D)
    z = jnp.einsum("bcd,cds->bcs", centred, projections.directions.astype(dtype), precision=_HIGHEST)
    if standardize:
        scales = projections.scales.astype(dtype)
        z = z / jnp.where(scales > 0, scales, 1.0)[None]
    return z


def subclass_targets(
    projections: Projections,
    embeddings: jax.Array,
    teacher_logits: jax.Array,
    *,
    beta,
    tau,
    standardize: bool = False,
) -> jax.Array:
    """LELP targets ``t_{c,s} = softmax(l / tau)_c * softmax_s(z_{c,.} / beta_c)_s``.

    The teacher's probability of class c, split over its S subclasses by where the
    embedding lies along U_c: ``sum_s t_{c,s} = softmax(l / tau)_c``. z from
    :func:`projection_scores` (``standardize`` divides by each direction's std, which makes
    ``beta`` comparable across teachers). Shapes are checked always; values (beta, tau > 0,
    finite embeddings and logits) for concrete inputs, and under jit when checkified
    (:func:`lelp_jax.checked`). ``standardize`` is static; the rest may be traced (beta and
    tau without recompiling).

    Args:
      projections: :class:`~lelp_jax.core.projections.Projections`, C classes, S subclasses, dim D.
      embeddings: ``(B, D)`` teacher embeddings h.
      teacher_logits: ``(B, C)`` teacher logits l.
      beta: subclass temperature > 0, a scalar or ``(C,)`` (``projections.betas`` when calibrated).
      tau: class temperature > 0 (scalar).
      standardize: divide z by the projections' ``scales``.
    Returns:
      ``(B, C*S)`` targets, class-major (index c*S + s); rows sum to 1.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> e01 = np.eye(3, 2, dtype=np.float32)  # U_c: the first two axes of R^3, for both classes
      >>> proj = lj.Projections(directions=np.stack([e01, e01]), means=np.array([[0., 0., 0.], [1., 1., 0.]]),
      ...                       eigenvalues=np.ones((2, 3)), scales=np.array([[1., 2.], [1., 2.]]), counts=np.ones(2))
      >>> t = lj.subclass_targets(proj, np.array([[1., 2., 5.]]), np.array([[0., 0.]]), beta=1.0, tau=1.0)
      >>> print(np.round(np.asarray(t), 4))  # p = (0.5, 0.5); z_0 = (1, 2), z_1 = (0, 1)
      [[0.1345 0.3655 0.1345 0.3655]]
    """
    fn = "subclass_targets"
    c = projections.num_classes
    _check_beta(beta, c, fn)
    _check_positive("tau", tau, fn)
    _check_embeddings(projections, embeddings, fn)
    if teacher_logits.shape != (embeddings.shape[0], c):
        raise ValueError(f"{fn}: teacher_logits must be ({embeddings.shape[0]}, {c}) to match the embeddings "
                         f"and the projections (C={c}), got {teacher_logits.shape}.")
    _check_finite("teacher_logits", teacher_logits, fn)
    return _targets(projections, embeddings, teacher_logits, beta, tau, standardize=bool(standardize))


@functools.partial(jax.jit, static_argnames=("standardize",))
def _targets(projections, embeddings, teacher_logits, beta, tau, *, standardize):
    z = _scores(projections, embeddings, standardize=standardize)
    dtype = jnp.promote_types(z.dtype, teacher_logits.dtype)
    probs = jax.nn.softmax(teacher_logits.astype(dtype) / tau, axis=-1)
    return _split(probs, z.astype(dtype), beta)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def class_log_probs(student_logits: jax.Array, *, num_classes: int) -> jax.Array:
    """Class log-probabilities of a C*S-way student: ``log q_c = logsumexp_s log_softmax(r)_{c,s}``.

    The student's class prediction (argmax_c) and its hard-label term: the probability of
    a class is the sum over its subclasses.

    Args:
      student_logits: ``(B, C*S)`` logits r, class-major (index c*S + s).
      num_classes: C (static); C*S must be a multiple of it.
    Returns:
      ``(B, C)`` log q_c.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> r = np.log(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32))
      >>> print(np.round(np.exp(np.asarray(lj.class_log_probs(r, num_classes=2))), 4))
      [[0.3 0.7]]
    """
    require_rank(student_logits, 2, "class_log_probs", "student_logits", "(B, C*S)")
    b, k = student_logits.shape
    if num_classes < 1 or k % num_classes:
        raise ValueError(f"class_log_probs: {k} student logits are not a multiple of num_classes="
                         f"{num_classes}; the student head needs C*S outputs.")
    logq = jax.nn.log_softmax(student_logits, axis=-1).reshape(b, num_classes, k // num_classes)
    return jax.nn.logsumexp(logq, axis=-1)
