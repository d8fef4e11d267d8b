"""Regrouped binarisations of a fine-labelled dataset, with a few training images per fine class.

With `data.class_one_fine = (f1, f2, ...)` the label of every example becomes
1 if its fine label is listed, else 0 (the fine label is kept, so `oracle`
still knows the hidden subclasses); with `data.train_per_fine_class = n > 0`
the train split keeps only the first n examples of each fine class (in split
order; validation and test stay whole). Applied to the split the dataset
returns (image and feature datasets; the kept rows are read into memory).

    label = [fine ∈ class_one_fine],   train = first n rows of each fine class

This is how `configs/fashion_mnist_hidden.py` makes its 5 + 5 grouping of
Fashion-MNIST with few images per fine class (the offline analogue of the
paper's CIFAR-100 binarisation, which has 500 images per fine class).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from lelp_jax.data.sources import ArraySource, DatasetInfo, read_records

__all__ = ["regroup"]


def _fine_labels(source: Any, chunk: int = 4096) -> np.ndarray:
    out = []
    for start in range(0, len(source), chunk):
        out += [int(r["fine_label"]) for r in read_records(source, range(start, min(start + chunk, len(source))))]
    return np.asarray(out, np.int64)


def regroup(source: Any, info: DatasetInfo, split: str, *, class_one_fine: Sequence[int] = (),
            train_per_fine_class: int = 0) -> tuple[Any, DatasetInfo]:
    """`(source, info)` relabelled by `class_one_fine` and, for `train`, capped per fine class."""
    class_one = sorted({int(f) for f in class_one_fine})
    per = int(train_per_fine_class or 0)
    if not class_one and per == 0:
        return source, info
    if info.num_fine_classes is None:
        raise ValueError(f"{info.name} has no fine labels: data.class_one_fine and data.train_per_fine_class "
                         "need them; leave both unset.")
    if info.input_kind == "text":
        raise ValueError(f"{info.name}: data.class_one_fine / train_per_fine_class apply to image and feature "
                         "datasets, not text.")
    if per < 0:
        raise ValueError(f"data.train_per_fine_class must be >= 0 (0 = all), got {per}.")
    bad = [f for f in class_one if not 0 <= f < info.num_fine_classes]
    if bad or len(class_one) == info.num_fine_classes:
        raise ValueError(f"data.class_one_fine must list some but not all of the fine classes 0..."
                         f"{info.num_fine_classes - 1}, got {tuple(class_one_fine)}.")
    fine = _fine_labels(source)
    rows = np.arange(len(fine))
    if per and split == "train":
        rows = np.sort(np.concatenate([np.flatnonzero(fine == f)[:per] for f in np.unique(fine)]))
    records = read_records(source, rows)
    arrays = {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0] if k != "index"}
    names = info.class_names
    if class_one:
        arrays["label"] = np.isin(arrays["fine_label"], class_one).astype(np.int32)
        fine_names = info.fine_class_names or tuple(str(f) for f in range(info.num_fine_classes))
        names = ("other", "+".join(fine_names[f] for f in class_one))
    sizes = {k: v for k, v in info.split_sizes.items() if not (per and k == "train")}
    sizes[split] = len(rows)
    return ArraySource(arrays), dataclasses.replace(info, num_classes=2 if class_one else info.num_classes,
                                                    class_names=names, split_sizes=sizes)
