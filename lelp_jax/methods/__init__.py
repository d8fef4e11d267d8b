"""The method registry: what each distillation method needs, its loss, its class prediction.

A :class:`Method` (:mod:`~lelp_jax.methods.registry`, documented there field by field) is a frozen
value: ``parse_options(config)`` reads the method's settings once from the run's locked, complete
config into a frozen dataclass (e.g. :class:`KDOptions`); ``loss(inputs, options)`` maps one
:class:`LossInputs` (student logits and embedding, batch, teacher outputs, the fitted artifact,
the method's own params) to a scalar inside the compiled step; ``head_outputs(num_classes,
options)`` gives the head width, or None when the fitted artifact fixes it. Every hard-label
term (ce; the ``alpha`` term of kd, fitnet, rkd, lelp and its ablations, kmeans, agglomerative,
oracle, subclass) is :func:`hard_label_loss` at ``train.label_smoothing``. A new method is one
``register_method(Method(...))`` call (docs/EXTENDING.md).

Modules: :mod:`~lelp_jax.methods.registry` (the contract, the registry, the shared helpers),
:mod:`~lelp_jax.methods.kd` (C-way heads: ce, kd, fitnet, rkd), :mod:`~lelp_jax.methods.splitting`
(C*S heads: lelp and its ablations, kmeans, agglomerative, oracle, lelp_kmeans) and
:mod:`~lelp_jax.methods.subclass` (Subclass Distillation).
"""

from __future__ import annotations

from lelp_jax.methods.kd import CE, FITNET, KD, RKD, CEOptions, FitNetOptions, KDOptions, RKDOptions
from lelp_jax.methods.registry import (METHODS, InitParams, LossInputs, Method, batch_mask, get_method,
                                       hard_label_loss, method_names, mix_hard_labels, plain_class_log_probs,
                                       plain_head, register_method, subclass_class_log_probs)
from lelp_jax.methods.splitting import (SPLITTING, KMeansOptions, ProjectionOptions, SplitOptions, lelp_head,
                                        split_beta, split_options)
from lelp_jax.methods.subclass import SUBCLASS, SUBCLASS_TEACHER, SubclassOptions, subclass_teacher_model

__all__ = [
    "Method", "LossInputs", "InitParams", "METHODS", "register_method", "get_method", "method_names",
    # each method's options
    "CEOptions", "KDOptions", "FitNetOptions", "RKDOptions", "SplitOptions", "ProjectionOptions",
    "KMeansOptions", "SubclassOptions", "split_options",
    # building blocks for registering more methods
    "batch_mask", "hard_label_loss", "mix_hard_labels", "plain_class_log_probs",
    "subclass_class_log_probs", "plain_head", "lelp_head", "split_beta",
    # the Subclass-Distillation teacher (trained by the pipeline, not a student method)
    "SUBCLASS_TEACHER", "subclass_teacher_model",
]

for _method in (CE, KD, *SPLITTING, FITNET, RKD, SUBCLASS):
    register_method(_method)
