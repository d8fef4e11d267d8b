"""Flax NNX models as teachers and students, behind the Linen contract the pipeline speaks.

The train step, checkpoints, sharding and evaluation handle Linen variables
``{'params'[, 'batch_stats']}``; an ``nnx.Module`` class enters through :class:`NNXModel`, a
Linen module that builds the NNX module inside each ``init``/``apply``, moves its
``nnx.Param`` / ``nnx.BatchStat`` values in and out of those two collections and calls it
on the batch. Nothing downstream knows the model is NNX.

Why not ``flax.nnx.bridge.ToLinen`` as is: it keys the variables by the NNX path, so the
layers of an ``nnx.List`` sit under int keys (``params['layers'][0]``); a checkpoint
restored by its metadata comes back with ``'0'`` and ToLinen then fails to match it. Here
every key is a string from the start, so a saved tree and the model's own agree.

The NNX class takes ``num_outputs`` and ``rngs`` in ``__init__`` (its other keyword
arguments are the config's ``model_kwargs``) and ``__call__(batch, *, train=False)``
returns ``(embedding, logits)``; a teacher names its last ``nnx.Linear`` ``self.head``, so
its classifier is ``params['head']['kernel'].T`` as for a Linen model. Randomness comes
from the Linen rngs: ``params`` at init, ``dropout`` in train mode (``nnx.Dropout``'s
default stream), ``default`` as a fallback. The module is rebuilt inside every traced
apply: its initialisers are traced and then dropped by XLA as dead code.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from flax import nnx
from flax.core import FrozenDict

_COLLECTIONS = {nnx.Param: "params", nnx.BatchStat: "batch_stats"}


def is_nnx_class(cls: Any) -> bool:
    """Whether ``cls`` is an ``nnx.Module`` subclass (not an instance)."""
    return isinstance(cls, type) and issubclass(cls, nnx.Module)


def nnx_options(cls: type[nnx.Module]) -> list[str]:
    """The keyword arguments of ``cls.__init__`` that ``build_model`` may pass (all but ``rngs``)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in params if p.name not in ("self", "rngs")
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_nnx_class(cls: type[nnx.Module]) -> None:
    """Raise a ValueError when ``cls`` cannot be built as ``cls(num_outputs=..., rngs=...)``."""
    params = inspect.signature(cls.__init__).parameters
    for name in ("num_outputs", "rngs"):
        if name not in params:
            raise ValueError(f"{cls.__name__}.__init__ must take '{name}' to be built by build_model "
                             "(e.g. def __init__(self, num_outputs: int, *, rngs: nnx.Rngs)).")


def _flat_variables(module: nnx.Module) -> dict[tuple[str, tuple[Any, ...]], Any]:
    """``{(collection, NNX path): value}`` of the ``nnx.Param`` and ``nnx.BatchStat`` values of ``module``."""
    other = nnx.state(module, nnx.Not(nnx.Any(nnx.Param, nnx.BatchStat, nnx.RngState)))
    for path, var in nnx.to_flat_state(other):
        raise ValueError(f"{type(module).__name__}: variable {'/'.join(map(str, path))} is a "
                         f"{type(var).__name__}; the train step keeps nnx.Param and nnx.BatchStat only.")
    return {(collection, tuple(path)): var.get_value()
            for kind, collection in _COLLECTIONS.items()
            for path, var in nnx.to_flat_state(nnx.state(module, kind))}


def _nest(flat: Mapping[tuple[str, tuple[Any, ...]], Any]) -> dict[str, dict[str, Any]]:
    """Linen collections from ``_flat_variables``: nested dicts, every key a string (checkpoints agree)."""
    out: dict[str, dict[str, Any]] = {}
    for (collection, path), value in flat.items():
        node = out.setdefault(collection, {})
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = value
    return out


def nnx_variables(module: nnx.Module) -> dict[str, dict[str, Any]]:
    """Linen-style variables ``{'params'[, 'batch_stats']}`` (string keys) of an NNX module instance.

    What :class:`NNXModel` keeps for the same class: hand a trained NNX teacher to
    ``teacher_from_flax(from_nnx(cls, ...), nnx_variables(module))`` or ``head_weights``.
    """
    return _nest(_flat_variables(module))


def _lookup(variables: Mapping[str, Any], collection: str, path: tuple[Any, ...]) -> Any:
    node: Any = variables.get(collection, {})
    for i, key in enumerate(map(str, path)):
        if not isinstance(node, Mapping) or key not in node:
            raise ValueError(f"the variables have no {collection}/{'/'.join(map(str, path[: i + 1]))}, which "
                             "the NNX module has; were they made by this model with the same options?")
        node = node[key]
    return node


class NNXModel(nn.Module):
    """A Linen module around an NNX class: ``apply(variables, batch, train=...)`` like any registered model."""

    nnx_class: type[nnx.Module]
    options: FrozenDict = FrozenDict()

    def _rngs(self) -> nnx.Rngs:
        """The Linen rngs of this call as NNX streams, plus a ``default`` (a fresh params key at init)."""
        keys = {name: self.make_rng(name) for name in self.scope.rngs}
        if "default" not in keys:
            keys["default"] = self.make_rng("params") if "params" in keys else 0
        return nnx.Rngs(**keys)

    def _store(self, flat: Mapping[tuple[str, tuple[Any, ...]], Any]) -> None:
        for collection, tree in _nest(flat).items():
            for key, value in tree.items():
                self.put_variable(collection, key, value)

    @nn.compact
    def __call__(self, batch: Mapping[str, Any], *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        module = self.nnx_class(**self.options, rngs=self._rngs())
        if self.is_initializing():
            self._store(_flat_variables(module))  # the state as built, before a train-mode call moves it
            return module(batch, train=train)
        given = {k: _lookup(self.variables, *k) for k in _flat_variables(module)}
        held = sum(len(jax.tree_util.tree_leaves(self.variables.get(c, {}))) for c in _COLLECTIONS.values())
        if held != len(given):
            raise ValueError(f"the variables hold {held - len(given)} array(s) that {self.nnx_class.__name__} "
                             "does not have; were they made by this model with the same options?")
        nnx.update(module, nnx.traversals.unflatten_mapping({path: v for (_, path), v in given.items()}))
        out = module(batch, train=train)
        self._store({k: v for k, v in _flat_variables(module).items() if self.is_mutable_collection(k[0])})
        return out


def from_nnx(nnx_class: type[nnx.Module], **options: Any) -> NNXModel:
    """``NNXModel(nnx_class, options)``: an unregistered NNX class as a Linen module (e.g. a teacher)."""
    if not is_nnx_class(nnx_class):
        raise ValueError(f"from_nnx needs an nnx.Module subclass, got {nnx_class!r}.")
    return NNXModel(nnx_class=nnx_class, options=FrozenDict(options))
