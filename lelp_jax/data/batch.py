"""The batch format, read in one place.

A batch is a dict of arrays: the model's inputs, ``label``, optionally ``mask`` (1 for real rows,
0 for padding) and, in cached mode, the teacher outputs ``teacher_embedding`` / ``teacher_logits``.
The train step, the teacher's forward pass and the methods' losses all read it through these.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["TEACHER_KEYS", "batch_mask", "model_inputs", "cast_floats"]

TEACHER_KEYS = ("teacher_embedding", "teacher_logits")


def batch_mask(batch: Mapping[str, jax.Array]) -> jax.Array:
    """Per-row weights in float32: ``batch['mask']`` (0 on padding rows) or ones."""
    if "mask" in batch:
        return batch["mask"].astype(jnp.float32)
    return jnp.ones(batch["label"].shape, jnp.float32)


def model_inputs(batch: Mapping[str, jax.Array], dtype: Any = None) -> dict[str, jax.Array]:
    """The batch without teacher outputs; with ``dtype``, float inputs (not ``mask``) cast to it."""
    if dtype is None:
        return {k: v for k, v in batch.items() if k not in TEACHER_KEYS}
    return {k: (v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) and k != "mask" else v)
            for k, v in batch.items() if k not in TEACHER_KEYS}


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Every floating leaf of ``tree`` cast to ``dtype`` (integer leaves kept): mixed-precision variables."""
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)
