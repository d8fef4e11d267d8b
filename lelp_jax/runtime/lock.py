"""The workdir lock: one ``lelp`` command at a time per workdir.

Two commands writing one workdir interleave their checkpoints, metrics and results (one dies on a
step the other deleted, metrics.jsonl gets every line twice). :func:`hold` takes an exclusive
``flock`` on ``WORKDIR/.lock`` for as long as its ``with`` block runs; the kernel releases it when
the process ends, however it ends (SIGKILL included), so a stale lock never blocks a rerun. A
second process stops at once with a :class:`WorkdirError` naming the holder (its pid, command and
start time, which the holder writes into the file). The lock is re-entrant within a process (the
CLI holds it, the driver it calls takes it again), counted per resolved path. The file is never
deleted: unlinking a lock file lets a third process lock a new inode while the second holds the old.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from lelp_jax.runtime.errors import WorkdirError

__all__ = ["LOCK_NAME", "hold", "holder", "default_command"]

LOCK_NAME = ".lock"

_guard = threading.Lock()
_held: dict[str, list] = {}  # resolved workdir -> [file object, depth]


def default_command() -> str:
    """What this process is, for the holder line: ``lelp run`` under the CLI, else the script's name."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if prog in ("lelp", "__main__.py"):
        prog = "lelp"
    return " ".join([prog, *sys.argv[1:2]]).strip()


def holder(workdir: str | os.PathLike) -> Optional[dict]:
    """What the current holder wrote into ``WORKDIR/.lock`` (pid, command, started), or None if unreadable."""
    try:
        return json.loads((Path(workdir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def _busy(workdir: Path) -> WorkdirError:
    info = holder(workdir)
    if info:
        who = f"pid {info.get('pid', '?')} ({info.get('command', '?')}, started {info.get('started', '?')})"
    else:
        who = "another process"
    return WorkdirError(f"workdir {str(workdir)!r} is in use by {who}; wait for it to finish "
                        "(or stop it), or use another --workdir.")


@contextlib.contextmanager
def hold(workdir: str | os.PathLike, command: Optional[str] = None) -> Iterator[None]:
    """Hold the exclusive lock of ``workdir`` (created if missing) for the ``with`` block.

    Raises :class:`WorkdirError` at once when another process holds it. Nested holds in one
    process share the first one (its ``command`` stays the recorded one).
    """
    root = Path(workdir)
    key = str(root.resolve())
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            root.mkdir(parents=True, exist_ok=True)
            f = open(root / LOCK_NAME, "a+")  # never truncated before the lock is ours
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise _busy(root) from None
            except BaseException:
                f.close()
                raise
            f.seek(0)
            f.truncate()
            f.write(json.dumps({"pid": os.getpid(), "command": command or default_command(),
                                "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
            f.flush()
            _held[key] = [f, 1]
    try:
        yield
    finally:
        with _guard:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                entry[0].close()  # closing the last descriptor releases the flock
