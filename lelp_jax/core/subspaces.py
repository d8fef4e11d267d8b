"""The linear algebra of the LELP fit: the classifier's null space, one batched eigh, Haar rotations.

:func:`fit_directions` is step 1-4 of the fit (:mod:`lelp_jax.core.projections` validates the
inputs and wraps the result in the artifact):

1. ``P = I - W^T (W W^T)^+ W``, the projector onto the null space of the classifier W (C x D);
2. ``Sigma_c^P = P Sigma_c P`` and ``mu_c^P = P mu_c``;
3. one batched ``eigh`` over the classes, ``V_c`` = the top-S eigenvectors;
4. ``U_c = V_c Q_c`` with ``Q_c`` a seeded Haar-random S x S orthogonal matrix.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from lelp_jax.core.statistics import ClassMoments, covariance

__all__ = ["null_space_projector", "fit_directions"]

_HIGHEST = jax.lax.Precision.HIGHEST


@jax.jit
def null_space_projector(classifier_weights: jax.Array, *, rcond: float = 1e-6) -> jax.Array:
    """``P = I - W^T (W W^T)^+ W``: the projector onto the null space of the classifier weights W.

    The row space of W is what vanilla KD already conveys; LELP looks only at the rest.
    Computed from the SVD ``W = A diag(s) V^T`` as ``P = I - V_r V_r^T`` over the
    singular values ``s > rcond * max(s)``: the same matrix as the pseudo-inverse
    formula, but symmetric and idempotent to rounding, also for rank-deficient W.

    Args:
      classifier_weights: ``(C, D)`` W, classes first (a Flax Dense kernel transposed).
      rcond: singular values below ``rcond * max(s)`` count as zero.
    Returns:
      ``(D, D)`` P, symmetric, ``P @ P = P`` and ``W @ P = 0``.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> p = lj.null_space_projector(np.array([[1., 1., 0.]], np.float32))
      >>> print(np.round(np.asarray(p), 4))
      [[ 0.5 -0.5  0. ]
       [-0.5  0.5  0. ]
       [ 0.   0.   1. ]]
    """
    w = jnp.asarray(classifier_weights)
    if w.ndim != 2:
        raise ValueError(f"null_space_projector: classifier_weights must be (C, D), got {w.shape}.")
    _, s, vt = jnp.linalg.svd(w, full_matrices=False)
    keep = (s > rcond * jnp.max(s)).astype(w.dtype)
    row_space = jnp.einsum("k,kd,ke->de", keep, vt, vt, precision=_HIGHEST)
    return jnp.eye(w.shape[1], dtype=w.dtype) - row_space


def _haar_orthogonal(key: jax.Array, batch: int, rows: int, cols: int, dtype) -> jax.Array:
    """Haar-random (rows x cols) orthonormal frames: QR of a Gaussian, signs fixed by diag(R)."""
    g = jax.random.normal(key, (batch, rows, cols), dtype)
    return _orthonormalize(g)


def _orthonormalize(g: jax.Array) -> jax.Array:
    q, r = jnp.linalg.qr(g)
    sign = jnp.where(jnp.diagonal(r, axis1=-2, axis2=-1) < 0, -1.0, 1.0).astype(g.dtype)
    return q * sign[..., None, :]


@functools.partial(jax.jit, static_argnames=("num_subclasses", "null_space", "rotate", "random"))
def fit_directions(count, mean, m2, weights, key, *, num_subclasses, null_space, rotate, random):
    """``(U (C, D, S), P mu (C, D), eigenvalues (C, D) descending, scales (C, S))`` of the moments.

    Unchecked (:func:`lelp_jax.core.projections.fit_projections` is the checked entry point):
    ``weights`` W (C, D) is used only when ``null_space``; ``key`` draws the rotation
    (``rotate``) and, when ``random``, Haar-random frames in range(P) instead of eigenvectors.
    ``scales[c, s] = sqrt(U_c[:, s]^T (P Sigma_c P) U_c[:, s])``, Sigma_c the population covariance.
    """
    moments = ClassMoments(count=count, mean=mean, m2=m2)
    sigma = covariance(moments, ddof=0)
    c, d = mean.shape
    s = num_subclasses
    proj = null_space_projector(weights) if null_space else jnp.eye(d, dtype=mean.dtype)
    sigma_p = jnp.einsum("de,cef,fg->cdg", proj, sigma, proj, precision=_HIGHEST)
    sigma_p = 0.5 * (sigma_p + jnp.swapaxes(sigma_p, 1, 2))
    means = jnp.einsum("cd,ed->ce", mean, proj, precision=_HIGHEST)
    # Shift the row space of W to a negative eigenvalue so the top-S eigenvectors always
    # lie in range(P), even for degenerate classes; the shift is undone in the reported spectrum.
    scale = jnp.maximum(jnp.trace(sigma_p, axis1=1, axis2=2), jnp.finfo(mean.dtype).tiny)
    shifted = sigma_p - scale[:, None, None] * (jnp.eye(d, dtype=mean.dtype) - proj)[None]
    evals, evecs = jnp.linalg.eigh(shifted)  # one batched call, ascending
    evals = jnp.maximum(evals[:, ::-1], 0.0)  # descending; row space (and rounding) -> 0
    evecs = evecs[:, :, ::-1][:, :, :s]
    # Deterministic sign: the largest-magnitude entry of each eigenvector is positive.
    idx = jnp.argmax(jnp.abs(evecs), axis=1)
    sign = jnp.sign(jnp.take_along_axis(evecs, idx[:, None, :], axis=1))
    evecs = evecs * jnp.where(sign == 0, 1.0, sign)
    k_dir, k_rot = jax.random.split(key)
    if random:
        g = jax.random.normal(k_dir, (c, d, s), mean.dtype)
        evecs = _orthonormalize(jnp.einsum("de,ces->cds", proj, g, precision=_HIGHEST))
    if rotate:
        q = _haar_orthogonal(k_rot, c, s, s, mean.dtype)
        evecs = jnp.einsum("cds,cst->cdt", evecs, q, precision=_HIGHEST)
    var = jnp.einsum("cds,cde,ces->cs", evecs, sigma_p, evecs, precision=_HIGHEST)
    return evecs, means, evals, jnp.sqrt(jnp.maximum(var, 0.0))
