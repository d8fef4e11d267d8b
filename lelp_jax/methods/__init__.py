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
  core (:mod:`lelp_jax.core.losses`, :mod:`lelp_jax.core.targets`); padding rows (``batch['mask']``
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
  (:func:`lelp_jax.core.sharpness.split_diagnostics`); None for methods that do not split.

``cfg`` is the run's full config; each method reads its own section (``cfg.kd``,
``cfg.lelp``, ...) through :func:`option`; a key the config lacks (or sets to None) takes
``base_config()``'s value (:mod:`lelp_jax.config.schema`), the one place a default is written. Every
hard-label term (ce; the ``alpha`` term of kd, fitnet, rkd, lelp and its ablations,
kmeans, agglomerative, oracle, subclass) is :func:`hard_label_loss`, which reads
``cfg.train.label_smoothing``. A new method is one ``register_method(Method(...))`` call.

Modules: :mod:`~lelp_jax.methods.registry` (the contract, the registry, the shared helpers),
:mod:`~lelp_jax.methods.kd` (C-way heads: ce, kd, fitnet, rkd), :mod:`~lelp_jax.methods.splitting`
(C*S heads: lelp and its ablations, kmeans, agglomerative, oracle, lelp_kmeans) and
:mod:`~lelp_jax.methods.subclass` (Subclass Distillation).
"""

from __future__ import annotations

from lelp_jax.methods.kd import CE, FITNET, KD, RKD
from lelp_jax.methods.registry import (METHODS, Method, batch_mask, get_method, hard_label_loss, lelp_head,
                                       method_names, mix_hard_labels, option, plain_class_log_probs, plain_head,
                                       register_method, section, subclass_class_log_probs)
from lelp_jax.methods.splitting import SPLITTING, split_beta
from lelp_jax.methods.subclass import SUBCLASS, SUBCLASS_TEACHER, subclass_teacher_model

__all__ = [
    "Method", "METHODS", "register_method", "get_method", "method_names",
    # building blocks for registering more methods
    "section", "option", "batch_mask", "hard_label_loss", "mix_hard_labels", "plain_class_log_probs",
    "subclass_class_log_probs", "plain_head", "lelp_head", "split_beta",
    # the Subclass-Distillation teacher (trained by the pipeline, not a student method)
    "SUBCLASS_TEACHER", "subclass_teacher_model",
]

for _method in (CE, KD, *SPLITTING, FITNET, RKD, SUBCLASS):
    register_method(_method)
