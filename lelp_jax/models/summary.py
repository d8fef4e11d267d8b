"""Model size and cost: parameter counts, compiled FLOPs, one-line descriptions, tables."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np


def count_params(variables: Any) -> int:
    """Number of trainable scalars: the sizes of all leaves of ``variables['params']``.

    ``batch_stats`` and other collections are not parameters and are not counted;
    a bare params tree (no 'params' key) is counted whole.
    """
    tree = variables["params"] if isinstance(variables, Mapping) and "params" in variables else variables
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(tree)))


def _first_example(batch: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(batch, Mapping) or not batch:
        raise ValueError("batch must be a non-empty dict of arrays with a leading example axis.")
    return {k: np.asarray(v)[:1] for k, v in batch.items()}


def flops_per_example(model: nn.Module, variables: Any, batch: Mapping[str, Any]) -> float:
    """FLOPs of one eval forward pass on one example, from XLA's compiled cost analysis.

    Compiles ``model.apply(variables, batch[:1], train=False)`` and reads the
    ``'flops'`` entry (a multiply-add counts 2). It is XLA's estimate for the
    compiled program on this backend (CPU here), not a hand count.
    """
    one = _first_example(batch)
    compiled = jax.jit(lambda v, b: model.apply(v, b, train=False)).lower(variables, one).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX returned one dict per device program
        cost = cost[0] if cost else {}
    if not cost or "flops" not in cost:
        raise RuntimeError("this JAX backend reports no 'flops' in compiled.cost_analysis().")
    return float(cost["flops"])


def _fmt(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def describe_model(model: nn.Module, variables: Any, batch: Mapping[str, Any] | None = None, *,
                   name: str | None = None) -> str:
    """One line: ``name: 852k params, D=64, outputs=10, 251M FLOPs/example`` (FLOPs and D need ``batch``)."""
    parts = [f"{_fmt(count_params(variables))} params"]
    if batch is not None:
        one = _first_example(batch)
        emb, logits = jax.eval_shape(lambda v, b: model.apply(v, b, train=False), variables, one)
        parts += [f"D={emb.shape[-1]}", f"outputs={logits.shape[-1]}",
                  f"{_fmt(flops_per_example(model, variables, batch))} FLOPs/example"]
    return f"{name or type(model).__name__}: " + ", ".join(parts)


class ModelInfo(NamedTuple):
    """A labelled model for ``model_table``: ``batch`` (optional) enables the FLOPs column."""

    label: str
    model: nn.Module
    variables: Any
    batch: Mapping[str, Any] | None = None


def model_table(pairs: Sequence[tuple[ModelInfo, ModelInfo]]) -> str:
    """Markdown table of (teacher, student) pairs: params, FLOPs/example and teacher/student ratios."""
    lines = ["| teacher | params | FLOPs | student | params | FLOPs | param ratio | FLOP ratio |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for teacher, student in pairs:
        row: list[str] = []
        counts, flops = [], []
        for m in (teacher, student):
            counts.append(count_params(m.variables))
            flops.append(flops_per_example(m.model, m.variables, m.batch) if m.batch is not None else None)
            row += [m.label, _fmt(counts[-1]), "-" if flops[-1] is None else _fmt(flops[-1])]
        row.append(f"{counts[0] / max(counts[1], 1):.1f}x")
        row.append("-" if None in flops else f"{flops[0] / max(flops[1], 1.0):.1f}x")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
