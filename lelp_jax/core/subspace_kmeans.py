"""``lelp_kmeans``: LELP's subspace, partitioned the way the embedding is organised.

LELP keeps two things worth keeping: it drops the row space of the teacher head W
(what KD already conveys) and works in each class's top principal subspace of the
null-space-projected embeddings. Its partition — a softmax over S linear
projections, i.e. S cones around S directions — is what this variant replaces: in a
float64 prototype with 16 interleaved latent clusters per class, k-means inside the
null-space top-8 subspace captured all of the oracle's room where LELP captured a fifth
(issue #12, item 7). Fit, per class c, from the teacher's train embeddings h:

1. ``P = I - W^T (W W^T)^+ W`` and ``V_c`` = the top-k eigenvectors of ``P Sigma_c P``
   (:func:`lelp_jax.core.projections.fit_projections` with ``num_subclasses=k``, no
   rotation: k-means is rotation-invariant), mu_c the class mean;
2. subspace coordinates ``y_c(h) = V_c^T (h - mu_c)`` in R^k (not whitened: the
   subspace keeps the embedding's own geometry);
3. k-means with S centroids ``m_{c,s}`` in R^k over class c's rows
   (:func:`lelp_jax.core.clustering.kmeans_plusplus_init` + :func:`lelp_jax.core.clustering.lloyd`).

Targets, with the same sharpness rule as every splitting method:

    z_{c,s}(h) = (2 y_c(h).m_{c,s} - ||m_{c,s}||^2) / sigma_c      (= -||y_c - m_{c,s}||^2 / sigma_c + const)
    t_{c,s}    = softmax(l / tau)_c * softmax_s(z_{c,.} / beta_c)_s

with ``sigma_c`` the standardisation of k-means scores (:func:`lelp_jax.core.clustering.score_scale`,
in the subspace) and ``beta_c`` = ``lelp.beta`` or calibrated to ``lelp.target_entropy``.
"""
from __future__ import annotations

import functools
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lelp_jax.core.clustering import KMeansFit, kmeans_plusplus_init, lloyd, score_scale
from lelp_jax.core.projections import Projections
from lelp_jax.core.targets import projection_scores

__all__ = ["SubspaceKMeans", "fit_subspace_kmeans", "subspace_coordinates", "subspace_kmeans_scores"]

_HIGHEST = jax.lax.Precision.HIGHEST


@struct.dataclass
class SubspaceKMeans:
    """The ``lelp_kmeans`` fit: ``subspace`` (:class:`Projections`, directions ``(C, D, k)``, the
    top-k null-space principal directions V_c and means mu_c), ``clusters`` (:class:`KMeansFit`,
    centroids ``(C, S, k)`` in each class's subspace coordinates, ``score_std (C,)``) and
    ``betas (C,)`` calibrated to a target entropy, or None.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> h = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32); y = np.arange(40) % 2
      >>> sub = lj.fit_projections(lj.update_moments(lj.init_moments(2, 5), h, y), num_subclasses=2,
      ...                          null_space=False, rotate=False)
      >>> fit = lj.fit_subspace_kmeans(sub, h, y, num_subclasses=3, key=1)
      >>> isinstance(fit, lj.SubspaceKMeans), fit.subspace.directions.shape, fit.betas is None
      (True, (2, 5, 2), True)
    """

    subspace: Projections
    clusters: KMeansFit
    betas: Optional[jax.Array] = None


def subspace_coordinates(fit_or_subspace, embeddings: jax.Array) -> jax.Array:
    """``y_c(h) = V_c^T (h - mu_c)`` for every class: ``(B, C, k)``."""
    subspace = fit_or_subspace.subspace if isinstance(fit_or_subspace, SubspaceKMeans) else fit_or_subspace
    return projection_scores(subspace, embeddings, standardize=False)


def fit_subspace_kmeans(subspace: Projections, embeddings: jax.Array, labels: jax.Array, *, num_subclasses: int,
                        key: Union[jax.Array, int], num_iters: int = 50) -> SubspaceKMeans:
    """k-means with ``num_subclasses`` centroids inside each class's subspace (vmapped over classes, jitted).

    Per class c: coordinates ``y_c(h) = V_c^T (h - mu_c)`` of class c's rows, k-means++ then
    ``num_iters`` Lloyd steps (module docstring). The conventions of
    :func:`lelp_jax.core.projections.fit_projections`: data first, options keyword-only, ``key``
    a PRNG key or an int seed (class c draws from ``fold_in(key, c)``; the same key, the same fit).

    Args:
      subspace: the fitted top-k directions, e.g. ``fit_projections(moments, classifier_weights=W,
        num_subclasses=k, key=0, rotate=False)`` (:class:`Projections`, directions ``(C, D, k)``).
      embeddings: ``(N, D)`` teacher embeddings; labels: ``(N,)`` their classes (row i is in labels[i]).
      num_subclasses: S >= 1 centroids per class.
      key: a PRNG key or an int seed. num_iters: Lloyd iterations.
    Returns:
      :class:`SubspaceKMeans`: centroids ``(C, S, k)`` in ``clusters``, ``betas=None``.

    Examples:
      >>> import jax, numpy as np, lelp_jax as lj
      >>> rng = np.random.default_rng(0)
      >>> h = rng.normal(size=(80, 6)).astype(np.float32); y = np.arange(80) % 2
      >>> w = rng.normal(size=(2, 6)).astype(np.float32)
      >>> moments = lj.update_moments(lj.init_moments(2, 6), h, y)
      >>> sub = lj.fit_projections(moments, classifier_weights=w, num_subclasses=3, key=0, rotate=False)
      >>> fit = lj.fit_subspace_kmeans(sub, h, y, num_subclasses=4, key=0)
      >>> fit.clusters.centroids.shape                       # (C, S, k)
      (2, 4, 3)
      >>> same = lj.fit_subspace_kmeans(sub, h, y, num_subclasses=4, key=jax.random.PRNGKey(0))
      >>> bool(np.array_equal(fit.clusters.centroids, same.clusters.centroids))  # an int seed = its PRNGKey
      True
    """
    embeddings = jnp.asarray(embeddings, jnp.float32)
    labels = jnp.asarray(labels)
    c = subspace.num_classes
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"fit_subspace_kmeans needs embeddings (N, D) and labels (N,), got {embeddings.shape} and "
                         f"{labels.shape}; pass one label per embedding row.")
    if not isinstance(num_subclasses, int) or num_subclasses < 1:
        raise ValueError(f"fit_subspace_kmeans: num_subclasses must be an int >= 1, got {num_subclasses!r}.")
    if isinstance(key, (int, np.integer)):
        key = jax.random.PRNGKey(int(key))
    coords = subspace_coordinates(subspace, embeddings)  # (N, C, k)
    clusters = _fit(key, coords, labels, c, num_subclasses, int(num_iters))
    return SubspaceKMeans(subspace=subspace, clusters=clusters)


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _fit(key, coords, labels, num_classes, num_subclasses, num_iters) -> KMeansFit:
    w = (labels[None, :] == jnp.arange(num_classes)[:, None]).astype(coords.dtype)  # (C, N)
    keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.arange(num_classes))

    def one(k, x, wc):
        init = kmeans_plusplus_init(k, x, wc, num_clusters=num_subclasses)
        cents, inertia = lloyd(x, wc, init, num_iters=num_iters)
        return cents, inertia, score_scale(x, wc, cents)

    centroids, inertia, score_std = jax.vmap(one, in_axes=(0, 1, 0))(keys, coords, w)
    count = jnp.sum(w, axis=1)
    scale = 0.5 / jnp.maximum(inertia / jnp.maximum(count * coords.shape[2], 1.0), 1e-12)
    return KMeansFit(centroids=centroids, scale=scale, inertia=inertia, count=count, score_std=score_std)


@functools.partial(jax.jit, static_argnames=("standardize",))
def subspace_kmeans_scores(embeddings: jax.Array, fit: SubspaceKMeans, *, standardize: bool = True) -> jax.Array:
    """Subclass scores ``z (B, C, S)``: ``2 y_c(h).m_{c,s} - ||m_{c,s}||^2``, over sigma_c when ``standardize``
    (module docstring); the softmax over s equals that of ``-||y_c(h) - m_{c,s}||^2 / sigma_c``.

    With :func:`lelp_jax.core.targets.split_targets` they give the ``lelp_kmeans`` targets
    ``t_{c,s} = p_c softmax_s(z_{c,.} / beta)_s``.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> rng = np.random.default_rng(0)
      >>> h = rng.normal(size=(60, 6)).astype(np.float32); y = np.arange(60) % 2
      >>> sub = lj.fit_projections(lj.update_moments(lj.init_moments(2, 6), h, y),
      ...                          classifier_weights=rng.normal(size=(2, 6)), num_subclasses=3, key=0, rotate=False)
      >>> fit = lj.fit_subspace_kmeans(sub, h, y, num_subclasses=4, key=0)
      >>> z = lj.subspace_kmeans_scores(h[:5], fit)            # (B, C, S)
      >>> t = lj.split_targets(np.full((5, 2), 0.5), z, beta=1.0)
      >>> z.shape, t.shape, bool(np.allclose(t.sum(-1), 1.0, atol=1e-5))
      ((5, 2, 4), (5, 8), True)
    """
    y = subspace_coordinates(fit, embeddings)  # (B, C, k)
    m = fit.clusters.centroids.astype(y.dtype)  # (C, S, k)
    z = 2.0 * jnp.einsum("bck,csk->bcs", y, m, precision=_HIGHEST) - jnp.sum(m * m, axis=-1)[None]
    if standardize:
        z = z / fit.clusters.score_std.astype(y.dtype)[None, :, None]
    return z
