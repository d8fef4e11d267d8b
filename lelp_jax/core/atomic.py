"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Each writer fills a temporary file in the destination's folder (so the rename
stays on one filesystem), flushes and fsyncs it, then ``os.replace``s it onto the
destination, which POSIX makes atomic. A run killed mid-write therefore leaves
the previous artifact in place, which is what resuming relies on. The temporary
file is removed if writing fails.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["atomic_open", "write_json", "write_text", "save_npz"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """``with atomic_open(path, 'w' | 'wb') as f:`` writes ``path`` atomically (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp_{path.name}_", suffix=path.suffix)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _plain(x: Any) -> Any:
    """NumPy scalars and arrays as Python numbers and lists (json's ``default``)."""
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented, key-sorted JSON; NumPy values become plain numbers and lists."""
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_plain)
        f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """``np.savez`` of ``arrays`` to ``path`` (written as given: name it ``.npz``)."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
