"""k-fold evaluation: every example of a dataset is tested once, by a model that never saw it.

With `data.num_folds = k >= 2` the dataset's own train, validation and test
splits are pooled (in that order) into one set of N examples, which is dealt
into k folds, stratified on the fine label when there is one (else the label):
within each stratum the rows are permuted (seed `data.split_seed`) and dealt
round-robin, so fold sizes differ by at most the number of strata. For fold f:

    test       = fold f
    validation = a stratified `data.val_fraction` share of the other folds (floor per stratum, seeded)
    train      = the rest of the other folds

so the teacher and the students of fold f are trained and selected without
fold f's examples, and the k test folds partition all N examples
(`lelp_jax.protocol.kfold` pools their test accuracies into one per method and seed).
Image and feature datasets only (their examples are small fixed-shape arrays,
pooled into memory once per process).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Mapping

import numpy as np

from lelp_jax.data.sources import ArraySource, DatasetInfo, read_records

__all__ = ["fold_rows", "load_fold_split"]

_POOLED = ("train", "validation", "test")


def fold_rows(strata: np.ndarray, *, num_folds: int, fold: int, val_fraction: float,
              seed: int) -> dict[str, np.ndarray]:
    """Row indices (into the pooled set) of `train`, `validation` and `test` for one fold (sorted)."""
    strata = np.asarray(strata)
    if num_folds < 2 or not 0 <= fold < num_folds:
        raise ValueError(f"fold {fold} of num_folds={num_folds}: need num_folds >= 2 and 0 <= fold < num_folds.")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"k-fold needs data.val_fraction in (0, 1) to carve validation, got {val_fraction}.")
    rng = np.random.default_rng([int(seed), 0xF01D])
    assign = np.empty(len(strata), np.int64)
    offset = 0
    for s in np.unique(strata):  # continue the deal across strata so fold sizes stay balanced
        rows = rng.permutation(np.flatnonzero(strata == s))
        assign[rows] = (offset + np.arange(len(rows))) % num_folds
        offset += len(rows)
    test = np.flatnonzero(assign == fold)
    val_parts, train_parts = [], []
    for s in np.unique(strata):
        rows = rng.permutation(np.flatnonzero((strata == s) & (assign != fold)))
        n_val = int(len(rows) * val_fraction)
        val_parts.append(rows[:n_val])
        train_parts.append(rows[n_val:])
    return {"train": np.sort(np.concatenate(train_parts)), "validation": np.sort(np.concatenate(val_parts)),
            "test": test}


@functools.lru_cache(maxsize=2)
def _pooled(key: str, loader: Callable[..., Any]) -> tuple[dict[str, np.ndarray], DatasetInfo]:
    config = json.loads(key)
    arrays: dict[str, list[np.ndarray]] = {}
    info = None
    for split in _POOLED:
        src, info = loader(config["name"], config, split)
        if info.input_kind == "text":
            raise ValueError(f"{config['name']}: k-fold (data.num_folds) supports image and feature datasets, "
                             "not text; set data.num_folds=0.")
        for rec in read_records(src, range(len(src))):
            for k, v in rec.items():
                if k != "index":
                    arrays.setdefault(k, []).append(np.asarray(v))
    return {k: np.stack(v) for k, v in arrays.items()}, info


def load_fold_split(name: str, config: Mapping[str, Any], split: str,
                    loader: Callable[..., Any]) -> tuple[ArraySource, DatasetInfo]:
    """`split` of fold `config['fold']` of the pooled dataset; `loader` reads the dataset's own splits."""
    if split not in _POOLED:
        raise ValueError(f"{name}: unknown split {split!r} under k-fold; choose one of {list(_POOLED)}.")
    base = {k: v for k, v in config.items() if k not in ("num_folds", "fold", "val_fraction", "split_seed")}
    arrays, info = _pooled(json.dumps(base, sort_keys=True, default=str), loader)
    strata = arrays["fine_label"] if "fine_label" in arrays else arrays["label"]
    rows = fold_rows(strata, num_folds=int(config["num_folds"]), fold=int(config["fold"]),
                     val_fraction=float(config.get("val_fraction", 0.1)), seed=int(config.get("split_seed", 0)))
    sizes = {s: len(r) for s, r in rows.items()}
    info = dataclasses.replace(info, split_sizes=sizes)
    return ArraySource({k: v[rows[split]] for k, v in arrays.items()}), info
