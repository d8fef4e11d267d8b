"""User-facing errors: what the CLI prints as one ``lelp: error: ...`` line, without a traceback.

Every module that rejects user input (a config key, a value, a file, a workdir) raises a
subclass of :class:`ConfigError`; it is a ``ValueError``, so library callers may catch either.
"""
from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A user error in a config file or an override (the CLI prints it without a traceback)."""
