"""Shared helpers for the model zoo: batch-key checks and masked pooling.

Every model reads one input key of the batch dict (its ``input_key``); a batch
without it fails here with a message naming the key it needs and the keys it got,
instead of a shape error deep inside a layer.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

def get_input(batch: Any, key: str, model_name: str) -> jnp.ndarray:
    """Return ``batch[key]`` or raise a ValueError that says what the model needs."""
    if not isinstance(batch, Mapping):
        raise ValueError(
            f"{model_name} expects a batch dict with key {key!r}; got {type(batch).__name__}. "
            f"Call model.apply(variables, {{{key!r}: x}}, train=...)."
        )
    if key not in batch:
        raise ValueError(
            f"{model_name} reads batch key {key!r}, but the batch has keys {sorted(batch)}. "
            f"Use a dataset whose input kind is {key!r} or pick a model for the kind you have."
        )
    return jnp.asarray(batch[key])


def get_attention_mask(batch: Mapping, input_ids: jnp.ndarray, model_name: str) -> jnp.ndarray:
    """The (B, L) 0/1 attention mask; an absent mask means every token is real."""
    mask = batch.get("attention_mask")
    if mask is None:
        return jnp.ones(input_ids.shape, jnp.int32)
    mask = jnp.asarray(mask)
    if mask.shape != input_ids.shape:
        raise ValueError(
            f"{model_name}: attention_mask shape {mask.shape} != input_ids shape {input_ids.shape}; "
            "both must be (B, L)."
        )
    return mask


def check_rank(x: jnp.ndarray, rank: int, what: str, model_name: str) -> None:
    """Raise a ValueError when ``x`` does not have the expected rank."""
    if x.ndim != rank:
        raise ValueError(f"{model_name}: {what} must have rank {rank}, got shape {x.shape}.")


def masked_mean(h: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Mean over the token axis of real tokens only: sum_t m_t h_t / max(sum_t m_t, 1e-9).

    ``h`` (B, L, D), ``mask`` (B, L) in {0, 1}; computed in float32. The clamp
    matches sentence-transformers' mean pooling (all-padding rows give zeros).
    """
    m = mask.astype(jnp.float32)[..., None]
    s = jnp.sum(h.astype(jnp.float32) * m, axis=1)
    return s / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
