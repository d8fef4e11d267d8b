"""A teacher from any framework: its exported outputs (``teacher.model='precomputed'``).

Every method that needs only the teacher's outputs (ce, kd, lelp and its ablations,
kmeans, agglomerative, oracle, fitnet and rkd on the final embedding) needs three
things: the embedding h(x) (the input of the teacher's final linear layer), the
logits l(x) = h(x) @ kernel + bias, and that head (kernel (D, C), bias (C,)) for the
null space. A PyTorch or Hugging Face teacher exports them once
(``scripts/export_teacher_outputs.py``); the pipeline then reads them as it reads
its own cache (:class:`lelp_jax.pipeline.teacher.TeacherCache`, rows looked up by example
``index``). Methods that need the network itself (``subclass`` retrains it) are
refused before anything runs.

Layouts (``teacher.outputs.train/validation/test``, one per split of the data;
``teacher.outputs.head`` optional):

- ``SPLIT.npz`` with ``embedding`` (N, D), ``logits`` (N, C), optional ``label``
  (N,) int, and in the train file (or ``teacher.outputs.head``) ``kernel`` (D, C)
  and ``bias`` (C,). An ``.npz`` member cannot be memory-mapped: it is read whole.
- a folder ``SPLIT/`` with ``embedding.npy``, ``logits.npy`` [``label.npy``]
  [``kernel.npy``, ``bias.npy``], opened with ``np.load(mmap_mode='r')``: rows are
  paged in on demand and shared by every process on a host; nothing is copied.

Row i of a split's arrays is example ``index`` i of that data split (the data
files' order). A dataset without a validation split carves validation out of
train (``data.val_fraction``): then ``teacher.outputs.train`` covers the whole
train file and each carved split reads its rows through an index map.

A binary teacher with **one logit** z per example (a sigmoid / BCE head: scikit-learn's
``LogisticRegression`` or ``MLPClassifier``, head kernel (D, 1), bias (1,), logits (N, 1)) is
read as the two logits ``[0, z]``, kernel ``[0, k]``, bias ``[0, b]``: softmax([0, z])_1 =
sigmoid(z), so class probabilities, KD targets and the null space of W are those of the
two-logit head it equals (:attr:`PrecomputedTeacher.notes` says so, once, in the teacher line).

With ``data.max_examples_per_split`` set (``--config.smoke=true`` sets 256), a split exported
whole does not match the capped split, and its rows cannot be sliced to match: the offline
builders cap the rows before tfds shuffles them, so the capped split is not the first rows of
the full one. The row-count error then names the cap and both fixes (export the capped data, or
``--config.data.max_examples_per_split=none``: smoke's short training on every exported row).

Checked on load, each failure one :class:`PrecomputedError` naming the file, the
array and the fix: row counts equal the data split's; D and C agree with the head
and C with the data; every value finite (first bad row named);
``|l - (h @ kernel + bias)| <= tolerance * (1 + |l|)`` elementwise (computed in
float64; otherwise the head does not belong to these embeddings); ``label``, when
present, in [0, C) and equal to the data's labels (a different row order).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lelp_jax.runtime.errors import PrecomputedError
from lelp_jax.pipeline.teacher import TeacherCache

__all__ = [
    "PRECOMPUTED",
    "SPLITS",
    "PrecomputedError",
    "SplitRows",
    "RowView",
    "PrecomputedTeacher",
    "check_methods",
    "read_arrays",
    "load_precomputed_teacher",
]

PRECOMPUTED = "precomputed"
SPLITS = ("train", "validation", "test")
# A method whose fit needs the teacher network, and why (a precomputed teacher has none).
_NETWORK_FITS = {"subclass_teacher": "it retrains the teacher network with a C*S head"}
_CHUNK_ROWS = 4096  # rows per validation pass step: bounded float64 memory on any N


def check_methods(methods: Iterable[str]) -> None:
    """Refuse methods that need the teacher network (``Method.fit`` in ``_NETWORK_FITS``)."""
    from lelp_jax.methods import get_method

    for name in methods:
        why = _NETWORK_FITS.get(get_method(name).fit or "")
        if why:
            raise PrecomputedError(
                f"method {name!r} cannot run with teacher.model={PRECOMPUTED!r}: {why}, and exported outputs "
                "have no network; drop it from --methods (every method that needs only the teacher's embedding "
                "and logits works).")


@dataclasses.dataclass(frozen=True)
class SplitRows:
    """Where a data split's outputs are: ``file`` (a ``teacher.outputs`` key), the row count that
    file must have, and this split's rows in it (None: all of them, in order)."""

    file: str
    file_rows: int
    rows: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return self.file_rows if self.rows is None else len(self.rows)


class RowView:
    """Read-only float32 ``(N, K)`` view of a stored array (often a memmap), optionally through rows.

    ``view[index]`` reads only those rows; ``np.asarray(view)`` reads all of them. With
    ``zero_first``, a column of zeros is put before the stored ones (one logit z -> ``[0, z]``).
    """

    def __init__(self, base: np.ndarray, rows: Optional[np.ndarray] = None, *, zero_first: bool = False):
        self._base, self._rows, self._zero_first = base, rows, zero_first

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), int(self._base.shape[1]) + self._zero_first)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return len(self._base) if self._rows is None else len(self._rows)

    def _pad(self, a: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros(a.shape[:-1] + (1,), np.float32), a], -1) if self._zero_first else a

    def __getitem__(self, index) -> np.ndarray:
        index = np.asarray(index)
        return self._pad(np.asarray(self._base[index if self._rows is None else self._rows[index]], np.float32))

    def __array__(self, dtype=None, copy=None):
        out = self._pad(np.asarray(self._base if self._rows is None else self._base[self._rows], np.float32))
        return out if dtype is None else out.astype(dtype)


@dataclasses.dataclass(frozen=True)
class PrecomputedTeacher:
    """Validated exported outputs: one :class:`TeacherCache` per data split and the head."""

    caches: Mapping[str, TeacherCache]
    kernel: np.ndarray  # (D, C)
    bias: np.ndarray  # (C,)
    paths: Mapping[str, str]
    notes: tuple[str, ...] = ()  # how the exports were read, when not as given (one logit)

    def head_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W (C, D), b (C,))`` as :func:`lelp_jax.models.head_weights` returns them."""
        return np.asarray(self.kernel, np.float32).T, np.asarray(self.bias, np.float32)

    def accuracy(self, split: str, labels: np.ndarray) -> float:
        """Share of rows whose logits' argmax is the label (chunked, no full copy)."""
        logits = self.caches[split].logits
        n = len(logits)
        hits = sum(int((np.argmax(logits[np.arange(s, min(s + _CHUNK_ROWS, n))], -1)
                        == labels[s:s + _CHUNK_ROWS]).sum()) for s in range(0, n, _CHUNK_ROWS))
        return hits / n


def read_arrays(path: str | Path, *, key: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (read whole) or of a folder of ``.npy`` (memory-mapped)."""
    p = Path(path).expanduser()
    if p.is_dir():
        out = {f.stem: np.load(f, mmap_mode="r", allow_pickle=False) for f in sorted(p.glob("*.npy"))}
        if not out:
            raise PrecomputedError(f"teacher.outputs.{key}={str(path)!r} is a folder without .npy files; write "
                                   "embedding.npy and logits.npy there (scripts/export_teacher_outputs.py).")
        return out
    if not p.is_file():
        raise PrecomputedError(f"teacher.outputs.{key}={str(path)!r} does not exist; give the .npz file or the "
                               "folder of .npy files exported for this split.")
    try:
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise PrecomputedError(f"teacher.outputs.{key}={str(path)!r} is not a readable .npz ({e}); export it with "
                               "np.savez or use a folder of .npy files.") from None


def _need(arrays: Mapping[str, np.ndarray], name: str, where: str, shape: str) -> np.ndarray:
    if name not in arrays:
        raise PrecomputedError(f"{where} has no {name!r} array (it has {sorted(arrays) or 'none'}); export "
                               f"{name!r} {shape} (scripts/export_teacher_outputs.py).")
    a = arrays[name]
    if a.dtype.kind != "f":
        raise PrecomputedError(f"{where}: {name!r} has dtype {a.dtype}; export it as float32.")
    return a


def _first_bad_row(a: np.ndarray) -> Optional[int]:
    bad = ~np.isfinite(a).reshape(len(a), -1).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def _check_head(arrays: Mapping[str, np.ndarray], where: str) -> tuple[np.ndarray, np.ndarray]:
    kernel = np.asarray(_need(arrays, "kernel", where, "(D, C): the head's weight, transposed"), np.float64)
    bias = np.asarray(_need(arrays, "bias", where, "(C,): the head's bias (zeros if it has none)"), np.float64)
    if kernel.ndim != 2 or bias.shape != (kernel.shape[-1],):
        raise PrecomputedError(f"{where}: 'kernel' {kernel.shape} and 'bias' {bias.shape} must be (D, C) and (C,); "
                               "a PyTorch nn.Linear's weight is (C, D): export weight.T.")
    for name, a in (("kernel", kernel), ("bias", bias)):
        if not np.isfinite(a).all():
            raise PrecomputedError(f"{where}: {name!r} holds NaN or inf; export the trained head's weights.")
    return kernel, bias


def _check_outputs(arrays: Mapping[str, np.ndarray], where: str, *, kernel: np.ndarray, bias: np.ndarray,
                   num_rows: int, num_classes: int, tolerance: float, labels: Optional[Callable[[], np.ndarray]],
                   split_desc: str, cap: Optional[int] = None) -> None:
    """Shapes, finiteness, head consistency and labels of one file's outputs (one chunked pass)."""
    emb = _need(arrays, "embedding", where, "(N, D): the input of the teacher's final linear layer")
    logits = _need(arrays, "logits", where, "(N, C): the teacher's logits")
    d, c = kernel.shape
    if emb.ndim != 2 or logits.ndim != 2:
        raise PrecomputedError(f"{where}: 'embedding' {emb.shape} and 'logits' {logits.shape} must be 2-D (N, D) "
                               "and (N, C); flatten one row per example.")
    for name, a in (("embedding", emb), ("logits", logits)):
        if len(a) != num_rows:
            capped = (f", capped by data.max_examples_per_split={cap} (--config.smoke=true sets it); export that "
                      "capped data, or keep every exported row with --config.data.max_examples_per_split=none"
                      if cap is not None else "; export one row per example, in the data files' order")
            raise PrecomputedError(f"{where}: {name!r} has {len(a)} rows but {split_desc} has {num_rows} "
                                   f"examples{capped}.")
    if emb.shape[1] != d:
        raise PrecomputedError(f"{where}: 'embedding' is {emb.shape} but the head's 'kernel' is {kernel.shape}: D must "
                               "agree; export the embedding that feeds the head (its final linear layer's input).")
    if logits.shape[1] != c:
        raise PrecomputedError(f"{where}: 'logits' is {logits.shape} but the head's 'kernel' is {kernel.shape}: C must "
                               "agree; export the logits of this head.")
    if c != num_classes and not (c == 1 and num_classes == 2):
        one = " (one logit is read as a binary teacher's [0, z])" if c == 1 else ""
        raise PrecomputedError(f"{where}: the teacher has {c} classes (logits {logits.shape}){one} but the data has "
                               f"{num_classes}; export a teacher of this dataset's classes.")
    for start in range(0, num_rows, _CHUNK_ROWS):
        h = np.asarray(emb[start:start + _CHUNK_ROWS], np.float64)
        lg = np.asarray(logits[start:start + _CHUNK_ROWS], np.float64)
        for name, a in (("embedding", h), ("logits", lg)):
            bad = _first_bad_row(a)
            if bad is not None:
                raise PrecomputedError(f"{where}: {name!r} row {start + bad} holds NaN or inf; fix the export (a "
                                       "diverged teacher or an unfilled row) before distilling from it.")
        err = np.abs(lg - (h @ kernel + bias))
        over = err > tolerance * (1.0 + np.abs(lg))
        if over.any():
            r = int(np.argmax(over.any(axis=1)))
            raise PrecomputedError(
                f"{where}: the head does not belong to these embeddings: 'logits' row {start + r} differs from "
                f"embedding @ kernel + bias by {err[r].max():.3g} (allowed: teacher.outputs.tolerance="
                f"{tolerance:g} x (1 + |logit|)); export kernel = the final linear layer's weight transposed (D, C) "
                "and its bias, with the embedding that feeds it.")
    if "label" in arrays:
        exported = np.asarray(arrays["label"])
        if exported.shape != (num_rows,) or exported.dtype.kind not in "iu":
            raise PrecomputedError(f"{where}: 'label' is {exported.dtype}{exported.shape}; it must be int "
                                   f"({num_rows},) or be left out.")
        out = (exported < 0) | (exported >= num_classes)
        if out.any():
            r = int(np.argmax(out))
            raise PrecomputedError(f"{where}: 'label' row {r} is {int(exported[r])}, outside [0, {num_classes}); "
                                   "export class ids of the data's classes.")
        if labels is not None:
            data = labels()
            diff = exported != data
            if diff.any():
                r = int(np.argmax(diff))
                raise PrecomputedError(
                    f"{where}: 'label' row {r} is {int(exported[r])} but {split_desc} has label {int(data[r])} "
                    "there: the rows are in another order than the data files; export in the data's order.")


def load_precomputed_teacher(outputs: Mapping[str, Any], *, splits: Mapping[str, SplitRows], num_classes: int,
                             labels_of: Callable[[str], np.ndarray],
                             max_examples_per_split: Optional[int] = None) -> PrecomputedTeacher:
    """Read and validate the exported outputs of every data split in ``splits``.

    Args:
      outputs: the ``teacher.outputs`` section (split -> path, ``head``, ``tolerance``).
      splits: data split -> :class:`SplitRows` (which file holds it, and where).
      num_classes: the data's C.
      labels_of: data split -> its labels in index order (read only when a file has ``label``).
      max_examples_per_split: ``data.max_examples_per_split``, named by the row-count error when set.
    """
    tolerance = float(outputs.get("tolerance") or 0.0)
    paths: dict[str, str] = {}
    for split, where in splits.items():
        path = outputs.get(where.file)
        if not path:
            raise PrecomputedError(f"teacher.model='precomputed' needs teacher.outputs.{where.file} (the teacher's "
                                   f"outputs on the {where.file} split); pass --config.teacher.outputs."
                                   f"{where.file}=FILE.npz or a folder of .npy files.")
        paths[where.file] = str(path)
    stray = [k for k in SPLITS if outputs.get(k) and k not in paths]
    if stray:
        raise PrecomputedError(
            f"teacher.outputs.{stray[0]} is set but the data has no {stray[0]} split of its own (it is carved from "
            "train, data.val_fraction): unset it and let teacher.outputs.train cover the whole train file.")
    arrays = {key: read_arrays(p, key=key) for key, p in paths.items()}
    head_key = "head" if outputs.get("head") else "train"
    head_arrays = read_arrays(outputs["head"], key="head") if outputs.get("head") else arrays["train"]
    kernel, bias = _check_head(head_arrays, f"teacher.outputs.{head_key}={str(outputs.get(head_key))!r}")
    cap = None if max_examples_per_split is None else int(max_examples_per_split)
    for key, path in paths.items():
        parts = {s: w for s, w in splits.items() if w.file == key}
        file_rows = next(iter(parts.values())).file_rows

        def labels(parts=parts, file_rows=file_rows) -> np.ndarray:
            out = np.zeros(file_rows, np.int64)
            for s, w in parts.items():
                out[np.arange(file_rows) if w.rows is None else w.rows] = labels_of(s)
            return out

        desc = " + ".join(f"the {s} split" for s in parts) if len(parts) > 1 else f"the data's {key} split"
        _check_outputs(arrays[key], f"teacher.outputs.{key}={path!r}", kernel=kernel, bias=bias, num_rows=file_rows,
                       num_classes=num_classes, tolerance=tolerance, labels=labels, split_desc=desc, cap=cap)
    one_logit = kernel.shape[1] == 1
    if one_logit:  # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]: the two-logit head this one equals
        kernel = np.concatenate([np.zeros_like(kernel), kernel], axis=1)
        bias = np.concatenate([np.zeros_like(bias), bias])
    notes = ("one logit z per example (a sigmoid/BCE head): read as logits [0, z]",) if one_logit else ()
    caches = {s: TeacherCache(embeddings=RowView(arrays[w.file]["embedding"], w.rows),
                              logits=RowView(arrays[w.file]["logits"], w.rows, zero_first=one_logit))
              for s, w in splits.items()}
    return PrecomputedTeacher(caches=caches, kernel=kernel.astype(np.float32), bias=bias.astype(np.float32),
                              paths=paths, notes=notes)
