r"""Export a teacher's outputs for ``teacher.model='precomputed'``: from PyTorch / Hugging Face, scikit-learn or any
NumPy function. Ships in the package: ``lelp export-teacher ...`` (or ``python -m lelp_jax.pipeline.export_teacher``)
works from a wheel and on Colab; ``scripts/export_teacher_outputs.py`` is a thin wrapper kept for old commands.

lelp_jax needs, per data split, the teacher's embedding (the input of its final
linear layer) and logits, one row per example in the data files' order, plus the
head's kernel (D, C) and bias (C,) (lelp_jax.pipeline.precomputed describes the layouts and
the checks). Run the teacher once over each split, in order, without shuffling. A binary
teacher with one logit (head (D, 1), a sigmoid / BCE model) is exported as it is and read as
logits [0, z].

Hugging Face sequence classifier on CSV files (needs torch and transformers):

  lelp export-teacher --hf ./my-finetuned-bert --csv data/train.csv --out outputs/train.npz
  # again for data/validation.csv and data/test.csv (with --no-head), then:
  lelp run --config configs/text_csv.py --workdir /tmp/w \
      --config.teacher.model=precomputed \
      --config.teacher.outputs.train=outputs/train.npz \
      --config.teacher.outputs.validation=outputs/validation.npz \
      --config.teacher.outputs.test=outputs/test.npz

The head is found by name (``--head classifier``, ``classifier.out_proj`` for
RoBERTa-style heads, ``score`` for decoder models); its input is captured by a
forward hook, so any ``torch.nn.Module`` whose last layer is an ``nn.Linear``
works the same way from Python: ``export_torch(model, head, batches, path)``.

scikit-learn: ``export_sklearn(model, x, path)`` for a fitted ``LogisticRegression`` (the
embedding is the input x, the head its ``coef_`` and ``intercept_``) or ``MLPClassifier`` (the
embedding is its last hidden layer, the head its last ``coefs_`` / ``intercepts_``).

Any other framework: write ``fn(inputs) -> (embedding, logits)`` returning NumPy
arrays and call ``export_numpy(fn, batches, path, kernel=K, bias=b)``. A path
ending in ``.npz`` gets one file; any other path becomes a folder of ``.npy``
files written row block by row block (``num_rows=`` given) and read back
memory-mapped, the layout for splits larger than memory.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lelp_jax.runtime.errors import ConfigError

__all__ = ["write_outputs", "export_numpy", "torch_outputs", "torch_head", "export_torch", "sklearn_outputs",
           "export_sklearn", "main"]


def write_outputs(path: str | os.PathLike, *, embedding: Optional[np.ndarray] = None,
                  logits: Optional[np.ndarray] = None, label: Optional[np.ndarray] = None,
                  kernel: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None) -> Path:
    """Write one split's arrays (or only the head: kernel, bias): ``PATH.npz`` or a folder ``PATH/``
    of ``.npy`` (float32; label int64)."""
    arrays = {k: np.asarray(v, np.float32) for k, v in (("embedding", embedding), ("logits", logits)) if v is not None}
    if label is not None:
        arrays["label"] = np.asarray(label, np.int64)
    if kernel is not None:
        arrays["kernel"] = np.asarray(kernel, np.float32)
        arrays["bias"] = np.asarray(np.zeros(arrays["kernel"].shape[1]) if bias is None else bias, np.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        path.mkdir(exist_ok=True)
        for name, a in arrays.items():
            np.save(path / f"{name}.npy", a)
    return path


def export_numpy(fn: Callable[[Any], tuple[np.ndarray, np.ndarray]], batches: Iterable[Any],
                 path: str | os.PathLike, *, kernel: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
                 labels: Optional[np.ndarray] = None, num_rows: Optional[int] = None) -> Path:
    """Run ``fn`` over ``batches`` (in the data's order) and write its (embedding, logits) rows.

    Give ``kernel``/``bias`` for the train split (or write them once to a head file
    with :func:`write_outputs`). With a folder ``path`` and ``num_rows``, rows go
    straight into memory-mapped ``.npy`` files (constant memory); otherwise they
    are collected and written at the end.
    """
    path = Path(path)
    if path.suffix != ".npz" and num_rows is not None:
        path.mkdir(parents=True, exist_ok=True)
        emb_out = logit_out = None
        start = 0
        for batch in batches:
            emb, logits = (np.asarray(x, np.float32) for x in fn(batch))
            if emb_out is None:
                emb_out = np.lib.format.open_memmap(path / "embedding.npy", "w+", np.float32, (num_rows, emb.shape[1]))
                logit_out = np.lib.format.open_memmap(path / "logits.npy", "w+", np.float32,
                                                      (num_rows, logits.shape[1]))
            emb_out[start:start + len(emb)], logit_out[start:start + len(emb)] = emb, logits
            start += len(emb)
        if start != num_rows:
            raise ValueError(f"export_numpy: the batches gave {start} rows, num_rows={num_rows}.")
        emb_out.flush()
        logit_out.flush()
        return _write_extra(path, label=labels, kernel=kernel, bias=bias)
    pairs = [tuple(np.asarray(x, np.float32) for x in fn(batch)) for batch in batches]
    return write_outputs(path, embedding=np.concatenate([p[0] for p in pairs]),
                         logits=np.concatenate([p[1] for p in pairs]), label=labels, kernel=kernel, bias=bias)


def _write_extra(folder: Path, *, label=None, kernel=None, bias=None) -> Path:
    """Add ``label.npy`` / ``kernel.npy`` + ``bias.npy`` to a folder layout."""
    if label is not None:
        np.save(folder / "label.npy", np.asarray(label, np.int64))
    if kernel is not None:
        kernel = np.asarray(kernel, np.float32)
        np.save(folder / "kernel.npy", kernel)
        np.save(folder / "bias.npy", np.asarray(np.zeros(kernel.shape[1]) if bias is None else bias, np.float32))
    return folder


def torch_outputs(model: Any, head: Any, batches: Iterable[Any]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(embedding, logits) per batch of a ``torch.nn.Module``: a forward hook on ``head`` (its final
    ``nn.Linear``) captures the head's input and output. A dict batch is passed as ``model(**batch)``."""
    import torch

    captured: dict[str, Any] = {}
    handle = head.register_forward_hook(lambda mod, inputs, output: captured.update(h=inputs[0], l=output))
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch) if isinstance(batch, dict) else model(batch)
                yield (captured["h"].float().cpu().numpy().reshape(-1, captured["h"].shape[-1]),
                       captured["l"].float().cpu().numpy().reshape(-1, captured["l"].shape[-1]))
    finally:
        handle.remove()


def torch_head(head: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel (D, C), bias (C,))`` of an ``nn.Linear`` (its weight is (C, D): kernel = weight.T)."""
    kernel = head.weight.detach().float().cpu().numpy().T
    bias = head.bias.detach().float().cpu().numpy() if head.bias is not None else np.zeros(kernel.shape[1])
    return kernel, bias


def export_torch(model: Any, head: Any, batches: Iterable[Any], path: str | os.PathLike, *,
                 with_head: bool = True, labels: Optional[np.ndarray] = None,
                 num_rows: Optional[int] = None) -> Path:
    """:func:`export_numpy` of a PyTorch model: rows from :func:`torch_outputs`, the head from :func:`torch_head`."""
    kernel, bias = torch_head(head) if with_head else (None, None)
    return export_numpy(lambda pair: pair, torch_outputs(model, head, batches), path, kernel=kernel, bias=bias,
                        labels=labels, num_rows=num_rows)


def _find_module(model: Any, dotted: str) -> Any:
    node = model
    for part in dotted.split("."):
        if not hasattr(node, part):
            raise ConfigError(f"the model has no module {dotted!r} (stopped at {part!r}); pass --head NAME of its "
                              "final nn.Linear (classifier, classifier.out_proj, score).")
        node = getattr(node, part)
    return node


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda a: a, "relu": lambda a: np.maximum(a, 0.0), "tanh": np.tanh,
    "logistic": lambda a: 1.0 / (1.0 + np.exp(-a)),
}


def sklearn_outputs(model: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(embedding, logits, kernel, bias)`` of a fitted scikit-learn classifier on rows ``x`` (float64).

    ``LogisticRegression`` (any linear model with ``coef_`` (C', D) and ``intercept_``): h = x,
    kernel = coef_^T. ``MLPClassifier``: h = the last hidden layer, a_{i+1} = act(a_i W_i + b_i),
    kernel = coefs_[-1] (D, C'). C' = 1 for a binary model (one logit z, read as [0, z]):
    sigmoid(z) is its ``predict_proba(x)[:, 1]``.
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    if hasattr(model, "coefs_"):
        act = _ACTIVATIONS.get(getattr(model, "activation", ""))
        if act is None:
            raise ConfigError(f"sklearn_outputs: activation {model.activation!r} unknown; use one of "
                              f"{sorted(_ACTIVATIONS)}.")
        h = x
        for w, b in zip(model.coefs_[:-1], model.intercepts_[:-1]):
            h = act(h @ w + b)
        kernel, bias = np.asarray(model.coefs_[-1], np.float64), np.asarray(model.intercepts_[-1], np.float64)
    elif hasattr(model, "coef_"):
        h = x
        kernel = np.asarray(model.coef_, np.float64).T
        bias = np.broadcast_to(np.asarray(model.intercept_, np.float64), (kernel.shape[1],))
    else:
        raise ConfigError(f"sklearn_outputs: {type(model).__name__} has neither coefs_ (MLPClassifier) nor coef_ "
                          "(a linear model); fit it first, or export it with export_numpy.")
    return h, h @ kernel + bias, kernel, bias


def export_sklearn(model: Any, x: np.ndarray, path: str | os.PathLike, *, with_head: bool = True,
                   labels: Optional[np.ndarray] = None) -> Path:
    """Write one split's :func:`sklearn_outputs` (the head too, with ``with_head``: the train split)."""
    h, logits, kernel, bias = sklearn_outputs(model, x)
    head = dict(kernel=kernel, bias=bias) if with_head else {}
    return write_outputs(path, embedding=h, logits=logits, label=labels, **head)


def main(argv: Optional[list[str]] = None) -> int:
    """``lelp export-teacher``: a Hugging Face sequence classifier over one CSV split."""
    p = argparse.ArgumentParser(prog="lelp export-teacher", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--hf", required=True, help="a Hugging Face AutoModelForSequenceClassification folder or name")
    p.add_argument("--csv", required=True, help="the split's CSV file (the same file lelp reads, same row order)")
    p.add_argument("--out", required=True, help="OUT.npz, or a folder for memory-mapped .npy files")
    p.add_argument("--text-column", default="text")
    p.add_argument("--head", default="classifier", help="dotted name of the final nn.Linear")
    p.add_argument("--no-head", action="store_true", help="leave kernel/bias out (validation and test splits)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    args = p.parse_args(argv)
    import csv

    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError:
        raise ConfigError("lelp export-teacher --hf needs torch and transformers (pip install torch transformers); "
                          "other teachers: export_sklearn / export_numpy from Python.") from None
    with open(args.csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if args.text_column not in (reader.fieldnames or ()):
            raise ConfigError(f"{args.csv} has no column {args.text_column!r} (it has {reader.fieldnames}); pass "
                              "--text-column NAME.")
        texts = [row[args.text_column] for row in reader]
    tokenizer = AutoTokenizer.from_pretrained(args.hf)
    model = AutoModelForSequenceClassification.from_pretrained(args.hf)
    batches = (dict(tokenizer(texts[i:i + args.batch_size], padding=True, truncation=True,
                              max_length=args.max_length, return_tensors="pt"))
               for i in range(0, len(texts), args.batch_size))
    out = export_torch(model, _find_module(model, args.head), batches, args.out, with_head=not args.no_head,
                       num_rows=len(texts))
    print(f"wrote {len(texts)} rows -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
