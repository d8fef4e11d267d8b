"""Optimisation settings, the optimizer and its learning-rate schedule, the number of steps.

The train section read here is complete (``base_config().train`` edited by a config file:
the one place a default is written); a section missing keys is refused, not filled in.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ml_collections
import optax

from lelp_jax.config import schema

__all__ = ["train_config", "make_optimizer", "num_train_steps"]


def train_config(train_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The train section (``config.train`` or ``config.teacher.train``) as a dict, checked by
    :func:`lelp_jax.config.schema.validate_train`."""
    out = train_cfg.to_dict()
    missing = sorted(set(schema.base_config().train) - set(out))
    if missing:
        raise ValueError(f"the train section lacks {', '.join(missing)}; build configs from "
                         "lelp_jax.config.base_config() (it writes every default).")
    schema.validate_train(out)
    return out


def make_optimizer(train_cfg: ml_collections.ConfigDict, *, num_steps: int) -> optax.GradientTransformation:
    """optax AdamW or SGD(momentum) with linear warmup then cosine decay (or constant).

    lr(t) = lr0 * t / warmup for t < warmup, then lr0 * (1 + cos(pi * u)) / 2 with
    u the fraction of the remaining steps (cosine) or lr0 (constant).
    Weight decay is decoupled (AdamW) / added to the gradient (Adam, SGD).
    """
    c = train_config(train_cfg)
    lr0 = float(c["learning_rate"])
    warmup = int(c["warmup_steps"])
    if num_steps < 1:
        raise ValueError(f"make_optimizer: num_steps={num_steps} must be >= 1.")
    if c["schedule"] == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr0, peak_value=lr0, warmup_steps=warmup,
            decay_steps=max(num_steps, warmup + 1), end_value=0.0,
        )
    elif warmup:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr0, warmup), optax.constant_schedule(lr0)], [warmup]
        )
    else:
        schedule = optax.constant_schedule(lr0)
    wd = float(c["weight_decay"])
    if c["optimizer"] == "adam":  # L2 added to the gradient (coupled), as torch's Adam
        opt = optax.chain(optax.add_decayed_weights(wd) if wd else optax.identity(), optax.adam(schedule))
    elif c["optimizer"] == "adamw":
        opt = optax.adamw(schedule, weight_decay=wd)
    else:
        opt = optax.chain(
            optax.add_decayed_weights(wd) if wd else optax.identity(),
            optax.sgd(schedule, momentum=float(c["momentum"]) or None, nesterov=bool(c["nesterov"])),
        )
    if c["grad_clip_norm"]:
        opt = optax.chain(optax.clip_by_global_norm(float(c["grad_clip_norm"])), opt)
    return opt


def num_train_steps(c: Mapping[str, Any], num_train: int) -> int:
    """``ceil(num_epochs * num_train / batch_size)`` when ``num_epochs`` is set, else ``num_steps``."""
    if c["num_epochs"] is not None:
        steps = math.ceil(float(c["num_epochs"]) * num_train / int(c["batch_size"]))
    else:
        steps = int(c["num_steps"])
    if steps < 1:
        raise ValueError(f"train: {steps} steps; set train.num_steps > 0 or train.num_epochs > 0.")
    return steps
