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
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from lelp_jax.core.atomic import atomic_open
from lelp_jax.core.statistics import ClassMoments, covariance
from lelp_jax.core.validation import require

__all__ = [
    "Projections",
    "null_space_projector",
    "fit_projections",
    "save_projections",
    "load_projections",
]

_HIGHEST = jax.lax.Precision.HIGHEST
_ARRAY_FIELDS = ("directions", "means", "eigenvalues", "scales", "counts")
_LEAVES = (*_ARRAY_FIELDS, "betas", "seed")
_PROVENANCE = ("null_space", "rotate", "directions_kind", "settings")


class _Provenance:
    """How a ``Projections`` was fitted; the pytree's node data, equal to every other provenance.

    It describes the arrays but never changes a computation, so it must not split a jit
    cache or block ``jax.tree.map`` over projections of different fits: all provenances
    compare equal (and hash alike). ``values`` is None inside a transformation, where a
    cache hit could otherwise show an earlier call's provenance.
    """

    __slots__ = ("values",)

    def __init__(self, values: Optional[dict]):
        self.values = values

    def __eq__(self, other):
        return isinstance(other, _Provenance)

    def __hash__(self):
        return hash(_Provenance)

    def __repr__(self):
        return "_Provenance(hidden)" if self.values is None else f"_Provenance({self.values!r})"


class Projections:
    """The LELP projection artifact, a pytree whose leaves are its arrays.

    Arrays: ``directions (C, D, S)`` U_c with orthonormal columns; ``means (C, D)``
    mu_c (of P h when ``null_space``); ``eigenvalues (C, D)`` of P Sigma_c P, all of
    them, sorted descending (for spectra plots); ``scales (C, S)`` the class std of
    each projection, ``sqrt(U_c[:, s]^T Sigma_c U_c[:, s])``; ``counts (C,)``; ``betas (C,)``
    the per-class split temperatures solved for a target entropy
    (:func:`lelp_jax.core.sharpness.calibrate_betas`), or None (one ``beta`` for all classes);
    ``seed`` the int seed of the fit (an int32 scalar array), or None.

    Derived from shapes: ``num_classes`` C, ``dim`` D, ``num_subclasses`` S.

    Provenance: ``null_space``, ``rotate``, ``directions_kind`` ('pca' or 'random') and a
    free ``settings`` dict (beta, tau, label source, teacher identity, ...) filled by the
    caller (JSON-serialisable values keep ``save_projections`` working). It rides beside
    the pytree: projections of different seeds or settings share one jit compilation and
    stack with ``jax.tree.map(lambda *xs: jnp.stack(xs), a, b)`` (keeping ``a``'s provenance and
    both seeds); inside a transformation it is not available (reading it raises).
    """

    def __init__(self, directions, means, eigenvalues, scales, counts, betas=None, seed=None, *,
                 null_space: bool = True, rotate: bool = True, directions_kind: str = "pca",
                 settings: Optional[Mapping[str, Any]] = None, num_subclasses: Optional[int] = None):
        if num_subclasses is not None and np.shape(directions)[-1] != num_subclasses:
            raise ValueError(f"Projections: num_subclasses={num_subclasses} disagrees with directions "
                             f"{np.shape(directions)} (C, D, S); S is read from the directions.")
        if seed is not None and not isinstance(seed, jax.core.Tracer):
            seed = _seed_array(seed)
        arrays = dict(directions=directions, means=means, eigenvalues=eigenvalues, scales=scales,
                      counts=counts, betas=betas, seed=seed)
        for name, value in arrays.items():
            object.__setattr__(self, f"_{name}", value)
        object.__setattr__(self, "_provenance", _Provenance(_provenance_values(
            null_space=null_space, rotate=rotate, directions_kind=directions_kind, settings=settings)))

    def __setattr__(self, name, value):
        raise AttributeError("Projections is immutable; use .replace(name=value).")

    @classmethod
    def _unflatten(cls, provenance: _Provenance, leaves) -> "Projections":
        self = object.__new__(cls)
        for name, value in zip(_LEAVES, leaves):
            object.__setattr__(self, f"_{name}", value)
        traced = any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)
        object.__setattr__(self, "_provenance", _Provenance(None) if traced else provenance)
        return self

    def _info(self, name: str):
        values = self._provenance.values
        if values is None:
            raise AttributeError(
                f"Projections.{name} is provenance, kept beside the pytree so that it never splits a jit "
                "cache; it is not available inside jit/vmap/shard_map (nor on projections a transformation "
                "returns): read it outside, from the projections passed in.")
        return values[name]

    directions = property(lambda self: self._directions)
    means = property(lambda self: self._means)
    eigenvalues = property(lambda self: self._eigenvalues)
    scales = property(lambda self: self._scales)
    counts = property(lambda self: self._counts)
    betas = property(lambda self: self._betas)
    seed = property(lambda self: self._seed)
    null_space = property(lambda self: self._info("null_space"))
    rotate = property(lambda self: self._info("rotate"))
    directions_kind = property(lambda self: self._info("directions_kind"))
    settings = property(lambda self: self._info("settings"))

    @property
    def num_classes(self) -> int:
        return self.directions.shape[-3]

    @property
    def dim(self) -> int:
        return self.directions.shape[-2]

    @property
    def num_subclasses(self) -> int:
        return self.directions.shape[-1]

    def replace(self, **changes) -> "Projections":
        """A copy with the named arrays or provenance fields replaced (arrays also inside jit)."""
        unknown = set(changes) - set(_LEAVES) - set(_PROVENANCE)
        if unknown:
            raise TypeError(f"Projections.replace: unknown fields {sorted(unknown)}; known: "
                            f"{sorted((*_LEAVES, *_PROVENANCE))}.")
        if changes.get("seed") is not None and not isinstance(changes["seed"], jax.core.Tracer):
            changes["seed"] = _seed_array(changes["seed"])
        leaves = [changes.pop(k) if k in changes else getattr(self, f"_{k}") for k in _LEAVES]
        provenance = self._provenance
        if changes:
            values = {name: self._info(name) for name in _PROVENANCE}
            provenance = _Provenance(_provenance_values(**{**values, **changes}))
        return Projections._unflatten(provenance, leaves)

    def __repr__(self):
        shapes = ", ".join(f"{k}={getattr(self, k).shape}" for k in _ARRAY_FIELDS)
        return f"Projections({shapes}, {self._provenance!r})"


jax.tree_util.register_pytree_with_keys(
    Projections,
    lambda p: ([(jax.tree_util.GetAttrKey(k), getattr(p, f"_{k}")) for k in _LEAVES], p._provenance),
    Projections._unflatten,
    lambda p: ([getattr(p, f"_{k}") for k in _LEAVES], p._provenance),
)


def _provenance_values(*, null_space, rotate, directions_kind, settings) -> dict:
    return dict(null_space=bool(null_space), rotate=bool(rotate), directions_kind=str(directions_kind),
                settings=dict(settings or {}))


def _seed_array(seed) -> jax.Array:
    """An int seed (or an array of them, e.g. stacked fits) as an integer array leaf."""
    if isinstance(seed, (int, np.integer)):
        if not -2**31 <= int(seed) < 2**31:
            raise ValueError(f"Projections: seed must be an int in [-2^31, 2^31), got {seed!r}.")
        return jnp.asarray(int(seed), jnp.int32)
    seed = jnp.asarray(seed)
    if not jnp.issubdtype(seed.dtype, jnp.integer):
        raise ValueError(f"Projections: seed must be an int (or an int array), got {seed!r}.")
    return seed


@jax.jit
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
    fn = "fit_projections"
    if not isinstance(num_subclasses, (int, np.integer)) or num_subclasses < 1:
        raise ValueError(f"{fn}: num_subclasses must be an int >= 1, got {num_subclasses!r}.")
    if directions not in ("pca", "random"):
        raise ValueError(f"{fn}: directions must be 'pca' or 'random', got {directions!r}.")
    c, d = moments.mean.shape
    s = int(num_subclasses)
    if null_space:
        if classifier_weights is None:
            raise ValueError(f"{fn}: null_space=True needs classifier_weights (C, D); pass the "
                             "teacher head's W = params['head']['kernel'].T or set null_space=False.")
        if tuple(np.shape(classifier_weights)) != (c, d):
            raise ValueError(
                f"{fn}: classifier_weights must be (C, D) = ({c}, {d}) to match the moments, "
                f"got {tuple(np.shape(classifier_weights))}; pass W = kernel.T (classes first)."
            )
        if d < c + s:
            raise ValueError(
                f"{fn}: the null space of W has at most D - C = {d} - {c} = {d - c} dimensions, "
                f"fewer than num_subclasses={s}; need D >= C + S: lower num_subclasses to <= {d - c} "
                "or set null_space=False."
            )
    elif s > d:
        raise ValueError(f"{fn}: num_subclasses={s} exceeds the embedding dim D={d}; lower it.")
    arrays = {"count": moments.count, "mean": moments.mean, "m2": moments.m2}
    if classifier_weights is not None:
        arrays["classifier_weights"] = classifier_weights
    for name, arr in arrays.items():
        require(jnp.isfinite(arr), f"{fn}: {name} contains NaN or inf; check the teacher embeddings (and the mask "
                "of padded rows) that built the moments.")
    k = jnp.argmin(moments.count)
    require(moments.count >= s + 1, f"{fn}: class {{}} has {{:g}} examples, fewer than num_subclasses + 1 = {s + 1} "
            "needed for an S-dimensional covariance; lower num_subclasses or add examples of class {} (check "
            "fit_labels).", k, moments.count[k], k)


def fit_projections(
    moments: ClassMoments,
    *,
    classifier_weights: Optional[jax.Array] = None,
    num_subclasses: int,
    key: Union[jax.Array, int, None] = None,
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
    int seed (recorded as ``seed``); the same key gives the same result. It is needed
    only when something is random (``rotate`` or ``directions='random'``).

    The options are static (a Python int, bools, a string); the arrays may be traced,
    so the fit runs inside ``jit``/``vmap`` too. Validation runs before any
    compilation and raises ValueError for: S < 1, D < C + S with the null space on,
    classifier_weights not (C, D), a random fit without ``key``; for concrete inputs
    (and under :func:`lelp_jax.checked`): NaN/inf in the moments or weights, a class
    with fewer than S + 1 examples.
    """
    _validate(moments, classifier_weights, num_subclasses, null_space, directions)
    random = directions == "random"
    if key is None:
        if rotate or random:
            raise ValueError("fit_projections: rotate=True or directions='random' draws random numbers; pass "
                             "key= (a PRNG key or an int seed), or rotate=False for plain PCA directions.")
        key = 0  # unused: nothing is random
    elif isinstance(key, (int, np.integer)):
        seed = int(key) if seed is None else seed
    if isinstance(key, (int, np.integer)):
        key = jax.random.PRNGKey(int(key))
    c, d = moments.mean.shape
    dtype = moments.mean.dtype
    weights = (jnp.zeros((c, d), dtype) if classifier_weights is None
               else jnp.asarray(classifier_weights, dtype))
    u, mu, evals, scales = _fit(
        moments.count, moments.mean, moments.m2, weights, key, num_subclasses=int(num_subclasses),
        null_space=bool(null_space), rotate=bool(rotate), random=random,
    )
    return Projections(
        directions=u, means=mu, eigenvalues=evals, scales=scales, counts=moments.count, seed=seed,
        null_space=bool(null_space), rotate=bool(rotate), directions_kind=directions, settings=settings,
    )


def save_projections(path: Union[str, os.PathLike], projections: Projections) -> None:
    """Write an ``.npz``: the five arrays (and ``betas`` when calibrated) plus a JSON ``metadata`` entry;
    atomic (:func:`lelp_jax.core.atomic.atomic_open`: tmp, fsync, os.replace)."""
    seed = projections.seed
    meta = {
        "num_subclasses": projections.num_subclasses,
        "null_space": projections.null_space,
        "rotate": projections.rotate,
        "seed": None if seed is None else np.asarray(seed).tolist(),
        "directions_kind": projections.directions_kind,
        "settings": dict(projections.settings),
    }
    try:
        meta_json = json.dumps(meta)
    except TypeError as err:
        raise ValueError(f"save_projections: settings must be JSON-serialisable ({err}); store strings/"
                         "numbers/lists in Projections.settings.") from err
    arrays = {name: np.asarray(getattr(projections, name)) for name in _ARRAY_FIELDS}
    if projections.betas is not None:
        arrays["betas"] = np.asarray(projections.betas)
    with atomic_open(path, "wb") as f:
        np.savez(f, metadata=np.array(meta_json), **arrays)


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
