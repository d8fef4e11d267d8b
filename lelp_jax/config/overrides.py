"""Command-line config overrides: split them from the other arguments, parse, apply.

    --config.train.num_steps=100   --config.lelp.rotate   --config.seeds 0,1,2

Shared by ``lelp run`` (and the stage commands), ``lelp sweep`` and ``lelp kfold``. Values take
the type of the field they replace, as ``ml_collections.config_flags`` does; an unknown key raises
a :class:`lelp_jax.runtime.errors.ConfigError` naming the closest existing one.
"""
from __future__ import annotations

import ast
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

from lelp_jax.runtime.errors import ConfigError

__all__ = ["split_overrides", "parse_overrides", "apply_overrides", "split_values", "get_value", "override_dict"]

# A sub-dict with this name accepts new keys from overrides (model constructor kwargs
# differ between models, and the model builder rejects unknown ones; data.files maps
# any split name to a file; selection.grids maps any registered method to its grid).
_OPEN_SECTIONS = ("model_kwargs", "files", "grids")

_TRUE = ("true", "t", "yes", "y", "1", "on")
_FALSE = ("false", "f", "no", "n", "0", "off")
_NONE = ("none", "null")
_PREFIXES = ("--config.", "config.")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate overrides from the other arguments.

    Forms: ``--config.a.b=V``, ``--config.a.b V``, and a bare ``--config.a.b``
    (followed by another option or nothing) meaning ``true``, as absl does for bools.
    """
    rest, overrides = [], []
    i = 0
    argv = list(argv)
    while i < len(argv):
        token = argv[i]
        if token.startswith("--config."):
            if "=" in token:
                overrides.append(token)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                overrides.append(f"{token}={argv[i + 1]}")
                i += 1
            else:
                overrides.append(f"{token}=true")
        else:
            rest.append(token)
        i += 1
    return rest, overrides


def strip_prefix(key: str) -> str:
    """``--config.a.b`` or ``config.a.b`` -> ``a.b``."""
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """Split ``--config.a.b=value`` strings into ``(a.b, value)`` pairs (values unparsed)."""
    pairs = []
    for item in overrides:
        text = strip_prefix(item)
        if text == item and text.startswith("-"):
            raise ConfigError(f"unrecognised argument {item!r}; config overrides look like --config.train.num_steps=100.")
        if "=" not in text:
            raise ConfigError(f"override {item!r} has no value; write --config.{text}=VALUE.")
        key, value = text.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key; write --config.section.key=VALUE.")
        pairs.append((key, value))
    return pairs


def split_values(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets: ``1,2`` -> [1, 2]; ``[16],[16,16]`` -> ['[16]', '[16,16]'].

    ``sep=" "`` splits on any whitespace (the axes of a ``selection.grids`` string)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if depth == 0 and (ch == sep or (sep == " " and ch.isspace())):
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [v for v in out if v]


def get_value(config: ml_collections.ConfigDict, key: str) -> Any:
    """The value at dotted ``key`` as JSON would hold it (tuples become lists)."""
    node = config
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, tuple) else node


def override_dict(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> dict[str, Any]:
    """The user's overrides as {dotted key: resolved value} (recorded in each run's result)."""
    return {key: get_value(config, key) for key, _ in parse_overrides(overrides)}


def _flat_keys(config: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for k in config.keys():
        path = f"{prefix}{k}"
        keys.append(path)
        v = config[k]
        if isinstance(v, (ml_collections.ConfigDict, Mapping)):
            keys.extend(_flat_keys(v, path + "."))
    return keys


def _unknown_key_error(config: ml_collections.ConfigDict, key: str) -> ConfigError:
    candidates = _flat_keys(config)
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:  # compare the last component with every key's last component
        last = key.rsplit(".", 1)[-1]
        by_last = {c.rsplit(".", 1)[-1]: c for c in candidates}
        near = difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.6)
        close = [by_last[near[0]]] if near else []
    hint = f"; did you mean {close[0]!r}?" if close else "; run `lelp config --config FILE` to list the keys."
    return ConfigError(f"unknown config key {key!r}{hint}")


def _parse_bool(text: str, key: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"config key {key!r} is a bool; got {text!r} (use true or false).")


def _parse_scalar(text: str, field_type: type | None, key: str) -> Any:
    """Parse one value as ``field_type`` (None: a Python literal, else the raw string)."""
    text = text.strip()
    try:
        if field_type is bool:
            return _parse_bool(text, key)
        if field_type is int:
            return int(text)
        if field_type is float:
            return float(text)
        if field_type is str:
            return text
    except ValueError:
        raise ConfigError(
            f"config key {key!r} is a{'n' if field_type is int else ''} {field_type.__name__}; got {text!r}."
        ) from None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        return text


def _split_list(text: str) -> list[str]:
    """``1,2,4``, ``[1,2,4]`` or ``(1,2,4)`` -> ['1', '2', '4']."""
    text = text.strip()
    if len(text) >= 2 and text[0] + text[-1] in ("[]", "()"):
        text = text[1:-1]
    return split_values(text)


def _parse_value(text: str, current: Any, field_type: type | None, key: str, *, nullable: bool) -> Any:
    """Parse an override by the type of the field it replaces (config_flags rules).

    ints, floats, bools (true/false/1/0), strings; tuples/lists from ``1,2,4`` or
    ``[1,2,4]`` with elements typed like the current ones; ``none`` clears an
    optional (placeholder) field.
    """
    if (nullable or current is None) and text.strip().lower() in _NONE:
        return None
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config key {key!r} is a section; override its fields, e.g. --config.{key}.FIELD=VALUE.")
    if field_type in (tuple, list):
        elem_type = type(current[0]) if current else None
        items = tuple(_parse_scalar(part, elem_type, key) for part in _split_list(text))
        return items if field_type is tuple else list(items)
    if field_type is None or field_type is type(None):
        return _parse_scalar(text, None, key)
    return _parse_scalar(text, field_type, key)


def apply_overrides(config: ml_collections.ConfigDict, pairs: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
    """Set each ``(dotted key, value string)`` on ``config`` in place; unknown keys raise.

    New keys are accepted only inside an open section (``model_kwargs``, ``files``,
    ``grids``: their keys differ between models, splits, methods); their values parse as
    Python literals.
    """
    for key, text in pairs:
        parts = key.split(".")
        node = config
        for part in parts[:-1]:
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                raise _unknown_key_error(config, key)
            node = node[part]
        leaf = parts[-1]
        if not isinstance(node, ml_collections.ConfigDict):
            raise _unknown_key_error(config, key)
        if leaf not in node:
            if len(parts) >= 2 and parts[-2] in _OPEN_SECTIONS:
                with node.unlocked():
                    node[leaf] = _parse_scalar(text, None, key)
                continue
            raise _unknown_key_error(config, key)
        current = node[leaf]
        field_type = node.get_type(leaf)
        # Placeholders (typed None defaults) stay clearable with 'none' after being set.
        nullable = isinstance(node._fields.get(leaf), config_dict.FieldReference)  # noqa: SLF001
        value = _parse_value(text, current, field_type, key, nullable=nullable)
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"config key {key!r}: cannot set {value!r} ({e}).") from None
    return config
