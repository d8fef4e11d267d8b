"""Training: optimizer, train state and compiled steps, checkpoints, the loop (see :mod:`lelp_jax.train.loop`)."""
from lelp_jax.train.loop import *  # noqa: F401,F403
from lelp_jax.train.loop import __all__, _Checkpoints, _ckpt_tree  # noqa: F401
