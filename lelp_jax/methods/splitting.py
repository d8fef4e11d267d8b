"""Methods that split each class into S pseudo-subclasses and distil t_{c,s} = p_c * split_{c,s}
into a C*S-head student: ``lelp`` and its ablations ``random``, ``pca``; ``kmeans``,
``agglomerative``, ``oracle`` (true fine labels) and ``lelp_kmeans``."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Optional, TypeVar

import jax
import jax.numpy as jnp
import ml_collections

from lelp_jax.core import clustering, losses, subspace_kmeans, targets
from lelp_jax.methods.registry import (Batch, LossInputs, Method, PyTree, batch_mask, mix_hard_labels,
                                       subclass_class_log_probs)

__all__ = ["SPLITTING", "SplitOptions", "ProjectionOptions", "KMeansOptions", "split_options", "split_beta",
           "lelp_head"]

SPLITTING: list[Method] = []  # in registration order (lelp_jax.methods registers them)


@dataclasses.dataclass(frozen=True)
class SplitOptions:
    """What every class-splitting method reads, from ``cfg.lelp`` (and ``train.label_smoothing``):
    S = ``num_subclasses``, the teacher's ``tau``, the split's ``beta`` (k-means: ``kmeans.temperature``,
    None = ``lelp.beta``), ``calibrated`` (``lelp.target_entropy`` is set: beta_c come from the
    artifact), ``standardize``, the student's ``student_tau``, the hard-label weight ``alpha``."""

    num_subclasses: int
    tau: float
    beta: float
    calibrated: bool
    standardize: bool
    student_tau: float
    alpha: float
    label_smoothing: float


@dataclasses.dataclass(frozen=True)
class ProjectionOptions(SplitOptions):
    """A LELP-type method's split and its projection fit (``lelp.null_space``, ``lelp.rotate``, ``lelp.seed``)."""

    null_space: bool
    rotate: bool
    directions: str
    seed: int


@dataclasses.dataclass(frozen=True)
class KMeansOptions(SplitOptions):
    """The k-means split and its score scale ``kmeans.scale``."""

    scale: str


def split_options(config: ml_collections.ConfigDict, beta: Optional[float] = None) -> SplitOptions:
    """:class:`SplitOptions` of ``config.lelp`` (``beta``: the method's own, None = ``lelp.beta``)."""
    return SplitOptions(**_split_fields(config, beta))


def _split_fields(config: ml_collections.ConfigDict, beta: Optional[float] = None) -> dict:
    lelp = config.lelp
    return dict(num_subclasses=int(lelp.num_subclasses), tau=float(lelp.tau),
                beta=float(lelp.beta if beta is None else beta), calibrated=lelp.target_entropy is not None,
                standardize=bool(lelp.standardize), student_tau=float(lelp.student_tau), alpha=float(lelp.alpha),
                label_smoothing=float(config.train.label_smoothing))


def lelp_head(num_classes: int, options: SplitOptions) -> int:
    """A C*S head, S = ``lelp.num_subclasses``."""
    return num_classes * options.num_subclasses


def split_beta(aux: PyTree, options: SplitOptions) -> jax.Array | float:
    """The split temperature: the artifact's calibrated per-class ``aux.betas (C,)`` when it has
    them, else ``options.beta``. With ``lelp.target_entropy`` set the betas must be there (the pipeline
    calibrates them at fit time); a missing calibration is an error, not a silent fallback."""
    betas = getattr(aux, "betas", None)
    if betas is not None:
        return betas
    if options.calibrated:
        raise ValueError("lelp.target_entropy is set but the fitted artifact has no calibrated betas; calibrate it "
                         "(lelp_jax.core.sharpness.calibrate_betas on the method's scores, as the pipeline does) or "
                         "unset lelp.target_entropy.")
    return options.beta


SO = TypeVar("SO", bound=SplitOptions)


def _score_split(scores: Callable[[PyTree, jax.Array, SO], jax.Array]) -> Callable[[PyTree, jax.Array, Batch, SO],
                                                                                jax.Array]:
    """``split = softmax_s(scores / beta_c)`` for a method with ``scores``."""

    def split(aux: PyTree, teacher_embedding: jax.Array, batch: Batch, options: SO) -> jax.Array:
        z = scores(aux, teacher_embedding, options)
        beta = jnp.asarray(split_beta(aux, options), z.dtype)
        return jax.nn.softmax(z / (beta[None, :, None] if beta.ndim == 1 else beta), axis=-1)

    return split


def _pseudo_subclass_loss(inputs: LossInputs, t: jax.Array, options: SplitOptions, num_classes: int) -> jax.Array:
    """The loss of every C*S method given its targets t (B, C*S):

        (1 - alpha) * ( -sum_{c,s} t_{c,s} log softmax(r / tau_s)_{c,s} ) + alpha * hard(y, log q_c)

    (:func:`lelp_jax.core.losses.lelp_loss` on r / tau_s, :func:`hard_label_loss` on the class
    log-probabilities of r), ``tau_s = lelp.student_tau`` (1, the paper's: no student
    temperature), ``alpha = lelp.alpha``. Like KD's ``student_tau`` the temperature is the soft
    term's only: the hard term and the prediction use r. With S = 1 this is KD's loss with
    ``kd.student_tau = lelp.student_tau`` and ``kd.tau_squared_scaling = False``.
    """
    r = inputs.student_logits
    soft = losses.lelp_loss(r / options.student_tau, t, mask=batch_mask(inputs.batch))
    return mix_hard_labels(soft, targets.class_log_probs(r, num_classes=num_classes), inputs.batch,
                           alpha=options.alpha, label_smoothing=options.label_smoothing)


# ----------------------------------------------------------------------------- lelp, random, pca


def _projection_scores(aux: PyTree, teacher_embedding: jax.Array, options: SplitOptions) -> jax.Array:
    """z_{c,s} = U_c[:, s].(h - mu_c), over its class std when ``lelp.standardize``
    (:func:`lelp_jax.core.targets.projection_scores`)."""
    return targets.projection_scores(aux, teacher_embedding, standardize=options.standardize)


def _lelp_loss(inputs: LossInputs, options: SplitOptions) -> jax.Array:
    """LELP: targets t_{c,s} = softmax(l/tau)_c softmax_s(z_{c,.}/beta_c)_s from the projections in
    ``aux`` (:func:`lelp_jax.core.targets.subclass_targets`; z standardised when ``lelp.standardize``,
    beta_c = ``aux.betas`` when calibrated to ``lelp.target_entropy``, else ``lelp.beta``), loss
    as :func:`_pseudo_subclass_loss`."""
    if inputs.aux is None:
        raise ValueError("LELP-type methods need the fitted Projections as the train step's aux.")
    t = targets.subclass_targets(inputs.aux, inputs.teacher_embedding, inputs.teacher_logits,
                                 beta=split_beta(inputs.aux, options), tau=options.tau,
                                 standardize=options.standardize)
    return _pseudo_subclass_loss(inputs, t, options, inputs.teacher_logits.shape[-1])


def _projection_options(*, directions: str, null_space: Optional[bool] = None, rotate: Optional[bool] = None
                        ) -> Callable[[ml_collections.ConfigDict], ProjectionOptions]:
    """The options of a LELP-type method (``null_space`` / ``rotate`` None: as ``cfg.lelp`` says)."""

    def parse(config: ml_collections.ConfigDict) -> ProjectionOptions:
        lelp = config.lelp
        return ProjectionOptions(**_split_fields(config), directions=directions, seed=int(lelp.seed),
                                 null_space=bool(lelp.null_space) if null_space is None else null_space,
                                 rotate=bool(lelp.rotate) if rotate is None else rotate)

    return parse


def _projection_fit_kwargs(options: ProjectionOptions) -> dict:
    """Keyword arguments of :func:`lelp_jax.core.projections.fit_projections` (besides moments and W)."""
    return {"num_subclasses": options.num_subclasses, "null_space": options.null_space, "rotate": options.rotate,
            "directions": options.directions, "key": options.seed}


for _name, _parse, _desc in (
    ("lelp", _projection_options(directions="pca"), "LELP: null-space PCA directions, Haar-rotated"),
    ("random", _projection_options(directions="random"), "LELP ablation: Haar-random directions"),
    ("pca", _projection_options(directions="pca", null_space=False, rotate=False),
     "LELP ablation: plain PCA (no null space, no rotation)"),
):
    SPLITTING.append(Method(
        name=_name, needs_teacher=True, parse_options=_parse, loss=_lelp_loss, head_outputs=lelp_head,
        class_log_probs=subclass_class_log_probs, fit="projections", fit_kwargs=_projection_fit_kwargs,
        description=_desc, scores=_projection_scores, split=_score_split(_projection_scores),
    ))


# ----------------------------------------------------------------------------- kmeans, oracle


def _teacher_class_probs(teacher_logits: jax.Array, options: SplitOptions) -> jax.Array:
    """p = softmax(l / lelp.tau): every pseudo-subclass method splits the same class probabilities."""
    return jax.nn.softmax(teacher_logits / options.tau, axis=-1)


def _kmeans_options(config: ml_collections.ConfigDict) -> KMeansOptions:
    """``kmeans.temperature`` as beta (None = ``lelp.beta``, the same beta as LELP), ``kmeans.scale``."""
    return KMeansOptions(**_split_fields(config, config.kmeans.temperature), scale=str(config.kmeans.scale))


def _kmeans_scores(aux: PyTree, teacher_embedding: jax.Array, options: KMeansOptions) -> jax.Array:
    """:func:`lelp_jax.core.clustering.kmeans_scores` at ``kmeans.scale`` (default 'standardized')."""
    if not isinstance(aux, clustering.KMeansFit):
        raise ValueError("methods 'kmeans' and 'agglomerative' need a KMeansFit (centroids) as the step's aux.")
    return clustering.kmeans_scores(teacher_embedding, aux, scale=options.scale)


def _kmeans_loss(inputs: LossInputs, options: KMeansOptions) -> jax.Array:
    """k-means pseudo-subclasses: ``t = split_targets(softmax(l/tau), z, beta_c)`` with z the
    class-c centroid scores of :func:`lelp_jax.core.clustering.kmeans_scores` at ``kmeans.scale``:
    'standardized' (default) ``z_{c,s} = (2 h.m_{c,s} - ||m_{c,s}||^2) / sigma_c``, the rule of
    LELP's standardised z; 'gmm' ``-||h - m_{c,s}||^2 / (2 sigma_c^2)``, the isotropic-GMM
    responsibility; 'raw' ``-||h - m_{c,s}||^2``. ``beta_c = aux.betas`` when calibrated to
    ``lelp.target_entropy``, else ``kmeans.temperature`` (None = ``lelp.beta``); ``tau = lelp.tau``,
    ``alpha = lelp.alpha``; loss :func:`lelp_jax.core.losses.lelp_loss`. ``aux`` is the
    :class:`lelp_jax.core.clustering.KMeansFit` (from k-means, or from agglomerative clusters' means)."""
    z = _kmeans_scores(inputs.aux, inputs.teacher_embedding, options)
    t = targets.split_targets(_teacher_class_probs(inputs.teacher_logits, options), z,
                              beta=split_beta(inputs.aux, options))
    return _pseudo_subclass_loss(inputs, t, options, inputs.teacher_logits.shape[-1])


def _oracle_loss(inputs: LossInputs, options: SplitOptions) -> jax.Array:
    """Oracle subclasses: ``t_{y,s} = p_y [s = slot(fine)]``, ``t_{c,s} = p_c / n_c`` on class c's used
    slots for c != y (:func:`lelp_jax.core.clustering.oracle_targets`), p = softmax(l / lelp.tau);
    loss as :func:`_pseudo_subclass_loss`. ``aux`` is the :class:`lelp_jax.core.clustering.OracleSlots`
    table: one slot per fine label, S = the most fine labels in a class (not lelp.num_subclasses)."""
    aux, batch = inputs.aux, inputs.batch
    if not isinstance(aux, clustering.OracleSlots):
        raise ValueError("method 'oracle' needs the OracleSlots table as the train step's aux.")
    if "fine_label" not in batch:
        raise ValueError("method 'oracle' needs batch['fine_label']; use a dataset with fine labels.")
    p = _teacher_class_probs(inputs.teacher_logits, options)
    t = clustering.oracle_targets(p, _oracle_classes(aux, batch), batch["fine_label"], aux)
    return _pseudo_subclass_loss(inputs, t.reshape(t.shape[0], -1), options, p.shape[-1])


def _oracle_classes(aux: PyTree, batch: Batch) -> jax.Array:
    """Each row's class: its label, or, on an unlabelled transfer row (label -1), the class its kept fine
    label belongs to (``aux.class_of_fine``; -1 for a fine label no labelled row showed: uniform split)."""
    return jnp.where(batch["label"] >= 0, batch["label"], aux.class_of_fine[batch["fine_label"]])


def _oracle_split(aux: PyTree, teacher_embedding: jax.Array, batch: Batch, options: SplitOptions) -> jax.Array:
    """The oracle's split t / p: one-hot on the fine label's slot of the own class, uniform over the
    used slots of the others (:func:`lelp_jax.core.clustering.oracle_targets` with p = 1)."""
    ones = jnp.ones((batch["label"].shape[0], aux.slot_mask.shape[0]), jnp.float32)
    return clustering.oracle_targets(ones, _oracle_classes(aux, batch), batch["fine_label"], aux)


def _oracle_head(num_classes: int, options: SplitOptions) -> None:
    """None: the width is C * (most fine labels in a class), fixed by the OracleSlots artifact."""
    return None


for _name, _desc in (
    ("kmeans", "per-class k-means pseudo-subclasses in the teacher embedding, split like LELP"),
    ("agglomerative", "per-class Ward clusters (scikit-learn, subsampled) as pseudo-subclasses, split like k-means"),
):
    SPLITTING.append(Method(
        name=_name, needs_teacher=True, parse_options=_kmeans_options, loss=_kmeans_loss, head_outputs=lelp_head,
        class_log_probs=subclass_class_log_probs, fit=_name, scores=_kmeans_scores,
        split=_score_split(_kmeans_scores), description=_desc,
    ))
SPLITTING.append(Method(
    name="oracle", needs_teacher=True, parse_options=split_options, loss=_oracle_loss, head_outputs=_oracle_head,
    class_log_probs=subclass_class_log_probs, fit="oracle", needs_fine_labels=True, split=_oracle_split,
    description="true fine labels as subclasses (upper bound)",
))


# ----------------------------------------------------------------------------- lelp_kmeans (issue #12, item 7)


def _subspace_scores(aux: PyTree, teacher_embedding: jax.Array, options: SplitOptions) -> jax.Array:
    """:func:`lelp_jax.core.subspace_kmeans.subspace_kmeans_scores`, standardised when ``lelp.standardize``."""
    if not isinstance(aux, subspace_kmeans.SubspaceKMeans):
        raise ValueError("method 'lelp_kmeans' needs a SubspaceKMeans fit as the train step's aux.")
    return subspace_kmeans.subspace_kmeans_scores(teacher_embedding, aux, standardize=options.standardize)


def _lelp_kmeans_loss(inputs: LossInputs, options: SplitOptions) -> jax.Array:
    """LELP's null-space top-k principal subspace per class (k = ``lelp_kmeans.subspace_dim``), partitioned by
    k-means: ``t = split_targets(softmax(l/tau), z, beta_c)`` with ``z_{c,s} = (2 y_c.m_{c,s} - ||m_{c,s}||^2) /
    sigma_c``, ``y_c = V_c^T (h - mu_c)`` (:mod:`lelp_jax.core.subspace_kmeans`); beta_c = ``aux.betas`` when
    calibrated to ``lelp.target_entropy``, else ``lelp.beta``; ``tau``, ``alpha`` from ``lelp``; loss
    :func:`lelp_jax.core.losses.lelp_loss`."""
    z = _subspace_scores(inputs.aux, inputs.teacher_embedding, options)
    t = targets.split_targets(_teacher_class_probs(inputs.teacher_logits, options), z,
                              beta=split_beta(inputs.aux, options))
    return _pseudo_subclass_loss(inputs, t, options, inputs.teacher_logits.shape[-1])


SPLITTING.append(Method(
    name="lelp_kmeans", needs_teacher=True, parse_options=split_options, loss=_lelp_kmeans_loss,
    head_outputs=lelp_head, class_log_probs=subclass_class_log_probs, fit="subspace_kmeans",
    scores=_subspace_scores, split=_score_split(_subspace_scores),
    description="LELP variant: k-means inside each class's null-space top-k principal subspace, split like LELP",
))
