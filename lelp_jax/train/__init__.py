"""Training, one module per concern.

- :mod:`~lelp_jax.train.optim`: the train section's settings (a complete section of ``base_config()``),
  the optimizer and its learning-rate schedule;
- :mod:`~lelp_jax.train.step`: the train state, the one compiled train step for every method,
  the eval step (the batch format it reads: :mod:`lelp_jax.data.batch`);
- :mod:`~lelp_jax.train.checkpoints`: Orbax checkpoints, resume, ``load_variables``;
- :mod:`~lelp_jax.train.feed`: how batches reach the step (host, or gathered on the device; k steps per call);
- :mod:`~lelp_jax.train.loop`: ``train_and_evaluate``; ``failed`` / ``succeeded`` (diverged runs' records).

The names below are importable from ``lelp_jax.train`` as before the split.
"""
from lelp_jax.data.batch import batch_mask, model_inputs
from lelp_jax.train.checkpoints import load_variables
from lelp_jax.train.loop import failed, succeeded, train_and_evaluate
from lelp_jax.train.optim import make_optimizer, train_config
from lelp_jax.train.step import (
    TrainState,
    evaluate,
    init_train_state,
    make_eval_step,
    make_train_step,
)

__all__ = [
    "TrainState",
    "train_config",
    "make_optimizer",
    "make_train_step",
    "make_eval_step",
    "init_train_state",
    "evaluate",
    "train_and_evaluate",
    "failed",
    "succeeded",
    "load_variables",
    "batch_mask",
    "model_inputs",
]
