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

The linear algebra of steps 1-4 is :mod:`lelp_jax.core.subspaces`; this module checks the
inputs and holds the artifact (:class:`Projections`) and its file.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lelp_jax.core.atomic import atomic_open
from lelp_jax.core.statistics import ClassMoments
from lelp_jax.core.subspaces import fit_directions, null_space_projector
from lelp_jax.core.validation import require

__all__ = [
    "Projections",
    "Settings",
    "null_space_projector",
    "fit_projections",
    "save_projections",
    "load_projections",
]

_ARRAY_FIELDS = ("directions", "means", "eigenvalues", "scales", "counts")


class Settings(Mapping):
    """A fit's free provenance (beta, tau, label source, teacher identity, ...): a read-only mapping.

    It is static in the :class:`Projections` pytree, yet differs from run to run, so it must
    not split a jit cache nor block ``jax.tree.map`` over two fits: every ``Settings``
    compares equal to every other and hashes alike (against a plain mapping it compares by
    content). Inside a transformation its values are hidden, reading them raises: a cache
    hit would otherwise show the first call's settings.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Optional[Mapping[str, Any]] = None, *, hidden: bool = False):
        self._values = None if hidden else dict(values or {})

    def _read(self) -> dict:
        if self._values is None:
            raise AttributeError(
                "Projections.settings is provenance, static yet equal across runs so that it never splits a jit "
                "cache; it is not available inside jit/vmap/shard_map (nor on projections a transformation "
                "returns): read it outside, from the projections passed in.")
        return self._values

    def __getitem__(self, key):
        return self._read()[key]

    def __iter__(self):
        return iter(self._read())

    def __len__(self):
        return len(self._read())

    def __eq__(self, other):
        return True if isinstance(other, Settings) else Mapping.__eq__(self, other)

    def __hash__(self):
        return hash(Settings)

    def __repr__(self):
        return "Settings(hidden)" if self._values is None else f"Settings({self._values!r})"


@struct.dataclass(eq=False)
class Projections:
    """The LELP projection artifact: per-class directions U_c and what z_{c,s} = U_c[:, s] . (h - mu_c) needs.

    Leaves (arrays, traced under jit): ``directions (C, D, S)`` U_c with orthonormal columns;
    ``means (C, D)`` mu_c (of P h when ``null_space``); ``eigenvalues (C, D)`` of P Sigma_c P,
    all of them, descending (spectra plots); ``scales (C, S)`` the class std of each
    projection, ``sqrt(U_c[:, s]^T Sigma_c U_c[:, s])``; ``counts (C,)``; ``betas (C,)`` the
    per-class split temperatures solved for a target entropy
    (:func:`lelp_jax.core.sharpness.calibrate_betas`) or None (one ``beta`` for all classes);
    ``seed`` the fit's int seed (an int32 scalar, stacked fits an array) or None.

    Static fields (the treedef), chosen so that two runs of one kind of fit share one
    compilation: ``null_space``, ``rotate``, ``directions_kind`` ('pca' or 'random') and
    ``num_subclasses`` S (read from the directions; a given value must agree), hashable and
    the same across seeds, betas and teachers, readable inside jit; ``settings``, the
    caller's free :class:`Settings` (JSON-serialisable values keep ``save_projections``
    working), equal across runs and hidden inside transformations. Hence projections of two
    seeds or settings hit one jit cache entry and stack with
    ``jax.tree.map(lambda *xs: jnp.stack(xs), a, b)`` (``a``'s settings, both seeds).
    ``num_classes`` C and ``dim`` D are read from the shapes; ``.replace(**fields)`` copies.

    Examples:
      >>> import jax, numpy as np
      >>> import lelp_jax as lj
      >>> h = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
      >>> moments = lj.update_moments(lj.init_moments(2, 5), h, np.arange(40) % 2)
      >>> p = lj.fit_projections(moments, num_subclasses=2, null_space=False, key=0, settings={"beta": 1.0})
      >>> p.directions.shape, p.num_subclasses, p.null_space, int(p.seed), dict(p.settings)
      ((2, 5, 2), 2, False, 0, {'beta': 1.0})
      >>> [leaf.shape for leaf in jax.tree.leaves(p)]
      [(2, 5, 2), (2, 5), (2, 5), (2, 2), (2,), ()]
      >>> mean_norm = jax.jit(lambda p: jax.numpy.linalg.norm(p.means))
      >>> _ = mean_norm(p), mean_norm(p.replace(seed=1, settings={"beta": 2.0}))
      >>> mean_norm._cache_size()  # another seed and settings: the same compilation
      1
    """

    directions: jax.Array
    means: jax.Array
    eigenvalues: jax.Array
    scales: jax.Array
    counts: jax.Array
    betas: Optional[jax.Array] = None
    seed: Optional[jax.Array] = None
    null_space: bool = struct.field(pytree_node=False, default=True, kw_only=True)
    rotate: bool = struct.field(pytree_node=False, default=True, kw_only=True)
    directions_kind: str = struct.field(pytree_node=False, default="pca", kw_only=True)
    settings: Settings = struct.field(pytree_node=False, default=None, kw_only=True)
    num_subclasses: Optional[int] = struct.field(pytree_node=False, default=None, kw_only=True)

    def __post_init__(self):
        # Runs on construction, .replace and every unflatten (jax calls the constructor).
        shape = getattr(self.directions, "shape", None)  # None when a tree.map put non-arrays there
        s = self.num_subclasses
        if shape is not None and len(shape) >= 3:
            if s is not None and s != shape[-1]:
                raise ValueError(f"Projections: num_subclasses={s} disagrees with directions {tuple(shape)} "
                                 "(C, D, S); S is read from the directions.")
            s = int(shape[-1])
        traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(
            (self.directions, self.means, self.eigenvalues, self.scales, self.counts, self.betas, self.seed)))
        settings = self.settings if isinstance(self.settings, Settings) else Settings(self.settings)
        fixed = dict(num_subclasses=s, seed=_seed_array(self.seed), null_space=bool(self.null_space),
                     rotate=bool(self.rotate), directions_kind=str(self.directions_kind),
                     settings=Settings(hidden=True) if traced else settings)
        for name, value in fixed.items():
            object.__setattr__(self, name, value)

    @property
    def num_classes(self) -> int:
        return self.directions.shape[-3]

    @property
    def dim(self) -> int:
        return self.directions.shape[-2]

    def __repr__(self):
        shapes = ", ".join(f"{k}={getattr(self, k).shape}" for k in _ARRAY_FIELDS)
        return (f"Projections({shapes}, null_space={self.null_space}, rotate={self.rotate}, "
                f"directions_kind={self.directions_kind!r}, settings={self.settings!r})")


def _seed_array(seed):
    """An int seed (or a list/NumPy array of them, e.g. stacked fits) as an integer array leaf; any
    other leaf (a jax array, a tracer, None, what a tree.map put there) as it is."""
    if isinstance(seed, (int, np.integer)):
        if not -2**31 <= int(seed) < 2**31:
            raise ValueError(f"Projections: seed must be an int in [-2^31, 2^31), got {seed!r}.")
        return jnp.asarray(int(seed), jnp.int32)
    if isinstance(seed, (float, list, tuple, np.ndarray)):
        if not np.issubdtype(np.asarray(seed).dtype, np.integer):
            raise ValueError(f"Projections: seed must be an int (or an int array), got {seed!r}.")
        return jnp.asarray(seed)
    return seed


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

        P     = I - W^T (W W^T)^+ W                 (or I when null_space=False)
        V_c   = top-S eigenvectors of P Sigma_c P   (one batched, jitted eigh; Sigma_c with ddof=0)
        U_c   = V_c Q_c,  Q_c Haar-random S x S orthogonal (when rotate; equalises the variances)

    ``directions='random'`` is the ablation: Haar-random orthonormal D x S frames (within
    range(P) when ``null_space``) in place of V_c. ``null_space=False, rotate=False`` is plain
    per-class PCA. The options are static; the arrays may be traced, so the fit runs inside
    ``jit``/``vmap`` too.

    Args:
      moments: :class:`~lelp_jax.core.statistics.ClassMoments` ``(C,), (C, D), (C, D, D)``.
      classifier_weights: ``(C, D)`` teacher head W, needed when ``null_space``.
      num_subclasses: S >= 1 (D >= C + S with the null space on).
      key: a PRNG key or an int seed (recorded as ``seed``); needed only when something is
        random (``rotate`` or ``directions='random'``); the same key gives the same result.
      null_space, rotate: the fit's steps (static bools).
      directions: ``'pca'`` or ``'random'``.
      seed: recorded in the artifact when ``key`` is a PRNG key.
      settings: free provenance (beta, tau, label source, teacher identity, ...), JSON values.
    Returns:
      :class:`Projections`: ``directions (C, D, S)``, ``means (C, D)``, ``eigenvalues (C, D)``,
      ``scales (C, S)``, ``counts (C,)``.

    Validation runs before any compilation and raises ValueError for: S < 1, D < C + S with
    the null space on, classifier_weights not (C, D), a random fit without ``key``; for
    concrete inputs (and under :func:`lelp_jax.checked`): NaN/inf in the moments or weights,
    a class with fewer than S + 1 examples.

    Examples:
      >>> import numpy as np, lelp_jax as lj
      >>> h = np.random.default_rng(0).normal(size=(60, 6)).astype(np.float32)
      >>> w = np.random.default_rng(1).normal(size=(2, 6)).astype(np.float32)
      >>> moments = lj.update_moments(lj.init_moments(2, 6), h, np.arange(60) % 2)
      >>> p = lj.fit_projections(moments, classifier_weights=w, num_subclasses=3, key=0)
      >>> p.directions.shape, p.means.shape, p.scales.shape, int(p.seed)
      ((2, 6, 3), (2, 6), (2, 3), 0)
      >>> u = np.asarray(p.directions[0])
      >>> np.allclose(u.T @ u, np.eye(3), atol=1e-5), np.allclose(w @ u, 0, atol=1e-5)  # orthonormal, in null(W)
      (True, True)
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
    u, mu, evals, scales = fit_directions(
        moments.count, moments.mean, moments.m2, weights, key, num_subclasses=int(num_subclasses),
        null_space=bool(null_space), rotate=bool(rotate), random=random,
    )
    return Projections(
        directions=u, means=mu, eigenvalues=evals, scales=scales, counts=moments.count, seed=seed,
        null_space=bool(null_space), rotate=bool(rotate), directions_kind=directions, settings=settings,
    )


def save_projections(path: Union[str, os.PathLike], projections: Projections) -> None:
    """Write an ``.npz``: the arrays (``betas`` when calibrated) plus a JSON ``metadata`` entry, atomically.

    Atomic through :func:`lelp_jax.core.atomic.atomic_open` (tmp file, fsync, ``os.replace``):
    a crash never leaves a half-written artifact next to the checkpoints. No pickle: the
    settings must be JSON-serialisable (ValueError otherwise).

    Args:
      path: the file to write (its folder is created).
      projections: the :class:`Projections` to store.

    Examples:
      >>> import os, tempfile, numpy as np, lelp_jax as lj
      >>> h = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
      >>> m = lj.update_moments(lj.init_moments(2, 4), h, np.arange(20) % 2)
      >>> p = lj.fit_projections(m, num_subclasses=2, null_space=False, key=3, settings={"teacher": "mlp"})
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     lj.save_projections(os.path.join(tmp, "projections.npz"), p)
      ...     sorted(np.load(os.path.join(tmp, "projections.npz")).files)
      ['counts', 'directions', 'eigenvalues', 'means', 'metadata', 'scales']
    """
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
    """Read a file written by :func:`save_projections` (no pickle): the same arrays and static fields.

    Args:
      path: an ``.npz`` written by :func:`save_projections`.
    Returns:
      :class:`Projections` equal to the saved one, of the same pytree structure.

    Examples:
      >>> import os, tempfile, numpy as np, lelp_jax as lj
      >>> h = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
      >>> m = lj.update_moments(lj.init_moments(2, 4), h, np.arange(20) % 2)
      >>> p = lj.fit_projections(m, num_subclasses=2, null_space=False, key=3, settings={"teacher": "mlp"})
      >>> with tempfile.TemporaryDirectory() as tmp:
      ...     lj.save_projections(os.path.join(tmp, "p.npz"), p)
      ...     back = lj.load_projections(os.path.join(tmp, "p.npz"))
      >>> bool((back.directions == p.directions).all()), int(back.seed), back.null_space, dict(back.settings)
      (True, 3, False, {'teacher': 'mlp'})
    """
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
