"""`lelp predict --student DIR --input FILE [--out PREDS.csv]`: a bundle's predictions for a file.

Inputs: CSV / JSONL with the bundle's text column (or ``--text-column``) for a text student; ``.npz``
with ``features`` (N, F) or ``image`` / ``images`` (N, H, W[, ch]; uint8 divided by 255) otherwise.
Output CSV, one row per example: ``row``, ``label`` (the class name), ``label_id`` and ``p_NAME`` for
every class. Large inputs run in batches with a progress line on stderr. Needs only the bundle:
no workdir, no config, no repository. Every bad input is one ``lelp: error:`` line (a ConfigError).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence

import numpy as np

from lelp_jax.data.local import read_rows
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.student.bundle import Student, load_student

__all__ = ["read_inputs", "write_predictions", "main"]


def read_inputs(student: Student, path: str, *, text_column: str | None = None):
    """The inputs of ``path`` as ``student`` reads them: a list of strings (text) or an array."""
    if not os.path.isfile(path):
        raise ConfigError(f"--input {path!r} does not exist; pass a .csv, .jsonl or .npz file.")
    ext = os.path.splitext(path)[1].lower()
    kind = student.input_kind
    if kind == "text":
        if ext not in (".csv", ".jsonl", ".json"):
            raise ConfigError(f"{path}: a text student reads .csv or .jsonl files, not {ext or 'no extension'!r}.")
        column = text_column or student.spec["input"].get("text_column", "text")
        try:
            rows = read_rows(path)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if column not in rows[0]:
            raise ConfigError(f"{path}: missing text column {column!r} (found {sorted(rows[0])}); pass "
                              "--text-column NAME.")
        missing = [i for i, r in enumerate(rows) if r.get(column) is None]
        if missing:
            raise ConfigError(f"{path}: row {missing[0] + 1} has no value in column {column!r}.")
        return [str(r[column]) for r in rows]
    if ext != ".npz":
        raise ConfigError(f"{path}: this student reads {kind} from an .npz file (np.savez(path, {kind}=X)), "
                          f"not {ext or 'no extension'!r}.")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(f"{path}: cannot read as .npz ({e}); save it with np.savez.") from None
    keys = ("features",) if kind == "features" else ("image", "images")
    found = [k for k in keys if k in z.files]
    if not found:
        raise ConfigError(f"{path}: needs the array {' or '.join(map(repr, keys))} (found {sorted(z.files)}); "
                          f"save with np.savez(path, {keys[0]}=X).")
    x = z[found[0]]
    if len(x) == 0:
        raise ConfigError(f"{path}: {found[0]!r} has no rows; pass at least one example.")
    if kind == "image":
        if x.ndim == 3:
            x = x[..., None]
        x = x / 255.0 if x.dtype == np.uint8 else x
    x = np.asarray(x, np.float32)
    if not np.isfinite(x.reshape(len(x), -1)).all():
        raise ConfigError(f"{path}: {found[0]!r} has NaN or inf values; clean those rows first.")
    return x


def write_predictions(path: str, student: Student, probs: np.ndarray) -> None:
    """CSV: ``row, label, label_id, p_NAME...`` (class probabilities with 7 significant digits)."""
    names = student.class_names
    ids = probs.argmax(axis=-1)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "label", "label_id", *(f"p_{n}" for n in names)])
        for i, (k, p) in enumerate(zip(ids, probs)):
            w.writerow([i, names[int(k)], int(k), *(f"{float(v):.7g}" for v in p)])


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="lelp predict", description="class predictions of an exported student")
    p.add_argument("--student", required=True, help="the bundle folder `lelp export` wrote (WORKDIR/student)")
    p.add_argument("--input", required=True, help="a .csv/.jsonl (text students) or .npz (features / image) file")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    p.add_argument("--text-column", help="the text column of a CSV/JSONL input (default: the bundle's)")
    p.add_argument("--batch-size", type=int, help="rows per batch (default: the run's evaluation batch size)")
    args = p.parse_args(list(argv))
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}.")
    student = load_student(args.student)
    inputs = read_inputs(student, args.input, text_column=args.text_column)
    total = len(inputs)
    if total == 0:
        raise ConfigError(f"{args.input}: no examples; pass a file with at least one row.")

    def progress(done: int) -> None:
        print(f"[predict] {done}/{total} rows", file=sys.stderr, flush=True)

    probs = student.predict_proba(inputs, batch_size=args.batch_size, progress=progress)
    write_predictions(args.out, student, probs)
    print(f"[predict] {total} rows -> {args.out} (classes: {', '.join(student.class_names)})", flush=True)
    return 0
