"""Random-access sources and the dataset description.

A source is anything with `len(source)` and `source[i] -> dict[str, np.ndarray]`
holding one example of the batch contract (docs/ARCHITECTURE.md): `label`,
optional `fine_label`, `index` (the example's position in its split) and one
input kind (`image`, `features`, or `input_ids` + `attention_mask`). Text
sources hold ragged token ids; the iterator pads each batch to a bucket length.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence, Union

import ml_collections
import numpy as np

INPUT_KINDS = ("image", "features", "text")

# The data section a loader reads: ``config.data`` (a ConfigDict) or the plain dict of it the pipeline
# hands the data layer (``lelp_jax.data.splits.data_config``); both are read with ``.get``.
DataSection = Union[ml_collections.ConfigDict, Mapping[str, Any]]


def plain(section: DataSection) -> dict[str, Any]:
    """``section`` as a plain dict (nested ConfigDicts too)."""
    return section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)


def read_records(source: Any, idx: Sequence[int]) -> list[Any]:
    """`[source[i] for i in idx]`, through the batched `__getitems__` when there is one."""
    if hasattr(source, "__getitems__"):
        return list(source.__getitems__([int(i) for i in idx]))
    return [source[int(i)] for i in idx]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the library needs to know about a dataset.

    `split_sizes` maps split name -> number of examples for every split whose size
    is known without reading it (always including the split that was loaded).
    `input_shape` is the per-example input shape (`(H, W, ch)`, `(F,)`, or
    `(max_length,)` for text); `vocab_size` is set for text only.
    """

    name: str
    num_classes: int
    num_fine_classes: int | None
    input_kind: str
    class_names: tuple[str, ...]
    split_sizes: Mapping[str, int]
    input_shape: tuple[int, ...]
    vocab_size: int | None = None
    fine_class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}.")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes."
            )


class ArraySource:
    """In-memory source over equal-length NumPy arrays (leading axis = example).

    `arrays` must hold `label` and the input arrays; `index` is added (0..N-1).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        sizes = {k: len(v) for k, v in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"ArraySource: arrays have different lengths {sizes}.")
        self._arrays = dict(arrays)
        self._arrays["index"] = np.arange(len(arrays["label"]), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._arrays["label"])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a source of {len(self)} examples")
        return {k: v[i] for k, v in self._arrays.items()}

    def __getitems__(self, idx: Sequence[int]) -> list[dict[str, np.ndarray]]:
        return [self[int(i)] for i in idx]


class MappedSource:
    """Lazy random-access view: `out[i] = fn(parent[rows[i]])` plus `index = i`.

    `rows` (optional) selects and orders parent records, e.g. to drop filtered rows.
    """

    def __init__(
        self,
        parent: Any,
        fn: Callable[[Mapping[str, Any]], dict[str, np.ndarray]],
        rows: np.ndarray | None = None,
    ):
        self._parent = parent
        self._fn = fn
        self._rows = None if rows is None else np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self._parent) if self._rows is None else len(self._rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a source of {len(self)} examples")
        row = int(i) if self._rows is None else int(self._rows[i])
        out = self._fn(self._parent[row])
        out["index"] = np.int64(i)
        return out

    def __getitems__(self, idx: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Batched read (array_record reads many records much faster than one by one)."""
        if not hasattr(self._parent, "__getitems__"):
            return [self[int(i)] for i in idx]
        if any(not 0 <= int(i) < len(self) for i in idx):
            raise IndexError(f"indices out of range for a source of {len(self)} examples")
        rows = [int(i) if self._rows is None else int(self._rows[i]) for i in idx]
        outs = [self._fn(r) for r in self._parent.__getitems__(rows)]
        for o, i in zip(outs, idx):
            o["index"] = np.int64(i)
        return outs


class TextSource:
    """Tokenised text held as one flat int32 array of ids plus offsets (ragged).

    `source[i]` returns the unpadded `input_ids` and `attention_mask` (all ones) of
    example i; `lengths` lets the iterator pick one bucket length per global batch.
    """

    def __init__(
        self,
        ids: Sequence[np.ndarray],
        labels: np.ndarray,
        fine_labels: np.ndarray | None = None,
    ):
        self.lengths = np.asarray([len(x) for x in ids], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self._flat = (
            np.concatenate([np.asarray(x, np.int32) for x in ids])
            if len(ids) else np.zeros((0,), np.int32)
        )
        self._labels = np.asarray(labels, np.int32)
        self._fine = None if fine_labels is None else np.asarray(fine_labels, np.int32)
        if len(self._labels) != len(self.lengths):
            raise ValueError("TextSource: number of labels and of texts differ.")

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a source of {len(self)} examples")
        ids = self._flat[self._offsets[i]:self._offsets[i + 1]]
        out = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "label": self._labels[i],
            "index": np.int64(i),
        }
        if self._fine is not None:
            out["fine_label"] = self._fine[i]
        return out
