"""The train/validation/test splits a run reads, with validation carved from train where a dataset has none.

Unlabelled transfer rows: the train split the students distil on is labelled ∪ transfer
(:class:`TransferSource`), a transfer row's ``label`` -1. They come from ``data.labelled_fraction`` < 1
(a seeded, stratified share of train keeps its labels, :func:`labelled_rows`) and from a transfer
source (``data.files.transfer``, ``data.transfer_split``, ``data.synthetic.num_transfer``). The
validation carve happens first and stays labelled; the test split is untouched.

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
from lelp_jax.data.loaders import load_split, load_transfer, transfer_origin
from lelp_jax.data.sources import DatasetInfo

__all__ = ["SubsetSource", "TransferSource", "data_config", "has_split", "carve_validation", "labelled_rows",
           "with_transfer", "load_splits", "source_labels"]


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


class TransferSource:
    """The distillation split: the ``train`` rows (those marked in ``hidden`` read ``label`` -1), then the
    ``transfer`` rows (label -1 unless ``keep_transfer_labels``), re-indexed 0..n-1.

    ``fine_label`` is kept when both parts carry it (for the oracle and the NMI diagnostics only). The
    labelled rows (:meth:`labelled`) are what the teacher and ``ce`` train on; :attr:`train` with
    every true label is the teacher's set under ``teacher.train_on='all'``.
    """

    def __init__(self, train: Any, hidden: Any, transfer: Any = None, *, keep_transfer_labels: bool = False):
        self.train = train
        self._hidden = np.asarray(hidden, bool)
        self._transfer = transfer
        self._keep = bool(keep_transfer_labels)
        self._n = len(train)
        parts = [p for p in (train, transfer) if p is not None and len(p)]
        self._fine = all("fine_label" in p[0] for p in parts)
        lengths = [getattr(p, "lengths", None) for p in (train, transfer) if p is not None]
        if all(x is not None for x in lengths):
            self.lengths = np.concatenate([np.asarray(x) for x in lengths])
        if getattr(train, "buckets", None) is not None:
            self.buckets = train.buckets
        labels = np.where(self._hidden, -1, source_labels(train)[0])
        if transfer is not None:
            labels = np.concatenate([labels, source_labels(transfer)[0] if self._keep else
                                     np.full(len(transfer), -1, np.int32)])
        self.labels = labels.astype(np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_labelled(self) -> int:
        return int((self.labels >= 0).sum())

    @property
    def num_transfer(self) -> int:
        return len(self) - self.num_labelled

    def labelled(self) -> SubsetSource:
        """The rows with a label (the teacher's and ``ce``'s training set)."""
        return SubsetSource(self, np.flatnonzero(self.labels >= 0))

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a source of {len(self)} examples")
        i = int(i)
        out = dict(self.train[i] if i < self._n else self._transfer[i - self._n])
        out["label"] = np.int32(self.labels[i])
        if not self._fine:
            out.pop("fine_label", None)
        out["index"] = np.int64(i)
        return out


def labelled_rows(labels: np.ndarray, fraction: float, *, seed: int, num_classes: int) -> np.ndarray:
    """Which train rows keep their label under ``data.labelled_fraction`` = ``fraction``: in every class c,
    ``round(fraction * n_c)`` rows drawn without replacement (seeded: stratified, reproducible).

    Raises ConfigError when a class keeps fewer than 2 labelled rows (the teacher and the validation
    of a few-class student need each class)."""
    keep = np.zeros(len(labels), bool)
    rng = np.random.default_rng([int(seed), 0x1AB])
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        k = int(round(fraction * len(rows)))
        if k < 2:
            raise ConfigError(f"data.labelled_fraction={fraction} leaves class {c} with {k} labelled train rows "
                              f"(of {len(rows)}); every class needs >= 2: raise data.labelled_fraction.")
        keep[rng.choice(rows, size=k, replace=False)] = True
    return keep


def with_transfer(data: ml_collections.ConfigDict, train: Any, info: DatasetInfo) -> Any:
    """``train`` as the distillation split (:class:`TransferSource`) when ``data.labelled_fraction`` < 1 or a
    transfer source is set, else ``train`` itself. A transfer source must match train's inputs (same
    input keys and feature/image shape) and hold at least one row; each problem is one ConfigError."""
    fraction = float(data.labelled_fraction)
    origin = transfer_origin(data_config(data))
    if fraction >= 1.0 and origin is None:
        return train
    labels = source_labels(train)[0]
    hidden = np.zeros(len(labels), bool) if fraction >= 1.0 else ~labelled_rows(
        labels, fraction, seed=int(data.split_seed), num_classes=info.num_classes)
    loaded = None
    if origin is not None:
        try:
            loaded = load_transfer(data_config(data), info)
        except ValueError as e:
            raise ConfigError(f"{origin}: {e}") from None
    transfer, keep = loaded if loaded is not None else (None, False)
    if transfer is not None:
        if len(transfer) == 0:
            raise ConfigError(f"{origin} gives no transfer rows; point it at a file or split with examples, "
                              "or unset it.")
        _check_like(train[0], transfer[0], origin)
    return TransferSource(train, hidden, transfer, keep_transfer_labels=keep)


def _check_like(train_row: dict, transfer_row: dict, origin: str) -> None:
    """The transfer rows' inputs match train's: the same input kind, the same per-example shape."""
    for key in ("features", "image", "input_ids"):
        if (key in train_row) != (key in transfer_row):
            have = [k for k in ("features", "image", "input_ids") if k in transfer_row]
            raise ConfigError(f"{origin}: its rows hold {have} but train's hold {key!r}; give the transfer rows the "
                              "same input kind as train.")
        if key in train_row and key != "input_ids" and np.shape(train_row[key]) != np.shape(transfer_row[key]):
            raise ConfigError(f"{origin}: its {key} have shape {np.shape(transfer_row[key])} per example, train's "
                              f"{np.shape(train_row[key])}; the transfer rows need train's width.")


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
    if "train" in loaded:
        src, info = loaded["train"]
        loaded["train"] = (with_transfer(data, src, info), info)
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
