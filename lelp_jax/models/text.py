"""Small text students over WordPiece ids (vocab 30522, the MiniLM tokenizer).

All read ``input_ids`` (B, L) int32 and ``attention_mask`` (B, L) (1 = real token;
absent means all real) and return ``(embedding, logits)`` with ``embedding`` the
input of the final ``nn.Dense`` named ``head`` (in eval mode; dropout sits between
them in train mode).
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from lelp_jax.models.common import check_rank, get_attention_mask, get_input, masked_mean

WORDPIECE_VOCAB = 30522


def _ids_and_mask(batch, model_name: str, max_len: int | None = None):
    ids = get_input(batch, "input_ids", model_name)
    check_rank(ids, 2, "input_ids (B, L)", model_name)
    if max_len is not None and ids.shape[1] > max_len:
        raise ValueError(f"{model_name}: sequence length {ids.shape[1]} > max_len {max_len}; "
                         "truncate in the tokenizer or build the model with a larger max_len.")
    return ids.astype(jnp.int32), get_attention_mask(batch, ids, model_name)


class TransformerLayer(nn.Module):
    """Pre-LayerNorm encoder layer: x + MHA(LN(x)), then x + MLP(LN(x)) with GELU."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float

    @nn.compact
    def __call__(self, x, mask, *, train: bool):
        attn_mask = nn.make_attention_mask(mask, mask)
        y = nn.LayerNorm(name="ln_attn")(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dropout_rate=self.dropout_rate,
                                            deterministic=not train, name="attn")(y, y, mask=attn_mask)
        x = x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        y = nn.LayerNorm(name="ln_mlp")(x)
        y = nn.Dense(self.mlp_dim, name="mlp_in")(y)
        y = nn.Dense(x.shape[-1], name="mlp_out")(nn.gelu(y, approximate=False))
        return x + nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class TextTransformer(nn.Module):
    """Token + learned position embeddings, ``num_layers`` pre-LN encoder layers,
    final LayerNorm, masked mean pool = embedding (d_model), dropout, ``head``.

    d_model 64, 2 layers is about 2.1M parameters, almost all in the 30522-row
    token embedding (about 11x smaller than MiniLM's 22.7M).
    """

    num_outputs: int
    vocab_size: int = WORDPIECE_VOCAB
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mlp_dim: int | None = None
    max_len: int = 256
    dropout_rate: float = 0.1
    input_key: str = "input_ids"

    @nn.compact
    def __call__(self, batch, *, train: bool = False):
        if self.d_model % self.num_heads:
            raise ValueError(f"TextTransformer d_model {self.d_model} must be divisible by num_heads {self.num_heads}.")
        ids, mask = _ids_and_mask(batch, "TextTransformer", self.max_len)
        x = nn.Embed(self.vocab_size, self.d_model, name="token_embed")(ids)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (self.max_len, self.d_model))
        x = x + pos[None, : ids.shape[1]]
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        for i in range(self.num_layers):
            x = TransformerLayer(self.num_heads, self.mlp_dim or 4 * self.d_model, self.dropout_rate,
                                 name=f"layer_{i}")(x, mask, train=train)
        x = nn.LayerNorm(name="ln_final")(x)
        h = masked_mean(x, mask)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return h, nn.Dense(self.num_outputs, name="head")(y)


class TextCNN(nn.Module):
    """Kim (2014) CNN: embedding, one 1D conv + ReLU per kernel size, masked max-pool
    over time, concatenated = embedding (len(kernel_sizes) * features), dropout, ``head``.
    """

    num_outputs: int
    vocab_size: int = WORDPIECE_VOCAB
    embed_dim: int = 64
    kernel_sizes: Sequence[int] = (3, 4, 5)
    features: int = 64
    dropout_rate: float = 0.1
    input_key: str = "input_ids"

    @nn.compact
    def __call__(self, batch, *, train: bool = False):
        ids, mask = _ids_and_mask(batch, "TextCNN")
        valid = mask.astype(bool)[..., None]
        # Zeroing padding embeddings makes them look like the conv's own zero padding,
        # so outputs do not depend on what ids fill the padded positions.
        x = nn.Embed(self.vocab_size, self.embed_dim, name="token_embed")(ids) * valid
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        pooled = []
        for k in self.kernel_sizes:
            y = nn.relu(nn.Conv(self.features, (k,), padding="SAME", name=f"conv_{k}")(x))
            # Padding positions never win the max; a row with no real token pools to 0.
            y = jnp.max(jnp.where(valid, y, -jnp.inf), axis=1)
            pooled.append(jnp.where(jnp.isfinite(y), y, 0.0))
        h = jnp.concatenate(pooled, axis=-1)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return h, nn.Dense(self.num_outputs, name="head")(y)


class EmbeddingBag(nn.Module):
    """Bag of embeddings (fastText-style): masked mean of token embeddings, optional
    ReLU hidden layers = embedding, dropout, ``head``.
    """

    num_outputs: int
    vocab_size: int = WORDPIECE_VOCAB
    embed_dim: int = 64
    hidden: Sequence[int] = ()
    dropout_rate: float = 0.0
    input_key: str = "input_ids"

    @nn.compact
    def __call__(self, batch, *, train: bool = False):
        ids, mask = _ids_and_mask(batch, "EmbeddingBag")
        x = masked_mean(nn.Embed(self.vocab_size, self.embed_dim, name="token_embed")(ids), mask)
        for i, width in enumerate(self.hidden):
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = nn.relu(nn.Dense(width, name=f"dense_{i}")(x))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return x, nn.Dense(self.num_outputs, name="head")(y)
