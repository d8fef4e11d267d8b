"""Batches from a random-access source: seeded per-epoch shuffling, per-process
sharding, a fixed global batch, padding of the last batch, exact resume.

Global batch k of the stream (epoch e = k // batches_per_epoch, b = k mod it)
holds the positions [b*G, (b+1)*G) of epoch e's permutation of the split
(`np.random.default_rng([seed, e]).permutation(n)`, cached per epoch). The
stream of batches is a `grain.MapDataset` (random access by k), iterated with
grain's thread prefetch; its state is just k. Process p of P gets the contiguous rows
[p*G/P, (p+1)*G/P) of it, so the concatenation of the host batches in process
order is the same global batch whatever P is, every host reads only its rows,
and a saved state (the next k) resumes on any number of processes.

Last partial batch: with `drop_remainder=True` (training) the n mod G leftover
positions of each epoch are skipped (different examples each epoch); with
`drop_remainder=False` (evaluation) the last batch is padded to G rows with
copies of its own real rows carrying `mask = 0`, so every example counts
exactly once in masked sums, and padding rows keep a real `index` (writing
`outputs[index]` for them rewrites the same value).

Text: `input_ids` / `attention_mask` of a global batch are right-padded (id 0)
to the smallest bucket length holding its longest real row, computed from the
source's `lengths`, so all hosts agree without talking to each other.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Iterator, Sequence

import grain
import jax
import numpy as np

from lelp_jax.data.sources import read_records
from lelp_jax.data.tokenizer import pad_to, pick_bucket

_DTYPES = {"label": np.int32, "fine_label": np.int32, "index": np.int64, "mask": np.float32,
           "image": np.float32, "features": np.float32}
_TOKEN_KEYS = ("input_ids", "attention_mask")


class BatchIterator:
    """Host-local batches (dict of NumPy) of a fixed global batch; see the module doc.

    Host batch = global_batch_size // process_count rows. Text sources are padded
    per global batch to the smallest of `bucket_lengths` (default: the source's
    `buckets`) that holds the batch's longest row.
    `get_state()` returns a small JSON-serialisable dict; `set_state(state)` makes
    the next batch the one that followed when the state was taken.
    """

    def __init__(
        self,
        source: Any,
        *,
        global_batch_size: int,
        seed: int,
        shuffle: bool = True,
        num_epochs: int | None = None,
        process_index: int = 0,
        process_count: int = 1,
        drop_remainder: bool = True,
        bucket_lengths: Sequence[int] | None = None,
        num_threads: int = 1,
        prefetch: int = 2,
    ):
        n = len(source)
        if global_batch_size <= 0 or global_batch_size % process_count:
            raise ValueError(
                f"global_batch_size ({global_batch_size}) must be a positive multiple of "
                f"process_count ({process_count}): every host gets the same number of rows."
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
        if num_epochs is not None and num_epochs <= 0:
            raise ValueError(f"num_epochs must be a positive int or None (infinite), got {num_epochs}.")
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {seed}.")
        per_epoch = n // global_batch_size if drop_remainder else math.ceil(n / global_batch_size)
        if per_epoch == 0:
            raise ValueError(
                f"The split has {n} examples, fewer than one global batch of {global_batch_size}: "
                "lower the batch size or set drop_remainder=False."
            )
        self.source = source
        self.num_examples = n
        self.global_batch_size = global_batch_size
        self.host_batch_size = global_batch_size // process_count
        self.process_index = process_index
        self.process_count = process_count
        self.seed = int(seed)
        self.shuffle = shuffle
        self.num_epochs = num_epochs
        self.drop_remainder = drop_remainder
        self.batches_per_epoch = per_epoch
        self.lengths = getattr(source, "lengths", None)
        if self.lengths is None and n and "input_ids" in source[0]:
            raise ValueError(
                "A text source needs a `lengths` array (tokens per example) so that every "
                "host pads a global batch to the same length: use sources.TextSource."
            )
        buckets = bucket_lengths if bucket_lengths is not None else getattr(source, "buckets", None)
        self.buckets = None if buckets is None else tuple(sorted(int(b) for b in buckets))
        self._epoch_order = functools.lru_cache(maxsize=2)(self._permutation)
        self._batches = (
            grain.MapDataset.range(per_epoch).repeat(num_epochs)
            .map_with_index(lambda k, _: self.batch(k))
        )
        self._read_options = grain.ReadOptions(
            num_threads=num_threads, prefetch_buffer_size=max(prefetch, num_threads))
        self._next = 0
        self._it = None  # started on the first `next`, at batch `self._next`

    def __len__(self) -> int:
        if self.num_epochs is None:
            raise TypeError("an infinite iterator (num_epochs=None) has no length")
        return self.batches_per_epoch * self.num_epochs

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self._batches.to_iter_dataset(self._read_options).__iter__()
            self._it.set_state({"next_index": self._next})
        out = next(self._it)
        self._next += 1
        return out

    def positions(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Split indices and mask (1 real / 0 padding) of all G rows of global batch k."""
        epoch, b = divmod(k, self.batches_per_epoch)
        n, g = self.num_examples, self.global_batch_size
        start = b * g
        real = min(g, n - start)
        idx = self._epoch_order(epoch)[start + np.arange(g) % real]
        mask = (np.arange(g) < real).astype(np.float32)
        return idx, mask

    def _permutation(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s order of the split: a permutation seeded by (seed, epoch)."""
        if not self.shuffle:
            return np.arange(self.num_examples, dtype=np.int64)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def batch(self, k: int) -> dict[str, np.ndarray]:
        """This process's share of global batch k (pure function of k)."""
        idx, mask = self.positions(k)
        h, p = self.host_batch_size, self.process_index
        rows = read_records(self.source, idx[p * h:(p + 1) * h])
        out = stack_records(rows)
        if "input_ids" in rows[0]:
            length = self._bucket(idx[mask > 0])
            for key in _TOKEN_KEYS:
                out[key] = pad_to([r[key] for r in rows], length)
        out["mask"] = mask[p * h:(p + 1) * h]
        return out

    def _bucket(self, real_idx: np.ndarray) -> int:
        """One length for the whole global batch (all hosts agree): its bucket."""
        longest = int(self.lengths[real_idx].max())
        return longest if self.buckets is None else pick_bucket(longest, self.buckets)

    @property
    def next_batch(self) -> int:
        """The number k of the global batch the next ``next()`` returns."""
        return self._next

    def advance(self, count: int) -> None:
        """Skip ``count`` batches (their rows were read elsewhere, e.g. gathered on the device)."""
        self._next += int(count)
        self._it = None

    def get_state(self) -> dict[str, Any]:
        """The next global batch number and the settings it is valid for. The process
        count is not part of it: a state resumes on any number of processes."""
        return {
            "next_batch": self._next,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "num_examples": self.num_examples,
            "global_batch_size": self.global_batch_size,
            "drop_remainder": self.drop_remainder,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue at `state['next_batch']`; refuses a state taken with other settings."""
        for key in ("seed", "shuffle", "num_examples", "global_batch_size", "drop_remainder"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"Iterator state has {key}={state.get(key)!r} but this iterator has "
                    f"{getattr(self, key)!r}: build the iterator with the settings of the saved run."
                )
        self._next = int(state["next_batch"])
        self._it = None


def stack_records(rows: Sequence[Any]) -> dict[str, np.ndarray]:
    """Records stacked per key with the batch dtypes (token ids excluded: they are padded per batch)."""
    out: dict[str, np.ndarray] = {}
    for key in rows[0]:
        if key in _TOKEN_KEYS:
            continue
        stacked = np.stack([np.asarray(r[key]) for r in rows])
        out[key] = stacked.astype(_DTYPES[key]) if key in _DTYPES else stacked
    return out


# The factory name the pipeline, the notebooks and users call.
make_iterator = BatchIterator


def eval_batches(source: Any, batch_size: int, *, process_index: int | None = None,
                 process_count: int | None = None,
                 make_iterator: Callable[..., Iterator[dict[str, np.ndarray]]] | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
    """What every evaluation reads: one pass over every example of ``source`` in order, global batches of
    ``batch_size``, the last one padded (``mask`` 0) so each example counts once.

    ``process_index`` / ``process_count`` default to this JAX process's; ``make_iterator`` (default
    :class:`BatchIterator`) is for a caller that swaps the iterator (``train_and_evaluate``'s argument).
    """
    return (make_iterator or BatchIterator)(
        source, global_batch_size=batch_size, seed=0, shuffle=False, num_epochs=1,
        process_index=jax.process_index() if process_index is None else process_index,
        process_count=jax.process_count() if process_count is None else process_count, drop_remainder=False)
