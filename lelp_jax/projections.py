"""LELP projections: null space of the teacher head, per-class PCA, random rotation.

Fit (Loo et al. 2024, arXiv 2409.20449, section 3), from per-class moments of the
teacher embeddings h:

1. ``P = I - W^T (W W^T)^+ W``: projector onto the null space of the classifier
   weights W (C x D). The row space of W is what vanilla KD already conveys.
2. ``Sigma_c^P = P Sigma_c P`` and ``mu_c^P = P mu_c`` (moments of P h).
3. One batched ``eigh`` over all classes; ``V_c`` = top-S eigenvectors.
4. ``U_c = V_c Q_c`` with ``Q_c`` a seeded Haar-random S x S orthogonal matrix,
   which equalises the variance over the S directions in expectation.

Centring (the paper is silent): targets use ``z_c = U_c^T (h - mu_c)`` with
``mu_c`` the class mean. The stored ``means`` are the means of ``P h``; since
every column of ``U_c`` lies in range(P) (P symmetric, P U_c = U_c),
``U_c^T (P h - P mu_c) = U_c^T (h - mu_c)``: applying P to h before projecting is
unnecessary, raw embeddings can be used directly.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lelp_jax.statistics import ClassMoments, _host_value, covariance

__all__ = [
    "Projections",
    "null_space_projector",
    "fit_projections",
    "save_projections",
    "load_projections",
]

_HIGHEST = jax.lax.Precision.HIGHEST
_ARRAY_FIELDS = ("directions", "means", "eigenvalues", "scales", "counts")


class _Settings(dict):
    """A dict that hashes by content, so a ``Projections`` can be a static part of a jit signature."""

    def __hash__(self):  # type: ignore[override]
        return hash(json.dumps(self, sort_keys=True, default=repr))


@struct.dataclass
class Projections:
    """The LELP projection artifact (a pytree; metadata fields are static).

    Arrays: ``directions (C, D, S)`` U_c with orthonormal columns; ``means (C, D)``
    mu_c (of P h when ``null_space``); ``eigenvalues (C, D)`` of P Sigma_c P, all of
    them, sorted descending (for spectra plots); ``scales (C, S)`` the class std of
    each projection, ``sqrt(U_c[:, s]^T Sigma_c U_c[:, s])``; ``counts (C,)``; ``betas (C,)``
    the per-class split temperatures solved for a target entropy
    (:func:`lelp_jax.sharpness.calibrate_betas`), or None (one ``beta`` for all classes).
    Metadata: ``num_subclasses`` S, ``null_space``, ``rotate``, ``seed``,
    ``directions_kind`` ('pca' or 'random') and a free ``settings`` dict (beta, tau,
    label source, teacher identity, ...) filled by the caller; JSON-serialisable
    values keep ``save_projections`` working.
    """

    directions: jax.Array
    means: jax.Array
    eigenvalues: jax.Array
    scales: jax.Array
    counts: jax.Array
    betas: Optional[jax.Array] = None
    num_subclasses: int = struct.field(pytree_node=False, default=1)
    null_space: bool = struct.field(pytree_node=False, default=True)
    rotate: bool = struct.field(pytree_node=False, default=True)
    seed: Optional[int] = struct.field(pytree_node=False, default=None)
    directions_kind: str = struct.field(pytree_node=False, default="pca")
    settings: Mapping[str, Any] = struct.field(pytree_node=False, default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.settings, _Settings):
            object.__setattr__(self, "settings", _Settings(self.settings or {}))

    @property
    def num_classes(self) -> int:
        return self.directions.shape[0]

    @property
    def dim(self) -> int:
        return self.directions.shape[1]


def null_space_projector(classifier_weights: jax.Array, *, rcond: float = 1e-6) -> jax.Array:
    """``P = I - W^T (W W^T)^+ W`` (D x D) for classifier weights W (C x D).

    Computed from the SVD ``W = A diag(s) V^T`` as ``P = I - V_r V_r^T`` over the
    singular values ``s > rcond * max(s)``: the same matrix as the pseudo-inverse
    formula, but symmetric and idempotent to rounding, also for rank-deficient W.
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
def _fit(count, mean, m2, weights, key, *, num_subclasses, null_space, rotate, random):
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


def _validate(moments: ClassMoments, classifier_weights, num_subclasses: int, null_space: bool,
              directions: str) -> None:
    if not isinstance(num_subclasses, (int, np.integer)) or num_subclasses < 1:
        raise ValueError(f"fit_projections: num_subclasses must be an int >= 1, got {num_subclasses!r}.")
    if directions not in ("pca", "random"):
        raise ValueError(f"fit_projections: directions must be 'pca' or 'random', got {directions!r}.")
    c, d = moments.mean.shape
    s = int(num_subclasses)
    if null_space:
        if classifier_weights is None:
            raise ValueError("fit_projections: null_space=True needs classifier_weights (C, D); pass the "
                             "teacher head's W = params['head']['kernel'].T or set null_space=False.")
        if tuple(np.shape(classifier_weights)) != (c, d):
            raise ValueError(
                f"fit_projections: classifier_weights must be (C, D) = ({c}, {d}) to match the moments, "
                f"got {tuple(np.shape(classifier_weights))}; pass W = kernel.T (classes first)."
            )
        if d < c + s:
            raise ValueError(
                f"fit_projections: the null space of W has at most D - C = {d} - {c} = {d - c} dimensions, "
                f"fewer than num_subclasses={s}; need D >= C + S: lower num_subclasses to <= {d - c} "
                "or set null_space=False."
            )
    elif s > d:
        raise ValueError(f"fit_projections: num_subclasses={s} exceeds the embedding dim D={d}; lower it.")
    arrays = {"count": moments.count, "mean": moments.mean, "m2": moments.m2}
    if classifier_weights is not None:
        arrays["classifier_weights"] = classifier_weights
    for name, arr in arrays.items():
        value = _host_value(arr)
        if value is not None and not np.all(np.isfinite(value)):
            raise ValueError(
                f"fit_projections: {name} contains NaN or inf; check the teacher embeddings (and the mask "
                "of padded rows) that built the moments."
            )
    counts = _host_value(moments.count)
    if counts is not None:
        for k, n in enumerate(counts):
            if n < s + 1:
                raise ValueError(
                    f"fit_projections: class {k} has {n:g} examples, fewer than num_subclasses + 1 = {s + 1} "
                    "needed for an S-dimensional covariance; lower num_subclasses or add examples of "
                    f"class {k} (check fit_labels)."
                )


def fit_projections(
    moments: ClassMoments,
    *,
    classifier_weights: Optional[jax.Array] = None,
    num_subclasses: int,
    key: Union[jax.Array, int],
    null_space: bool = True,
    rotate: bool = True,
    directions: str = "pca",
    seed: Optional[int] = None,
    settings: Optional[Mapping[str, Any]] = None,
) -> Projections:
    """Fit the LELP directions U_c (C x D x S) from per-class moments.

    ``directions='pca'``: U_c = top-S eigenvectors of ``P Sigma_c P`` (one batched,
    jitted eigh for all classes; Sigma_c the population covariance, ddof=0), times
    a Haar-random S x S rotation when ``rotate``. ``directions='random'``: the
    ablation, Haar-random orthonormal D x S frames (within range(P) when
    ``null_space``). ``null_space=False`` uses P = I. ``key`` is a PRNG key or an
    int seed (recorded as ``seed``); the same key gives the same result.

    Validation runs before any compilation and raises ValueError for: S < 1,
    D < C + S with the null space on, classifier_weights not (C, D), NaN/inf in
    the moments, a class with fewer than S + 1 examples.
    """
    _validate(moments, classifier_weights, num_subclasses, null_space, directions)
    if isinstance(key, (int, np.integer)):
        seed = int(key) if seed is None else seed
        key = jax.random.PRNGKey(int(key))
    c, d = moments.mean.shape
    dtype = moments.mean.dtype
    weights = (jnp.zeros((c, d), dtype) if classifier_weights is None
               else jnp.asarray(classifier_weights, dtype))
    u, mu, evals, scales = _fit(
        moments.count, moments.mean, moments.m2, weights, key, num_subclasses=int(num_subclasses),
        null_space=bool(null_space), rotate=bool(rotate), random=directions == "random",
    )
    return Projections(
        directions=u, means=mu, eigenvalues=evals, scales=scales, counts=moments.count,
        num_subclasses=int(num_subclasses), null_space=bool(null_space), rotate=bool(rotate),
        seed=seed, directions_kind=directions, settings=dict(settings or {}),
    )


def save_projections(path: Union[str, os.PathLike], projections: Projections) -> None:
    """Write an ``.npz``: the five arrays (and ``betas`` when calibrated) plus a JSON ``metadata`` entry;
    atomic (tmp + os.replace)."""
    meta = {
        "num_subclasses": projections.num_subclasses,
        "null_space": projections.null_space,
        "rotate": projections.rotate,
        "seed": projections.seed,
        "directions_kind": projections.directions_kind,
        "settings": dict(projections.settings),
    }
    try:
        meta_json = json.dumps(meta)
    except TypeError as err:
        raise ValueError(f"save_projections: settings must be JSON-serialisable ({err}); store strings/"
                         "numbers/lists in Projections.settings.") from err
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    arrays = {name: np.asarray(getattr(projections, name)) for name in _ARRAY_FIELDS}
    if projections.betas is not None:
        arrays["betas"] = np.asarray(projections.betas)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_projections_", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, metadata=np.array(meta_json), **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_projections(path: Union[str, os.PathLike]) -> Projections:
    """Read a file written by ``save_projections`` (no pickle)."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        missing = [k for k in (*_ARRAY_FIELDS, "metadata") if k not in data.files]
        if missing:
            raise ValueError(f"load_projections: {path} lacks {missing}; it was not written by "
                             "save_projections.")
        meta = json.loads(str(data["metadata"]))
        arrays = {name: jnp.asarray(data[name]) for name in _ARRAY_FIELDS}
        if "betas" in data.files:  # files written before calibration existed have none
            arrays["betas"] = jnp.asarray(data["betas"])
    return Projections(**arrays, **meta)
