"""Sweep grids: ``--grid`` axes, per-method grids of equal size, their points, folder names and configs.

``lelp.beta=0.5,1,2`` is an axis of every method, ``kd:kd.tau=1,2,4`` of ``kd`` only, and
``config.selection.grids.METHOD`` holds a method's default axes (space-separated; docs/PROTOCOL.md).
A point is one set of overrides; its values are typed by the config fields they override
(:mod:`lelp_jax.config.overrides`). Used by ``lelp sweep`` (:mod:`lelp_jax.protocol.sweep`) and ``lelp kfold``.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import ml_collections

from lelp_jax.config import validate_config
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.config.overrides import apply_overrides, split_values, strip_prefix

__all__ = ["parse_grid", "parse_grids", "default_grids", "set_grid_axis", "method_grids", "grid_points",
           "point_name", "point_config"]

_DEFAULTS_POINT = "defaults"  # the folder of the point without overrides


def _parse_axis(spec: str, grid: dict[str, list[str]], where: str) -> None:
    """Add one ``KEY=V1,V2`` axis to ``grid`` (checked)."""
    if "=" not in spec:
        raise ConfigError(f"grid axis {spec!r}{where} has no values; write lelp.beta=0.5,1,2.")
    key, values = spec.split("=", 1)
    key = strip_prefix(key.strip())
    if not key:
        raise ConfigError(f"grid axis {spec!r}{where} has an empty key; write lelp.beta=0.5,1,2.")
    if key in grid:
        raise ConfigError(f"grid key {key!r}{where} is given twice; list all its values in one axis {key}=a,b,c.")
    vals = split_values(values)
    if not vals:
        raise ConfigError(f"grid axis {spec!r}{where} has no values; write {key}=a,b,c.")
    if len(set(vals)) != len(vals):
        raise ConfigError(f"grid axis {key!r}{where} repeats a value: {vals}.")
    grid[key] = vals


def parse_grids(specs: Sequence[str]) -> tuple[dict[str, list[str]], dict[str, dict[str, list[str]]]]:
    """``--grid`` specs -> (axes of every method, {method: its own axes}); values unparsed.

    ``lelp.beta=0.5,1,2`` is an axis of every method, ``kd:kd.tau=1,2,4`` of ``kd`` only.
    Values are typed later by the config field they override. Commas inside brackets
    belong to one value: ``student.model_kwargs.hidden=[16],[64,64]`` is two values.
    """
    shared: dict[str, list[str]] = {}
    own: dict[str, dict[str, list[str]]] = {}
    for spec in specs:
        text = spec[len("--grid="):] if spec.startswith("--grid=") else spec
        head = text.split("=", 1)[0]
        if ":" in head:
            method, text = text.split(":", 1)
            if not method.strip():
                raise ConfigError(f"grid axis {spec!r} has an empty method; write kd:kd.tau=1,2,4.")
            _parse_axis(text, own.setdefault(method.strip(), {}), f" (method {method.strip()})")
        else:
            _parse_axis(text, shared, "")
    return shared, own


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """``["lelp.beta=0.5,1,2", ...]`` -> ``{"lelp.beta": ["0.5", "1", "2"], ...}``: axes of every method."""
    shared, own = parse_grids(specs)
    if own:
        raise ConfigError(f"per-method axes ({', '.join(own)}) need parse_grids / method_grids.")
    return shared


def default_grids(config: ml_collections.ConfigDict, methods: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """Each method's own axes from ``config.selection.grids.METHOD`` (absent or empty: no axes)."""
    grids = config.selection.grids
    out = {}
    for m in methods:
        text = grids.get(m) or ""
        if not isinstance(text, str):
            raise ConfigError(f"selection.grids.{m} must be a string of KEY=V1,V2 axes separated by spaces, "
                              f"got {text!r}.")
        axes: dict[str, list[str]] = {}
        for spec in split_values(text, " "):
            _parse_axis(spec, axes, f" (selection.grids.{m})")
        out[m] = axes
    return out


def set_grid_axis(config: ml_collections.ConfigDict, key: str, values: Sequence[Any]) -> list[str]:
    """Give axis ``key`` the ``values`` in every ``config.selection.grids`` entry that has it.

    For a config whose data fixes an axis's sensible range (e.g. ``lelp.num_subclasses`` = K/2, K
    where each class has K true subclasses); the axis keeps its place and its number of values
    must stay the same, so the grids keep their equal sizes. Returns the methods changed.
    """
    new = f"{key}=" + ",".join(_fmt(v) for v in values)
    changed = []
    for m in list(config.selection.grids.keys()):
        axes = split_values(config.selection.grids[m] or "", " ")
        hit = [i for i, a in enumerate(axes) if a.split("=", 1)[0] == key]
        if not hit:
            continue
        if len(split_values(axes[hit[0]].split("=", 1)[1])) != len(values):
            raise ConfigError(f"selection.grids.{m}: axis {key} has {axes[hit[0]]!r}; give as many values "
                              f"({len(values)} given) so the grids keep equal sizes.")
        axes[hit[0]] = new
        config.selection.grids[m] = " ".join(axes)
        changed.append(m)
    if not changed:
        raise ConfigError(f"no grid in selection.grids has an axis {key!r}.")
    return changed


def method_grids(methods: Sequence[str], shared: Mapping[str, Sequence[Any]],
                 own: Mapping[str, Mapping[str, Sequence[Any]]]) -> dict[str, dict[str, list[Any]]]:
    """Every method's full grid: the shared axes, then its own; checks that the grids of the
    methods with own axes have equal sizes (as many tries each) and name known methods."""
    stray = [m for m in own if m not in methods]
    if stray:
        raise ConfigError(f"grid axes for {stray}, which are not among the methods {list(methods)}; "
                          "add them to --methods or drop those axes.")
    out, sizes = {}, {}
    for m in methods:
        mine = dict(own.get(m, {}))
        both = [k for k in mine if k in shared]
        if both:
            raise ConfigError(f"grid key {both[0]!r} is both a shared axis and an axis of {m}; give it once.")
        out[m] = {**{k: list(v) for k, v in shared.items()}, **{k: list(v) for k, v in mine.items()}}
        if mine:
            sizes[m] = len(grid_points(out[m]))
    if len(set(sizes.values())) > 1:
        raise ConfigError("per-method grids must have equal sizes, so every method gets as many tries; got "
                          + ", ".join(f"{m}: {n} points" for m, n in sizes.items()) + ".")
    return out


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of the axes as override dicts (first key varies slowest)."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(list(grid[k]) for k in keys))]


def _fmt(v: Any) -> str:
    # Lists as 0+1+4: tensorstore (under Orbax) cannot reopen a checkpoint whose path holds '['.
    if isinstance(v, (list, tuple)):
        return "+".join(_fmt(x) for x in v)
    return str(v)


def point_name(overrides: Mapping[str, Any]) -> str:
    """``{"lelp.num_subclasses": 4, "lelp.beta": 0.5}`` -> ``lelp.num_subclasses=4,lelp.beta=0.5``
    (``defaults`` for no overrides; a list value ``[0, 1, 4]`` -> ``0+1+4``)."""
    name = ",".join(f"{k}={_fmt(v)}" for k, v in overrides.items())
    return name.replace("/", "_").replace(" ", "") or _DEFAULTS_POINT


def point_config(config: ml_collections.ConfigDict, overrides: Mapping[str, Any], *,
                 seeds: Optional[Sequence[int]] = None, teacher: Optional[str] = None,
                 methods: Optional[Sequence[str]] = None) -> ml_collections.ConfigDict:
    """A validated, locked copy of ``config`` with the point's overrides (typed by their fields)."""
    cfg = copy.deepcopy(config)
    pairs = [(k, v if isinstance(v, str) else _fmt(v)) for k, v in overrides.items()]
    if seeds is not None:
        pairs.append(("seeds", ",".join(str(int(s)) for s in seeds)))
    if methods is not None:
        pairs.append(("methods", ",".join(methods)))
    if teacher is not None:
        pairs.append(("teacher.checkpoint", teacher))
    apply_overrides(cfg, pairs)
    validate_config(cfg)
    cfg.lock()
    return cfg
