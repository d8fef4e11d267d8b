"""Clustering and oracle pseudo-subclasses: the `kmeans` and `oracle` comparison methods.

Both replace LELP's linear projections by another way of splitting each class c
into S subclasses, then build targets the LELP way: the teacher's class
probability p_c is split over the S subclass slots of class c, so that
``sum_s t_{c,s} = p_c`` (see ``lelp_jax.core.targets.split_targets``).

k-means (per class, in the teacher embedding)
    For every class c, Lloyd's algorithm with S centroids m_{c,s} over the
    embeddings h_i of the distillation-set examples labelled c, seeded with
    k-means++ (Arthur & Vassilvitskii, 2007). Weighted by the batch mask, pure JAX,
    one jitted function vmapped over classes.

    Score choice. k-means is hard-EM for an isotropic Gaussian mixture with equal
    weights, so the natural soft assignment of h to class c's clusters is the
    mixture responsibility

        z_{c,s}(h) = -||h - m_{c,s}||^2 / (2 sigma_c^2),
        sigma_c^2  = (within-cluster sum of squares of class c) / (n_c D),

    the per-dimension variance around the nearest centroid. With it, beta = 1 in
    ``softmax_s(z_{c,.} / beta)`` is exactly the fitted GMM posterior. It is free of
    the embedding's units but not of its dimension: ||h - m||^2 grows with D, so in a
    384-d embedding the GMM posterior is nearly hard where LELP's split is soft.
    ``scale="raw"`` uses z = -||h - m||^2 instead (beta then carries the units).

    Standardised scores (``scale="standardized"``, the default: the same rule as
    LELP's standardised z). Up to a per-example constant, which the softmax over s
    ignores, -||h - m_{c,s}||^2 is the linear score 2 h.(m_{c,s} - mbar_c) -
    ||m_{c,s}||^2 (mbar_c the mean centroid). One scale per class keeps the k-means
    partition (the argmax) intact:

        z_{c,s}(h) = (2 h.m_{c,s} - ||m_{c,s}||^2) / sigma_c,
        sigma_c^2  = S / (S - 1) * mean_s Var_{h in c}[2 h.(m_{c,s} - mbar_c)],

    so the scores' spread over the S subclasses equals that of S uncorrelated
    unit-variance scores, LELP's standardised z (for which mean_s Var[z_s - zbar] =
    (S - 1) / S). beta (or a target entropy) then means the same for both.

Oracle (true fine labels as subclasses, the upper bound of the paper's Figure 3)
    The k-th fine label of class c (ascending fine-label order) takes slot k mod S of
    class c. With S = max_c n_c (the default of ``oracle_slots``) this is the exact
    oracle: one slot per fine label, and the slots a class does not use get zero
    target mass. A smaller S (e.g. the run's ``lelp.num_subclasses``, so every
    pseudo-subclass method has the same head) merges fine labels round-robin.
    Target: t_{y,s} = p_y * [s = slot(fine)] for the example's own class y; for every
    other class c the fine label says nothing about c's subclasses, so p_c is spread
    uniformly over c's used slots. Without a teacher, p = onehot(y) and the target is
    the one-hot of the (class, fine slot) pair.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lelp_jax.core.validation import require_host

__all__ = [
    "KMeansFit",
    "squared_distances",
    "kmeans_plusplus_init",
    "lloyd",
    "fit_kmeans",
    "fit_class_kmeans",
    "kmeans_scores",
    "score_scale",
    "KMEANS_SCALES",
    "OracleSlots",
    "oracle_slots",
    "oracle_targets",
    "fit_agglomerative_centroids",
]

_HIGHEST = jax.lax.Precision.HIGHEST


def squared_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """``||x_i - m_k||^2`` for ``x (N, D)`` and ``centroids (K, D)`` -> ``(N, K)``, clamped at 0.

    Expanded as ||x||^2 - 2 x.m + ||m||^2 (one matmul, full float32 precision).
    """
    cross = jnp.matmul(x, centroids.T, precision=_HIGHEST)
    d2 = jnp.sum(x * x, axis=-1)[:, None] - 2.0 * cross + jnp.sum(centroids * centroids, axis=-1)[None]
    return jnp.maximum(d2, 0.0)


def _sample_index(key: jax.Array, weights: jax.Array, fallback: jax.Array) -> jax.Array:
    """An index drawn with probability proportional to ``weights``; ``fallback`` weights if all are 0."""
    w = jnp.where(jnp.sum(weights) > 0, weights, fallback)
    w = jnp.where(jnp.sum(w) > 0, w, jnp.ones_like(w))  # empty class: any row (its centroids are unused)
    logits = jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), -jnp.inf)
    return jax.random.categorical(key, logits)


def kmeans_plusplus_init(key: jax.Array, x: jax.Array, weights: jax.Array, *, num_clusters: int) -> jax.Array:
    """k-means++ seeding: the first centroid ~ w_i, each next one ~ w_i * min_k ||x_i - m_k||^2.

    ``x (N, D)``, ``weights (N,)`` >= 0 (0 excludes a row). Returns ``(num_clusters, D)``.
    When every weighted row already coincides with a centroid (fewer distinct points
    than clusters), the next centroid is drawn ~ w_i again (a duplicate).
    """
    keys = jax.random.split(key, num_clusters)
    first = x[_sample_index(keys[0], weights, weights)]
    centroids = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(first)
    min_d2 = squared_distances(x, first[None])[:, 0]

    def body(k, carry):
        cents, md2 = carry
        new = x[_sample_index(keys[k], weights * md2, weights)]
        cents = cents.at[k].set(new)
        md2 = jnp.minimum(md2, squared_distances(x, new[None])[:, 0])
        return cents, md2

    centroids, _ = jax.lax.fori_loop(1, num_clusters, body, (centroids, min_d2))
    return centroids


def lloyd(x: jax.Array, weights: jax.Array, centroids: jax.Array, *, num_iters: int) -> tuple[jax.Array, jax.Array]:
    """``num_iters`` weighted Lloyd iterations: assign to the nearest centroid, move to the weighted mean.

    A cluster that loses all its (weighted) rows keeps its previous centroid.
    Returns ``(centroids (K, D), inertia)`` with inertia = sum_i w_i min_k ||x_i - m_k||^2
    at the returned centroids.
    """
    k = centroids.shape[0]

    def step(_, cents):
        assign = jax.nn.one_hot(jnp.argmin(squared_distances(x, cents), axis=-1), k, dtype=x.dtype)
        aw = assign * weights[:, None]  # (N, K)
        n = jnp.sum(aw, axis=0)
        sums = jnp.matmul(aw.T, x, precision=_HIGHEST)
        return jnp.where(n[:, None] > 0, sums / jnp.where(n > 0, n, 1.0)[:, None], cents)

    centroids = jax.lax.fori_loop(0, num_iters, step, centroids)
    inertia = jnp.sum(weights * jnp.min(squared_distances(x, centroids), axis=-1))
    return centroids, inertia


def fit_kmeans(
    key: jax.Array,
    x: jax.Array,
    *,
    num_clusters: int,
    num_iters: int = 50,
    weights: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
    """Weighted k-means (k-means++ init, then Lloyd). Returns ``(centroids (K, D), inertia)``."""
    x = jnp.asarray(x, jnp.float32)
    w = jnp.ones(x.shape[:1], x.dtype) if weights is None else jnp.asarray(weights, x.dtype)
    init = kmeans_plusplus_init(key, x, w, num_clusters=num_clusters)
    return lloyd(x, w, init, num_iters=num_iters)


@struct.dataclass
class KMeansFit:
    """Per-class k-means fit: ``centroids (C, S, D)``, ``scale (C,)`` = 1 / (2 sigma_c^2),
    ``inertia (C,)`` (weighted within-cluster sum of squares), ``count (C,)`` (weighted rows),
    ``score_std (C,)`` the standardised scores' sigma_c (module docstring; None if not
    fitted), ``betas (C,)`` per-class temperatures calibrated to a target entropy, or None."""

    centroids: jax.Array
    scale: jax.Array
    inertia: jax.Array
    count: jax.Array
    score_std: Optional[jax.Array] = None
    betas: Optional[jax.Array] = None

    _FIELDS = ("centroids", "scale", "inertia", "count", "score_std", "betas")

    def to_numpy(self) -> dict[str, np.ndarray]:
        """The arrays (those that are set) as a dict of NumPy arrays (for ``np.savez``)."""
        return {k: np.asarray(getattr(self, k)) for k in self._FIELDS if getattr(self, k) is not None}

    @classmethod
    def from_numpy(cls, arrays) -> "KMeansFit":
        """Inverse of :meth:`to_numpy` (accepts an ``np.load`` result)."""
        return cls(**{k: jnp.asarray(arrays[k]) for k in cls._FIELDS if k in arrays})


def fit_class_kmeans(
    key: jax.Array,
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    num_classes: int,
    num_subclasses: int,
    num_iters: int = 50,
    mask: Optional[jax.Array] = None,
) -> KMeansFit:
    """k-means with ``num_subclasses`` centroids separately inside every class (vmapped, jitted).

    ``embeddings (N, D)``, ``labels (N,)`` int in [0, C), optional ``mask (N,)``.
    Class c uses key ``fold_in(key, c)``. sigma_c^2 = inertia_c / (n_c D) (floored at
    1e-12), see the module docstring for why the scores use it.
    """
    embeddings = jnp.asarray(embeddings, jnp.float32)
    labels = jnp.asarray(labels)
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"fit_class_kmeans needs embeddings (N, D) and labels (N,), got {embeddings.shape} and "
            f"{labels.shape}; pass one label per embedding row."
        )
    if num_subclasses < 1 or num_classes < 1:
        raise ValueError(
            f"fit_class_kmeans needs num_classes >= 1 and num_subclasses >= 1, got "
            f"{num_classes} and {num_subclasses}."
        )
    mask = jnp.ones(labels.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32)
    return _fit_class_kmeans(key, embeddings, labels, mask, num_classes, num_subclasses, num_iters)


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _fit_class_kmeans(key, x, labels, mask, num_classes, num_subclasses, num_iters) -> KMeansFit:
    w = (labels[None, :] == jnp.arange(num_classes)[:, None]).astype(x.dtype) * mask[None]  # (C, N)
    keys = jax.vmap(lambda c: jax.random.fold_in(key, c))(jnp.arange(num_classes))

    def one(k, wc):
        init = kmeans_plusplus_init(k, x, wc, num_clusters=num_subclasses)
        return lloyd(x, wc, init, num_iters=num_iters)

    centroids, inertia = jax.vmap(one)(keys, w)
    count = jnp.sum(w, axis=1)
    var = inertia / jnp.maximum(count * x.shape[1], 1.0)
    scale = 0.5 / jnp.maximum(var, 1e-12)
    score_std = jax.vmap(score_scale, in_axes=(None, 0, 0))(x, w, centroids)
    return KMeansFit(centroids=centroids, scale=scale, inertia=inertia, count=count, score_std=score_std)


def score_scale(x: jax.Array, weights: jax.Array, centroids: jax.Array) -> jax.Array:
    """sigma_c of the standardised k-means scores (module docstring) for one class.

    ``x (N, D)``, ``weights (N,)`` (the class's rows), ``centroids (S, D)``:
    ``sqrt(S / (S - 1) * mean_s Var_w[2 x.(m_s - mbar)])``, floored at 1e-12; 1 when S = 1
    (one subclass: the split is the same at any scale).
    """
    s = centroids.shape[0]
    if s == 1:
        return jnp.ones((), x.dtype)
    lin = 2.0 * jnp.matmul(x, (centroids - jnp.mean(centroids, axis=0)).T, precision=_HIGHEST)  # (N, S)
    n = jnp.maximum(jnp.sum(weights), 1e-12)
    mean = jnp.sum(weights[:, None] * lin, axis=0) / n
    var = jnp.sum(weights[:, None] * (lin - mean) ** 2, axis=0) / n
    return jnp.sqrt(jnp.maximum(s / (s - 1) * jnp.mean(var), 1e-24))


KMEANS_SCALES = ("standardized", "gmm", "raw")


@functools.partial(jax.jit, static_argnames=("scale",))
def kmeans_scores(embedding: jax.Array, fit: KMeansFit, *, scale: str = "standardized") -> jax.Array:
    """Subclass scores ``z (B, C, S)`` of embeddings ``(B, D)`` against every class's centroids.

    ``scale="standardized"``: z_{c,s} = (2 h.m_{c,s} - ||m_{c,s}||^2) / score_std_c, i.e.
    -||h - m_{c,s}||^2 / score_std_c up to a per-(example, class) constant (module docstring);
    ``scale="gmm"``: z_{c,s} = -||h - m_{c,s}||^2 * scale_c (isotropic-GMM log-responsibility
    up to such a constant, which the per-class softmax over s ignores);
    ``scale="raw"``: z_{c,s} = -||h - m_{c,s}||^2.
    """
    if scale not in KMEANS_SCALES:
        raise ValueError(f"kmeans_scores: scale must be one of {KMEANS_SCALES}, got {scale!r}.")
    c, s, d = fit.centroids.shape
    h = jnp.asarray(embedding, jnp.float32)
    if h.ndim != 2 or h.shape[1] != d:
        raise ValueError(f"kmeans_scores: embedding must be (B, {d}) to match the centroids, got {h.shape}.")
    if scale == "standardized":
        if fit.score_std is None:
            raise ValueError("kmeans_scores: scale='standardized' needs fit.score_std; fit with fit_class_kmeans "
                             "(or fit_agglomerative_centroids), or use scale='gmm'.")
        m = fit.centroids.astype(jnp.float32)
        lin = 2.0 * jnp.einsum("bd,csd->bcs", h, m, precision=_HIGHEST) - jnp.sum(m * m, axis=-1)[None]
        return lin / fit.score_std.astype(jnp.float32)[None, :, None]
    d2 = squared_distances(h, fit.centroids.reshape(c * s, d)).reshape(h.shape[0], c, s)
    if scale == "raw":
        return -d2
    return -d2 * fit.scale[None, :, None]


@struct.dataclass
class OracleSlots:
    """Fine label -> subclass slot table: ``slot_of_fine (F,)`` int32, ``class_of_fine (F,)`` int32,
    ``slot_mask (C, S)`` float32 (1 where class c uses slot s). S = max fine labels per class."""

    slot_of_fine: jax.Array
    class_of_fine: jax.Array
    slot_mask: jax.Array

    @property
    def num_subclasses(self) -> int:
        return self.slot_mask.shape[1]

    @property
    def head_outputs(self) -> int:
        """The oracle student's head width C * S."""
        return self.slot_mask.shape[0] * self.slot_mask.shape[1]


def oracle_slots(labels: np.ndarray, fine_labels: np.ndarray, *, num_classes: int, num_fine: int) -> OracleSlots:
    """Build the fine -> (class, slot) table from labelled data (host side, NumPy).

    Each fine label must belong to exactly one class; the k-th fine label of class c
    (ascending) gets slot k. S = the largest number of fine labels in a class, so every
    fine label has a slot of its own (the exact oracle, an upper bound whatever
    lelp.num_subclasses is). A class with fewer fine labels leaves its last slots unused
    (``slot_mask`` 0): their targets are 0, so training drives those logits down and they
    take no share of the class at prediction. Fine labels never seen map to slot 0 with
    ``class_of_fine = -1``.
    """
    require_host("oracle_slots", labels, fine_labels)
    labels = np.asarray(labels).astype(np.int64).ravel()
    fine = np.asarray(fine_labels).astype(np.int64).ravel()
    if labels.shape != fine.shape:
        raise ValueError(f"oracle_slots: labels {labels.shape} and fine_labels {fine.shape} must have equal shape.")
    if fine.size and (fine.min() < 0 or fine.max() >= num_fine or labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"oracle_slots: labels must lie in [0, {num_classes}) and fine labels in [0, {num_fine}); "
            "check num_classes / num_fine against the dataset info."
        )
    pairs = np.unique(np.stack([fine, labels], axis=1), axis=0)
    dup = np.unique(pairs[:, 0], return_counts=True)
    if np.any(dup[1] > 1):
        bad = dup[0][dup[1] > 1].tolist()
        raise ValueError(
            f"oracle_slots: fine labels {bad} occur under several coarse classes; the oracle needs each fine "
            "label to belong to one class (is the dataset's fine->coarse mapping consistent?)."
        )
    class_of_fine = np.full(num_fine, -1, np.int32)
    slot_of_fine = np.zeros(num_fine, np.int32)
    per_class = [sorted(pairs[pairs[:, 1] == c, 0].tolist()) for c in range(num_classes)]
    num_slots = max(1, max(len(p) for p in per_class))
    slot_mask = np.zeros((num_classes, num_slots), np.float32)
    for c, fines in enumerate(per_class):
        for k, f in enumerate(fines):
            class_of_fine[f] = c
            slot_of_fine[f] = k
        slot_mask[c, : max(len(fines), 1)] = 1.0  # a class without fine labels keeps one slot
    return OracleSlots(
        slot_of_fine=jnp.asarray(slot_of_fine), class_of_fine=jnp.asarray(class_of_fine), slot_mask=jnp.asarray(slot_mask)
    )


def oracle_targets(
    class_probs: jax.Array, labels: jax.Array, fine_labels: jax.Array, slots: OracleSlots
) -> jax.Array:
    """Oracle subclass targets ``t (B, C, S)``; ``sum_s t_{c,s} = p_c`` for every class.

    t_{y,s} = p_y [s = slot(fine)];  t_{c,s} = p_c * mask_{c,s} / sum_s' mask_{c,s'} for c != y.
    ``class_probs (B, C)`` (teacher p, or onehot(y) without a teacher), ``labels (B,)``,
    ``fine_labels (B,)``.
    """
    p = jnp.asarray(class_probs, jnp.float32)
    c, s = slots.slot_mask.shape
    if p.ndim != 2 or p.shape[1] != c:
        raise ValueError(f"oracle_targets: class_probs must be (B, {c}), got {p.shape}.")
    own = jax.nn.one_hot(slots.slot_of_fine[fine_labels], s, dtype=p.dtype)  # (B, S)
    uniform = slots.slot_mask / jnp.sum(slots.slot_mask, axis=1, keepdims=True)  # (C, S)
    is_own = jax.nn.one_hot(labels, c, dtype=p.dtype)[:, :, None]  # (B, C, 1)
    split = is_own * own[:, None, :] + (1.0 - is_own) * uniform[None]
    return p[:, :, None] * split


def fit_agglomerative_centroids(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    num_subclasses: int,
    max_points: int = 2000,
    seed: int = 0,
    linkage: str = "ward",
) -> KMeansFit:
    """Agglomerative (Ward) clusters per class on a seeded subsample, as centroids (scikit-learn, host).

    Ward linkage is O(n^2) memory, so each class uses at most ``max_points`` rows drawn
    without replacement. The clusters' means become centroids and the targets are then
    built exactly like k-means' (``kmeans_scores``), so the two methods differ only in
    how the clusters are found. A class with fewer rows than clusters repeats rows.
    """
    from sklearn.cluster import AgglomerativeClustering

    require_host("fit_agglomerative_centroids", embeddings, labels)
    x = np.asarray(embeddings, np.float64)
    y = np.asarray(labels).ravel()
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    centroids = np.zeros((num_classes, num_subclasses, d), np.float64)
    inertia = np.zeros(num_classes)
    count = np.zeros(num_classes)
    score_std = np.ones(num_classes)
    for c in range(num_classes):
        xc = x[y == c]
        count[c] = len(xc)
        if len(xc) == 0:
            continue
        full = xc
        if len(xc) > max_points:
            xc = xc[rng.choice(len(xc), max_points, replace=False)]
        if len(xc) < num_subclasses:
            xc = xc[np.arange(num_subclasses) % len(xc)]
        assign = AgglomerativeClustering(n_clusters=num_subclasses, linkage=linkage).fit_predict(xc)
        for k in range(num_subclasses):
            centroids[c, k] = xc[assign == k].mean(axis=0)
        inertia[c] = np.sum((xc - centroids[c, assign]) ** 2) * count[c] / len(xc)
        score_std[c] = float(score_scale(jnp.asarray(full, jnp.float32), jnp.ones(len(full), jnp.float32),
                                         jnp.asarray(centroids[c], jnp.float32)))
    var = inertia / np.maximum(count * d, 1.0)
    return KMeansFit(
        centroids=jnp.asarray(centroids, jnp.float32),
        scale=jnp.asarray(0.5 / np.maximum(var, 1e-12), jnp.float32),
        inertia=jnp.asarray(inertia, jnp.float32),
        count=jnp.asarray(count, jnp.float32),
        score_std=jnp.asarray(score_std, jnp.float32),
    )
