"""Content-addressed artifacts: teacher-derived files computed once and shared by every workdir that needs them.

A teacher's cached outputs, the per-class statistics of its embeddings and the fitted
projections depend on a few config keys only (the teacher, the data, the fit settings), not on
the student-side keys a sweep varies (``lelp.beta``, ``kd.tau``, ``train.*``, ...). Each such
artifact is stored once as ``STORE/KIND-HASH.npz``, HASH = the first 16 hex digits of the SHA-256
of the canonical JSON of exactly the keys it depends on (written next to it as
``KIND-HASH.json``), and each workdir gets a hard link (a symbolic link across filesystems) at
its usual path, so the workdir layout, resuming and ``--force`` work as before and nothing is
copied. The key description also records the artifact's SHA-256, verified before every reuse (a
corrupt one is quarantined and recomputed). The store lives with the teacher's weights
(``TEACHER/derived/``): every workdir that
loads one teacher shares it, and deleting the teacher deletes what was derived from it.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Optional

from lelp_jax.core import atomic
from lelp_jax.runtime import integrity

__all__ = ["artifact_key", "Store"]


def artifact_key(parts: Mapping) -> str:
    """16 hex digits of SHA-256 over ``parts`` as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _link(target: Path, local: Path) -> None:
    """``local`` -> ``target``: a hard link, else a symbolic link (another filesystem)."""
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.link")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    try:
        os.link(target, tmp)
    except OSError:
        os.symlink(target.resolve(), tmp)
    os.replace(tmp, local)


class Store:
    """The content-addressed folder ``root`` (None: no sharing, artifacts are written in place)."""

    def __init__(self, root: Optional[str | os.PathLike]):
        self.root = None if root is None else Path(root)
        if self.root is not None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError:  # e.g. a read-only teacher folder: compute in place
                self.root = None

    def path(self, kind: str, parts: Mapping) -> Optional[Path]:
        """``ROOT/KIND-HASH.npz`` for ``parts`` (None without a store)."""
        return None if self.root is None else self.root / f"{kind}-{artifact_key({'kind': kind, **parts})}.npz"

    def _intact(self, target: Path) -> bool:
        """Whether ``target`` matches the ``sha256`` its key description recorded (True when none was:
        an entry from before checksums)."""
        try:
            recorded = json.loads(target.with_suffix(".json").read_text()).get("sha256")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded is None:
            return True
        try:
            return integrity.sha256_file(target) == recorded
        except OSError:
            return False

    def present(self, local: Path, kind: str, parts: Mapping, *, main: bool = True) -> bool:
        """Whether ``local`` exists and, when it links to this store's artifact for ``parts``, that artifact
        matches its recorded SHA-256. A corrupt one is quarantined with the link (main process) and
        False returned: the caller recomputes it (:meth:`provide`)."""
        if not local.exists():
            return False
        target = self.path(kind, parts)
        if target is None or not target.exists() or not os.path.samefile(local, target) or self._intact(target):
            return True
        if main:
            integrity.quarantine(target, f"({kind}) differs from the SHA-256 recorded when it was written")
            integrity.quarantine(local, f"({kind}) is a link to that corrupt artifact")
        return False

    def provide(self, local: Path, kind: str, parts: Mapping, produce: Callable[[Path], None], *,
                main: bool = True) -> str:
        """Make ``local`` exist: 'local' (it was there), 'shared' (linked to a stored artifact) or
        'new' (``produce(path)`` wrote it, into the store when there is one, then linked).

        A stored artifact is verified against the SHA-256 recorded when it was made; one that differs
        (truncated, flipped bits) is quarantined with its workdir link (:func:`integrity.quarantine`,
        never deleted) and made anew. ``produce`` runs on every process (it may be collective) and
        writes only on the main one; the main process writes the key description and the link.
        """
        if self.present(local, kind, parts, main=main):
            return "local"
        target = self.path(kind, parts)
        if target is None:
            produce(local)
            return "new"
        stale = target.exists() and not self._intact(target)  # every process decides alike: produce may be collective
        if stale and main:
            integrity.quarantine(target, f"({kind}) differs from the SHA-256 recorded when it was written")
        status = "shared" if target.exists() and not stale else "new"
        if status == "new":
            produce(target)
            if main:
                atomic.write_json(target.with_suffix(".json"),
                                  {"kind": kind, **parts, "sha256": integrity.sha256_file(target)})
        if main:
            _link(target, local)
        return status
