"""Device-resident batches: the whole split on the device, each batch gathered there by index.

A small student's step is microseconds of arithmetic; reading its rows on the host, stacking them
and sending them to the device costs milliseconds. When a split fits in device memory (features,
small images: the common case for small students) it is sent once, and a batch is one compiled
gather ``data[key][idx]`` of the positions :meth:`BatchIterator.positions` gives. The stream is
the iterator's own (same rows, order, mask, dtypes, state), so results are bit for bit those of
host batches and a run resumes in either mode. Text splits stay on the host: a text batch's
padded length depends on its rows.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Optional, Union

import jax
import numpy as np
from jax.sharding import Mesh

from lelp_jax.data.iterator import BatchIterator, stack_records
from lelp_jax.data.sources import read_records
from lelp_jax.runtime import sharding as shd

__all__ = ["resident_bytes", "ResidentBatches", "gather_rows"]


def _split_arrays(iterator: BatchIterator) -> dict[str, np.ndarray]:
    """Every row of the iterator's source, stacked as the iterator stacks a batch (numeric keys only)."""
    rows = read_records(iterator.source, np.arange(iterator.num_examples))
    return {k: v for k, v in stack_records(rows).items() if v.dtype.kind in "biuf"}


def resident_bytes(iterator: BatchIterator, extra: Optional[Mapping[str, np.ndarray]] = None) -> Optional[int]:
    """Bytes the split (and ``extra`` per-row columns) would take on the device; None for text splits."""
    if iterator.lengths is not None:
        return None
    row = {k: np.asarray(v) for k, v in stack_records(read_records(iterator.source, [0])).items()
           if np.asarray(v).dtype.kind in "biuf"}
    per_row = sum(v.itemsize * int(np.prod(v.shape[1:])) for v in row.values())
    per_row += sum(np.asarray(v).itemsize * int(np.prod(np.shape(v)[1:])) for v in (extra or {}).values())
    return per_row * iterator.num_examples


class ResidentBatches:
    """The batches of ``iterator`` as global device arrays, gathered from the split held on ``mesh``.

    ``extra``: per-row columns added to every batch (e.g. a teacher cache's ``teacher_embedding`` /
    ``teacher_logits`` in the split's row order), or a function of the split's ``index`` column that
    returns them (a cache looked up by example index). ``next()`` returns the same global batch the host
    path builds with ``shard_batch(next(iterator))`` (plus ``extra``); ``get_state`` / ``set_state``
    are the iterator's.
    """

    def __init__(self, iterator: BatchIterator, mesh: Mesh,
                 extra: Union[Mapping[str, np.ndarray], Callable[[np.ndarray], Mapping[str, np.ndarray]],
                              None] = None):
        if iterator.lengths is not None:
            raise ValueError("ResidentBatches: a text split (token ids padded per batch) stays on the host; "
                             "set data.device_resident='off' for it.")
        self.iterator = iterator
        arrays = _split_arrays(iterator)
        if callable(extra):
            if "index" not in arrays:
                raise ValueError("ResidentBatches: extra columns looked up by index need an 'index' column in "
                                 "the split.")
            extra = extra(arrays["index"])
        for key, column in (extra or {}).items():
            if len(column) != iterator.num_examples:
                raise ValueError(f"ResidentBatches: extra column {key!r} has {len(column)} rows for a split of "
                                 f"{iterator.num_examples}.")
            arrays[key] = np.asarray(column)
        self._rep = shd.replicated_sharding(mesh)
        self.data = shd.replicate(arrays, mesh)
        self._gather = jax.jit(gather_rows, out_shardings=shd.batch_sharding(mesh))

    def positions(self, count: int) -> tuple[jax.Array, jax.Array]:
        """Indices and mask ``(count, G)`` of the next ``count`` global batches, on the device; advances."""
        start = self.iterator.next_batch
        idx, mask = zip(*(self.iterator.positions(k) for k in range(start, start + count)))
        self.iterator.advance(count)
        return self.put(np.stack(idx).astype(np.int32)), self.put(np.stack(mask))

    def __iter__(self) -> "ResidentBatches":
        return self

    def __next__(self) -> dict[str, jax.Array]:
        idx, mask = self.positions(1)
        return self._gather(self.data, idx[0], mask[0])

    def gather(self, idx: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
        """The batch of positions ``idx`` (G,) with ``mask`` (G,) — traceable, for a scan over steps."""
        return gather_rows(self.data, idx, mask)

    def get_state(self) -> dict:
        return self.iterator.get_state()

    def set_state(self, state: dict) -> None:
        self.iterator.set_state(state)

    def put(self, x: np.ndarray) -> jax.Array:
        """``x`` (the same on every process) replicated over the mesh."""
        if jax.process_count() == 1:
            return jax.device_put(x, self._rep)
        return jax.make_array_from_process_local_data(self._rep, x, x.shape)


def gather_rows(data: Mapping[str, jax.Array], idx: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """``{key: data[key][idx]}`` and the batch's ``mask``: the rows of one global batch."""
    out = {k: v[idx] for k, v in data.items()}
    out["mask"] = mask
    return out
