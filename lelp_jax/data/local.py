"""Bring your own data: CSV / JSONL text files and .npz arrays.

Config (`data.name = 'local'`): `files` maps split name -> path; the format
follows the extension (`.csv`, `.jsonl`, `.npz`). Text files need a text column
(`text_column`, default 'text') and a label column (`label_column`, default
'label'), optionally an integer fine-label column (`fine_label_column`).
Labels are class names listed in `class_names` (mapped to their position) or
integers in [0, num_classes); one of `class_names` / `num_classes` must be set.
.npz files hold `features` (N, F) or `images` (N, H, W[, ch]; uint8 is divided
by 255, floats are taken as already in [0, 1]) plus `labels` (N,) and
optionally `fine_labels` (N,).
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
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
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
    values: Sequence[Any], *, path: str, class_names: Sequence[str] | None, num_classes: int | None
) -> np.ndarray:
    """Class indices of raw label values: names via `class_names`, or integers."""
    if class_names is None and num_classes is None:
        raise ValueError(f"{path}: set data.class_names or data.num_classes so labels can be checked.")
    names = None if class_names is None else [str(c) for c in class_names]
    n_cls = len(names) if names is not None else int(num_classes)
    if names is not None and num_classes is not None and int(num_classes) != n_cls:
        raise ValueError(f"data.num_classes={num_classes} but data.class_names has {n_cls} names: make them agree.")
    out = np.empty(len(values), np.int32)
    bad: set[str] = set()
    for i, v in enumerate(values):
        s = str(v).strip()
        if names is not None and s in names:
            out[i] = names.index(s)
            continue
        try:
            k = int(s)
        except ValueError:
            bad.add(s)
            continue
        if 0 <= k < n_cls:
            out[i] = k
        else:
            bad.add(s)
    if bad:
        expected = f"one of {names} or an integer in [0, {n_cls})" if names else f"an integer in [0, {n_cls})"
        raise ValueError(
            f"{path}: labels {sorted(bad)[:10]} do not match the configured classes (expected "
            f"{expected}). Fix the file or data.class_names / data.num_classes."
        )
    return out


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
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """(texts, labels, fine_labels or None) of a CSV/JSONL file."""
    rows = read_rows(path)
    texts = [str(t) for t in _column(rows, text_column, path, "text_column")]
    labels = map_labels(_column(rows, label_column, path, "label_column"), path=path,
                        class_names=class_names, num_classes=num_classes)
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


def read_npz(
    path: str, *, class_names: Sequence[str] | None = None, num_classes: int | None = None
) -> dict[str, np.ndarray]:
    """Arrays of the batch contract (`image` or `features`, `label`, opt. `fine_label`)."""
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(f"{path}: cannot read as .npz ({e}). Save it with np.savez.") from None
    keys = set(z.files)
    if "labels" not in keys or not keys & {"features", "images"}:
        raise ValueError(
            f"{path}: needs 'labels' and one of 'features' / 'images' (found {sorted(keys)}). "
            "Save with np.savez(path, features=X, labels=y) or images=..."
        )
    labels = map_labels(z["labels"].tolist(), path=path, class_names=class_names, num_classes=num_classes)
    if len(labels) == 0:
        raise ValueError(f"{path}: 'labels' is empty. Save at least one example.")
    out: dict[str, np.ndarray] = {"label": labels}
    if "images" in keys:
        x = z["images"]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise ValueError(f"{path}: 'images' must be (N, H, W) or (N, H, W, ch), got {x.shape}.")
        out["image"] = (x / 255.0 if x.dtype == np.uint8 else x).astype(np.float32)
    else:
        x = z["features"]
        if x.ndim != 2:
            raise ValueError(f"{path}: 'features' must be (N, F), got {x.shape}.")
        out["features"] = x.astype(np.float32)
    if "fine_labels" in keys:
        out["fine_label"] = z["fine_labels"].astype(np.int32)
    sizes = {k: len(v) for k, v in out.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{path}: arrays have different lengths {sizes}; they must agree.")
    return out
