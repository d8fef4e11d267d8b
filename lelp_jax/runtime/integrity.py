"""Verified artifacts: SHA-256 recorded when a file is written, checked when it is read, and a bad one
moved to ``WORKDIR/quarantine/`` (never deleted) so the pipeline can recompute it.

A flipped bit in a checkpoint or a truncated ``.npz`` restores or loads without complaint more
often than not, and a resumed run then reports wrong numbers with rc 0. So every writer records
a digest: :func:`write_manifest` (one ``lelp_manifest.json`` per checkpoint step: every file of
the step and its digest) and the store's key description (``KIND-HASH.json`` holds the npz's
``sha256``); every reader compares before use (:func:`verify_manifest`, :func:`sha256_file`). A
folder without a manifest predates this (or its writer was killed between Orbax's atomic rename
and the manifest): it is read unverified, so old workdirs still resume.
:func:`quarantine` moves a bad artifact to ``WORKDIR/quarantine/<its path in the workdir>`` (the
workdir: the nearest folder above it holding ``config.json``) and warns naming both paths.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Optional

from lelp_jax.core import atomic

__all__ = ["MANIFEST", "QUARANTINE", "sha256_file", "write_manifest", "verify_manifest", "quarantine"]

MANIFEST = "lelp_manifest.json"
QUARANTINE = "quarantine"
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, streamed in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: str | os.PathLike) -> None:
    """Record ``{relative path: sha256}`` of every file under ``folder`` in ``folder/lelp_manifest.json``."""
    folder = Path(folder)
    atomic.write_json(folder / MANIFEST, {"sha256": {rel: sha256_file(p) for rel, p in _files(folder).items()}})


def verify_manifest(folder: str | os.PathLike) -> Optional[list[str]]:
    """The files of ``folder`` that differ from its manifest (missing, changed or added; ``[]``: intact),
    or None when it has no readable manifest (unverified)."""
    folder = Path(folder)
    try:
        recorded = _read_manifest(folder / MANIFEST)
    except FileNotFoundError:
        return None
    if recorded is None:
        return [MANIFEST]
    present = _files(folder)
    bad = sorted(set(recorded) ^ set(present))
    bad += [rel for rel in sorted(set(recorded) & set(present)) if sha256_file(present[rel]) != recorded[rel]]
    return bad


def _read_manifest(path: Path) -> Optional[dict[str, str]]:
    """The ``sha256`` table of a manifest, or None when it is unreadable (itself corrupt)."""
    try:
        table = json.loads(path.read_text())["sha256"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return table if isinstance(table, dict) else None


def _workdir_of(path: Path, fallback: Path) -> Path:
    for parent in path.parents:
        if (parent / "config.json").is_file():
            return parent
    return fallback


def quarantine(path: str | os.PathLike, why: str, *, then: str = "recomputing it",
               root: Optional[str | os.PathLike] = None) -> Path:
    """Move ``path`` (a file or folder) to ``WORKDIR/quarantine/<its path under WORKDIR>`` (a suffix if that is
    taken; WORKDIR: the nearest folder above holding ``config.json``, else ``root``, else its parent) and
    warn ``"<path> <why>: moved to <dest> (kept, not deleted); <then>."``; returns where it went."""
    path = Path(path).absolute()
    base = _workdir_of(path, Path(root).absolute() if root is not None else path.parent)
    try:
        rel = path.relative_to(base)
    except ValueError:
        rel = Path(path.name)
    dest = base / QUARANTINE / rel
    if dest.exists() or dest.is_symlink():
        dest = dest.with_name(f"{dest.name}.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(dest))
    warnings.warn(f"{path} {why}: moved to {dest} (kept, not deleted); {then}.", RuntimeWarning, stacklevel=2)
    return dest
