"""Experiment configuration: one locked ``ml_collections.ConfigDict`` for every stage.

A config file is a Python module with ``get_config()`` (big_vision style: config
as code, its docstring gives the command and the runtime) that edits a copy of
``base_config()`` (:mod:`lelp_jax.config.schema`: every key and its one default). ``load_config``
loads it, applies command-line overrides ``--config.a.b=value`` with types taken from the
existing field (:mod:`lelp_jax.config.overrides`, as ``ml_collections.config_flags`` does), applies
the ``smoke`` switch, validates, and locks the result so no stage can invent a key.

Overrides are checked before anything touches a workdir: an unknown key raises a
``ConfigError`` naming the key and the closest existing one.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import ml_collections

from lelp_jax.runtime.errors import ConfigError
from lelp_jax.config.overrides import apply_overrides, parse_overrides
from lelp_jax.config.schema import base_config, validate_values

__all__ = [
    "base_config",
    "minilm_text_setup",
    "load_config",
    "config_from_file",
    "resolve_config_path",
    "apply_smoke",
    "validate_config",
    "config_to_dict",
    "identity_dict",
    "IDENTITY_EXCLUDED",
]

# Keys that select *which* runs to do or *where* they run, not *what* they compute:
# a workdir accepts later invocations that differ only here (selection: the sweep's grids).
IDENTITY_EXCLUDED = ("methods", "seeds", "distributed", "mesh", "selection")


def minilm_text_setup(c: ml_collections.ConfigDict, *, warmup_steps: int, eval_every: int) -> ml_collections.ConfigDict:
    """The text configs' shared recipe: fine-tune all-MiniLM-L6-v2 (pretrained encoder, fresh
    head; AdamW 5e-5, weight decay 0.01, batch 32), cache its outputs, distil into a 64-d
    embedding bag. Each config sets its own length (epochs or steps) and data."""
    c.teacher.model = "minilm"
    c.teacher.model_kwargs = dict(dropout_rate=0.1)
    c.teacher.pretrained = "minilm"
    c.teacher.train.batch_size = 32
    c.teacher.train.optimizer = "adamw"
    c.teacher.train.learning_rate = 5e-5
    c.teacher.train.weight_decay = 0.01
    c.teacher.train.warmup_steps = warmup_steps
    c.teacher.train.eval_every = eval_every
    c.teacher_cache = True
    c.student.model = "embedding_bag"
    c.student.model_kwargs = dict(embed_dim=64)
    return c


def resolve_config_path(path: str) -> Path:
    """``path`` as given, or ``configs/NAME.py`` for a bare name: of the working folder, of this
    repository's checkout, or the copy an installed wheel carries (``lelp_jax/_configs``)."""
    p = Path(path)
    if p.is_file():
        return p
    package = Path(__file__).resolve().parent.parent  # lelp_jax/
    repo_configs = package.parent / "configs"
    if not repo_configs.is_dir():
        repo_configs = package / "_configs"
    for candidate in (Path("configs") / f"{path}.py", repo_configs / f"{path}.py", repo_configs / path):
        if candidate.is_file():
            return candidate
    known = sorted(q.stem for q in repo_configs.glob("*.py") if q.stem != "__init__")
    raise ConfigError(
        f"config file {path!r} not found; pass a path to a Python config file "
        f"(known configs: {', '.join(known) or 'none'})."
    )


def _load_module(path: Path):
    name = f"lelp_config_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load config file {str(path)!r}: not a Python file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {str(path)!r} has no get_config() function; define one.")
    return module


def config_from_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file (or a bare name in configs/): not validated, not locked.

    For a config built on another one: ``c = config_from_file('fashion_mnist_binary')``,
    then change what differs.
    """
    config = _load_module(resolve_config_path(str(path))).get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {str(path)!r} must return an ml_collections.ConfigDict.")
    return config


def load_config(path: str | os.PathLike, overrides: Sequence[str] = (), *, methods: str | None = None,
                seeds: str | None = None) -> ml_collections.ConfigDict:
    """Load ``get_config()`` from a config file, apply overrides and smoke, validate, lock.

    Args:
      path: a Python config file, or a bare config name in this repository's configs/.
      overrides: strings ``--config.a.b=value`` (or ``a.b=value``); later ones win.
      methods, seeds: the commands' ``--methods`` / ``--seeds`` (comma-separated); when given
        they replace ``config.methods`` / ``config.seeds`` after every other override.

    Order: file -> overrides -> (if ``smoke``) ``apply_smoke`` -> overrides again, so an
    explicit override always beats the smoke defaults. Raises ``ConfigError``.
    """
    config = config_from_file(path)
    overrides = list(overrides)
    if methods is not None:
        overrides.append(f"--config.methods={methods}")
    if seeds is not None:
        overrides.append(f"--config.seeds={seeds}")
    pairs = parse_overrides(overrides)
    apply_overrides(config, pairs)
    if config.get("smoke", False):
        apply_smoke(config)
        apply_overrides(config, pairs)
    validate_config(config)
    config.lock()
    return config


# ----------------------------------------------------------------------------- smoke, checks


def apply_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrink a config to a seconds-long end-to-end check (big_vision's ``runlocal``).

    Caps every split of the offline datasets at 256 examples, trains teacher and students
    for 30 steps with evaluation every 10, one seed. Explicit overrides are
    re-applied afterwards by ``load_config``.
    """
    config.data.max_examples_per_split = 256
    config.data.eval_batch_size = min(config.data.eval_batch_size, 64)
    for section in (config.teacher.train, config.train):
        section.num_steps = 30
        section.num_epochs = None
        section.batch_size = min(section.batch_size, 32)
        section.eval_every = 10
        section.checkpoint_every = 10
        section.log_every = 10
        section.warmup_steps = 0
    config.seeds = (0,)
    return config


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Reject values no stage can use, with the key and the fix (:func:`lelp_jax.config.schema.validate_values`).

    The methods are checked against the registry by the pipeline's preflight
    (:func:`lelp_jax.pipeline.context.check_method_names`): ``register_method`` can extend
    it after a config is loaded, and the config layer sits below the methods.
    """
    methods = tuple(config.methods)
    if not methods:
        raise ConfigError("config.methods is empty; list at least one method, e.g. --methods ce,kd,lelp.")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"config.methods lists a method twice: {methods}.")
    validate_values(config)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON types (tuples become lists), as stored in WORKDIR/config.json."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def identity_dict(config: ml_collections.ConfigDict | Mapping) -> dict:
    """What a workdir is made of: the config without ``IDENTITY_EXCLUDED`` keys.

    Two invocations whose identity dicts agree may share a workdir (e.g. adding a
    method or a seed); any other difference is refused.
    """
    d = config_to_dict(config) if isinstance(config, ml_collections.ConfigDict) else json.loads(json.dumps(dict(config)))
    return {k: v for k, v in d.items() if k not in IDENTITY_EXCLUDED}
