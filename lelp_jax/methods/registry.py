"""The method registry: the typed :class:`Method` contract, the loss's :class:`LossInputs`,
``register_method``, and the helpers every method's loss is built from (the hard-label term,
class log-probs, head widths).

A method is a frozen value: its options are parsed once from the run's locked, complete
``ml_collections.ConfigDict`` (``parse_options``, outside any compiled function) into a frozen
dataclass of the method's own, and every other callable takes that dataclass, never the config.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Generic, Optional, Protocol, TypeVar

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from lelp_jax.core import losses, targets
from lelp_jax.data.batch import batch_mask

__all__ = [
    "Method", "LossInputs", "InitParams", "METHODS", "register_method", "get_method", "method_names",
    "batch_mask", "labelled_mask", "hard_label_loss", "mix_hard_labels", "plain_class_log_probs",
    "subclass_class_log_probs", "plain_head",
]

Batch = Mapping[str, jax.Array]
PyTree = Any  # a JAX pytree (nested dicts/dataclasses of arrays): fitted artifacts, parameters
O = TypeVar("O")  # a method's options: a frozen dataclass
O_contra = TypeVar("O_contra", contravariant=True)


@struct.dataclass
class LossInputs:
    """Everything a method's loss may read, one pytree (built inside the train step).

    ``student_logits (B, H)`` (H = the head width), ``student_embedding (B, D_s)``, ``batch`` (the
    batch dict: ``label (B,)``, ``mask (B,)``, inputs, ...), ``teacher_embedding (B, D_t)`` and
    ``teacher_logits (B, C)`` (None unless ``needs_teacher``), ``aux`` (the fitted artifact of the
    method's ``fit``, or None), ``method_params`` (the method's trainable params, ``{}`` if none).
    """

    student_logits: jax.Array
    batch: Batch
    student_embedding: Optional[jax.Array] = None
    teacher_embedding: Optional[jax.Array] = None
    teacher_logits: Optional[jax.Array] = None
    aux: PyTree = None
    method_params: PyTree = struct.field(default_factory=dict)


class InitParams(Protocol[O_contra]):
    """``init_params(key, *, student_embedding_dim, teacher_embedding_dim, options) -> params``."""

    def __call__(self, key: jax.Array, *, student_embedding_dim: int, teacher_embedding_dim: Optional[int],
                 options: O_contra) -> PyTree: ...


def _no_fit_kwargs(options: Any) -> dict[str, Any]:
    return {}


@dataclasses.dataclass(frozen=True)
class Method(Generic[O]):
    """A distillation method: what the train step must provide, and what it computes.

    Fields (``O`` is the method's options dataclass):

    - ``name``: the registry key (``--methods NAME``, the runs' folder names).
    - ``needs_teacher``: the train step must provide ``teacher_embedding`` / ``teacher_logits``.
    - ``parse_options(config) -> O``: the method's settings, read once from the locked, complete
      config (its own section, e.g. ``config.kd``); the train step closes over the result (static).
    - ``loss(inputs: LossInputs, options: O) -> scalar``: jittable, built from the core
      (:mod:`lelp_jax.core.losses`, :mod:`lelp_jax.core.targets`); padding rows (``batch['mask']`` 0)
      carry no weight.
    - ``head_outputs(num_classes, options) -> int | None``: the student head width (C, or C*S);
      None when the fitted artifact fixes it (the oracle: C * most fine labels in a class, its
      ``aux.head_outputs``), see :meth:`student_outputs`.
    - ``class_log_probs(student_logits, num_classes) -> (B, C)``: class log-probabilities of the
      student's logits (argmax = the prediction).
    - ``fit``: the kind of artifact the pipeline builds before training and passes as ``aux``
      (``'projections'``, ``'kmeans'``, ``'agglomerative'``, ``'subspace_kmeans'``, ``'oracle'``,
      ``'subclass_teacher'``, a registered kind, or None); ``fit_kwargs(options)``: that fit's keyword
      arguments (e.g. of :func:`lelp_jax.core.projections.fit_projections`).
    - ``init_params`` (:class:`InitParams`): the method's own trainable params (a FitNet adapter),
      or None.
    - ``needs_fine_labels``: the dataset must carry ``fine_label`` (the oracle).
    - ``description``: one line for listings.
    - ``scores(aux, teacher_embedding, options) -> (B, C, S)``: for a method splitting each class by
      ``softmax_s(z_{c,.} / beta_c)``, its scores z (the pipeline calibrates beta_c on them for
      ``lelp.target_entropy``); None otherwise.
    - ``split(aux, teacher_embedding, batch, options) -> (B, C, S)``: the split t_{c,s} / p_c its
      targets use (rows over s sum to 1), for the diagnostics every run records; None when the
      method does not split.
    """

    name: str
    needs_teacher: bool
    parse_options: Callable[[ml_collections.ConfigDict], O]
    loss: Callable[[LossInputs, O], jax.Array]
    head_outputs: Callable[[int, O], Optional[int]]
    class_log_probs: Callable[[jax.Array, int], jax.Array]
    fit: Optional[str] = None
    fit_kwargs: Callable[[O], Mapping[str, Any]] = _no_fit_kwargs
    init_params: Optional[InitParams[O]] = None
    needs_fine_labels: bool = False
    description: str = ""
    scores: Optional[Callable[[PyTree, jax.Array, O], jax.Array]] = None
    split: Optional[Callable[[PyTree, jax.Array, Batch, O], jax.Array]] = None

    def fit_options(self, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """The keyword arguments of this method's fit under ``config``."""
        return dict(self.fit_kwargs(self.parse_options(config)))

    def student_outputs(self, num_classes: int, config: ml_collections.ConfigDict, aux: PyTree = None) -> int:
        """The student's head width: ``aux.head_outputs`` when the fitted artifact fixes it, else
        ``head_outputs(num_classes, options)``."""
        width = getattr(aux, "head_outputs", None)
        if width is None:
            width = self.head_outputs(num_classes, self.parse_options(config))
        if width is None:
            raise ValueError(f"method {self.name!r}: its head width comes from its fitted artifact; pass it as aux.")
        return int(width)

    @property
    def needs_projections(self) -> bool:
        """True when the step's ``aux`` must be a :class:`lelp_jax.core.projections.Projections`."""
        return self.fit == "projections"


METHODS: dict[str, Method[Any]] = {}


def register_method(method: Method[Any]) -> Method[Any]:
    """Add ``method`` to the registry (a name can be registered once)."""
    if method.name in METHODS:
        raise ValueError(f"register_method: {method.name!r} is already registered; pick another name.")
    METHODS[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    """The registered methods' names, in registration order."""
    return tuple(METHODS)


def get_method(name: str) -> Method[Any]:
    """The registered method called ``name``; unknown names list the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}.") from None


def plain_class_log_probs(student_logits: jax.Array, num_classes: int) -> jax.Array:
    """C-way head: ``log_softmax(logits)``."""
    if student_logits.shape[-1] != num_classes:
        raise ValueError(f"student has {student_logits.shape[-1]} logits for {num_classes} classes; a plain-head "
                         "method needs head_outputs == num_classes.")
    return jax.nn.log_softmax(student_logits, axis=-1)


def subclass_class_log_probs(student_logits: jax.Array, num_classes: int) -> jax.Array:
    """C*S-way head: ``log q_c = logsumexp_s log_softmax(r)_{c,s}`` (:func:`lelp_jax.core.targets.class_log_probs`)."""
    return targets.class_log_probs(student_logits, num_classes=num_classes)


def plain_head(num_classes: int, options: Any) -> int:
    """A C-way head (whatever the options)."""
    return num_classes


def labelled_mask(batch: Batch) -> jax.Array:
    """``batch_mask(batch) * [label >= 0]``: the rows a hard-label term may use. Unlabelled transfer rows
    (``data.labelled_fraction`` < 1, a transfer file; :mod:`lelp_jax.data.splits`) carry label -1: they get
    the soft terms only."""
    return batch_mask(batch) * (batch["label"] >= 0).astype(jnp.float32)


def hard_label_loss(class_logits: jax.Array, batch: Batch, label_smoothing: float) -> jax.Array:
    """Every method's hard-label term: CE(y, softmax(class_logits)) with label smoothing
    eps = ``label_smoothing`` (``train.label_smoothing``), target (1 - eps) onehot(y) + eps / C
    (Szegedy et al. 2016), averaged over the batch's labelled rows (:func:`labelled_mask`:
    ``sum_b m_b l_b / sum_b m_b``, 0 for a batch without one): a transfer row's -1 is no class.

    ``class_logits (B, C)``: a C-way head's logits, or a C*S head's class log-probabilities
    ``log q_c`` (log_softmax leaves normalised log-probabilities unchanged).
    """
    mask = labelled_mask(batch)
    labels = jnp.maximum(batch["label"], 0)  # -1 rows have weight 0; any class index keeps the CE finite
    if label_smoothing:
        smooth = optax.smooth_labels(jax.nn.one_hot(labels, class_logits.shape[-1],
                                                    dtype=class_logits.dtype), label_smoothing)
        return losses.soft_cross_entropy(class_logits, smooth, mask=mask)
    return losses.cross_entropy(class_logits, labels, mask=mask)


def mix_hard_labels(soft: jax.Array, class_logits: jax.Array, batch: Batch, *, alpha: float,
                    label_smoothing: float) -> jax.Array:
    """``(1 - alpha) * soft + alpha * hard_label_loss(class_logits)`` (just ``soft`` when alpha = 0)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (weight of the hard-label term), got {alpha!r}.")
    if alpha == 0.0:
        return soft
    return (1.0 - alpha) * soft + alpha * hard_label_loss(class_logits, batch, label_smoothing)
