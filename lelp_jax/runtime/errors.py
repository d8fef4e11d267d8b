"""User-facing errors: what the CLI prints as one ``lelp: error: ...`` line, without a traceback.

Every module that rejects user input raises :class:`ConfigError` (a config key or value, a file)
or one of its kinds: :class:`WorkdirError` (a workdir made by another config),
:class:`PrecomputedError` (exported teacher outputs that cannot be used); a run that diverged raises
:class:`DivergenceError`. All are ``ValueError``s,
so library callers may catch either.
"""
from __future__ import annotations

__all__ = ["ConfigError", "WorkdirError", "PrecomputedError", "DivergenceError"]


class ConfigError(ValueError):
    """A user error in a config file or an override (the CLI prints it without a traceback)."""


class WorkdirError(ConfigError):
    """The workdir cannot be used with this config (a user error, printed without a traceback)."""


class PrecomputedError(ConfigError):
    """Exported teacher outputs that cannot be used (a user error: the CLI prints it in one line)."""


class DivergenceError(ValueError):
    """A training run met a non-finite loss or parameter (``train.on_nonfinite='stop'``); the message
    names the run, the step and the likely cause (the CLI prints it in one line and exits non-zero)."""
