"""Vision and feature models: MLP, small CNN, CIFAR ResNet, MobileNetV2.

All follow the models contract: ``apply(variables, batch, train=bool, rngs=...)``
returns ``(embedding (B, D), logits (B, num_outputs))`` where ``embedding`` is the
input of the final ``nn.Dense`` named ``head`` (in eval mode; in train mode dropout,
if any, sits between them, so logits = W h + b holds exactly for eval outputs). BatchNorm layers use batch
statistics and update the ``batch_stats`` collection in train mode (call apply
with ``mutable=['batch_stats']``) and the running averages in eval mode.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lelp_jax.models.common import check_rank, get_input

# BatchNorm: running = momentum * running + (1 - momentum) * batch, as in most CIFAR recipes.
_BN_MOMENTUM = 0.9
_BN_EPS = 1e-5


def _bn(train: bool, name: str | None = None) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPS, name=name)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, 'SAME' padding: ``nn.max_pool(x, (2, 2), (2, 2), 'SAME')`` as a reshape + max.

    Same values; XLA's CPU gradient of reduce_window is several times slower than the
    gradient of a plain max over a reshaped axis (bench/torch_reference.py measured it).
    """
    b, h, w, c = x.shape
    ph, pw = h % 2, w % 2
    if ph or pw:  # 'SAME' pads the end of an odd axis; -inf never wins the max
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), constant_values=-jnp.inf)
    return x.reshape(b, (h + ph) // 2, 2, (w + pw) // 2, 2, c).max(axis=(2, 4))


def dense_tail(x: jax.Array, *, hidden: Sequence[int], dropout_rate: float, num_outputs: int,
               train: bool) -> tuple[jax.Array, jax.Array]:
    """Dense+ReLU per ``hidden`` width (dropout between them and before the head), then ``head``.

    Called inside a parent's ``nn.compact`` method, so the layers (``dense_i``, ``head``) are
    the parent's submodules. Returns ``(embedding, logits)``: the embedding is the head's input.
    """
    for i, width in enumerate(hidden):
        if i:
            x = nn.Dropout(dropout_rate, deterministic=not train)(x)
        x = nn.relu(nn.Dense(width, name=f"dense_{i}")(x))
    y = nn.Dropout(dropout_rate, deterministic=not train)(x)
    return x, nn.Dense(num_outputs, name="head")(y)


class MLP(nn.Module):
    """Multi-layer perceptron over ``features`` (B, F) or a flattened ``image``.

    h_0 = x, h_{k+1} = relu(Dense(dropout(h_k))); dropout before each Dense after the first in train;
    embedding = h_K (the flattened input itself when ``hidden`` is empty, which is
    a linear model). ``input_key='auto'`` reads ``features`` if present, else ``image``.
    """

    num_outputs: int
    hidden: Sequence[int] = (128,)
    dropout_rate: float = 0.0
    input_key: str = "auto"

    @nn.compact
    def __call__(self, batch, *, train: bool = False):
        key = self.input_key
        if key == "auto":
            key = "features" if hasattr(batch, "keys") and "features" in batch else "image"
        if key not in ("features", "image"):
            raise ValueError(f"MLP input_key must be 'auto', 'features' or 'image', got {key!r}.")
        x = get_input(batch, key, "MLP")
        x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
        return dense_tail(x, hidden=self.hidden, dropout_rate=self.dropout_rate, num_outputs=self.num_outputs,
                          train=train)


class SmallCNN(nn.Module):
    """Conv(3x3)+ReLU+MaxPool(2) per entry of ``conv_features``, then Dense+ReLU per ``hidden``.

    The default (32, 64) + (128,) is a typical small teacher on 28x28 or 32x32
    images; (8, 16) + (32,) is the paper-regime student. Dropout before each Dense
    after the first (and before ``head``) in train. embedding = last hidden
    activation (flattened conv output if ``hidden`` is empty). ``batch_norm`` adds
    BatchNorm after each conv.
    """

    num_outputs: int
    conv_features: Sequence[int] = (32, 64)
    hidden: Sequence[int] = (128,)
    dropout_rate: float = 0.0
    batch_norm: bool = False
    input_key: str = "image"

    @nn.compact
    def __call__(self, batch, *, train: bool = False):
        x = get_input(batch, self.input_key, "SmallCNN").astype(jnp.float32)
        check_rank(x, 4, "image (B, H, W, ch)", "SmallCNN")
        for i, ch in enumerate(self.conv_features):
            x = nn.Conv(ch, (3, 3), padding="SAME", use_bias=not self.batch_norm, name=f"conv_{i}")(x)
            if self.batch_norm:
                x = _bn(train, name=f"bn_{i}")(x)
            x = max_pool_2x2(nn.relu(x))
        x = x.reshape((x.shape[0], -1))
        return dense_tail(x, hidden=self.hidden, dropout_rate=self.dropout_rate, num_outputs=self.num_outputs,
                          train=train)


class BasicBlock(nn.Module):
    """ResNet basic block: relu(BN(conv3x3(relu(BN(conv3x3(x))))) + shortcut(x)).

    The shortcut is the identity, or a 1x1 strided conv + BN when the shape changes.
    """

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, *, train: bool):
        y = nn.Conv(self.features, (3, 3), (self.stride, self.stride), padding="SAME", use_bias=False)(x)
        y = nn.relu(_bn(train)(y))
        y = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(y)
        y = _bn(train)(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), (self.stride, self.stride), use_bias=False, name="proj")(x)
            x = _bn(train, name="proj_bn")(x)
        return nn.relu(x + y)


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, sec. 4.2): depth = 6n + 2, stages of n blocks.

    Stem conv3x3(16w) + BN + ReLU; stages 16w, 32w, 64w with strides 1, 2, 2;
    global average pool gives the embedding (64w); dropout before ``head`` in
    train. ResNet-56 (width 1) has about 0.85M parameters.
    """

    num_outputs: int
    depth: int = 20
    width: float = 1.0
    dropout_rate: float = 0.0
    input_key: str = "image"

    @nn.compact
    def __call__(self, batch, *, train: bool = False):
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ValueError(f"CifarResNet depth must be 6n+2 with n >= 1 (8, 20, 56, 92, ...), got {self.depth}.")
        if self.width <= 0:
            raise ValueError(f"CifarResNet width must be > 0, got {self.width}.")
        n = (self.depth - 2) // 6
        x = get_input(batch, self.input_key, "CifarResNet").astype(jnp.float32)
        check_rank(x, 4, "image (B, H, W, ch)", "CifarResNet")
        widths = [max(1, round(c * self.width)) for c in (16, 32, 64)]
        x = nn.Conv(widths[0], (3, 3), padding="SAME", use_bias=False, name="stem")(x)
        x = nn.relu(_bn(train, name="stem_bn")(x))
        for s, ch in enumerate(widths):
            for b in range(n):
                x = BasicBlock(ch, stride=2 if (s > 0 and b == 0) else 1, name=f"stage{s}_block{b}")(x, train=train)
        h = jnp.mean(x, axis=(1, 2))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return h, nn.Dense(self.num_outputs, name="head")(y)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never below 90% of ``v`` (MobileNet rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (t) + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear project.

    Residual add when stride is 1 and channels match.
    """

    features: int
    stride: int
    expand_ratio: int

    @nn.compact
    def __call__(self, x, *, train: bool):
        in_ch = x.shape[-1]
        hidden = in_ch * self.expand_ratio
        y = x
        if self.expand_ratio != 1:
            y = nn.relu6(_bn(train)(nn.Conv(hidden, (1, 1), use_bias=False)(y)))
        y = nn.Conv(hidden, (3, 3), (self.stride, self.stride), padding="SAME",
                    feature_group_count=hidden, use_bias=False)(y)
        y = nn.relu6(_bn(train)(y))
        y = _bn(train)(nn.Conv(self.features, (1, 1), use_bias=False)(y))
        if self.stride == 1 and in_ch == self.features:
            y = x + y
        return y


# (expand t, channels c, repeats n, first stride s): ImageNet plan with the stem and
# the second stage at stride 1, so 32x32 inputs end at 4x4 (a common CIFAR variant).
_MBV2_CIFAR_PLAN = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) with a CIFAR-size stride plan and width multiplier.

    Stem conv3x3(32w, stride 1), inverted residual stages from ``plan`` (rows
    (expand t, channels c, repeats n, stride s); default the CIFAR plan), 1x1 conv
    to ``last_channels * max(1, w)`` + ReLU6, global average pool = embedding;
    dropout before ``head``. A shorter ``plan`` gives a smaller network.
    """

    num_outputs: int
    width: float = 1.0
    dropout_rate: float = 0.0
    plan: Sequence[tuple[int, int, int, int]] = _MBV2_CIFAR_PLAN
    last_channels: int = 1280
    input_key: str = "image"

    @nn.compact
    def __call__(self, batch, *, train: bool = False):
        if self.width <= 0:
            raise ValueError(f"MobileNetV2 width must be > 0, got {self.width}.")
        if not self.plan or any(len(row) != 4 for row in self.plan):
            raise ValueError(f"MobileNetV2 plan must be a non-empty list of (t, c, n, s) rows, got {self.plan}.")
        x = get_input(batch, self.input_key, "MobileNetV2").astype(jnp.float32)
        check_rank(x, 4, "image (B, H, W, ch)", "MobileNetV2")
        x = nn.Conv(_make_divisible(32 * self.width), (3, 3), padding="SAME", use_bias=False, name="stem")(x)
        x = nn.relu6(_bn(train, name="stem_bn")(x))
        for i, (t, c, n, s) in enumerate(self.plan):
            ch = _make_divisible(c * self.width)
            for j in range(n):
                x = InvertedResidual(ch, s if j == 0 else 1, t, name=f"block{i}_{j}")(x, train=train)
        last = _make_divisible(self.last_channels * max(1.0, self.width))
        x = nn.Conv(last, (1, 1), use_bias=False, name="last_conv")(x)
        x = nn.relu6(_bn(train, name="last_bn")(x))
        h = jnp.mean(x, axis=(1, 2))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return h, nn.Dense(self.num_outputs, name="head")(y)
