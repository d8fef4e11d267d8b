"""lelp_jax: few-class knowledge distillation in JAX, built around LELP.

The core (statistics, projections, targets, losses: :mod:`lelp_jax.core`) is pure and jittable
and imports only jax and numpy (and flax.struct). Its public functions are compiled with their
options static, so they run as given inside ``jax.jit``, ``vmap`` and ``shard_map``;
:func:`checked` makes their value checks hold under jit too. The layers above it, each a
package named for its role, are drawn in docs/ARCHITECTURE.md.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

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
    "load_student",
]

# Names served on first use: the student bundle's loader (lelp_jax.student, a layer above the core) is
# imported only when asked for, so `import lelp_jax` stays the core.
LAZY = {"load_student": "lelp_jax.student.bundle"}


def __getattr__(name):
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'lelp_jax' has no attribute {name!r}")

# Modules that moved into the role packages (0.1.0 -> 0.2): the old dotted names still import, for
# one release, with a DeprecationWarning naming the new place.
MOVED_MODULES = {
    "statistics": "lelp_jax.core.statistics",
    "projections": "lelp_jax.core.projections",
    "targets": "lelp_jax.core.targets",
    "losses": "lelp_jax.core.losses",
    "sharpness": "lelp_jax.core.sharpness",
    "clustering": "lelp_jax.core.clustering",
    "subspace_kmeans": "lelp_jax.core.subspace_kmeans",
    "feature_losses": "lelp_jax.core.feature_losses",
    "subclass_distillation": "lelp_jax.core.subclass_distillation",
    "validation": "lelp_jax.core.validation",
    "atomic": "lelp_jax.core.atomic",
    "store": "lelp_jax.runtime.store",
    "progress": "lelp_jax.runtime.progress",
    "errors": "lelp_jax.runtime.errors",
    "sharding": "lelp_jax.runtime.sharding",
    "schema": "lelp_jax.config.schema",
    "overrides": "lelp_jax.config.overrides",
    "batch": "lelp_jax.data.batch",
    "teacher": "lelp_jax.pipeline.teacher",
    "precomputed": "lelp_jax.pipeline.precomputed",
    "sweep": "lelp_jax.protocol.sweep",
    "kfold": "lelp_jax.protocol.kfold",
    "grids": "lelp_jax.protocol.grids",
    "selection": "lelp_jax.protocol.selection",
    "paired": "lelp_jax.protocol.paired",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``lelp_jax.OLD`` as a thin module that re-exports ``MOVED_MODULES[OLD]``."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("lelp_jax.")
        if fullname.startswith("lelp_jax.") and old in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def exec_module(self, module):
        new = MOVED_MODULES[module.__name__.removeprefix("lelp_jax.")]
        warnings.warn(f"{module.__name__} moved to {new}; import it from there (the old name goes in 0.3).",
                      DeprecationWarning, stacklevel=2)
        target = importlib.import_module(new)
        module.__dict__.update({k: v for k, v in vars(target).items() if not k.startswith("__")})
        module.__getattr__ = lambda name: getattr(target, name)


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
