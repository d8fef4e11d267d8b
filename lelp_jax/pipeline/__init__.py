"""The experiment as resumable stages with artifacts in a workdir (see :mod:`lelp_jax.pipeline.stages`)."""
from lelp_jax.pipeline.stages import *  # noqa: F401,F403
from lelp_jax.pipeline.stages import (__all__, ConfigError, _all_train_outputs, _data_config,  # noqa: F401
                                      _evaluate_split, _fill_missing)
