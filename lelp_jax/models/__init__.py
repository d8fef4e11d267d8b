"""Flax teachers and students behind one registry: ``build_model(name, *, num_outputs, **kwargs)``.

Contract (docs/ARCHITECTURE.md): every model is a ``flax.linen.Module`` called as
``model.apply(variables, batch, train=bool, rngs={'dropout': key})`` on a batch dict
and returns ``(embedding (B, D), logits (B, num_outputs))``. ``embedding`` is the
input of the final ``nn.Dense`` named ``head`` (exactly so in eval mode; dropout may
sit between them in train mode), so a teacher's classifier is
``W = params['head']['kernel'].T``, ``b = params['head']['bias']``. Each model reads
one batch key, its ``input_key`` (``image`` (B,H,W,ch) in [0,1], ``features`` (B,F),
or ``input_ids`` + ``attention_mask`` (B,L)); a batch without it raises a ValueError
naming the key. BatchNorm models keep ``batch_stats``: in train call
``apply(..., train=True, mutable=['batch_stats'])`` (batch statistics, running
averages updated); in eval the running averages are used and nothing changes.

Registry names and main options
- ``mlp``: ``hidden=(128,)``, ``dropout_rate``; flattens ``image`` or reads ``features``
  (``input_key='auto'``); ``hidden=()`` is a linear model. Also the student over frozen
  MiniLM sentence embeddings (``features`` (B, 384)).
- ``small_cnn``: ``conv_features=(32, 64)``, ``hidden=(128,)``, ``dropout_rate``,
  ``batch_norm``; the paper-regime student is ``conv_features=(8, 16), hidden=(32,)``.
- ``resnet``: CIFAR ResNet, ``depth`` = 6n+2 (8, 20, 56, 92, ...), ``width`` multiplier.
- ``mobilenet_v2``: ``width`` multiplier, CIFAR stride plan (32x32 -> 4x4).
- ``minilm``: all-MiniLM-L6-v2 classifier (``frozen_encoder``, ``normalize``, ``dtype``);
  get pretrained variables with ``minilm_init_variables(model, rng)``.
- ``text_transformer``: ``d_model=64``, ``num_layers=2``, ``num_heads=4``, learned
  positions, masked mean pool; ``text_cnn``: Kim CNN with masked max-pool;
  ``embedding_bag``: masked mean of token embeddings (+ optional ``hidden``).
  All over WordPiece ids (vocab 30522, the MiniLM tokenizer).

Teacher / student pairs with a parameter ratio of at least 10x (``count_params``,
num_outputs = 2; the ratios are checked in tests/test_models.py). FLOPs are XLA's
compiled count for one example (``flops_per_example``, CPU; text at 64 tokens):
- vision: ``resnet`` depth 56 (855k params, 236M FLOPs) vs ``small_cnn``
  conv (8, 16) + dense 32 on 32x32x3 (34k, 1.07M): 25x params, 220x FLOPs.
  Fashion-MNIST 28x28x1: ``small_cnn`` default (421k, 7.9M) vs ``small_cnn``
  (8, 16) + 32 (26k, 0.59M): 15.9x params, 13x FLOPs.
- text: ``minilm`` (22.6M, 1.44G; the unused BERT pooler is not loaded) vs
  ``text_transformer`` d_model 64, 2 layers (2.07M, 17M): 10.9x params, 84x FLOPs;
  vs ``embedding_bag`` embed 64 (1.95M, 9k FLOPs): 11.6x; vs ``mlp`` 384 -> 64 on
  frozen MiniLM ``features`` (25k): 911x.
- digits (8x8 as 64 features): ``mlp`` hidden (256, 256) (83k) vs ``mlp`` hidden (8,)
  (538): 154x; vs linear ``mlp`` hidden () (130): 638x.
``model_table([(ModelInfo('resnet56', ...), ModelInfo('small_cnn', ...))])`` prints
such a table for your own pairs.

How to add a model
1. Write a ``nn.Module`` with a ``num_outputs: int`` field, an ``input_key`` field,
   and ``__call__(self, batch, *, train: bool = False)`` that reads its input with
   ``lelp_jax.models.common.get_input(batch, self.input_key, 'MyModel')`` and returns
   ``(h, nn.Dense(self.num_outputs, name='head')(dropout(h)))``. Use
   ``nn.Dropout(rate, deterministic=not train)`` and
   ``nn.BatchNorm(use_running_average=not train)``.
2. Register it: ``register_model('my_model', MyModel)`` (library models: add it to
   ``_REGISTRY`` below), then add it to the per-model test table in
   tests/test_models.py (shapes, train/eval, jit/grad and the head contract run
   for every registered model).
An ``nnx.Module`` class registers the same way: its ``__init__`` takes ``num_outputs``,
its options and ``rngs``, its last ``nnx.Linear`` is ``self.head``, and ``build_model``
wraps it in ``NNXModel`` (``lelp_jax.models.nnx_adapter``), a Linen module, so the train
step, checkpoints and head reading are the same for both.
A model built elsewhere is used as a teacher without registering it:
``teacher_from_flax(module, variables)`` (see ``lelp_jax.models.interface``); for a trained
NNX instance, ``teacher_from_flax(from_nnx(cls, **options), nnx_variables(instance))``.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
from flax import nnx

from lelp_jax.models.interface import Teacher, TeacherFn, head_weights, teacher_from_flax
from lelp_jax.models.minilm import (MiniLM, MiniLMEncoder, load_minilm_weights, minilm_encode,
                                    minilm_init_variables, minilm_model_dir)
from lelp_jax.models.nnx_adapter import (NNXModel, check_nnx_class, from_nnx, is_nnx_class, nnx_options,
                                         nnx_variables)
from lelp_jax.models.summary import ModelInfo, count_params, describe_model, flops_per_example, model_table
from lelp_jax.models.text import EmbeddingBag, TextCNN, TextTransformer
from lelp_jax.models.vision import MLP, CifarResNet, MobileNetV2, SmallCNN

_REGISTRY: dict[str, type[nn.Module] | type[nnx.Module]] = {
    "mlp": MLP,
    "small_cnn": SmallCNN,
    "resnet": CifarResNet,
    "mobilenet_v2": MobileNetV2,
    "minilm": MiniLM,
    "text_transformer": TextTransformer,
    "text_cnn": TextCNN,
    "embedding_bag": EmbeddingBag,
}


def model_names() -> list[str]:
    """The registered model names."""
    return sorted(_REGISTRY)


def register_model(name: str, cls: type[nn.Module] | type[nnx.Module]) -> None:
    """Add ``cls`` (a Linen module with a ``num_outputs`` field, or an NNX module class) under ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered to {_REGISTRY[name].__name__}.")
    if is_nnx_class(cls):
        check_nnx_class(cls)
    elif not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"register_model needs a flax.linen.Module or flax.nnx.Module subclass, got {cls!r}.")
    elif "num_outputs" not in _fields(cls):
        raise ValueError(f"{cls.__name__} must have a 'num_outputs: int' field to be built by build_model.")
    _REGISTRY[name] = cls


def _fields(cls: type[nn.Module] | type[nnx.Module]) -> list[str]:
    if is_nnx_class(cls):
        return nnx_options(cls)
    return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def build_model(name: str, *, num_outputs: int, **kwargs) -> nn.Module:
    """The registered module ``name`` with a head of ``num_outputs`` (C, or C*S for pseudo-subclasses).

    Always a Linen module: an NNX class comes wrapped in ``NNXModel``, so callers need no second path.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {model_names()}.")
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
        raise ValueError(f"num_outputs must be a positive int (C or C*S), got {num_outputs!r}.")
    cls = _REGISTRY[name]
    fields = _fields(cls)
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(f"model {name!r} has no option(s) {unknown}; its options are {fields}.")
    if is_nnx_class(cls):
        return from_nnx(cls, num_outputs=num_outputs, **kwargs)
    return cls(num_outputs=num_outputs, **kwargs)


__all__ = [
    "MLP", "CifarResNet", "EmbeddingBag", "MiniLM", "MiniLMEncoder", "MobileNetV2", "ModelInfo", "NNXModel",
    "SmallCNN", "Teacher", "TeacherFn", "TextCNN", "TextTransformer", "build_model", "count_params",
    "describe_model", "flops_per_example", "from_nnx", "head_weights", "load_minilm_weights", "minilm_encode",
    "minilm_init_variables", "minilm_model_dir", "model_names", "model_table", "nnx_variables",
    "register_model", "teacher_from_flax",
]
