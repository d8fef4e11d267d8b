"""The registry of fit kinds: what a method's train step gets as ``aux``, built from the teacher.

A method names the kind of artifact it needs in ``Method.fit``; :data:`FITS` maps that kind
to a function ``fn(method, inputs) -> aux`` (:func:`register_fit`), so a method with a new
kind of fit is one registration and no stage changes. ``inputs`` is a :class:`FitInputs`:
the teacher's train-split outputs, labels, head and moments, each computed on first use.
The pipeline builds it from a :class:`~lelp_jax.pipeline.context.Run` (:func:`workdir_inputs`);
tests and your own code can build it from arrays.

Built-in kinds: ``projections`` (LELP and its ablations; the fit stage stores them),
``kmeans``, ``agglomerative``, ``subspace_kmeans``, ``oracle``, ``subclass_teacher``.
With ``lelp.target_entropy`` set, a fit of a method with ``scores`` gets per-class betas
from :func:`calibrate_fit`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lelp_jax import train
from lelp_jax.core.clustering import fit_agglomerative_centroids, fit_class_kmeans, oracle_slots
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.methods import SUBCLASS_TEACHER, Method, subclass_teacher_model
from lelp_jax.pipeline.context import Run, train_teacher
from lelp_jax.pipeline.workdir import Workdir, sync, teacher_identity
from lelp_jax.pipeline.precomputed import check_methods
from lelp_jax.core.projections import fit_projections, load_projections
from lelp_jax.core.sharpness import calibrate_betas
from lelp_jax.core.sharpness import split_diagnostics as diagnose
from lelp_jax.core.statistics import ClassMoments, init_moments, update_moments
from lelp_jax.core.subspace_kmeans import fit_subspace_kmeans

__all__ = ["FitInputs", "FITS", "register_fit", "build_fit", "calibrate_fit", "fit_labels", "workdir_inputs",
           "load_statistics", "method_aux", "calibrate", "split_diagnostics"]

_ROWS = 4096  # embeddings per chunk on the host (bounds the (B, C, D) intermediates)


@dataclasses.dataclass(frozen=True)
class FitInputs:
    """What a fit may read about the teacher on the train split; each callable is called only when needed.

    ``outputs() -> (embeddings (N, D), logits (N, C))``; ``labels() -> (labels (N,), fine labels or
    None)``; ``head_weights() -> W (C, D)``, the teacher head; ``moments()``: per-class
    :class:`~lelp_jax.core.statistics.ClassMoments` of the embeddings under :func:`fit_labels`;
    ``trained_teacher(name, model, method) -> variables``: a teacher ``model`` trained once with
    ``method``'s loss, kept under ``name``. ``settings`` are recorded with a projections artifact.
    """

    config: ml_collections.ConfigDict
    num_classes: int
    num_fine_classes: int | None
    outputs: Callable[[], tuple[Any, Any]]
    labels: Callable[[], tuple[Any, Any]]
    head_weights: Callable[[], Any]
    moments: Callable[[], ClassMoments]
    trained_teacher: Callable[[str, Any, Any], Any]
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# Method.fit kind -> fn(method, inputs) -> aux.
FITS: dict[str, Callable[[Any, FitInputs], Any]] = {}


def register_fit(kind: str, fn: Callable[[Any, FitInputs], Any]) -> Callable[[Any, FitInputs], Any]:
    """Make ``Method(fit=kind)`` get ``fn(method, inputs)`` as its ``aux`` (a kind can be registered once)."""
    if kind in FITS:
        raise ValueError(f"fit kind {kind!r} is already registered; pick another name.")
    FITS[kind] = fn
    return fn


def build_fit(method, inputs: FitInputs) -> Any:
    """``method``'s artifact: the registered fit of its kind (None for a method without one)."""
    if method.fit is None:
        return None
    if method.fit not in FITS:
        raise ValueError(f"method {method.name!r} asks for fit {method.fit!r}, which the pipeline does not build; "
                         f"register one with lelp_jax.pipeline.register_fit({method.fit!r}, fn) "
                         f"(known: {', '.join(FITS)}).")
    return FITS[method.fit](method, inputs)


def fit_labels(inputs: FitInputs):
    """The labels every fit uses: ground truth, or the teacher's argmax (``lelp.fit_labels``); an unlabelled
    transfer row (label -1) takes the teacher's argmax either way."""
    labels = np.asarray(inputs.labels()[0])
    if inputs.config.lelp.fit_labels == "teacher" or (labels < 0).any():
        argmax = np.argmax(np.asarray(inputs.outputs()[1]), axis=-1).astype(np.int32)
        return argmax if inputs.config.lelp.fit_labels == "teacher" else np.where(labels >= 0, labels, argmax)
    return labels


def _row_chunks(n: int) -> Iterator[slice]:
    """Consecutive slices of at most ``_ROWS`` rows covering ``range(n)``: how every fit walks the train split."""
    return (slice(i, i + _ROWS) for i in range(0, n, _ROWS))


def calibrate_fit(method, aux, inputs: FitInputs):
    """``aux`` with per-class ``betas`` solved for ``lelp.target_entropy`` on the train split (unchanged
    when it is None or the method has no scores): :func:`lelp_jax.core.sharpness.calibrate_betas` on the
    method's scores of every train example, each calibrating its fit-label class."""
    config = inputs.config
    if config.lelp.target_entropy is None or method.scores is None:
        return aux
    emb, _ = inputs.outputs()
    options = method.parse_options(config)
    scores = jax.jit(lambda a, h: method.scores(a, h, options))
    z = np.concatenate([np.asarray(scores(aux, jnp.asarray(emb[rows]))) for rows in _row_chunks(len(emb))])
    betas = calibrate_betas(z, fit_labels(inputs), target_entropy=float(config.lelp.target_entropy))
    return aux.replace(betas=jnp.asarray(betas, jnp.float32))


# ----------------------------------------------------------------------------- the built-in kinds


def _projections(method, inputs: FitInputs):
    """:func:`lelp_jax.core.projections.fit_projections` of the moments with the method's ``fit_options`` (the
    head's W only when they keep the null space), calibrated."""
    opts = dict(method.fit_options(inputs.config))
    weights = inputs.head_weights() if opts.get("null_space", True) else None
    proj = fit_projections(inputs.moments(), classifier_weights=weights,
                           settings={**inputs.settings, "method": method.name}, **opts)
    return calibrate_fit(method, proj, inputs)


def _kmeans(method, inputs: FitInputs):
    """Per-class k-means of the teacher's train embeddings (S = lelp.num_subclasses, seeded by lelp.seed)."""
    config = inputs.config
    fit = fit_class_kmeans(jax.random.PRNGKey(int(config.lelp.seed)), inputs.outputs()[0], fit_labels(inputs),
                           num_classes=inputs.num_classes, num_subclasses=int(config.lelp.num_subclasses),
                           num_iters=int(config.kmeans.num_iters))
    return calibrate_fit(method, fit, inputs)


def _agglomerative(method, inputs: FitInputs):
    """Per-class Ward clusters' means on at most 2,000 train embeddings per class (scikit-learn, host)."""
    config = inputs.config
    fit = fit_agglomerative_centroids(inputs.outputs()[0], fit_labels(inputs), num_classes=inputs.num_classes,
                                      num_subclasses=int(config.lelp.num_subclasses), seed=int(config.lelp.seed))
    return calibrate_fit(method, fit, inputs)


def _oracle(method, inputs: FitInputs):
    """The fine-label slot table of the train split (one slot per fine label: S = the most fine labels in a
    class, whatever lelp.num_subclasses is)."""
    labels, fine = inputs.labels()
    if fine is None or inputs.num_fine_classes is None:
        raise ConfigError(f"method {method.name!r} needs fine labels, and dataset {inputs.config.data.name!r} has "
                          "none; drop it from --methods.")
    known = np.asarray(labels) >= 0  # the fine -> class table from labelled rows; transfer rows use it
    return oracle_slots(np.asarray(labels)[known], np.asarray(fine)[known], num_classes=inputs.num_classes,
                        num_fine=inputs.num_fine_classes)


def _subspace_kmeans(method, inputs: FitInputs):
    """The ``lelp_kmeans`` fit (:mod:`lelp_jax.core.subspace_kmeans`): class moments (fit labels, streamed in
    chunks), the top-``lelp_kmeans.subspace_dim`` null-space principal directions (``lelp.null_space``; no
    rotation), then k-means with ``lelp.num_subclasses`` centroids (``kmeans.num_iters``, seed ``lelp.seed``)
    in each class's subspace, calibrated."""
    config = inputs.config
    emb, _ = inputs.outputs()
    labels = fit_labels(inputs)
    moments = init_moments(inputs.num_classes, emb.shape[1])
    for rows in _row_chunks(len(emb)):
        moments = update_moments(moments, jnp.asarray(emb[rows], jnp.float32), jnp.asarray(labels[rows]))
    null_space = bool(config.lelp.null_space)
    k, c, d = int(config.lelp_kmeans.subspace_dim), inputs.num_classes, emb.shape[1]
    if k > d - (c if null_space else 0):
        raise ConfigError(f"lelp_kmeans.subspace_dim={k} exceeds the teacher embedding's "
                          f"{'null space (D - C = ' + str(d - c) + ')' if null_space else 'dimension D = ' + str(d)}; "
                          f"lower it to <= {d - c if null_space else d}.")
    subspace = fit_projections(moments, classifier_weights=inputs.head_weights() if null_space else None,
                               num_subclasses=k, key=int(config.lelp.seed), null_space=null_space, rotate=False,
                               directions="pca")
    fit = fit_subspace_kmeans(subspace, emb, labels, key=int(config.lelp.seed),
                              num_subclasses=int(config.lelp.num_subclasses), num_iters=int(config.kmeans.num_iters))
    return calibrate_fit(method, fit, inputs)


def _subclass_teacher(method, inputs: FitInputs):
    """The Subclass-Distillation teacher's best-validation variables: ``teacher.model`` with a C*S head
    (S = ``subclass.num_subclasses``) trained like the teacher (from ``teacher.pretrained`` weights when set,
    else from scratch as in Müller et al. 2020) with the loss of ``methods.SUBCLASS_TEACHER`` (class CE on
    logsumexp-aggregated subclass logits + the auxiliary loss)."""
    if inputs.config.teacher.model == "precomputed":
        check_methods([method.name])
    model = subclass_teacher_model(inputs.config, inputs.num_classes)
    return inputs.trained_teacher("subclass_teacher", model, SUBCLASS_TEACHER)


for _kind, _fn in (("projections", _projections), ("kmeans", _kmeans), ("agglomerative", _agglomerative),
                   ("oracle", _oracle), ("subspace_kmeans", _subspace_kmeans), ("subclass_teacher", _subclass_teacher)):
    register_fit(_kind, _fn)


# ----------------------------------------------------------------------------- from a run


def load_statistics(workdir: str | os.PathLike) -> ClassMoments:
    """The ``ClassMoments`` stored by ``stage_statistics``."""
    with np.load(Workdir(workdir).statistics, allow_pickle=False) as f:
        return ClassMoments(count=jnp.asarray(f["count"]), mean=jnp.asarray(f["mean"]), m2=jnp.asarray(f["m2"]))


def workdir_inputs(run: Run) -> FitInputs:
    """:class:`FitInputs` of a run: the teacher's train outputs, the train split's labels, the teacher head
    (each kept on ``run``), the workdir's ``statistics.npz``; a trained teacher lives in ``WORKDIR/NAME/``
    (resumable: its own Orbax checkpoints, and its ``result.json`` marks it done)."""
    config, wd = run.config, run.workdir

    def trained_teacher(name: str, model, method):
        folder = wd.root / name
        if not (folder / "result.json").exists():
            train_teacher(run, model=model, method=method, folder=folder, desc=name.replace("_", " "))
            sync(name)
        return train.load_variables(str(folder), which="best", mesh=run.mesh)

    info = run.info
    return FitInputs(
        config=config, num_classes=info.num_classes, num_fine_classes=info.num_fine_classes,
        outputs=lambda: run.train_outputs, labels=lambda: run.train_labels, head_weights=lambda: run.head_weights,
        moments=functools.cache(lambda: load_statistics(wd.root)), trained_teacher=trained_teacher,
        settings={"standardize": config.lelp.standardize, "target_entropy": config.lelp.target_entropy,
                  "fit_labels": config.lelp.fit_labels, "teacher": teacher_identity(config, wd.root),
                  "dataset": config.data.name})


def method_aux(method: Method, run: Run) -> Any:
    """What the method's train step gets as ``aux``: its fitted artifact (or None).

    Projections are the fit stage's artifact, read from the workdir; every other kind is built here
    (:func:`build_fit`).
    """
    if method.fit is None:
        return None
    if method.needs_projections:
        return load_projections(run.workdir.projections(method.name))
    return build_fit(method, workdir_inputs(run))


def calibrate(method: Method, aux: Any, run: Run) -> Any:
    """:func:`calibrate_fit` on the run's teacher."""
    return calibrate_fit(method, aux, workdir_inputs(run))


def split_diagnostics(method: Method, aux: Any, run: Run) -> dict:
    """What a splitting method teaches, on the train split (once per method and fit; {} for methods
    that do not split): :func:`lelp_jax.core.sharpness.split_diagnostics` of the method's split of every
    train example's true class (a transfer row's: the teacher's argmax) — ``split_entropy``, ``split_top_share``, ``split_nmi`` (None without
    fine labels) — and ``split_betas``, the per-class temperatures calibrated to ``lelp.target_entropy``
    (None when the split used one configured beta)."""
    if method.split is None:
        return {}
    config = run.config
    emb, logits = run.train_outputs
    labels, fine = run.train_labels
    labels = np.where(labels >= 0, labels, np.argmax(logits, axis=-1)).astype(np.int32)  # transfer rows: argmax
    options = method.parse_options(config)
    split = jax.jit(lambda a, h, b: method.split(a, h, b, options))
    parts = []
    for rows in _row_chunks(len(emb)):
        batch = {"label": jnp.asarray(labels[rows])}
        if fine is not None:
            batch["fine_label"] = jnp.asarray(fine[rows])
        parts.append(np.asarray(split(aux, jnp.asarray(emb[rows]), batch)))
    out = diagnose(np.concatenate(parts), labels, fine)
    betas = getattr(aux, "betas", None)
    out["split_betas"] = None if betas is None else np.asarray(betas, np.float64).tolist()
    return out
