"""The method registry: the :class:`Method` contract, ``register_method``, and the helpers every
method's loss is built from (config options, the batch mask, the hard-label term, class log-probs).

The contract of each field is in :mod:`lelp_jax.methods`' docstring.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from lelp_jax.core import losses, targets
from lelp_jax.config import schema
from lelp_jax.data.batch import batch_mask

__all__ = [
    "Method", "METHODS", "register_method", "get_method", "method_names",
    "section", "option", "batch_mask", "hard_label_loss", "mix_hard_labels", "plain_class_log_probs",
    "subclass_class_log_probs", "plain_head", "lelp_head",
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
        """True when the step's ``aux`` must be a :class:`lelp_jax.core.projections.Projections`."""
        return self.fit == "projections"


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (a name can be registered once)."""
    if method.name in METHODS:
        raise ValueError(f"register_method: {method.name!r} is already registered; pick another name.")
    METHODS[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    """The registered methods' names, in registration order."""
    return tuple(METHODS)


def get_method(name: str) -> Method:
    """The registered method called ``name``; unknown names list the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}.") from None


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
def _base_config() -> Any:
    return schema.base_config()


def option(cfg: Any, name: str, key: str, default: Any = _BASE) -> Any:
    """``cfg[name][key]``; when absent or None, ``default``, or without one ``base_config()[name][key]``
    (:mod:`lelp_jax.config.schema`: every method's defaults are written there, once)."""
    sec = section(cfg, name)
    value = sec.get(key) if hasattr(sec, "get") else getattr(sec, key, None)
    if value is not None:
        return value
    return _base_config()[name][key] if default is _BASE else default


def plain_class_log_probs(student_logits: jax.Array, num_classes: int, cfg: Any) -> jax.Array:
    """C-way head: ``log_softmax(logits)``."""
    if student_logits.shape[-1] != num_classes:
        raise ValueError(f"student has {student_logits.shape[-1]} logits for {num_classes} classes; a plain-head "
                         "method needs head_outputs == num_classes.")
    return jax.nn.log_softmax(student_logits, axis=-1)


def subclass_class_log_probs(student_logits: jax.Array, num_classes: int, cfg: Any) -> jax.Array:
    """C*S-way head: ``log q_c = logsumexp_s log_softmax(r)_{c,s}`` (:func:`lelp_jax.core.targets.class_log_probs`)."""
    return targets.class_log_probs(student_logits, num_classes=num_classes)


def plain_head(num_classes: int, cfg: Any) -> int:
    """A C-way head."""
    return num_classes


def lelp_head(num_classes: int, cfg: Any) -> int:
    """A C*S head, S = ``lelp.num_subclasses``."""
    return num_classes * int(option(cfg, "lelp", "num_subclasses"))


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
