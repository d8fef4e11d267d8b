"""Value checks that hold eagerly and, through checkify, under jit.

The core checks the *values* of its inputs (labels in range, temperatures > 0,
finite embeddings, enough examples per class). Shapes and ranks are static, so
their errors are raised while tracing, eagerly and under ``jit`` alike. Values
are another matter: inside ``jax.jit``, ``vmap`` or ``shard_map`` they are
tracers, unknown until run time. So every value check has two forms:

- concrete inputs (eager calls): a ``ValueError`` naming the problem and the fix,
  raised at once;
- traced inputs: a staged ``checkify.check(..., debug=True)``. Plain ``jit`` drops
  it (no cost, results unchanged); :func:`checked` (that is,
  ``jax.experimental.checkify``) turns a failed one into a ``ValueError`` with
  the same message (``checkify.JaxRuntimeError`` subclasses ``ValueError``).

:func:`require` is both forms in one call, so each check is written once.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = ["host_value", "is_traced", "require", "require_labels", "checked", "unstaged_checks", "require_rank",
           "require_host"]

# Whether ``require`` stages its checkify check when traced (see ``unstaged_checks``).
_STAGE_CHECKS = contextvars.ContextVar("lelp_jax_stage_checks", default=True)


@contextlib.contextmanager
def unstaged_checks() -> Iterator[None]:
    """Trace without staging ``require``'s checks: for compiled steps whose inputs were checked already.

    A staged ``checkify.check`` is dropped by plain ``jit`` at run time, but it is an
    effect of the traced program, and a program with effects misses JAX's C++ dispatch
    path: every call then goes through Python (about 5 ms a call on a 2-core CPU, 20x a
    small student's step). The pipeline's train and eval steps are traced inside this
    context (their labels, temperatures and data are checked before training); eager
    calls still raise, and a user's own ``jit`` / :func:`checked` is unaffected.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from lelp_jax.core.validation import require, unstaged_checks
      >>> def f(t):
      ...     require(t > 0, "t must be > 0")
      ...     return 2 * t
      >>> with unstaged_checks():
      ...     print(jax.make_jaxpr(f)(jnp.float32(1.0)).effects)
      set()
    """
    token = _STAGE_CHECKS.set(False)
    try:
        yield
    finally:
        _STAGE_CHECKS.reset(token)


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


def require(ok: Any, message: str, *args: Any, **kwargs: Any) -> None:
    """Require ``all(ok)``: a ``ValueError`` at once when ``ok`` is concrete, a checkify check when traced.

    ``ok`` is a boolean (array) computed from the inputs; ``message`` a ``str.format``
    template filled from ``args``/``kwargs`` (arrays, e.g. the offending value), as in
    ``checkify.check``. Concrete ``ok`` (an eager call): raise ``ValueError(message)``
    unless every element is true. Traced ``ok`` (inside jit, vmap, shard_map): stage
    ``checkify.check(jnp.all(ok), message, *args, **kwargs, debug=True)``, which plain
    ``jit`` drops and :func:`checked` enforces, with the same message. An ``ok`` that
    spans other hosts' devices is not checked eagerly (fetching it would fail).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from lelp_jax.core.validation import checked, require
      >>> def inverse(t):
      ...     require(t > 0, "t must be > 0, got {}", t)
      ...     return 1.0 / t
      >>> inverse(-2.0)
      Traceback (most recent call last):
      ...
      ValueError: t must be > 0, got -2.0
      >>> print(checked(jax.jit(inverse))(jnp.float32(4.0)))
      0.25
      >>> try:  # checkify.JaxRuntimeError is a ValueError
      ...     checked(jax.jit(inverse))(jnp.float32(-2.0))
      ... except ValueError as err:
      ...     print(err)
      t must be > 0, got -2.0 (`check` failed)
    """
    if is_traced(ok):
        if not _STAGE_CHECKS.get():
            return
        checkify.check(jnp.all(ok), message, *map(jnp.asarray, args), debug=True,
                       **{k: jnp.asarray(v) for k, v in kwargs.items()})
        return
    value = host_value(ok)
    if value is not None and not np.all(value):
        raise ValueError(message.format(*map(_scalar, args), **{k: _scalar(v) for k, v in kwargs.items()}))


def _scalar(x: Any) -> Any:
    """``x`` as checkify formats it: a NumPy scalar (so format specs like ``{:g}`` work) or array."""
    value = host_value(x)
    return x if value is None else value[()]


def require_labels(labels: Any, num_classes: int, fn: str, hint: str, *, mask: Any = None) -> None:
    """:func:`require` the labels (of the rows with a nonzero ``mask`` weight) to lie in ``[0, num_classes)``;
    the message names the first offending label and its row, then ``hint`` (the fix)."""
    if not np.size(labels):
        return
    ok = (labels >= 0) & (labels < num_classes)
    if mask is not None:
        ok = ok | (mask == 0)
    row = jnp.argmin(ok)
    require(ok, f"{fn}: labels must lie in [0, {num_classes}), got {{}} at row {{}}; {hint}.",
            jnp.asarray(labels)[row], row)


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
    raise inside ``jax.jit``, ``vmap`` and ``shard_map`` too. Plain ``jit`` drops the
    checks (no cost); this is how to keep them where they matter.

    Args:
      fn: a function of arrays, possibly jitted (``jax.jit(checkify.checkify(fn))`` is the
        compiled form of the same thing).
      errors: the checkify error set; add ``checkify.nan_checks`` etc. for JAX's automatic checks.
    Returns:
      A function with ``fn``'s signature and outputs that raises on a failed check.

    Examples:
      >>> import jax, numpy as np, lelp_jax as lj
      >>> step = jax.jit(lambda r, y: lj.cross_entropy(r, y))
      >>> r, bad = np.zeros((2, 3), np.float32), np.array([0, 3])
      >>> print(step(r, bad))  # plain jit: the check is dropped
      nan
      >>> try:
      ...     lj.checked(step)(r, bad)
      ... except ValueError as err:
      ...     print(str(err).split(";")[0])
      cross_entropy: labels must lie in [0, 3), got 3 at row 1
    """
    functional = checkify.checkify(fn, errors=errors)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        err, out = functional(*args, **kwargs)
        err.throw()
        return out

    return run
