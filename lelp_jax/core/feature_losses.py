"""Feature and relational distillation losses for the comparison set: FitNet, RKD, Subclass-Distillation aux.

Every loss takes an optional per-example ``mask (B,)`` (1 for real rows, 0 for the
padding rows of a last partial batch) and averages over real rows (or real pairs /
triplets) only. Pure jax.numpy, jittable, no parameters of its own: trainable
adapters are passed in as arrays. Batch-relational losses (RKD, the Subclass-
Distillation auxiliary loss) are written on the global batch; under ``jit`` with a
sharded batch XLA inserts the cross-device communication. The per-example FitNet loss
also takes ``reduction`` ('mean', 'sum', 'none'), as in :mod:`lelp_jax.core.losses`.
"""
from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp

from lelp_jax.core.losses import REDUCTIONS
from lelp_jax.core.validation import host_value, require

__all__ = [
    "fitnet_loss",
    "huber",
    "rkd_distance_loss",
    "rkd_angle_loss",
    "rkd_loss",
    "subclass_aux_loss",
]

_HIGHEST = jax.lax.Precision.HIGHEST
_EPS = 1e-12


def _mask(mask: Optional[jax.Array], n: int) -> jax.Array:
    return jnp.ones((n,), jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)


def _check_pair(student: jax.Array, teacher: jax.Array, name: str) -> None:
    if student.ndim != 2 or teacher.ndim != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{name}: student and teacher embeddings must be (B, D_s) and (B, D_t) with the same B, "
            f"got {student.shape} and {teacher.shape}."
        )


def fitnet_loss(
    student_embedding: jax.Array,
    teacher_embedding: jax.Array,
    adapter: Mapping[str, jax.Array],
    *,
    mask: Optional[jax.Array] = None,
    reduction: str = "mean",
) -> jax.Array:
    """FitNet hint loss through a trainable linear adapter (regressor).

        L = (1 / sum_i m_i) sum_i m_i (1 / D_t) || s_i A + a - h_i ||^2

    with student embedding s_i (D_s), teacher embedding h_i (D_t), adapter kernel
    A (D_s x D_t) and bias a (D_t), ``adapter = {"kernel": A, "bias": a}`` (the layout of
    a ``flax.linen.Dense``). Reference: Romero et al., "FitNets: Hints for Thin Deep
    Nets", ICLR 2015, Eq. 3 (L_HT = 1/2 ||u_h - r(v_g)||^2). Deviations: the hint is the
    final embedding (the input of each head), not a middle layer, and the squared error
    is averaged over the D_t dimensions instead of halved and summed, so the loss
    weight does not depend on the teacher's width. The teacher side gets no gradient.
    """
    _check_pair(student_embedding, teacher_embedding, "fitnet_loss")
    kernel, bias = adapter["kernel"], adapter["bias"]
    if kernel.shape != (student_embedding.shape[1], teacher_embedding.shape[1]) or bias.shape != kernel.shape[1:]:
        raise ValueError(
            f"fitnet_loss: adapter kernel must be ({student_embedding.shape[1]}, {teacher_embedding.shape[1]}) "
            f"and bias ({teacher_embedding.shape[1]},), got {kernel.shape} and {bias.shape}."
        )
    if reduction not in REDUCTIONS:
        raise ValueError(f"fitnet_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    m = _mask(mask, student_embedding.shape[0])
    pred = jnp.matmul(student_embedding.astype(jnp.float32), kernel, precision=_HIGHEST) + bias
    err = jnp.mean((pred - jax.lax.stop_gradient(teacher_embedding.astype(jnp.float32))) ** 2, axis=-1)
    if reduction == "none":
        return m * err
    if reduction == "sum":
        return jnp.sum(m * err)
    return jnp.sum(m * err) / jnp.maximum(jnp.sum(m), 1.0)


def huber(x: jax.Array, delta: float = 1.0) -> jax.Array:
    """Huber / smooth-L1 penalty: 0.5 x^2 / delta for |x| <= delta, else |x| - 0.5 delta (PyTorch's smooth_l1)."""
    ax = jnp.abs(x)
    return jnp.where(ax <= delta, 0.5 * x * x / delta, ax - 0.5 * delta)


def _pairwise_distances(x: jax.Array) -> jax.Array:
    """Euclidean distances (B, B), exact zeros on the diagonal and a NaN-free gradient there."""
    diff = x[:, None, :] - x[None, :, :]
    d2 = jnp.sum(diff * diff, axis=-1)
    safe = jnp.where(d2 > _EPS, d2, 1.0)
    return jnp.where(d2 > _EPS, jnp.sqrt(safe), 0.0)


def rkd_distance_loss(
    student_embedding: jax.Array, teacher_embedding: jax.Array, *, mask: Optional[jax.Array] = None
) -> jax.Array:
    """RKD distance-wise loss (Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019, Eq. 4-5).

        psi_D(x_i, x_j) = ||x_i - x_j|| / mu,   mu = mean_{i != j} ||x_i - x_j||
        L_D = mean_{i != j} huber(psi_D(s_i, s_j) - psi_D(h_i, h_j))

    over real pairs i != j (pair weight m_i m_j), Huber with delta = 1. Embeddings may
    have different widths. The official code averages over all B^2 entries including the
    zero diagonal; excluding it only rescales the loss by B / (B - 1).
    """
    _check_pair(student_embedding, teacher_embedding, "rkd_distance_loss")
    b = student_embedding.shape[0]
    m = _mask(mask, b)
    pw = m[:, None] * m[None, :] * (1.0 - jnp.eye(b, dtype=jnp.float32))
    npairs = jnp.maximum(jnp.sum(pw), 1.0)

    def psi(x):
        d = _pairwise_distances(x.astype(jnp.float32))
        mu = jnp.sum(pw * d) / npairs
        return d / jnp.maximum(mu, _EPS)

    t = jax.lax.stop_gradient(psi(teacher_embedding))
    return jnp.sum(pw * huber(psi(student_embedding) - t)) / npairs


def _angles(x: jax.Array) -> jax.Array:
    """cos of the angle at vertex a of (b, a, c): <e_ab, e_ac>, e_ab = (x_b - x_a) / ||x_b - x_a||; shape (B, B, B)."""
    diff = x[None, :, :] - x[:, None, :]  # [a, b] = x_b - x_a
    n2 = jnp.sum(diff * diff, axis=-1, keepdims=True)
    unit = diff * jnp.where(n2 > _EPS, jax.lax.rsqrt(jnp.where(n2 > _EPS, n2, 1.0)), 0.0)
    return jnp.einsum("abd,acd->abc", unit, unit, precision=_HIGHEST)


def rkd_angle_loss(
    student_embedding: jax.Array, teacher_embedding: jax.Array, *, mask: Optional[jax.Array] = None
) -> jax.Array:
    """RKD angle-wise loss (Park et al., CVPR 2019, Eq. 6-7).

        psi_A(x_b, x_a, x_c) = <(x_b - x_a)/||x_b - x_a||, (x_c - x_a)/||x_c - x_a||>
        L_A = mean over triplets with b != a, c != a of huber(psi_A(s) - psi_A(h))

    (triplet weight m_a m_b m_c). Memory is O(B^3): keep the batch at a few hundred.
    The official code also averages the degenerate triplets (b = a or c = a, both sides
    0); excluding them only rescales the loss.
    """
    _check_pair(student_embedding, teacher_embedding, "rkd_angle_loss")
    b = student_embedding.shape[0]
    m = _mask(mask, b)
    off = 1.0 - jnp.eye(b, dtype=jnp.float32)
    tw = (m[:, None, None] * m[None, :, None] * m[None, None, :]) * off[:, :, None] * off[:, None, :]
    t = jax.lax.stop_gradient(_angles(teacher_embedding.astype(jnp.float32)))
    s = _angles(student_embedding.astype(jnp.float32))
    return jnp.sum(tw * huber(s - t)) / jnp.maximum(jnp.sum(tw), 1.0)


def rkd_loss(
    student_embedding: jax.Array,
    teacher_embedding: jax.Array,
    *,
    distance_weight: float = 1.0,
    angle_weight: float = 2.0,
    mask: Optional[jax.Array] = None,
) -> jax.Array:
    """RKD-DA: ``distance_weight * L_D + angle_weight * L_A`` (Park et al. 2019).

    The paper's metric-learning weights are 25 and 50; the defaults keep their 1:2 ratio
    at a scale comparable with a KD loss (set both in the config to reproduce 25/50).
    """
    return distance_weight * rkd_distance_loss(student_embedding, teacher_embedding, mask=mask) + (
        angle_weight * rkd_angle_loss(student_embedding, teacher_embedding, mask=mask)
    )


def subclass_aux_loss(
    subclass_logits: jax.Array, *, temperature: float = 1.0, mask: Optional[jax.Array] = None, eps: float = 1e-9
) -> jax.Array:
    """Subclass Distillation's auxiliary loss (Müller, Kornblith, Hinton 2020), as the authors' code computes it.

        u_i   = (z_i - mean_k z_ik) / sqrt(var_k z_ik + eps)    (each example's K = C*S logits standardised)
        v_i   = u_i / sqrt(T K)                                 (so v_i . v_j = corr(z_i, z_j) / T)
        L_aux = (1/n) sum_i logsumexp_j (v_i . v_j)  -  1/T  -  log n

    over the n real rows i, j. Since v_i . v_i = 1/T, this is the InfoNCE
    ``-(1/n) sum_i log(exp(v_i.v_i) / sum_j exp(v_i.v_j)) - log n`` with each example as
    its own positive: it penalises correlated subclass-logit patterns across the batch,
    so the teacher spreads a class's examples over its subclasses; it is 0 when every
    row is the same pattern. Checked against ``negative_sampling_loss`` in the authors'
    Colab (google-research, ``subclass_distillation/mnist_colab.ipynb``), whose comment
    says the mean and variance are per example, not per batch; T is usually < 1 there.
    """
    if subclass_logits.ndim != 2:
        raise ValueError(f"subclass_aux_loss: subclass_logits must be (B, C*S), got {subclass_logits.shape}.")
    require(temperature > 0, "subclass_aux_loss: temperature must be > 0, got {} (the paper's code uses 1).",
            temperature)
    t = host_value(temperature)
    temperature = float(t) if t is not None else temperature
    m = _mask(mask, subclass_logits.shape[0])
    z = subclass_logits.astype(jnp.float32)
    k = z.shape[-1]
    u = (z - jnp.mean(z, axis=-1, keepdims=True)) * jax.lax.rsqrt(jnp.var(z, axis=-1, keepdims=True) + eps)
    v = u / jnp.sqrt(temperature * k)
    g = jnp.matmul(v, v.T, precision=_HIGHEST)
    g = jnp.where(m[None, :] > 0, g, -1e30)  # padding columns drop out of the softmax
    lse = jnp.where(m > 0, jax.nn.logsumexp(g, axis=-1), 0.0)
    n = jnp.maximum(jnp.sum(m), 1.0)
    return jnp.sum(m * lse) / n - 1.0 / temperature - jnp.log(n)
