"""Configuration: the schema (every key and its one default), config files, overrides, the smoke switch.

:mod:`~lelp_jax.config.schema` holds ``base_config()`` and the value checks,
:mod:`~lelp_jax.config.overrides` the ``--config.a.b=value`` parser, :mod:`~lelp_jax.config.loading`
``load_config`` (file -> overrides -> smoke -> checks -> lock). This package imports nothing of
the methods, the pipeline or the layers above.
"""
from lelp_jax.config.loading import (IDENTITY_EXCLUDED, apply_smoke, base_config, config_from_file, config_to_dict,
                                     identity_dict, load_config, minilm_text_setup, resolve_config_path,
                                     validate_config)

__all__ = ["base_config", "minilm_text_setup", "load_config", "config_from_file", "resolve_config_path",
           "apply_smoke", "validate_config", "config_to_dict", "identity_dict", "IDENTITY_EXCLUDED"]
