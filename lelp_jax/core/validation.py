"""Value checks that hold eagerly and, through checkify, under jit.

The core checks the *values* of its inputs (labels in range, temperatures > 0,
finite embeddings, enough examples per class). Shapes and ranks are static, so
their errors are raised while tracing, eagerly and under ``jit`` alike. Values
are another matter: inside ``jax.jit``, ``vmap`` or ``shard_map`` they are
tracers, unknown until run time. So every value check has two forms:

- concrete inputs (eager calls): :func:`host_value` gives the values and the
  caller raises a ``ValueError`` naming the problem and the fix at once;
- traced inputs: :func:`check` stages a ``checkify.check(..., debug=True)``.
  Plain ``jit`` drops it (no cost, results unchanged); :func:`checked` (that is,
  ``jax.experimental.checkify``) turns a failed one into a ``ValueError`` with
  the same message (``checkify.JaxRuntimeError`` subclasses ``ValueError``).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = ["host_value", "is_traced", "check", "checked", "require_rank", "require_host"]


def is_traced(x) -> bool:
    """True inside a transformation (jit, vmap, grad, shard_map): ``x`` is a tracer."""
    return isinstance(x, jax.core.Tracer)


def host_value(x) -> Optional[np.ndarray]:
    """``x`` as a NumPy array when its values can be checked here, else None.

    None for tracers (inside a transformation only shapes are known) and for arrays
    spanning other hosts' devices (multi-host: fetching them would fail).
    """
    if is_traced(x):
        return None
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        return None
    return np.asarray(x)


def check(traced: Any, predicate: Callable[[], jax.Array], message: str, **fmt: Any) -> None:
    """Stage ``checkify.check(all(predicate()), message)`` when any leaf of ``traced`` is a tracer.

    The caller has already checked concrete values itself (richer message, raised at
    once). ``fmt`` are arrays for ``message``'s ``{name}`` fields. The check is a
    ``debug`` check: removed when the function is not checkified, enforced by
    :func:`checked`.
    """
    if any(is_traced(leaf) for leaf in jax.tree.leaves(traced)):
        checkify.check(jnp.all(predicate()), message, debug=True,
                       **{k: jnp.asarray(v) for k, v in fmt.items()})


def require_rank(x, ndim: int, fn: str, name: str, shape: str) -> None:
    """Raise ``ValueError`` unless ``x`` has ``ndim`` axes (``shape`` names them, e.g. '(B, K)')."""
    if np.ndim(x) != ndim:
        raise ValueError(f"{fn}: {name} must be {ndim}-D {shape}, got shape {tuple(np.shape(x))}; "
                         f"pass one row per example (reshape or vmap over extra axes).")


def require_host(fn: str, *arrays: Any) -> None:
    """Raise ``ValueError`` when a host-side (NumPy) function gets traced arrays."""
    if any(is_traced(leaf) for leaf in jax.tree.leaves(arrays)):
        raise ValueError(f"{fn} runs on the host (NumPy, float64) and needs concrete arrays; call it "
                         "outside jit/vmap/shard_map (e.g. on the fit set's scores once, before training).")


def checked(fn: Callable, *, errors=checkify.user_checks) -> Callable:
    """``fn`` with the core's value checks enforced also on traced inputs.

    ``checked(fn)(*args)`` runs ``checkify.checkify(fn, errors=errors)`` and raises
    ``ValueError`` (``checkify.JaxRuntimeError``) with the first failed check's
    message: the bad inputs that raise eagerly (labels out of range, temperatures
    <= 0, NaN/inf inputs, a class with too few examples for its subclasses, ...) then
    raise inside ``jax.jit``, ``vmap`` and ``shard_map`` too. ``fn`` may itself be
    jitted, and ``jax.jit(checkify.checkify(fn))`` is the compiled form of the same
    thing; add ``checkify.nan_checks`` etc. to ``errors`` for JAX's automatic checks.
    """
    functional = checkify.checkify(fn, errors=errors)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        err, out = functional(*args, **kwargs)
        err.throw()
        return out

    return run
