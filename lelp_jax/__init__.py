"""lelp_jax: few-class knowledge distillation in JAX, built around LELP.

The core (statistics, projections, targets, losses) is pure and jittable and
imports only jax and numpy (and flax.struct). Its public functions are compiled
with their options static, so they run as given inside ``jax.jit``, ``vmap`` and
``shard_map``; :func:`checked` makes their value checks hold under jit too.
"""
from lelp_jax.statistics import (
    ClassMoments,
    all_reduce_moments,
    batch_moments,
    covariance,
    init_moments,
    merge_moments,
    update_moments,
)
from lelp_jax.projections import (
    Projections,
    fit_projections,
    load_projections,
    null_space_projector,
    save_projections,
)
from lelp_jax.targets import class_log_probs, projection_scores, split_targets, subclass_targets
from lelp_jax.losses import cross_entropy, kd_loss, lelp_loss, soft_cross_entropy
from lelp_jax.validation import checked

__version__ = "0.1.0"

__all__ = [
    "__version__",
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
