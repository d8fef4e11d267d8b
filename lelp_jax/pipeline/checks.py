"""Preflight's data checks: what the data's labels and the teacher's declared embedding width allow,
checked before the teacher trains (a failed check then costs seconds, not a teacher).

:func:`check_data` reads the splits' labels and the teacher's embedding width D (an abstract
``jax.eval_shape`` of the untrained teacher on one example, or the exported outputs' width) and
refuses, naming the key and the fix: a data error in any split (each is loaded here; the loaders
check label ranges), train data with fewer than two classes, and a splitting fit whose ``S``
exceeds ``D - C`` (``D`` without the null space) or whose
class has fewer than ``S + 1`` train examples (the S-dimensional covariance needs them).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from lelp_jax.data.iterator import eval_batches
from lelp_jax.methods import METHODS
from lelp_jax.runtime.errors import ConfigError

__all__ = ["check_data", "teacher_width"]


def teacher_width(run: Any) -> int:
    """The teacher embedding's width D, without training it: the exported outputs' width for a precomputed
    teacher, else the shape ``jax.eval_shape`` gives the model's ``(embedding, logits)`` on one train example."""
    if run.config.teacher.model == "precomputed":
        return int(np.shape(run.precomputed.caches["train"].embeddings)[1])
    batch = next(iter(eval_batches(run.split("train")[0], 1, process_index=0, process_count=1)))
    emb, _ = jax.eval_shape(lambda: run.teacher_model.init_with_output(jax.random.PRNGKey(0), batch)[0])
    return int(emb.shape[-1])


def _train_class_counts(run: Any, num_classes: int) -> np.ndarray:
    """The train split's examples per class, after loading every split (a data error, e.g. a test label the
    training file lacks, surfaces here) and refusing train data with fewer than two classes."""
    for name in ("validation", "test"):
        run.split(name)
    labels = np.asarray(run.train_labels[0])
    counts = np.bincount(labels[labels >= 0], minlength=num_classes)  # -1: an unlabelled transfer row
    present = np.flatnonzero(counts)
    if len(present) < 2:
        only = f"class {int(present[0])} only" if len(present) else "no labels"
        raise ConfigError(f"the train split has one class ({only}, {int(counts.sum())} examples, "
                          f"{num_classes} classes declared): distillation needs examples of at least two classes; "
                          "fix the data (or data.label_column).")
    return counts


def check_data(run: Any) -> None:
    """Every check that needs the data's labels or the teacher's width, before any work (see the module doc)."""
    config = run.config
    num_classes = int(run.info.num_classes)
    counts = _train_class_counts(run, num_classes)
    splitting = [METHODS[m] for m in config.methods if METHODS[m].fit == "projections"]
    if not splitting:
        return
    d = teacher_width(run)
    for method in splitting:
        fit = method.fit_options(config)
        s, null_space = int(fit.get("num_subclasses", 1)), bool(fit.get("null_space", False))
        room = d - num_classes if null_space else d
        if s > room:
            where = f"D - C = {d} - {num_classes} = {room} (its null space)" if null_space else f"D = {d}"
            raise ConfigError(f"method {method.name!r}: lelp.num_subclasses={s} exceeds the teacher embedding's "
                              f"{where}; lower --config.lelp.num_subclasses to <= {room}"
                              f"{' or set lelp.null_space=false' if null_space else ''}.")
        if config.lelp.fit_labels == "labels" and counts.min() < s + 1:
            k = int(np.argmin(counts))
            raise ConfigError(f"method {method.name!r}: class {k} has {int(counts[k])} train examples, fewer than "
                              f"lelp.num_subclasses + 1 = {s + 1} (an S-dimensional covariance); lower "
                              f"--config.lelp.num_subclasses to <= {max(int(counts[k]) - 1, 1)} or add examples.")
