"""`synthetic_subclasses`: a generated few-class task whose hidden subclasses are known.

Every class c owns K modes ("fine classes") of a Gaussian mixture in a latent
space R^d; the C·K mode centres are drawn at random and dealt to the classes at
random, so the classes interleave. An example draws a fine class f uniformly,
a latent point z = m_f + noise · e (e ~ N(0, I_d)), and is shown to the models
only through a fixed random two-layer map to `input_dim` features:

    m_f ~ N(0, separation² I_d),  class(f) = a random balanced deal of the C·K modes,
    x = A2ᵀ tanh(A1ᵀ z / √d + b1) / √H,   A1 ∈ R^{d×H}, A2 ∈ R^{H×input_dim}, b1 ~ N(0, I_H)

(A1, A2, b1 standard normal; H = `hidden_dim`). `label` = class(f),
`fine_label` = f, so the `oracle` method knows the true subclasses. Everything
(centres, deal, map, every split's examples) is a pure function of
`data.synthetic.seed` and the knobs: seeded, offline, deterministic. The three
splits are independent draws from the same distribution.

Knobs (`data.synthetic`; defaults in `lelp_jax.config.schema.base_config`):
`num_classes` C, `modes_per_class` K, `latent_dim` d, `hidden_dim` H,
`input_dim`, `separation`, `noise`, `num_train`, `num_validation`, `num_test`, `seed`, and
`num_transfer`: with it > 0 a fourth, unlabelled `transfer` split of that many rows, drawn like
train (its `label` -1; its `fine_label` kept for the `oracle` and the NMI diagnostics only).
The student's capacity is the config's `student.model_kwargs.hidden`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from lelp_jax.data.sources import ArraySource, DataSection, DatasetInfo, plain

__all__ = ["synthetic_defaults", "synthetic_arrays", "load_synthetic"]

SPLITS = ("train", "validation", "test")


def synthetic_defaults() -> dict[str, Any]:
    """The knobs' defaults: `base_config().data.synthetic` (their one source)."""
    from lelp_jax.config.schema import base_config

    return base_config().data.synthetic.to_dict()


def _knobs(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The defaults updated with `options`, checked (a ValueError names the key and the fix)."""
    k = synthetic_defaults()
    unknown = sorted(set(options or {}) - set(k))
    if unknown:
        raise ValueError(f"data.synthetic has no key {unknown[0]!r}; known keys: {', '.join(sorted(k))}.")
    k.update({key: v for key, v in (options or {}).items() if v is not None})
    for key in ("modes_per_class", "latent_dim", "hidden_dim", "input_dim", "num_train", "num_validation",
                "num_test"):
        if int(k[key]) < 1:
            raise ValueError(f"data.synthetic.{key} must be a positive int, got {k[key]}.")
    if int(k["num_transfer"]) < 0:
        raise ValueError(f"data.synthetic.num_transfer must be >= 0, got {k['num_transfer']}.")
    if int(k["num_classes"]) < 2:
        raise ValueError(f"data.synthetic.num_classes must be >= 2, got {k['num_classes']}.")
    for key in ("separation", "noise"):
        if not float(k[key]) > 0:
            raise ValueError(f"data.synthetic.{key} must be > 0, got {k[key]}.")
    return k


def synthetic_arrays(options: Mapping[str, Any] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """`{split: {'features': (N, input_dim) float32, 'label': (N,) int32, 'fine_label': (N,) int32}}`.

    Fine class f belongs to class `class_of[f]`; every class owns exactly K fine classes. With
    `num_transfer` > 0 the dict also holds `transfer` (its own seed stream, `label` -1).
    """
    k = _knobs(options)
    c, m, d, h = int(k["num_classes"]), int(k["modes_per_class"]), int(k["latent_dim"]), int(k["hidden_dim"])
    rng = np.random.default_rng([int(k["seed"]), 0x5EED])
    centres = rng.normal(size=(c * m, d)) * float(k["separation"])
    class_of = rng.permutation(np.repeat(np.arange(c), m))
    a1 = rng.normal(size=(d, h))
    b1 = rng.normal(size=(h,))
    a2 = rng.normal(size=(h, int(k["input_dim"])))
    out = {}
    draws = SPLITS + (("transfer",) if int(k["num_transfer"]) else ())
    for i, split in enumerate(draws):
        n = int(k[f"num_{split}"])
        split_rng = np.random.default_rng([int(k["seed"]), 0x5EED, i + 1])
        fine = split_rng.integers(0, c * m, size=n)
        z = centres[fine] + float(k["noise"]) * split_rng.normal(size=(n, d))
        x = np.tanh(z @ a1 / np.sqrt(d) + b1) @ a2 / np.sqrt(h)
        label = class_of[fine] if split != "transfer" else np.full(n, -1)
        out[split] = {"features": x.astype(np.float32), "label": label.astype(np.int32),
                      "fine_label": fine.astype(np.int32)}
    return out


def load_synthetic(name: str, config: DataSection, split: str) -> tuple[ArraySource, DatasetInfo]:
    """The loader registered as `synthetic_subclasses` in `lelp_jax.data.DATASETS`."""
    options = plain(config.get("synthetic") or {})
    if split not in SPLITS and not (split == "transfer" and int(options.get("num_transfer") or 0)):
        raise ValueError(f"{name}: unknown split {split!r}; choose one of {list(SPLITS)} (or 'transfer' with "
                         "data.synthetic.num_transfer > 0).")
    input_kind = config.get("input_kind")
    if input_kind not in (None, "features"):
        raise ValueError(f"{name} has feature inputs; input_kind {input_kind!r} does not apply (use None).")
    k = _knobs(options)
    arrays = synthetic_arrays(k)[split]
    cap = config.get("max_examples_per_split")
    if cap is not None:
        arrays = {key: v[:int(cap)] for key, v in arrays.items()}
    c, m = int(k["num_classes"]), int(k["modes_per_class"])
    sizes = {s: int(k[f"num_{s}"]) if cap is None else min(int(cap), int(k[f"num_{s}"]))
             for s in SPLITS + (("transfer",) if int(k["num_transfer"]) else ())}
    info = DatasetInfo(
        name=name, num_classes=c, num_fine_classes=c * m, input_kind="features",
        class_names=tuple(f"class_{i}" for i in range(c)), split_sizes=sizes,
        input_shape=(int(k["input_dim"]),), fine_class_names=tuple(f"mode_{f}" for f in range(c * m)),
    )
    return ArraySource(arrays), info
