"""The input spec of a dataset: what a model trained on it reads, written down so a student can be served.

``input_spec(data, info)`` is a JSON-ready dict recorded with every student run (and copied into an
exported bundle, :mod:`lelp_jax.student`): the batch key the model reads and its per-example shape,
how raw inputs are scaled, and for text the tokenizer file, ``max_length`` and bucket lengths (each
batch is padded to the smallest bucket holding its longest row, as in training and evaluation).
"""
from __future__ import annotations

import os
from typing import Any

from lelp_jax.data.sources import DataSection, DatasetInfo
from lelp_jax.data.tokenizer import bucket_lengths, default_tokenizer_path

__all__ = ["input_spec", "INPUT_KEYS"]

# input kind -> the batch keys a model of that kind reads.
INPUT_KEYS: dict[str, tuple[str, ...]] = {"image": ("image",), "features": ("features",),
                                          "text": ("input_ids", "attention_mask")}


def input_spec(data: DataSection, info: DatasetInfo) -> dict[str, Any]:
    """``{kind, keys, shape, ...}`` of ``info``'s inputs under the data section ``data``.

    image: float32 ``(H, W, ch)`` in [0, 1] (uint8 pixels divided by 255). features: float32 ``(F,)``.
    text: ``tokenizer`` (absolute path of the tokenizer.json the ids came from), ``max_length``,
    ``bucket_lengths``, ``text_column``, ``vocab_size``. ``frozen_encoder`` names ``data.features``
    (a text student over a frozen encoder's sentence embeddings), '' otherwise.
    """
    kind = info.input_kind
    encoder = str(data.get("features") or "")
    if kind == "text" and encoder:
        kind = "features"  # the student reads the encoder's embeddings, not the token ids
    spec: dict[str, Any] = {"kind": kind, "keys": list(INPUT_KEYS[kind]), "frozen_encoder": encoder}
    if kind == "image":
        spec.update(shape=[int(s) for s in info.input_shape], scale="float32 in [0, 1]: uint8 pixels / 255")
    elif kind == "features":
        spec.update(shape=[int(s) for s in info.input_shape] if not encoder else None)
    if info.input_kind == "text":
        max_length = int(data.get("max_length") or 128)
        tokenizer = data.get("tokenizer") or default_tokenizer_path()
        spec.update(tokenizer=os.path.abspath(os.path.expanduser(str(tokenizer))), max_length=max_length,
                    bucket_lengths=list(bucket_lengths(max_length, data.get("bucket_lengths"))),
                    text_column=str(data.get("text_column") or "text"), vocab_size=info.vocab_size)
    return spec
