"""The importable core: pure, jittable functions of arrays, what other JAX codebases import.

Streaming per-class moments (:mod:`~lelp_jax.core.statistics`), LELP's projections
(:mod:`~lelp_jax.core.projections`), pseudo-subclass targets (:mod:`~lelp_jax.core.targets`),
the losses (:mod:`~lelp_jax.core.losses`, :mod:`~lelp_jax.core.feature_losses`), how sharply a
class is split (:mod:`~lelp_jax.core.sharpness`), clustering pseudo-subclasses
(:mod:`~lelp_jax.core.clustering`, :mod:`~lelp_jax.core.subspace_kmeans`), Subclass Distillation's
pieces (:mod:`~lelp_jax.core.subclass_distillation`), value checks that hold under jit
(:mod:`~lelp_jax.core.validation`) and the atomic writes its artifacts use (:mod:`~lelp_jax.core.atomic`).
It imports only jax, numpy and flax.struct; nothing of the layers above it.
"""
from lelp_jax.core.statistics import (
    ClassMoments,
    all_reduce_moments,
    batch_moments,
    covariance,
    init_moments,
    merge_moments,
    update_moments,
)
from lelp_jax.core.projections import (
    Projections,
    fit_projections,
    load_projections,
    null_space_projector,
    save_projections,
)
from lelp_jax.core.subspace_kmeans import SubspaceKMeans, fit_subspace_kmeans, subspace_kmeans_scores
from lelp_jax.core.targets import class_log_probs, projection_scores, split_targets, subclass_targets
from lelp_jax.core.losses import cross_entropy, kd_loss, lelp_loss, soft_cross_entropy
from lelp_jax.core.validation import checked

__all__ = [
    "ClassMoments",
    "init_moments",
    "batch_moments",
    "update_moments",
    "merge_moments",
    "all_reduce_moments",
    "covariance",
    "Projections",
    "null_space_projector",
    "fit_projections",
    "save_projections",
    "load_projections",
    "SubspaceKMeans",
    "fit_subspace_kmeans",
    "subspace_kmeans_scores",
    "subclass_targets",
    "projection_scores",
    "split_targets",
    "class_log_probs",
    "soft_cross_entropy",
    "cross_entropy",
    "kd_loss",
    "lelp_loss",
    "checked",
]
