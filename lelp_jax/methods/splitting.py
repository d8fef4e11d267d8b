"""Methods that split each class into S pseudo-subclasses and distil t_{c,s} = p_c * split_{c,s}
into a C*S-head student: ``lelp`` and its ablations ``random``, ``pca``; ``kmeans``,
``agglomerative``, ``oracle`` (true fine labels) and ``lelp_kmeans``."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp

from lelp_jax.core import clustering, losses, subspace_kmeans, targets
from lelp_jax.methods.registry import (Method, batch_mask, lelp_head, mix_hard_labels, option,
                                       subclass_class_log_probs)

__all__ = ["SPLITTING", "split_beta"]

SPLITTING: list[Method] = []  # in registration order (lelp_jax.methods registers them)


def split_beta(aux: Any, cfg: Any, beta: float) -> Any:
    """The split temperature: the artifact's calibrated per-class ``aux.betas (C,)`` when it has
    them, else ``beta``. With ``lelp.target_entropy`` set the betas must be there (the pipeline
    calibrates them at fit time); a missing calibration is an error, not a silent fallback."""
    betas = getattr(aux, "betas", None)
    if betas is not None:
        return betas
    if option(cfg, "lelp", "target_entropy") is not None:
        raise ValueError("lelp.target_entropy is set but the fitted artifact has no calibrated betas; calibrate it "
                         "(lelp_jax.core.sharpness.calibrate_betas on the method's scores, as the pipeline does) or "
                         "unset lelp.target_entropy.")
    return beta


def _score_split(beta_of: Callable[[Any], float]) -> Callable[..., jax.Array]:
    """``split = softmax_s(scores / beta_c)`` for a method with ``scores`` (``beta_of(cfg)``: its beta)."""

    def split(aux, teacher_embedding, batch, cfg, *, scores):
        z = scores(aux, teacher_embedding, cfg)
        beta = jnp.asarray(split_beta(aux, cfg, beta_of(cfg)), z.dtype)
        return jax.nn.softmax(z / (beta[None, :, None] if beta.ndim == 1 else beta), axis=-1)

    return split


def _lelp_beta(cfg: Any) -> float:
    return float(option(cfg, "lelp", "beta"))


def _projection_scores(aux, teacher_embedding, cfg) -> jax.Array:
    """z_{c,s} = U_c[:, s].(h - mu_c), over its class std when ``lelp.standardize``
    (:func:`lelp_jax.core.targets.projection_scores`)."""
    return targets.projection_scores(aux, teacher_embedding, standardize=bool(option(cfg, "lelp", "standardize")))


def _lelp_loss(*, student_logits, batch, teacher_embedding, teacher_logits, aux, cfg, **_: Any) -> jax.Array:
    """LELP: targets t_{c,s} = softmax(l/tau)_c softmax_s(z_{c,.}/beta_c)_s from the projections in
    ``aux`` (:func:`lelp_jax.core.targets.subclass_targets`; z standardised when ``lelp.standardize``,
    beta_c = ``aux.betas`` when calibrated to ``lelp.target_entropy``, else ``lelp.beta``), loss
    as :func:`_pseudo_subclass_loss`."""
    if aux is None:
        raise ValueError("LELP-type methods need the fitted Projections as the train step's aux.")
    t = targets.subclass_targets(aux, teacher_embedding, teacher_logits,
                                 beta=split_beta(aux, cfg, _lelp_beta(cfg)),
                                 tau=float(option(cfg, "lelp", "tau")),
                                 standardize=bool(option(cfg, "lelp", "standardize")))
    return _pseudo_subclass_loss(student_logits, t, batch, cfg, teacher_logits.shape[-1])


def _projection_options(*, directions: str, null_space: Optional[bool] = None,
                        rotate: Optional[bool] = None) -> Callable[[Any], dict[str, Any]]:
    """Keyword arguments of :func:`lelp_jax.core.projections.fit_projections` (besides moments and W)."""

    def options(cfg: Any) -> dict[str, Any]:
        return {
            "num_subclasses": int(option(cfg, "lelp", "num_subclasses")),
            "null_space": bool(option(cfg, "lelp", "null_space")) if null_space is None else null_space,
            "rotate": bool(option(cfg, "lelp", "rotate")) if rotate is None else rotate,
            "directions": directions,
            "key": int(option(cfg, "lelp", "seed")),
        }

    return options


for _name, _opts, _desc in (
    ("lelp", _projection_options(directions="pca"), "LELP: null-space PCA directions, Haar-rotated"),
    ("random", _projection_options(directions="random"), "LELP ablation: Haar-random directions"),
    ("pca", _projection_options(directions="pca", null_space=False, rotate=False),
     "LELP ablation: plain PCA (no null space, no rotation)"),
):
    SPLITTING.append(Method(
        name=_name, needs_teacher=True, loss=_lelp_loss, head_outputs=lelp_head,
        class_log_probs=subclass_class_log_probs, fit="projections", fit_options=_opts, description=_desc,
        scores=_projection_scores, split=functools.partial(_score_split(_lelp_beta), scores=_projection_scores),
    ))


# ----------------------------------------------------------------------------- kmeans, oracle


def _teacher_class_probs(teacher_logits: jax.Array, cfg: Any) -> jax.Array:
    """p = softmax(l / lelp.tau): every pseudo-subclass method splits the same class probabilities."""
    return jax.nn.softmax(teacher_logits / float(option(cfg, "lelp", "tau")), axis=-1)


def _pseudo_subclass_loss(student_logits, t, batch, cfg, num_classes: int) -> jax.Array:
    """The loss of every C*S method given its targets t (B, C*S):

        (1 - alpha) * ( -sum_{c,s} t_{c,s} log softmax(r / tau_s)_{c,s} ) + alpha * hard(y, log q_c)

    (:func:`lelp_jax.core.losses.lelp_loss` on r / tau_s, :func:`hard_label_loss` on the class
    log-probabilities of r), ``tau_s = lelp.student_tau`` (1, the paper's: no student
    temperature), ``alpha = lelp.alpha``. Like KD's ``student_tau`` the temperature is the soft
    term's only: the hard term and the prediction use r. With S = 1 this is KD's loss with
    ``kd.student_tau = lelp.student_tau`` and ``kd.tau_squared_scaling = False``.
    """
    soft = losses.lelp_loss(student_logits / float(option(cfg, "lelp", "student_tau")), t, mask=batch_mask(batch))
    return mix_hard_labels(soft, targets.class_log_probs(student_logits, num_classes=num_classes), batch, cfg,
                           float(option(cfg, "lelp", "alpha")))


def _kmeans_beta(cfg: Any) -> float:
    """``kmeans.temperature``, or ``lelp.beta`` when it is None (the same beta as LELP)."""
    return float(option(cfg, "kmeans", "temperature", _lelp_beta(cfg)))


def _kmeans_scores(aux, teacher_embedding, cfg) -> jax.Array:
    """:func:`lelp_jax.core.clustering.kmeans_scores` at ``kmeans.scale`` (default 'standardized')."""
    if not isinstance(aux, clustering.KMeansFit):
        raise ValueError("methods 'kmeans' and 'agglomerative' need a KMeansFit (centroids) as the step's aux.")
    return clustering.kmeans_scores(teacher_embedding, aux, scale=str(option(cfg, "kmeans", "scale")))


def _kmeans_loss(*, student_logits, batch, teacher_embedding, teacher_logits, aux, cfg, **_: Any) -> jax.Array:
    """k-means pseudo-subclasses: ``t = split_targets(softmax(l/tau), z, beta_c)`` with z the
    class-c centroid scores of :func:`lelp_jax.core.clustering.kmeans_scores` at ``kmeans.scale``:
    'standardized' (default) ``z_{c,s} = (2 h.m_{c,s} - ||m_{c,s}||^2) / sigma_c``, the rule of
    LELP's standardised z; 'gmm' ``-||h - m_{c,s}||^2 / (2 sigma_c^2)``, the isotropic-GMM
    responsibility; 'raw' ``-||h - m_{c,s}||^2``. ``beta_c = aux.betas`` when calibrated to
    ``lelp.target_entropy``, else ``kmeans.temperature`` (None = ``lelp.beta``); ``tau = lelp.tau``,
    ``alpha = lelp.alpha``; loss :func:`lelp_jax.core.losses.lelp_loss`. ``aux`` is the
    :class:`lelp_jax.core.clustering.KMeansFit` (from k-means, or from agglomerative clusters' means)."""
    z = _kmeans_scores(aux, teacher_embedding, cfg)
    t = targets.split_targets(_teacher_class_probs(teacher_logits, cfg), z, beta=split_beta(aux, cfg, _kmeans_beta(cfg)))
    return _pseudo_subclass_loss(student_logits, t, batch, cfg, teacher_logits.shape[-1])


def _oracle_loss(*, student_logits, batch, teacher_logits, aux, cfg, **_: Any) -> jax.Array:
    """Oracle subclasses: ``t_{y,s} = p_y [s = slot(fine)]``, ``t_{c,s} = p_c / n_c`` on class c's used
    slots for c != y (:func:`lelp_jax.core.clustering.oracle_targets`), p = softmax(l / lelp.tau);
    loss as :func:`_pseudo_subclass_loss`. ``aux`` is the :class:`lelp_jax.core.clustering.OracleSlots`
    table: one slot per fine label, S = the most fine labels in a class (not lelp.num_subclasses)."""
    if not isinstance(aux, clustering.OracleSlots):
        raise ValueError("method 'oracle' needs the OracleSlots table as the train step's aux.")
    if "fine_label" not in batch:
        raise ValueError("method 'oracle' needs batch['fine_label']; use a dataset with fine labels.")
    p = _teacher_class_probs(teacher_logits, cfg)
    t = clustering.oracle_targets(p, batch["label"], batch["fine_label"], aux)
    return _pseudo_subclass_loss(student_logits, t.reshape(t.shape[0], -1), batch, cfg, p.shape[-1])


def _oracle_split(aux, teacher_embedding, batch, cfg) -> jax.Array:
    """The oracle's split t / p: one-hot on the fine label's slot of the own class, uniform over the
    used slots of the others (:func:`lelp_jax.core.clustering.oracle_targets` with p = 1)."""
    ones = jnp.ones((batch["label"].shape[0], aux.slot_mask.shape[0]), jnp.float32)
    return clustering.oracle_targets(ones, batch["label"], batch["fine_label"], aux)


_kmeans_split = functools.partial(_score_split(_kmeans_beta), scores=_kmeans_scores)
SPLITTING.append(Method(
    name="kmeans", needs_teacher=True, loss=_kmeans_loss, head_outputs=lelp_head,
    class_log_probs=subclass_class_log_probs, fit="kmeans", scores=_kmeans_scores, split=_kmeans_split,
    description="per-class k-means pseudo-subclasses in the teacher embedding, split like LELP",
))
SPLITTING.append(Method(
    name="agglomerative", needs_teacher=True, loss=_kmeans_loss, head_outputs=lelp_head,
    class_log_probs=subclass_class_log_probs, fit="agglomerative", scores=_kmeans_scores, split=_kmeans_split,
    description="per-class Ward clusters (scikit-learn, subsampled) as pseudo-subclasses, split like k-means",
))


def _oracle_head(num_classes: int, cfg: Any) -> int:
    raise ValueError("the oracle's head width is C * (most fine labels in a class), known from its OracleSlots: "
                     "use Method.student_outputs(num_classes, cfg, slots).")


SPLITTING.append(Method(
    name="oracle", needs_teacher=True, loss=_oracle_loss, head_outputs=_oracle_head,
    class_log_probs=subclass_class_log_probs, fit="oracle", needs_fine_labels=True, split=_oracle_split,
    description="true fine labels as subclasses (upper bound)",
))


# ----------------------------------------------------------------------------- lelp_kmeans (issue #12, item 7)


def _subspace_scores(aux, teacher_embedding, cfg) -> jax.Array:
    """:func:`lelp_jax.core.subspace_kmeans.subspace_kmeans_scores`, standardised when ``lelp.standardize``."""
    if not isinstance(aux, subspace_kmeans.SubspaceKMeans):
        raise ValueError("method 'lelp_kmeans' needs a SubspaceKMeans fit as the train step's aux.")
    return subspace_kmeans.subspace_kmeans_scores(teacher_embedding, aux,
                                                  standardize=bool(option(cfg, "lelp", "standardize")))


def _lelp_kmeans_loss(*, student_logits, batch, teacher_embedding, teacher_logits, aux, cfg, **_: Any) -> jax.Array:
    """LELP's null-space top-k principal subspace per class (k = ``lelp_kmeans.subspace_dim``), partitioned by
    k-means: ``t = split_targets(softmax(l/tau), z, beta_c)`` with ``z_{c,s} = (2 y_c.m_{c,s} - ||m_{c,s}||^2) /
    sigma_c``, ``y_c = V_c^T (h - mu_c)`` (:mod:`lelp_jax.core.subspace_kmeans`); beta_c = ``aux.betas`` when
    calibrated to ``lelp.target_entropy``, else ``lelp.beta``; ``tau``, ``alpha`` from ``lelp``; loss
    :func:`lelp_jax.core.losses.lelp_loss`."""
    z = _subspace_scores(aux, teacher_embedding, cfg)
    t = targets.split_targets(_teacher_class_probs(teacher_logits, cfg), z, beta=split_beta(aux, cfg, _lelp_beta(cfg)))
    return _pseudo_subclass_loss(student_logits, t, batch, cfg, teacher_logits.shape[-1])


SPLITTING.append(Method(
    name="lelp_kmeans", needs_teacher=True, loss=_lelp_kmeans_loss, head_outputs=lelp_head,
    class_log_probs=subclass_class_log_probs, fit="subspace_kmeans", scores=_subspace_scores,
    split=functools.partial(_score_split(_lelp_beta), scores=_subspace_scores),
    description="LELP variant: k-means inside each class's null-space top-k principal subspace, split like LELP",
))
