"""The method registry: what each distillation method needs, its loss, its class prediction.

A :class:`Method` is a frozen description used by the pipeline and the train step:

- ``needs_teacher``: the train step must get teacher (embedding, logits);
- ``fit``: which artifact the pipeline builds before training and passes as the
  step's ``aux`` (``'projections'`` for LELP-like methods, ``'kmeans'``, ``'oracle'``,
  ``'subclass_teacher'`` (the Subclass-Distillation teacher's variables), or None); ``fit_options(cfg)`` gives the keyword arguments of that fit (e.g.
  ``fit_projections(null_space=..., rotate=..., directions=...)``);
- ``head_outputs(num_classes, cfg)``: the student head width (C, or C*S); a fitted artifact
  that fixes the width itself (the oracle's slots) says so, see :meth:`Method.student_outputs`;
- ``loss(*, student_logits, student_embedding, batch, teacher_embedding,
  teacher_logits, aux, method_params, cfg) -> scalar``: jittable, built from the
  core (:mod:`lelp_jax.losses`, :mod:`lelp_jax.targets`); padding rows (``batch['mask']``
  0) carry no weight;
- ``class_log_probs(student_logits, num_classes, cfg) -> (B, C)``: how the
  student's logits map to class log-probabilities (argmax = prediction);
- ``init_params(key, *, student_embedding_dim, teacher_embedding_dim, cfg)``:
  extra trainable parameters owned by the method (e.g. a FitNet adapter), or None;
- ``scores(aux, teacher_embedding, cfg) -> (B, C, S)``: for a method that splits each
  class by ``softmax_s(z_{c,.} / beta_c)``, its subclass scores z (standardised as
  configured); the pipeline calibrates beta_c on them (``lelp.target_entropy``) and
  stores the betas in the artifact (its ``betas`` field). None otherwise;
- ``split(aux, teacher_embedding, batch, cfg) -> (B, C, S)``: the split t_{c,s} / p_c
  the targets use (rows over s sum to 1), for the diagnostics every run records
  (:func:`lelp_jax.sharpness.split_diagnostics`); None for methods that do not split.

``cfg`` is the run's full config; each method reads its own section (``cfg.kd``,
``cfg.lelp``, ...); a key the config lacks takes ``base_config()``'s value. Every
hard-label term (ce; the ``alpha`` term of kd, fitnet, rkd, lelp and its ablations,
kmeans, agglomerative, oracle, subclass) is :func:`hard_label_loss`, which reads
``cfg.train.label_smoothing``. A new method is one ``register_method(Method(...))`` call.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from lelp_jax import clustering, feature_losses, losses, subclass_distillation, subspace_kmeans, targets
from lelp_jax.schema import base_config

__all__ = [
    "Method", "METHODS", "register_method", "get_method", "method_names",
    # building blocks for registering more methods
    "section", "option", "batch_mask", "hard_label_loss", "mix_hard_labels", "plain_class_log_probs",
    "subclass_class_log_probs", "split_beta",
    # the Subclass-Distillation teacher (trained by the pipeline, not a student method)
    "SUBCLASS_TEACHER", "subclass_teacher_model",
]


@dataclasses.dataclass(frozen=True)
class Method:
    """A distillation method (see the module docstring for each field's contract)."""

    name: str
    needs_teacher: bool
    loss: Callable[..., jax.Array]
    head_outputs: Callable[[int, Any], int]
    class_log_probs: Callable[[jax.Array, int, Any], jax.Array]
    fit: Optional[str] = None
    fit_options: Callable[[Any], Mapping[str, Any]] = lambda cfg: {}
    init_params: Optional[Callable[..., Any]] = None
    needs_fine_labels: bool = False
    description: str = ""
    scores: Optional[Callable[..., jax.Array]] = None
    split: Optional[Callable[..., jax.Array]] = None

    def student_outputs(self, num_classes: int, cfg: Any, aux: Any = None) -> int:
        """The student's head width: ``aux.head_outputs`` when the fitted artifact fixes it (the
        oracle: C * most fine labels in a class), else ``head_outputs(num_classes, cfg)``."""
        width = getattr(aux, "head_outputs", None)
        return int(width) if width is not None else int(self.head_outputs(num_classes, cfg))

    @property
    def needs_projections(self) -> bool:
        """True when the step's ``aux`` must be a :class:`lelp_jax.projections.Projections`."""
        return self.fit == "projections"


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (a name can be registered once)."""
    if method.name in METHODS:
        raise ValueError(f"register_method: {method.name!r} is already registered; pick another name.")
    METHODS[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def get_method(name: str) -> Method:
    """The registered method called ``name``; unknown names list the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}.") from None


# ----------------------------------------------------------------------------- helpers


def section(cfg: Any, name: str) -> Any:
    """``cfg[name]`` (ConfigDict/Mapping/attribute), or an empty dict when absent."""
    if cfg is None:
        return {}
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        out = cfg.get(name)
    else:
        out = getattr(cfg, name, None)
    return {} if out is None else out


_BASE = object()


@functools.lru_cache(maxsize=1)
def _base_config():
    return base_config()


def option(cfg: Any, name: str, key: str, default: Any = _BASE) -> Any:
    """``cfg[name][key]``; when absent or None, ``default``, or without one ``base_config()[name][key]``."""
    if default is _BASE:
        default = _base_config()[name][key]
    sec = section(cfg, name)
    value = sec.get(key, default) if hasattr(sec, "get") else getattr(sec, key, default)
    return default if value is None else value


def batch_mask(batch: Mapping[str, jax.Array]) -> jax.Array:
    """Per-row weights: ``batch['mask']`` or ones."""
    if "mask" in batch:
        return batch["mask"].astype(jnp.float32)
    return jnp.ones(batch["label"].shape, jnp.float32)


def plain_class_log_probs(student_logits: jax.Array, num_classes: int, cfg: Any) -> jax.Array:
    """C-way head: ``log_softmax(logits)``."""
    if student_logits.shape[-1] != num_classes:
        raise ValueError(f"student has {student_logits.shape[-1]} logits for {num_classes} classes; a plain-head "
                         "method needs head_outputs == num_classes.")
    return jax.nn.log_softmax(student_logits, axis=-1)


def subclass_class_log_probs(student_logits: jax.Array, num_classes: int, cfg: Any) -> jax.Array:
    """C*S-way head: ``log q_c = logsumexp_s log_softmax(r)_{c,s}`` (:func:`lelp_jax.targets.class_log_probs`)."""
    return targets.class_log_probs(student_logits, num_classes=num_classes)


def _plain_head(num_classes: int, cfg: Any) -> int:
    return num_classes


def _lelp_head(num_classes: int, cfg: Any) -> int:
    return num_classes * int(option(cfg, "lelp", "num_subclasses", 1))


def hard_label_loss(class_logits: jax.Array, batch: Mapping[str, jax.Array], cfg: Any) -> jax.Array:
    """Every method's hard-label term: CE(y, softmax(class_logits)) with label smoothing
    eps = ``cfg.train.label_smoothing``, target (1 - eps) onehot(y) + eps / C (Szegedy et al. 2016).

    ``class_logits (B, C)``: a C-way head's logits, or a C*S head's class log-probabilities
    ``log q_c`` (log_softmax leaves normalised log-probabilities unchanged).
    """
    mask = batch_mask(batch)
    eps = float(option(cfg, "train", "label_smoothing"))
    if eps:
        smooth = optax.smooth_labels(jax.nn.one_hot(batch["label"], class_logits.shape[-1],
                                                    dtype=class_logits.dtype), eps)
        return losses.soft_cross_entropy(class_logits, smooth, mask=mask)
    return losses.cross_entropy(class_logits, batch["label"], mask=mask)


def mix_hard_labels(soft: jax.Array, class_logits: jax.Array, batch: Mapping[str, jax.Array], cfg: Any,
                    alpha: float) -> jax.Array:
    """``(1 - alpha) * soft + alpha * hard_label_loss(class_logits)`` (just ``soft`` when alpha = 0)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (weight of the hard-label term), got {alpha!r}.")
    if alpha == 0.0:
        return soft
    return (1.0 - alpha) * soft + alpha * hard_label_loss(class_logits, batch, cfg)


# ----------------------------------------------------------------------------- ce


def _ce_loss(*, student_logits, batch, cfg, **_: Any) -> jax.Array:
    """Hard labels only: ``mean_b -log softmax(r_b)_{y_b}`` (:func:`lelp_jax.losses.cross_entropy`)."""
    return hard_label_loss(student_logits, batch, cfg)


register_method(Method(
    name="ce", needs_teacher=False, loss=_ce_loss, head_outputs=_plain_head,
    class_log_probs=plain_class_log_probs, description="cross-entropy on hard labels (no teacher)",
))


# ----------------------------------------------------------------------------- kd


def _kd_loss(*, student_logits, batch, teacher_logits, cfg, **_: Any) -> jax.Array:
    """Hinton KD with ``cfg.kd.tau``, ``cfg.kd.alpha`` and ``cfg.kd.student_tau`` (:func:`lelp_jax.losses.kd_loss`)."""
    return _kd_term(student_logits, batch, teacher_logits, cfg)


register_method(Method(
    name="kd", needs_teacher=True, loss=_kd_loss, head_outputs=_plain_head,
    class_log_probs=plain_class_log_probs, description="Hinton KD (tau, alpha)",
))


# ----------------------------------------------------------------------------- lelp and its ablations


def split_beta(aux: Any, cfg: Any, beta: float) -> Any:
    """The split temperature: the artifact's calibrated per-class ``aux.betas (C,)`` when it has
    them, else ``beta``. With ``lelp.target_entropy`` set the betas must be there (the pipeline
    calibrates them at fit time); a missing calibration is an error, not a silent fallback."""
    betas = getattr(aux, "betas", None)
    if betas is not None:
        return betas
    if option(cfg, "lelp", "target_entropy", None) is not None:
        raise ValueError("lelp.target_entropy is set but the fitted artifact has no calibrated betas; calibrate it "
                         "(lelp_jax.sharpness.calibrate_betas on the method's scores, as the pipeline does) or "
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
    return float(option(cfg, "lelp", "beta", 1.0))


def _projection_scores(aux, teacher_embedding, cfg) -> jax.Array:
    """z_{c,s} = U_c[:, s].(h - mu_c), over its class std when ``lelp.standardize``
    (:func:`lelp_jax.targets.projection_scores`)."""
    return targets.projection_scores(aux, teacher_embedding, standardize=bool(option(cfg, "lelp", "standardize", True)))


def _lelp_loss(*, student_logits, batch, teacher_embedding, teacher_logits, aux, cfg, **_: Any) -> jax.Array:
    """LELP: targets t_{c,s} = softmax(l/tau)_c softmax_s(z_{c,.}/beta_c)_s from the projections in
    ``aux`` (:func:`lelp_jax.targets.subclass_targets`; z standardised when ``lelp.standardize``,
    beta_c = ``aux.betas`` when calibrated to ``lelp.target_entropy``, else ``lelp.beta``), loss
    as :func:`_pseudo_subclass_loss`."""
    if aux is None:
        raise ValueError("LELP-type methods need the fitted Projections as the train step's aux.")
    t = targets.subclass_targets(aux, teacher_embedding, teacher_logits,
                                 beta=split_beta(aux, cfg, _lelp_beta(cfg)),
                                 tau=float(option(cfg, "lelp", "tau", 1.0)),
                                 standardize=bool(option(cfg, "lelp", "standardize", True)))
    return _pseudo_subclass_loss(student_logits, t, batch, cfg, teacher_logits.shape[-1])


def _projection_options(*, directions: str, null_space: Optional[bool] = None,
                        rotate: Optional[bool] = None) -> Callable[[Any], dict[str, Any]]:
    """Keyword arguments of :func:`lelp_jax.projections.fit_projections` (besides moments and W)."""

    def options(cfg: Any) -> dict[str, Any]:
        return {
            "num_subclasses": int(option(cfg, "lelp", "num_subclasses", 1)),
            "null_space": bool(option(cfg, "lelp", "null_space", True)) if null_space is None else null_space,
            "rotate": bool(option(cfg, "lelp", "rotate", True)) if rotate is None else rotate,
            "directions": directions,
            "key": int(option(cfg, "lelp", "seed", 0)),
        }

    return options


for _name, _opts, _desc in (
    ("lelp", _projection_options(directions="pca"), "LELP: null-space PCA directions, Haar-rotated"),
    ("random", _projection_options(directions="random"), "LELP ablation: Haar-random directions"),
    ("pca", _projection_options(directions="pca", null_space=False, rotate=False),
     "LELP ablation: plain PCA (no null space, no rotation)"),
):
    register_method(Method(
        name=_name, needs_teacher=True, loss=_lelp_loss, head_outputs=_lelp_head,
        class_log_probs=subclass_class_log_probs, fit="projections", fit_options=_opts, description=_desc,
        scores=_projection_scores, split=functools.partial(_score_split(_lelp_beta), scores=_projection_scores),
    ))


# ----------------------------------------------------------------------------- kmeans, oracle


def _teacher_class_probs(teacher_logits: jax.Array, cfg: Any) -> jax.Array:
    """p = softmax(l / lelp.tau): every pseudo-subclass method splits the same class probabilities."""
    return jax.nn.softmax(teacher_logits / float(option(cfg, "lelp", "tau", 1.0)), axis=-1)


def _pseudo_subclass_loss(student_logits, t, batch, cfg, num_classes: int) -> jax.Array:
    """The loss of every C*S method given its targets t (B, C*S):

        (1 - alpha) * ( -sum_{c,s} t_{c,s} log softmax(r / tau_s)_{c,s} ) + alpha * hard(y, log q_c)

    (:func:`lelp_jax.losses.lelp_loss` on r / tau_s, :func:`hard_label_loss` on the class
    log-probabilities of r), ``tau_s = lelp.student_tau`` (1, the paper's: no student
    temperature), ``alpha = lelp.alpha``. Like KD's ``student_tau`` the temperature is the soft
    term's only: the hard term and the prediction use r. With S = 1 this is KD's loss with
    ``kd.student_tau = lelp.student_tau`` and ``kd.tau_squared_scaling = False``.
    """
    soft = losses.lelp_loss(student_logits / float(option(cfg, "lelp", "student_tau")), t, mask=batch_mask(batch))
    return mix_hard_labels(soft, targets.class_log_probs(student_logits, num_classes=num_classes), batch, cfg,
                           float(option(cfg, "lelp", "alpha", 0.0)))


def _kmeans_beta(cfg: Any) -> float:
    """``kmeans.temperature``, or ``lelp.beta`` when it is None (the same beta as LELP)."""
    return float(option(cfg, "kmeans", "temperature", _lelp_beta(cfg)))


def _kmeans_scores(aux, teacher_embedding, cfg) -> jax.Array:
    """:func:`lelp_jax.clustering.kmeans_scores` at ``kmeans.scale`` (default 'standardized')."""
    if not isinstance(aux, clustering.KMeansFit):
        raise ValueError("methods 'kmeans' and 'agglomerative' need a KMeansFit (centroids) as the step's aux.")
    return clustering.kmeans_scores(teacher_embedding, aux, scale=str(option(cfg, "kmeans", "scale", "standardized")))


def _kmeans_loss(*, student_logits, batch, teacher_embedding, teacher_logits, aux, cfg, **_: Any) -> jax.Array:
    """k-means pseudo-subclasses: ``t = split_targets(softmax(l/tau), z, beta_c)`` with z the
    class-c centroid scores of :func:`lelp_jax.clustering.kmeans_scores` at ``kmeans.scale``:
    'standardized' (default) ``z_{c,s} = (2 h.m_{c,s} - ||m_{c,s}||^2) / sigma_c``, the rule of
    LELP's standardised z; 'gmm' ``-||h - m_{c,s}||^2 / (2 sigma_c^2)``, the isotropic-GMM
    responsibility; 'raw' ``-||h - m_{c,s}||^2``. ``beta_c = aux.betas`` when calibrated to
    ``lelp.target_entropy``, else ``kmeans.temperature`` (None = ``lelp.beta``); ``tau = lelp.tau``,
    ``alpha = lelp.alpha``; loss :func:`lelp_jax.losses.lelp_loss`. ``aux`` is the
    :class:`lelp_jax.clustering.KMeansFit` (from k-means, or from agglomerative clusters' means)."""
    z = _kmeans_scores(aux, teacher_embedding, cfg)
    t = targets.split_targets(_teacher_class_probs(teacher_logits, cfg), z, beta=split_beta(aux, cfg, _kmeans_beta(cfg)))
    return _pseudo_subclass_loss(student_logits, t, batch, cfg, teacher_logits.shape[-1])


def _oracle_loss(*, student_logits, batch, teacher_logits, aux, cfg, **_: Any) -> jax.Array:
    """Oracle subclasses: ``t_{y,s} = p_y [s = slot(fine)]``, ``t_{c,s} = p_c / n_c`` on class c's used
    slots for c != y (:func:`lelp_jax.clustering.oracle_targets`), p = softmax(l / lelp.tau);
    loss as :func:`_pseudo_subclass_loss`. ``aux`` is the :class:`lelp_jax.clustering.OracleSlots`
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
    used slots of the others (:func:`lelp_jax.clustering.oracle_targets` with p = 1)."""
    ones = jnp.ones((batch["label"].shape[0], aux.slot_mask.shape[0]), jnp.float32)
    return clustering.oracle_targets(ones, batch["label"], batch["fine_label"], aux)


_kmeans_split = functools.partial(_score_split(_kmeans_beta), scores=_kmeans_scores)
register_method(Method(
    name="kmeans", needs_teacher=True, loss=_kmeans_loss, head_outputs=_lelp_head,
    class_log_probs=subclass_class_log_probs, fit="kmeans", scores=_kmeans_scores, split=_kmeans_split,
    description="per-class k-means pseudo-subclasses in the teacher embedding, split like LELP",
))
register_method(Method(
    name="agglomerative", needs_teacher=True, loss=_kmeans_loss, head_outputs=_lelp_head,
    class_log_probs=subclass_class_log_probs, fit="agglomerative", scores=_kmeans_scores, split=_kmeans_split,
    description="per-class Ward clusters (scikit-learn, subsampled) as pseudo-subclasses, split like k-means",
))


def _oracle_head(num_classes: int, cfg: Any) -> int:
    raise ValueError("the oracle's head width is C * (most fine labels in a class), known from its OracleSlots: "
                     "use Method.student_outputs(num_classes, cfg, slots).")


register_method(Method(
    name="oracle", needs_teacher=True, loss=_oracle_loss, head_outputs=_oracle_head,
    class_log_probs=subclass_class_log_probs, fit="oracle", needs_fine_labels=True, split=_oracle_split,
    description="true fine labels as subclasses (upper bound)",
))


# ----------------------------------------------------------------------------- lelp_kmeans (issue #12, item 7)


def _subspace_scores(aux, teacher_embedding, cfg) -> jax.Array:
    """:func:`lelp_jax.subspace_kmeans.subspace_kmeans_scores`, standardised when ``lelp.standardize``."""
    if not isinstance(aux, subspace_kmeans.SubspaceKMeans):
        raise ValueError("method 'lelp_kmeans' needs a SubspaceKMeans fit as the train step's aux.")
    return subspace_kmeans.subspace_kmeans_scores(teacher_embedding, aux,
                                                  standardize=bool(option(cfg, "lelp", "standardize", True)))


def _lelp_kmeans_loss(*, student_logits, batch, teacher_embedding, teacher_logits, aux, cfg, **_: Any) -> jax.Array:
    """LELP's null-space top-k principal subspace per class (k = ``lelp_kmeans.subspace_dim``), partitioned by
    k-means: ``t = split_targets(softmax(l/tau), z, beta_c)`` with ``z_{c,s} = (2 y_c.m_{c,s} - ||m_{c,s}||^2) /
    sigma_c``, ``y_c = V_c^T (h - mu_c)`` (:mod:`lelp_jax.subspace_kmeans`); beta_c = ``aux.betas`` when
    calibrated to ``lelp.target_entropy``, else ``lelp.beta``; ``tau``, ``alpha`` from ``lelp``; loss
    :func:`lelp_jax.losses.lelp_loss`."""
    z = _subspace_scores(aux, teacher_embedding, cfg)
    t = targets.split_targets(_teacher_class_probs(teacher_logits, cfg), z, beta=split_beta(aux, cfg, _lelp_beta(cfg)))
    return _pseudo_subclass_loss(student_logits, t, batch, cfg, teacher_logits.shape[-1])


register_method(Method(
    name="lelp_kmeans", needs_teacher=True, loss=_lelp_kmeans_loss, head_outputs=_lelp_head,
    class_log_probs=subclass_class_log_probs, fit="subspace_kmeans", scores=_subspace_scores,
    split=functools.partial(_score_split(_lelp_beta), scores=_subspace_scores),
    description="LELP variant: k-means inside each class's null-space top-k principal subspace, split like LELP",
))


# ----------------------------------------------------------------------------- fitnet, rkd


def _kd_term(student_logits, batch, teacher_logits, cfg) -> jax.Array:
    """KD as configured: the soft term of :func:`lelp_jax.losses.kd_loss` at ``kd.tau``, scaled by
    tau^2 when ``kd.tau_squared_scaling`` (Hinton's), with ``kd.student_tau`` (unset: ``kd.tau``,
    Hinton's convention; 1 is LELP's) as the student's temperature, mixed with
    :func:`hard_label_loss` by ``kd.alpha``."""
    student_tau = option(cfg, "kd", "student_tau")
    soft = losses.kd_loss(student_logits, teacher_logits, tau=float(option(cfg, "kd", "tau", 1.0)),
                          mask=batch_mask(batch), student_tau=None if student_tau is None else float(student_tau),
                          scale_by_tau_squared=bool(option(cfg, "kd", "tau_squared_scaling")))
    return mix_hard_labels(soft, student_logits, batch, cfg, float(option(cfg, "kd", "alpha", 0.0)))


def _fitnet_init(key: jax.Array, *, student_embedding_dim: int, teacher_embedding_dim: Optional[int],
                 cfg: Any) -> dict[str, Any]:
    """The FitNet adapter ``{'kernel' (D_s, D_t) LeCun-normal, 'bias' (D_t,) zeros}`` (a Dense layer's layout)."""
    if not teacher_embedding_dim:
        raise ValueError("method 'fitnet' needs the teacher embedding width to build its adapter.")
    kernel = jax.nn.initializers.lecun_normal()(key, (student_embedding_dim, teacher_embedding_dim), jnp.float32)
    return {"kernel": kernel, "bias": jnp.zeros((teacher_embedding_dim,), jnp.float32)}


def _fitnet_loss(*, student_logits, student_embedding, batch, teacher_embedding, teacher_logits, method_params,
                 cfg, **_: Any) -> jax.Array:
    """KD (``cfg.kd``) + ``fitnet.weight`` * :func:`lelp_jax.feature_losses.fitnet_loss` (student embedding ->
    trainable linear adapter ``method_params`` -> teacher embedding, MSE)."""
    hint = feature_losses.fitnet_loss(student_embedding, teacher_embedding, method_params,
                                      mask=batch_mask(batch))
    return _kd_term(student_logits, batch, teacher_logits, cfg) + float(option(cfg, "fitnet", "weight", 1.0)) * hint


def _rkd_loss(*, student_logits, student_embedding, batch, teacher_embedding, teacher_logits, cfg,
              **_: Any) -> jax.Array:
    """KD (``cfg.kd``) + RKD-DA on the embeddings (:func:`lelp_jax.feature_losses.rkd_loss`,
    weights ``rkd.distance_weight`` and ``rkd.angle_weight``)."""
    rel = feature_losses.rkd_loss(student_embedding, teacher_embedding,
                                  distance_weight=float(option(cfg, "rkd", "distance_weight", 1.0)),
                                  angle_weight=float(option(cfg, "rkd", "angle_weight", 2.0)), mask=batch_mask(batch))
    return _kd_term(student_logits, batch, teacher_logits, cfg) + rel


register_method(Method(
    name="fitnet", needs_teacher=True, loss=_fitnet_loss, head_outputs=_plain_head,
    class_log_probs=plain_class_log_probs, init_params=_fitnet_init,
    description="FitNet: KD + MSE from a linear adapter of the student embedding to the teacher's",
))
register_method(Method(
    name="rkd", needs_teacher=True, loss=_rkd_loss, head_outputs=_plain_head,
    class_log_probs=plain_class_log_probs, description="RKD: KD + distance and angle relational losses",
))


# ----------------------------------------------------------------------------- subclass distillation


def _subclass_count(cfg: Any) -> int:
    return int(option(cfg, "subclass", "num_subclasses", 4))


def _subclass_head(num_classes: int, cfg: Any) -> int:
    return num_classes * _subclass_count(cfg)


def subclass_teacher_model(cfg: Any, num_classes: int):
    """The Subclass-Distillation teacher: ``cfg.teacher.model`` with a C*S head (S = subclass.num_subclasses)."""
    from lelp_jax.models import build_model

    kwargs = {k: (tuple(v) if isinstance(v, list) else v)
              for k, v in dict(option(cfg, "teacher", "model_kwargs", {})).items()}
    return build_model(cfg.teacher.model, num_outputs=_subclass_head(num_classes, cfg), **kwargs)


def _subclass_teacher_loss(*, student_logits, batch, cfg, **_: Any) -> jax.Array:
    """Training the subclass teacher: CE on logsumexp-aggregated classes + ``subclass.aux_weight`` * the
    contrastive auxiliary loss at ``subclass.aux_temperature`` (:func:`lelp_jax.subclass_distillation.subclass_teacher_loss`)."""
    num_classes = student_logits.shape[-1] // _subclass_count(cfg)
    return subclass_distillation.subclass_teacher_loss(
        student_logits, batch["label"], num_classes=num_classes,
        aux_weight=float(option(cfg, "subclass", "aux_weight", 1.0)),
        aux_temperature=float(option(cfg, "subclass", "aux_temperature", 1.0)), mask=batch_mask(batch))


def _subclass_student_loss(*, student_logits, batch, aux, cfg, **_: Any) -> jax.Array:
    """Subclass Distillation student: KD at ``subclass.tau`` on the subclass teacher's C*S logits (its
    forward pass runs here on the step's batch; ``aux`` holds its variables) + ``subclass.alpha`` * class
    CE (:func:`lelp_jax.subclass_distillation.subclass_student_loss`)."""
    if aux is None:
        raise ValueError("method 'subclass' needs the trained subclass teacher's variables as the step's aux.")
    num_classes = student_logits.shape[-1] // _subclass_count(cfg)
    model = subclass_teacher_model(cfg, num_classes)
    inputs = {k: v for k, v in batch.items() if k not in ("teacher_embedding", "teacher_logits")}
    _, t_logits = model.apply(aux, inputs, train=False)
    soft = subclass_distillation.subclass_student_loss(
        student_logits, jax.lax.stop_gradient(t_logits.astype(jnp.float32)),
        tau=float(option(cfg, "subclass", "tau", 1.0)), num_classes=num_classes, mask=batch_mask(batch))
    return mix_hard_labels(soft, targets.class_log_probs(student_logits, num_classes=num_classes), batch, cfg,
                           float(option(cfg, "subclass", "alpha", 0.0)))


# Not registered: the pipeline trains the subclass teacher with it (fit 'subclass_teacher').
SUBCLASS_TEACHER = Method(
    name="subclass_teacher", needs_teacher=False, loss=_subclass_teacher_loss, head_outputs=_subclass_head,
    class_log_probs=subclass_class_log_probs, description="Subclass-Distillation teacher (C*S head + aux loss)",
)
register_method(Method(
    name="subclass", needs_teacher=False, loss=_subclass_student_loss, head_outputs=_subclass_head,
    class_log_probs=subclass_class_log_probs, fit="subclass_teacher",
    description="Subclass Distillation: student distils a C*S-head teacher's subclass logits",
))
