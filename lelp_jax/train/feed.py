"""How batches reach the compiled train step: read on the host, or gathered on the device.

:class:`HostFeed` reads each batch with the iterator, adds cached teacher outputs by ``index``
and sends it (one step per call). :class:`ResidentFeed` holds the whole split (and the teacher
cache's rows) on the device (:class:`lelp_jax.data.resident.ResidentBatches`); once per epoch it
sends the batch positions of that epoch and the next, ``(2B, G)`` indices and mask computed on
the host by :meth:`BatchIterator.positions` (same ``default_rng([seed, epoch])`` permutation,
same padding), and each call gathers its batches inside the compiled program: ``k`` steps per
call are a ``lax.scan`` over the positions ``offset .. offset + k``. One step per call runs the
step body itself (no scan), so its arithmetic is the host path's, bit for bit.

Both feeds advance the iterator, so ``get_state`` / ``set_state`` (the checkpointed data position)
mean the same in either mode and a run resumes in the other.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lelp_jax.data.iterator import BatchIterator
from lelp_jax.data.resident import ResidentBatches, gather_rows, resident_bytes
from lelp_jax.methods.registry import PyTree
from lelp_jax.runtime import sharding as shd
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.train.step import strip, unstaged

__all__ = ["HostFeed", "ResidentFeed", "ResidentEval", "make_feed", "use_resident"]


class HostFeed:
    """Batches read on the host, one compiled step per call."""

    max_steps_per_call = 1

    def __init__(self, batches: Any, mesh: Mesh, train_step: Callable, teacher_cache: Any = None):
        self.batches, self.mesh, self.train_step, self.teacher_cache = batches, mesh, train_step, teacher_cache
        self._next: Optional[dict] = None
        self._shapes: set = set()

    def compiles(self, count: int) -> Optional[str]:
        """What the next ``run`` compiles first (``'compiling (bucket 64)'``: a new batch shape), else None;
        reads the next batch."""
        self._next = strip(next(self.batches))
        shapes = tuple(sorted((k, v.shape) for k, v in self._next.items()))
        if shapes in self._shapes:
            return None
        self._shapes.add(shapes)
        ids = self._next.get("input_ids")
        return "compiling the train step" + (f" (bucket {ids.shape[1]})" if ids is not None else "")

    def run(self, state: Any, count: int, teacher: Optional[PyTree], aux: PyTree) -> tuple[Any, dict]:
        """One step (``count`` must be 1): the next batch, its teacher outputs, the step."""
        assert count == 1, count
        host_batch, self._next = (self._next if self._next is not None else strip(next(self.batches))), None
        if self.teacher_cache is not None:
            emb, logits = self.teacher_cache.lookup(host_batch["index"])
            host_batch = {**host_batch, "teacher_embedding": emb, "teacher_logits": logits}
        return self.train_step(state, shd.shard_batch(host_batch, self.mesh), teacher, aux)

    def get_state(self) -> dict:
        return self.batches.get_state()

    def set_state(self, state: dict) -> None:
        self.batches.set_state(state)


class ResidentFeed:
    """The split on the device; ``run(state, k, ...)`` takes ``k`` steps in one compiled call."""

    def __init__(self, iterator: BatchIterator, mesh: Mesh, step_fn: Callable, teacher_cache: Any = None,
                 teacher_sharding: Optional[PyTree] = None, steps_per_call: int = 1):
        lookup = None
        if teacher_cache is not None:
            def lookup(index: np.ndarray) -> dict[str, np.ndarray]:
                emb, logits = teacher_cache.lookup(index)
                return {"teacher_embedding": emb, "teacher_logits": logits}
        self.iterator, self.mesh = iterator, mesh
        self.resident = ResidentBatches(iterator, mesh, extra=lookup)
        self.max_steps_per_call = max(1, min(int(steps_per_call), iterator.batches_per_epoch))
        self._window_base: Optional[int] = None  # batch number of the window's first row
        self._idx = self._mask = None
        self._compiled: set[int] = set()
        rep, bat = shd.replicated_sharding(mesh), shd.batch_sharding(mesh)
        teacher = rep if teacher_sharding is None else teacher_sharding

        def gathered(idx, mask):
            batch = self.resident.gather(idx, mask)
            return {k: jax.lax.with_sharding_constraint(v, bat) for k, v in batch.items()}

        def calls(state, data, window_idx, window_mask, offset, teacher_variables, aux, *, count):
            self.resident.data = data  # traced inside this call; rebound to the arrays after tracing
            if count == 1:
                new_state, metrics = step_fn(state, gathered(window_idx[offset], window_mask[offset]),
                                             teacher_variables, aux)
                return new_state, jax.tree_util.tree_map(lambda m: m[None], metrics)

            def body(carry, i):
                return step_fn(carry, gathered(window_idx[offset + i], window_mask[offset + i]),
                               teacher_variables, aux)

            return jax.lax.scan(body, state, jnp.arange(count))

        self._calls = calls
        self._jit = functools.lru_cache(maxsize=None)(lambda count: jax.jit(
            unstaged(functools.partial(self._traced, count=count)),
            in_shardings=(rep, rep, rep, rep, rep, teacher, rep), out_shardings=(rep, rep), donate_argnums=(0,)))

    def _traced(self, state, data, window_idx, window_mask, offset, teacher_variables, aux, *, count):
        host_data = self.resident.data
        try:
            return self._calls(state, data, window_idx, window_mask, offset, teacher_variables, aux, count=count)
        finally:
            self.resident.data = host_data

    def compiles(self, count: int) -> Optional[str]:
        """What the next ``run(count)`` compiles first, else None (one program per distinct ``count``)."""
        if count in self._compiled:
            return None
        self._compiled.add(count)
        return "compiling the train step" + (f" ({count} steps per call)" if count > 1 else "")

    def run(self, state: Any, count: int, teacher: Optional[PyTree], aux: PyTree) -> tuple[Any, dict]:
        """``count`` (<= ``max_steps_per_call``) steps in one call; metrics stacked ``(count,)``."""
        k = self.iterator.next_batch
        self._ensure_window(k, count)
        offset = np.int32(k - self._window_base)
        self.iterator.advance(count)
        return self._jit(int(count))(state, self.resident.data, self._idx, self._mask, offset, teacher, aux)

    def _ensure_window(self, k: int, count: int) -> None:
        """Send the positions of the epoch holding batch ``k`` and of the next one, when ``k .. k+count``
        leaves the window on the device (once per epoch)."""
        per_epoch = self.iterator.batches_per_epoch
        base = self._window_base
        if base is not None and base <= k and k + count <= base + 2 * per_epoch:
            return
        base = (k // per_epoch) * per_epoch
        idx, mask = zip(*(self.iterator.positions(b) for b in range(base, base + 2 * per_epoch)))
        self._idx = self.resident.put(np.stack(idx).astype(np.int32))
        self._mask = self.resident.put(np.stack(mask))
        self._window_base = base

    def get_state(self) -> dict:
        return self.iterator.get_state()

    def set_state(self, state: dict) -> None:
        self.iterator.set_state(state)


class ResidentEval:
    """A split evaluated in one compiled call: its rows on the device once, the padded global batches of
    ``eval_batches`` (same positions and mask) gathered and summed inside a ``lax.scan``.

    ``accuracy(params, batch_stats)`` = sum correct / sum mask, as :func:`lelp_jax.train.step.evaluate`
    computes it from host batches (the same batches, so the same counts).
    """

    def __init__(self, iterator: BatchIterator, mesh: Mesh, eval_fn: Callable):
        self.resident = ResidentBatches(iterator, mesh)
        idx, mask = zip(*(iterator.positions(k) for k in range(iterator.batches_per_epoch)))
        self._idx = self.resident.put(np.stack(idx).astype(np.int32))
        self._mask = self.resident.put(np.stack(mask))
        rep, bat = shd.replicated_sharding(mesh), shd.batch_sharding(mesh)

        def sums(params, batch_stats, data, all_idx, all_mask):
            def body(total, k):
                batch = {key: jax.lax.with_sharding_constraint(v, bat)
                         for key, v in gather_rows(data, all_idx[k], all_mask[k]).items()}
                out = eval_fn(params, batch_stats, batch)
                return (total[0] + out["correct"], total[1] + out["count"]), None

            zero = jnp.zeros((), jnp.float32)
            return jax.lax.scan(body, (zero, zero), jnp.arange(all_idx.shape[0]))[0]

        self._sums = jax.jit(unstaged(sums), in_shardings=(rep, rep, rep, rep, rep), out_shardings=rep)

    def accuracy(self, params: PyTree, batch_stats: PyTree) -> float:
        correct, count = shd.to_host(self._sums(params, batch_stats, self.resident.data, self._idx, self._mask))
        if float(count) == 0:
            raise ValueError("evaluate: the split has no examples (sum of mask is 0).")
        return float(correct) / float(count)


def use_resident(mode: str, iterator: Any, teacher_cache: Any, max_mb: float) -> bool:
    """Whether ``data.device_resident`` (``'auto'`` | ``'on'`` | ``'off'``) puts this split on the device.

    ``'auto'``: a non-text :class:`BatchIterator` whose split (plus the teacher cache's columns) takes at
    most ``data.device_resident_max_mb`` MB; ``'on'``: the same, but refuses when it cannot.
    """
    if mode not in ("auto", "on", "off"):
        raise ConfigError(f"data.device_resident must be 'auto', 'on' or 'off', got {mode!r}.")
    if mode == "off":
        return False
    why = None
    if not isinstance(iterator, BatchIterator):
        why = f"the batches come from a custom iterator ({type(iterator).__name__}), not a BatchIterator"
    else:
        extra = None if teacher_cache is None else {"teacher_embedding": teacher_cache.embeddings,
                                                    "teacher_logits": teacher_cache.logits}
        size = resident_bytes(iterator, extra)
        if size is None:
            why = "it is a text split (token ids are padded per batch on the host)"
        elif size > max_mb * 2**20:
            why = (f"the split takes {size / 2**20:.1f} MB, more than data.device_resident_max_mb="
                   f"{max_mb:g}; raise it")
    if why is not None and mode == "on":
        raise ConfigError(f"data.device_resident='on' cannot hold this split on the device: {why}; "
                          "or set data.device_resident='auto'.")
    return why is None


def make_feed(*, mode: str, max_mb: float, steps_per_call: int, iterator: Any, mesh: Mesh, step_fn: Callable,
              train_step: Callable, teacher_cache: Any = None,
              teacher_sharding: Optional[Mapping] = None) -> HostFeed | ResidentFeed:
    """The feed ``data.device_resident`` asks for (see :func:`use_resident`); ``train.steps_per_call``
    applies to device-resident data (a host-fed run reads one batch per step anyway)."""
    if use_resident(mode, iterator, teacher_cache, max_mb):
        return ResidentFeed(iterator, mesh, step_fn, teacher_cache=teacher_cache,
                            teacher_sharding=teacher_sharding, steps_per_call=steps_per_call)
    return HostFeed(iterator, mesh, train_step, teacher_cache=teacher_cache)
