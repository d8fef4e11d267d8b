"""The teacher interface: what distillation needs from any teacher.

A ``Teacher`` bundles a pure ``apply_fn(variables, batch) -> (embedding (B, D),
logits (B, C))`` (eval mode), its ``variables``, a ``classifier_weights()`` that
returns the final linear layer ``(W (C, D), b (C,))`` with ``logits = h W^T + b``,
and a ``name`` (part of cache keys and reports). Any Flax model is wrapped in a
few lines, as long as it returns ``(embedding, logits)`` and its last layer is a
Dense at a known path::

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from lelp_jax.models import teacher_from_flax

    class MyNet(nn.Module):
        @nn.compact
        def __call__(self, batch, train=False):
            h = nn.relu(nn.Dense(64)(batch["features"]))
            return h, nn.Dense(2, name="head")(h)

    batch = {"features": jnp.ones((4, 10))}
    variables = MyNet().init(jax.random.key(0), batch)
    teacher = teacher_from_flax(MyNet(), variables, name="my_net")
    embedding, logits = teacher.apply_fn(teacher.variables, batch)  # (4, 64), (4, 2)
    W, b = teacher.classifier_weights()                            # (2, 64), (2,)

A teacher that is not Flax (or not linear-headed in this layout) builds
``Teacher(apply_fn=..., variables=..., classifier_weights=..., name=...)`` directly.

An NNX teacher goes through the same wrapper: ``teacher_from_flax(from_nnx(MyNNXNet, **options),
nnx_variables(trained_instance))`` (``lelp_jax.models.nnx_adapter``).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp


class TeacherFn(Protocol):
    """``(variables, batch) -> (embedding (B, D), logits (B, C))``, pure and jit-able."""

    def __call__(self, variables: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]: ...


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen teacher: ``apply_fn``, its ``variables``, its linear classifier and a name."""

    apply_fn: TeacherFn
    variables: Any
    classifier_weights: Callable[[], tuple[jax.Array, jax.Array]]
    name: str

    def __call__(self, batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
        """``apply_fn(variables, batch)``."""
        return self.apply_fn(self.variables, batch)


def head_weights(variables: Any, head_path: Sequence[str] = ("head",)) -> tuple[jax.Array, jax.Array]:
    """``(W, b)`` of the Dense at ``params[head_path]``: W = kernel^T (C, D), b = bias (C,) (zeros if no bias)."""
    node = variables.get("params") if isinstance(variables, Mapping) else None
    if node is None:
        raise ValueError("variables have no 'params' collection; pass the dict returned by module.init(...).")
    for i, key in enumerate(head_path):
        if not isinstance(node, Mapping) or key not in node:
            keys = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise ValueError(f"no Dense head at params{list(head_path[: i + 1])}; available here: {keys}. "
                             "Pass head_path= the path of your final Dense layer (the pipeline reads "
                             "params['head']: nn.Dense(name='head') in Linen, self.head = nnx.Linear(...) in NNX).")
        node = node[key]
    if not isinstance(node, Mapping) or "kernel" not in node:
        raise ValueError(f"params{list(head_path)} is not a Dense layer (no 'kernel'); "
                         "the head must be an nn.Dense.")
    kernel = jnp.asarray(node["kernel"])
    if kernel.ndim != 2:
        raise ValueError(f"head kernel must be 2-D (D, C), got shape {kernel.shape}.")
    bias = jnp.asarray(node["bias"]) if "bias" in node else jnp.zeros(kernel.shape[1], kernel.dtype)
    return kernel.T, bias


def teacher_from_flax(module: nn.Module, variables: Any, *, head_path: Sequence[str] = ("head",),
                      name: str | None = None, apply_kwargs: Mapping[str, Any] | None = None) -> Teacher:
    """Wrap a Flax module returning ``(embedding, logits)`` as a ``Teacher``.

    ``apply_fn(v, batch) = module.apply(v, batch, **apply_kwargs)`` with
    ``apply_kwargs`` default ``{'train': False}`` (eval: BatchNorm running averages,
    no dropout); pass ``{}`` for a module without a ``train`` argument. The head is
    checked now, so a wrong ``head_path`` fails at wrap time, not mid-pipeline.
    """
    head_path = tuple(head_path)
    head_weights(variables, head_path)
    kwargs = dict({"train": False} if apply_kwargs is None else apply_kwargs)

    def apply_fn(v: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, jax.Array]:
        out = module.apply(v, batch, **kwargs)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ValueError(f"{type(module).__name__} must return (embedding, logits); got {type(out).__name__}.")
        return out

    return Teacher(apply_fn=apply_fn, variables=variables,
                   classifier_weights=lambda: head_weights(variables, head_path),
                   name=name or type(module).__name__)
