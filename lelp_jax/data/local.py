"""Bring your own data: CSV / JSONL text files and .npz arrays.

Config (`data.name = 'local'`): `files` maps split name -> path; the format
follows the extension (`.csv`, `.jsonl`, `.npz`). Text files need a text column
(`text_column`, default 'text') and a label column (`label_column`, default
'label'), optionally an integer fine-label column (`fine_label_column`).
Labels are class names listed in `class_names` (mapped to their position) or
integers in [0, num_classes). With neither set, the classes come from the training
file (`files['train']`, see `train_classes`): string labels map to ids in sorted
order (`classes: negative=0, positive=1` is printed once), integer labels give
num_classes = largest + 1; a validation/test label the training file lacks is an
error. .npz files hold `features` (N, F) or `images` (N, H, W[, ch]; uint8 is divided
by 255, floats are taken as already in [0, 1]) plus `labels` (N,) and
optionally `fine_labels` (N,); non-finite features or images are refused (the
file, the array and the first bad row are named).
`num_fine_classes`, when unset, is the largest fine label of the loaded file + 1:
set it when splits may differ. Every problem is a ValueError naming the file,
the problem and the fix.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Sequence

import numpy as np

CSV_FIELD_LIMIT = 2**31 - 1  # characters per CSV field (Python's csv default is 131,072)


def _decode(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line} is not valid UTF-8 ({e.reason} at byte {e.start}). "
            "Re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)."
        ) from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty. Point data.files at a file with examples.")
    return text


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows of a CSV (header line) or JSONL (one object per line) file."""
    text = _decode(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        limit = csv.field_size_limit(CSV_FIELD_LIMIT)  # the default 131,072 characters refuses long documents
        try:
            rows = list(reader)
        except csv.Error as e:
            raise ValueError(f"{path}: line {reader.line_num} is not valid CSV ({e}). Fix that line.") from None
        finally:
            csv.field_size_limit(limit)
    elif ext in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n} is not valid JSON ({e.msg}). "
                                 "Write one JSON object per line.") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {n} is not a JSON object. Write one object per line.")
            rows.append(row)
    else:
        raise ValueError(f"{path}: unknown extension {ext!r}; use .csv, .jsonl or .npz.")
    if not rows:
        raise ValueError(f"{path}: the file has a header but no examples. Add rows.")
    return rows


def map_labels(
    values: Sequence[Any], *, path: str, class_names: Sequence[str] | None, num_classes: int | None,
    names_from: str | None = None,
) -> np.ndarray:
    """Class indices of raw label values: names via `class_names`, or integers.

    `names_from` (the training file, when `class_names` were read from it by
    `train_classes`): only those names are valid, integers are not taken as ids.
    """
    if class_names is None and num_classes is None:
        raise ValueError(f"{path}: set data.class_names or data.num_classes so labels can be checked.")
    names = None if class_names is None else [str(c) for c in class_names]
    n_cls = len(names) if names is not None else int(num_classes)
    if names is not None and num_classes is not None and int(num_classes) != n_cls:
        raise ValueError(f"data.num_classes={num_classes} but data.class_names has {n_cls} names: make them agree.")
    index = {} if names is None else {n: i for i, n in enumerate(names)}
    out = np.empty(len(values), np.int32)
    bad: set[str] = set()
    for i, v in enumerate(values):
        s = str(v).strip()
        if s in index:
            out[i] = index[s]
            continue
        try:
            k = int(s)
        except ValueError:
            bad.add(s)
            continue
        if 0 <= k < n_cls and names_from is None:
            out[i] = k
        else:
            bad.add(s)
    if bad and names_from is not None:
        raise ValueError(
            f"{path}: labels {sorted(bad)[:10]} do not occur in the training file {names_from} (its classes: "
            f"{names}). Add examples of them to the training file, fix the labels, or list every class in "
            "data.class_names."
        )
    if bad:
        expected = f"one of {names} or an integer in [0, {n_cls})" if names else f"an integer in [0, {n_cls})"
        raise ValueError(
            f"{path}: labels {sorted(bad)[:10]} do not match the configured classes (expected "
            f"{expected}). Fix the file or data.class_names / data.num_classes."
        )
    return out


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def train_classes(path: str, *, label_column: str = "label") -> tuple[tuple[str, ...] | None, int]:
    """(class_names or None, num_classes) read from the training file's labels.

    String labels: the distinct labels in sorted order, so `negative` -> 0,
    `positive` -> 1 whatever the row order (reproducible, independent of the
    split). All-integer labels: no names, num_classes = the largest label + 1.
    """
    if path.lower().endswith(".npz"):
        raw = _load_npz(path)
        if "labels" not in raw.files:
            raise ValueError(f"{path}: needs 'labels' (found {sorted(raw.files)}). Save with np.savez(path, ..., labels=y).")
        values = raw["labels"].tolist()
    else:
        values = _column(read_rows(path), label_column, path, "label_column")
    distinct = sorted({str(v).strip() for v in values})
    if not distinct:
        raise ValueError(f"{path}: no labels. Add examples.")
    if len(distinct) < 2:  # integer labels too: an all-1 column is one class, not a binary problem
        raise ValueError(f"{path}: all {len(values)} examples have the label {distinct[0]!r} (1 class); a classifier "
                         "needs at least two classes: fix the label column (or list the classes in data.class_names).")
    if all(_is_int(s) for s in distinct):
        top = max(int(s) for s in distinct)
        if min(int(s) for s in distinct) < 0:
            raise ValueError(f"{path}: negative integer labels; use 0..C-1 or set data.class_names.")
        return None, top + 1
    return tuple(distinct), len(distinct)


def _finite_or_raise(x: np.ndarray, path: str, key: str) -> None:
    """ValueError naming the file, the array and the first row with NaN or inf."""
    if not np.issubdtype(x.dtype, np.floating):
        return
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"{path}: array {key!r} has NaN or inf values ({int(bad.sum())} rows; first bad row "
                         f"{row}). Clean or drop those rows before training.")


def _column(rows: list[dict[str, Any]], column: str, path: str, key: str) -> list[Any]:
    if column not in rows[0]:
        raise ValueError(
            f"{path}: missing column {column!r} (found {sorted(rows[0])}). "
            f"Set data.{key} to the right column name or fix the file."
        )
    missing = [i for i, r in enumerate(rows) if r.get(column) is None]
    if missing:
        raise ValueError(f"{path}: example {missing[0] + 1} has no value in column {column!r}.")
    return [r[column] for r in rows]


def read_text_file(
    path: str,
    *,
    text_column: str = "text",
    label_column: str = "label",
    fine_label_column: str | None = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    names_from: str | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """(texts, labels, fine_labels or None) of a CSV/JSONL file (`names_from`: see `map_labels`)."""
    rows = read_rows(path)
    texts = [str(t) for t in _column(rows, text_column, path, "text_column")]
    labels = map_labels(_column(rows, label_column, path, "label_column"), path=path,
                        class_names=class_names, num_classes=num_classes, names_from=names_from)
    fine = None
    if fine_label_column:
        raw = _column(rows, fine_label_column, path, "fine_label_column")
        try:
            fine = np.asarray([int(str(v).strip()) for v in raw], np.int32)
        except ValueError:
            raise ValueError(f"{path}: column {fine_label_column!r} must hold integers.") from None
        if fine.min() < 0:
            raise ValueError(f"{path}: column {fine_label_column!r} has negative fine labels.")
    return texts, labels, fine


def _load_npz(path: str):
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"{path}: cannot read as .npz ({e}). Save it with np.savez.") from None


def read_npz(
    path: str, *, class_names: Sequence[str] | None = None, num_classes: int | None = None,
    names_from: str | None = None,
) -> dict[str, np.ndarray]:
    """Arrays of the batch contract (`image` or `features`, `label`, opt. `fine_label`)."""
    z = _load_npz(path)
    keys = set(z.files)
    if "labels" not in keys or not keys & {"features", "images"}:
        raise ValueError(
            f"{path}: needs 'labels' and one of 'features' / 'images' (found {sorted(keys)}). "
            "Save with np.savez(path, features=X, labels=y) or images=..."
        )
    labels = map_labels(z["labels"].tolist(), path=path, class_names=class_names, num_classes=num_classes,
                        names_from=names_from)
    if len(labels) == 0:
        raise ValueError(f"{path}: 'labels' is empty. Save at least one example.")
    out: dict[str, np.ndarray] = {"label": labels}
    if "images" in keys:
        x = z["images"]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise ValueError(f"{path}: 'images' must be (N, H, W) or (N, H, W, ch), got {x.shape}.")
        _finite_or_raise(x, path, "images")
        out["image"] = (x / 255.0 if x.dtype == np.uint8 else x).astype(np.float32)
    else:
        x = z["features"]
        if x.ndim != 2:
            raise ValueError(f"{path}: 'features' must be (N, F), got {x.shape}.")
        _finite_or_raise(x, path, "features")
        out["features"] = x.astype(np.float32)
    if "fine_labels" in keys:
        out["fine_label"] = z["fine_labels"].astype(np.int32)
    sizes = {k: len(v) for k, v in out.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{path}: arrays have different lengths {sizes}; they must agree.")
    return out


def read_transfer_file(
    path: str, *, text_column: str = "text", label_column: str = "label", use_labels: bool = False,
    class_names: Sequence[str] | None = None, num_classes: int | None = None, names_from: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """An unlabelled transfer file (``data.files.transfer``): ``({'texts': [...]} or the .npz arrays, and
    'label' (N,) int32: -1 on every row, or the mapped labels with ``use_labels``), had_labels)``.

    CSV/JSONL need the text column only; .npz needs ``features`` or ``images`` (``labels`` optional).
    ``had_labels``: the file has a label column (``labels`` array), which only ``use_labels``
    (``data.transfer_labels='use'``) keeps. An empty file is a ValueError naming it.
    """
    if path.lower().endswith(".npz"):
        z = _load_npz(path)
        keys = set(z.files)
        x_key = "images" if "images" in keys else "features" if "features" in keys else None
        if x_key is None:
            raise ValueError(f"{path}: a transfer .npz needs 'features' or 'images' (found {sorted(keys)}). "
                             "Save with np.savez(path, features=X).")
        x = z[x_key]
        if len(x) == 0:
            raise ValueError(f"{path}: the transfer file has no examples. Add rows or unset data.files.transfer.")
        _finite_or_raise(x, path, x_key)
        if x_key == "images":
            x = x[..., None] if x.ndim == 3 else x
            out: dict[str, Any] = {"image": (x / 255.0 if x.dtype == np.uint8 else x).astype(np.float32)}
        else:
            if x.ndim != 2:
                raise ValueError(f"{path}: 'features' must be (N, F), got {x.shape}.")
            out = {"features": x.astype(np.float32)}
        had = "labels" in keys
        raw = z["labels"].tolist() if had else None
        n = len(x)
    else:
        rows = read_rows(path)
        out = {"texts": [str(t) for t in _column(rows, text_column, path, "text_column")]}
        had = label_column in rows[0]
        raw = _column(rows, label_column, path, "label_column") if had and use_labels else None
        n = len(rows)
    if had and use_labels:
        labels = map_labels(raw, path=path, class_names=class_names, num_classes=num_classes, names_from=names_from)
        if len(labels) != n:
            raise ValueError(f"{path}: 'labels' has {len(labels)} rows for {n} examples; they must agree.")
    else:
        labels = np.full(n, -1, np.int32)
    out["label"] = labels
    return out, had
