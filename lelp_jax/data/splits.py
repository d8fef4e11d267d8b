"""The train/validation/test splits a run reads, with validation carved from train where a dataset has none.

A dataset without a validation split (your own files without ``data.files.validation``,
some catalogue datasets) gets one carved from train: a seeded ``data.val_fraction`` share
(``data.split_seed``), removed from the train split. Both parts are :class:`SubsetSource`
views of the train file, re-indexed 0..n-1, that remember their rows in it (a precomputed
teacher's exported outputs are indexed by those rows).
"""
from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from lelp_jax.runtime.errors import ConfigError
from lelp_jax.data import catalogue
from lelp_jax.data.features import feature_view
from lelp_jax.data.loaders import load_split

__all__ = ["SubsetSource", "data_config", "has_split", "carve_validation", "load_splits", "source_labels"]


def data_config(data: ml_collections.ConfigDict) -> dict[str, Any]:
    """The data section as the data layer reads it (unset/empty ``files`` entries dropped)."""
    d = data.to_dict()
    d["files"] = {k: v for k, v in (d.get("files") or {}).items() if v}
    return d


def has_split(data: ml_collections.ConfigDict, split: str) -> bool:
    """Whether the dataset itself provides ``split`` (else validation is carved from train)."""
    if data.get("num_folds", 0):  # k-fold carves its own validation (lelp_jax.data.folds)
        return True
    if data.name == "local":
        return bool(data.files.get(split))
    entry = catalogue.CATALOGUE.get(data.name)
    return entry is None or split in entry["splits"]


class SubsetSource:
    """Rows ``rows`` of a source, re-indexed 0..n-1 (``index`` = position in the subset).

    Keeps ``lengths``/``buckets`` of text sources so batches still pad to buckets.
    """

    def __init__(self, parent: Any, rows: Any):
        self._parent = parent
        self._rows = np.asarray(rows, np.int64)
        lengths = getattr(parent, "lengths", None)
        if lengths is not None:
            self.lengths = np.asarray(lengths)[self._rows]
        if getattr(parent, "buckets", None) is not None:
            self.buckets = parent.buckets

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def parent_rows(self) -> tuple[int, Any]:
        """(size of the parent, the parent row of each subset position)."""
        return len(self._parent), self._rows

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a source of {len(self)} examples")
        out = dict(self._parent[int(self._rows[i])])
        out["index"] = np.int64(i)
        return out


def carve_validation(data: ml_collections.ConfigDict) -> dict[str, Any]:
    """``{'train': (source, info), 'validation': (source, info)}``: a seeded random ``val_fraction`` of
    train held out."""
    source, info = load_split(data_config(data), "train")
    n = len(source)
    n_val = int(round(n * float(data.val_fraction)))
    if n_val < 1 or n_val >= n:
        raise ConfigError(
            f"dataset {data.name!r} has no validation split and data.val_fraction={data.val_fraction} of its "
            f"{n} train examples leaves no validation or no train rows; set data.val_fraction in (0, 1) or give "
            "a validation file (data.files.validation)."
        )
    perm = np.random.default_rng(int(data.split_seed)).permutation(n)
    return {"validation": (SubsetSource(source, np.sort(perm[:n_val])), info),
            "train": (SubsetSource(source, np.sort(perm[n_val:])), info)}


def load_splits(data: ml_collections.ConfigDict, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({split: (source, info)}, carved)`` holding ``name`` (``train``, ``validation`` or ``test``): train
    and validation together when validation is carved, and then ``carved`` = ``{split: (train file size,
    its rows in it)}`` (else ``{}``). With ``data.features`` set, every split gains the frozen encoder's
    ``features`` (:func:`lelp_jax.data.features.feature_view`)."""
    carved: dict[str, Any] = {}
    if name in ("train", "validation") and not has_split(data, "validation"):
        loaded = carve_validation(data)
        carved = {k: src.parent_rows for k, (src, _) in loaded.items()}
    else:
        loaded = {name: load_split(data_config(data), name)}
    if data.features:
        loaded = {k: (feature_view(src, data_config=data_config(data), split=k, dataset=info.name), info)
                  for k, (src, info) in loaded.items()}
    return loaded, carved


def source_labels(source) -> tuple[Any, Any]:
    """(labels, fine labels or None) of every example of a source, in index order."""
    rows = [source[i] for i in range(len(source))]
    labels = np.asarray([r["label"] for r in rows], np.int32)
    fine = np.asarray([r["fine_label"] for r in rows], np.int32) if "fine_label" in rows[0] else None
    return labels, fine
