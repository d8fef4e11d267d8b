"""User-facing errors: what the CLI prints as one ``lelp: error: ...`` line, without a traceback.

Every module that rejects user input raises :class:`ConfigError` (a config key or value, a file)
or one of its kinds: :class:`WorkdirError` (a workdir made by another config, or in use),
:class:`PrecomputedError` (exported teacher outputs that cannot be used), :class:`ArtifactError`
(a file on disk that cannot be read: truncated or corrupt); a run that diverged raises
:class:`DivergenceError`. All are ``ValueError``s, so library callers may catch either.
:func:`os_error_message` words an operating-system error (disk full, read-only filesystem, no
permission) as the same one line: the file and the fix.
"""
from __future__ import annotations

import errno
import os
from typing import Optional

__all__ = ["ConfigError", "WorkdirError", "PrecomputedError", "ArtifactError", "DivergenceError", "find_os_error",
           "os_error_message"]


class ConfigError(ValueError):
    """A user error in a config file or an override (the CLI prints it without a traceback)."""


class WorkdirError(ConfigError):
    """The workdir cannot be used with this config (a user error, printed without a traceback)."""


class PrecomputedError(ConfigError):
    """Exported teacher outputs that cannot be used (a user error: the CLI prints it in one line)."""


class ArtifactError(ConfigError):
    """A file the pipeline reads is truncated or corrupt (the message names it and how to recover)."""


_RESUME = "then rerun the same command: it resumes where it stopped"
_FIXES = {
    errno.ENOSPC: f"the disk is full: free space (or pass a --workdir on a larger disk), {_RESUME}",
    errno.EDQUOT: f"the disk quota is exhausted: free space (or pass a --workdir elsewhere), {_RESUME}",
    errno.EROFS: "the filesystem is read-only: pass a --workdir on a writable disk",
    errno.EACCES: f"permission denied: make the folder writable by this user (or pass another --workdir), {_RESUME}",
    errno.EPERM: f"operation not permitted: make the folder writable by this user (or pass another --workdir), "
                 f"{_RESUME}",
}
# Libraries that wrap an OS error in their own exception (tensorstore under Orbax) keep its text only.
_TEXTS = {"No space left on device": errno.ENOSPC, "Read-only file system": errno.EROFS,
          "Permission denied": errno.EACCES, "Disk quota exceeded": errno.EDQUOT}


def find_os_error(exc: BaseException) -> Optional[OSError]:
    """The disk-level OSError behind ``exc`` (itself, its ``__cause__``/``__context__`` chain, or one
    rebuilt from a wrapped message such as tensorstore's "No space left on device"), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _FIXES:
            return exc
        for text, code in _TEXTS.items():
            if text in str(exc):
                return OSError(code, text)
        exc = exc.__cause__ or exc.__context__
    return None


def os_error_message(exc: OSError, workdir: Optional[str] = None) -> str:
    """``"<what> (<file>); <fix>."``: one line for the CLI (the workdir when the file is unknown)."""
    if exc.filename:
        where = f" ({os.fsdecode(exc.filename)})"
    else:
        where = f" (under workdir {workdir})" if workdir else ""
    fix = _FIXES.get(exc.errno, f"fix it, {_RESUME}")
    return f"{exc.strerror or exc}{where}; {fix}."


class DivergenceError(ValueError):
    """A training run met a non-finite loss or parameter (``train.on_nonfinite='stop'``); the message
    names the run, the step and the likely cause (the CLI prints it in one line and exits non-zero)."""
