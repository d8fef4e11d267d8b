"""The student bundle: a folder that serves a distilled student without the workdir or the training config.

Files (format version :data:`FORMAT_VERSION`):

- ``student.json``: the format version, the lelp_jax / jax / flax versions that wrote it, and what the
  run recorded (``lelp_jax.pipeline.stages.student_record``): class names, C, S, the architecture
  (registry name + kwargs), the input spec, the method and its settings; plus the run it came from.
- ``variables.msgpack``: the model variables (``flax.serialization.msgpack_serialize`` of plain
  nested dicts of arrays), restored without a target tree.
- ``predict.jax_export``: the class-probability function of the batch's input keys, the variables
  baked in, serialized with ``jax.export`` (symbolic batch dimension, lowered for every platform
  the installed jaxlib allows); ``jax.export.deserialize(...).call(...)`` runs it without lelp_jax.
- ``tokenizer.json``: text students only, the tokenizer their ids came from.

Class probabilities of a head with C*S logits r (class-major: class c owns r[c*S : (c+1)*S]):
``p_c = softmax_c(logsumexp_s r_{c,s})``, equal to ``exp(logsumexp_s log_softmax(r)_{c,s})``, the
class prediction of every method (S = 1: a plain softmax).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from lelp_jax.data.batch import cast_floats
from lelp_jax.data.input_spec import INPUT_KEYS
from lelp_jax.data.tokenizer import load_tokenizer, pad_to, pick_bucket, tokenize
from lelp_jax.models import build_model
from lelp_jax.runtime.errors import ConfigError

__all__ = ["FORMAT_VERSION", "STUDENT_JSON", "VARIABLES", "EXPORTED", "TOKENIZER", "Student", "load_student",
           "class_probabilities", "make_apply"]

FORMAT_VERSION = 1
STUDENT_JSON = "student.json"
VARIABLES = "variables.msgpack"
EXPORTED = "predict.jax_export"
TOKENIZER = "tokenizer.json"


def class_probabilities(logits: jax.Array, num_classes: int) -> jax.Array:
    """``(B, C*S)`` head logits -> ``(B, C)`` class probabilities ``softmax_c(logsumexp_s r_{c,s})``."""
    b, k = logits.shape
    if k % num_classes:
        raise ValueError(f"class_probabilities: {k} logits are not a multiple of {num_classes} classes.")
    per_class = jax.nn.logsumexp(logits.reshape(b, num_classes, k // num_classes), axis=-1)
    return jax.nn.softmax(per_class, axis=-1)


def make_apply(model: Any, *, num_classes: int, keys: Sequence[str], compute_dtype: str = "float32"
               ) -> Callable[[Any, Mapping[str, jax.Array]], jax.Array]:
    """Jittable ``apply(variables, batch) -> (B, C)`` class probabilities of ``model``, evaluated as in
    training's eval step (floats cast to ``compute_dtype``, logits back to float32)."""
    dtype = jnp.dtype(compute_dtype)

    def apply(variables: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
        inputs = {k: (jnp.asarray(batch[k]).astype(dtype) if jnp.issubdtype(jnp.asarray(batch[k]).dtype, jnp.floating)
                      else jnp.asarray(batch[k])) for k in keys}
        _, logits = model.apply(cast_floats(variables, dtype), inputs, train=False)
        return class_probabilities(logits.astype(jnp.float32), num_classes)

    return apply


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path.parent} is not a student bundle (no {path.name}); pass the folder `lelp export` "
                          "wrote (WORKDIR/student by default).") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg}); export the student again with `lelp export`.") from None


@dataclasses.dataclass(frozen=True, eq=False)
class Student:
    """A loaded bundle: ``spec`` (student.json), ``variables``, ``model`` (the Flax module) and
    ``apply(variables, batch) -> (B, C)`` class probabilities (jittable: compose it into your own jit).

    ``predict_proba(inputs)`` / ``predict(inputs)`` take a batch dict, an array (``features`` (N, F) or
    ``image`` (N, H, W, ch) in [0, 1]) or, for a text student, a list of strings; they run in batches
    of the run's evaluation batch size, text padded per batch to its bucket length as in evaluation.
    """

    directory: Path
    spec: Mapping[str, Any]
    variables: Any
    model: Any
    apply: Callable[[Any, Mapping[str, jax.Array]], jax.Array]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.spec["class_names"])

    @property
    def input_kind(self) -> str:
        return self.spec["input"]["kind"]

    @functools.cached_property
    def exported(self) -> jax.export.Exported:
        """The deserialized ``predict.jax_export``: ``exported.call(*inputs)`` (inputs in ``spec['input']['keys']``
        order) gives the class probabilities without lelp_jax's model code."""
        return jax.export.deserialize(bytearray((self.directory / EXPORTED).read_bytes()))

    @functools.cached_property
    def _jitted(self) -> Callable:
        return jax.jit(self.apply)

    @functools.cached_property
    def tokenizer(self) -> Any:
        if self.input_kind != "text":
            raise ValueError(f"this student reads {self.input_kind!r}, not text: it has no tokenizer.")
        return load_tokenizer(str(self.directory / TOKENIZER), max_length=int(self.spec["input"]["max_length"]))

    def batches(self, inputs: Any, batch_size: int | None = None):
        """``(batch, n_real)`` pairs covering ``inputs`` in order, each of ``batch_size`` rows (default: the
        run's evaluation batch size; the last one padded by repeating its first row)."""
        bs = int(batch_size or self.spec.get("eval_batch_size") or 256)
        if self.input_kind == "text":
            if isinstance(inputs, Mapping):
                rows = [np.asarray(r)[np.asarray(m) > 0] for r, m in zip(inputs["input_ids"], inputs["attention_mask"])]
            else:
                if isinstance(inputs, str) or not all(isinstance(t, str) for t in inputs):
                    raise ConfigError("a text student predicts from a list of strings (or a batch dict of "
                                      "input_ids + attention_mask).")
                rows = tokenize(list(inputs), tokenizer=self.tokenizer)
            buckets = tuple(self.spec["input"]["bucket_lengths"])
            for start in range(0, len(rows), bs):
                chunk = rows[start:start + bs]
                n = len(chunk)
                chunk = chunk + [chunk[0]] * (bs - n)
                length = pick_bucket(max(len(r) for r in chunk[:n]), buckets)
                ids = pad_to(chunk, length)
                mask = pad_to([np.ones(len(r), np.int32) for r in chunk], length)
                yield {"input_ids": ids, "attention_mask": mask}, n
            return
        key = INPUT_KEYS[self.input_kind][0]
        x = np.asarray(inputs[key] if isinstance(inputs, Mapping) else inputs, np.float32)
        shape = tuple(self.spec["input"].get("shape") or ())
        if x.ndim != 1 + len(shape) or tuple(x.shape[1:]) != shape:
            raise ConfigError(f"this student reads {key} of shape (N, {', '.join(map(str, shape))}); got "
                              f"{tuple(x.shape)}. Pass inputs of the width it was trained on.")
        for start in range(0, len(x), bs):
            chunk = x[start:start + bs]
            n = len(chunk)
            if n < bs:
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], bs - n, axis=0)])
            yield {key: chunk}, n

    def predict_proba(self, inputs: Any, *, batch_size: int | None = None,
                      progress: Callable[[int], None] | None = None) -> np.ndarray:
        """``(N, C)`` class probabilities (float32) of ``inputs``; ``progress(done)`` after each batch."""
        out, done = [], 0
        for batch, n in self.batches(inputs, batch_size):
            out.append(np.asarray(self._jitted(self.variables, batch))[:n])
            done += n
            if progress is not None:
                progress(done)
        if not out:
            return np.zeros((0, len(self.class_names)), np.float32)
        return np.concatenate(out)

    def predict(self, inputs: Any, *, batch_size: int | None = None) -> list[str]:
        """The class name of each row of ``inputs`` (argmax of :meth:`predict_proba`)."""
        ids = self.predict_proba(inputs, batch_size=batch_size).argmax(axis=-1)
        return [self.class_names[int(i)] for i in ids]


def model_kwargs(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded model kwargs as the model takes them (JSON lists back to tuples)."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec["model"]["kwargs"].items()}


def load_student(directory: str | os.PathLike) -> Student:
    """The student bundle in ``directory`` (written by ``lelp export``), ready to predict.

    ``s = load_student("runs/digits/student")``; ``s.predict(x)`` (class names), ``s.predict_proba(x)``
    ``(N, C)``, ``jax.jit(s.apply)(s.variables, {"features": x})``, ``s.exported.call(x)``. A folder that
    is not a bundle is a ConfigError naming it:

    >>> load_student("no/such/bundle")
    Traceback (most recent call last):
    ...
    lelp_jax.runtime.errors.ConfigError: student bundle 'no/such/bundle' does not exist; ...
    """
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise ConfigError(f"student bundle {str(root)!r} does not exist; pass the folder `lelp export` wrote "
                          "(WORKDIR/student by default).")
    spec = _read_json(root / STUDENT_JSON)
    version = spec.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(f"{root / STUDENT_JSON}: bundle format {version!r}, this lelp_jax reads format "
                          f"{FORMAT_VERSION}; export the student again with this version (`lelp export`).")
    try:
        variables = serialization.msgpack_restore((root / VARIABLES).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{root}: {VARIABLES} is missing; export the student again with `lelp export`.") from None
    model = build_model(spec["model"]["name"], num_outputs=int(spec["head_outputs"]), **model_kwargs(spec))
    apply = make_apply(model, num_classes=int(spec["num_classes"]), keys=tuple(spec["input"]["keys"]),
                       compute_dtype=spec.get("compute_dtype", "float32"))
    return Student(directory=root, spec=spec, variables=jax.tree_util.tree_map(jnp.asarray, variables),
                   model=model, apply=apply)
