"""Experiment configuration: one locked ``ml_collections.ConfigDict`` for every stage.

A config file is a Python module with ``get_config()`` (big_vision style: config
as code, its docstring gives the command and the runtime). ``load_config`` loads
it, applies command-line overrides ``--config.a.b=value`` with types taken from the
existing field (as ``ml_collections.config_flags`` does), applies the ``smoke``
switch, validates, and locks the result so no stage can invent a key.

Overrides are checked before anything touches a workdir: an unknown key raises a
``ConfigError`` naming the key and the closest existing one.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections import config_dict

__all__ = [
    "ConfigError",
    "base_config",
    "load_config",
    "config_from_file",
    "resolve_config_path",
    "parse_overrides",
    "apply_overrides",
    "apply_smoke",
    "validate_config",
    "config_to_dict",
    "identity_dict",
    "IDENTITY_EXCLUDED",
]

# Keys that select *which* runs to do or *where* they run, not *what* they compute:
# a workdir accepts later invocations that differ only here (selection: the sweep's grids).
IDENTITY_EXCLUDED = ("methods", "seeds", "distributed", "mesh", "selection")

# A sub-dict with this name accepts new keys from overrides (model constructor kwargs
# differ between models, and the model builder rejects unknown ones; data.files maps
# any split name to a file; selection.grids maps any registered method to its grid).
_OPEN_SECTIONS = ("model_kwargs", "files", "grids")

_TRUE = ("true", "t", "yes", "y", "1", "on")
_FALSE = ("false", "f", "no", "n", "0", "off")
_NONE = ("none", "null")


class ConfigError(ValueError):
    """A user error in a config file or an override (the CLI prints it without a traceback)."""


def _p(field_type: type) -> config_dict.FieldReference:
    """A typed ``None`` (an optional field whose overrides parse as ``field_type``)."""
    return config_dict.placeholder(field_type)


def _train_section(**kw: Any) -> ml_collections.ConfigDict:
    """Optimisation settings; shared shape of ``config.train`` and ``config.teacher.train``.

    ``num_steps`` counts optimizer steps; ``num_epochs`` (if set) replaces it with
    ``ceil(num_epochs * N / batch_size)``. Learning rate: linear warm-up over
    ``warmup_steps``, then ``schedule`` ('cosine' to 0 or 'constant').
    """
    section = ml_collections.ConfigDict(
        dict(
            num_steps=1000,
            num_epochs=_p(float),
            batch_size=64,
            optimizer="adam",  # adam | adamw | sgd
            learning_rate=1e-3,
            momentum=0.9,  # sgd only
            weight_decay=0.0,
            warmup_steps=0,
            schedule="cosine",  # cosine | constant
            grad_clip_norm=_p(float),
            eval_every=200,
            checkpoint_every=500,
            log_every=50,
            compute_dtype="float32",  # float32 | bfloat16 (params stay float32)
            label_smoothing=0.0,
            eval_batch_size=0,  # 0 = batch_size
            nesterov=False,  # sgd only
        )
    )
    section.update(kw)
    return section


def base_config() -> ml_collections.ConfigDict:
    """Every key any stage may read, with defaults; experiment configs edit a copy.

    Sections: data, teacher, student, lelp, kd (and the other methods' settings),
    train, methods, seeds, mesh, distributed, teacher_cache, smoke.
    """
    c = ml_collections.ConfigDict()
    c.name = "base"  # experiment name; results.json's "config_name"
    c.smoke = False  # runlocal-style switch: tiny data and steps (see apply_smoke)

    # The data layer's keys (lelp_jax.data.default_data_config) plus the pipeline's own.
    c.data = ml_collections.ConfigDict(
        dict(
            name="digits_binary",  # see lelp_jax.data.DATASETS; 'local' = your own files
            data_dir=_p(str),  # tfds data dir; None -> $LELP_DATA_DIR or ~/tensorflow_datasets
            max_examples_per_split=_p(int),  # cap per split of the offline builders (tests, smoke)
            input_kind=_p(str),  # None = the dataset's own; 'features' flattens images
            max_length=128,  # text: tokens ([CLS]/[SEP] included)
            bucket_lengths=(16, 32, 64, 128),  # text: pad lengths of batches
            tokenizer=_p(str),  # text: tokenizer.json; None = MiniLM's
            tfds_config=_p(str),  # catalogue datasets, e.g. an amazon_us_reviews category
            files=ml_collections.ConfigDict(),  # local: split -> .csv/.jsonl/.npz (open: --config.data.files.train=...)
            text_column="text",
            label_column="label",
            fine_label_column=_p(str),
            class_names=_p(tuple),
            num_classes=_p(int),
            num_fine_classes=_p(int),
            dataset_name="local",  # local: the name reports use
            val_fraction=0.1,  # without a validation split: carve this share of train (seeded) for best-val
            split_seed=0,
            eval_batch_size=256,  # teacher outputs, statistics, teacher evaluation
            features="",  # text: '' = off; 'minilm' adds frozen MiniLM sentence embeddings as `features` (cached)
            # k-fold evaluation (lelp_jax.data.folds): 0 = the dataset's own splits; k >= 2 pools its splits,
            # tests on fold `fold` and carves validation (val_fraction, split_seed) from the other folds.
            num_folds=0,
            fold=0,
            # regrouped binarisation (lelp_jax.data.regroup): fine classes relabelled 1 (others 0), and the
            # first n train examples kept per fine class (0 = all); e.g. configs/fashion_mnist_hidden.py.
            class_one_fine=(),
            train_per_fine_class=0,
            # synthetic_subclasses (lelp_jax.data.synthetic): K modes per class in a latent space, mapped
            # non-linearly to input_dim features; fine labels kept.
            synthetic=ml_collections.ConfigDict(dict(
                num_classes=2, modes_per_class=8, latent_dim=8, hidden_dim=64, input_dim=64,
                separation=1.0, noise=0.5, num_train=2000, num_validation=2000, num_test=10000, seed=0,
            )),
        )
    )

    c.teacher = ml_collections.ConfigDict(
        dict(
            model="mlp",
            model_kwargs=ml_collections.ConfigDict(dict(hidden=(256, 256))),
            checkpoint=_p(str),  # a trained teacher to load; None = train one in the workdir
            pretrained=_p(str),  # initial weights for fine-tuning (e.g. 'minilm'), None = random init
            seed=0,
            train=_train_section(num_steps=1000),
            # model='precomputed': a teacher from any framework, as its exported outputs
            # (lelp_jax.precomputed; scripts/export_teacher_outputs.py). One .npz or .npy folder per split.
            outputs=ml_collections.ConfigDict(
                dict(
                    # embedding (N, D), logits (N, C) [, label (N,)]; kernel (D, C), bias (C,) unless `head`
                    train=_p(str),
                    validation=_p(str),  # needed when the data has its own validation split
                    test=_p(str),
                    head=_p(str),  # kernel + bias in a file of their own (None = in the train file)
                    tolerance=1e-2,  # |logits - (embedding @ kernel + bias)| <= tolerance * (1 + |logits|)
                )
            ),
        )
    )
    c.student = ml_collections.ConfigDict(
        dict(model="mlp", model_kwargs=ml_collections.ConfigDict(dict(hidden=(16,))))
    )

    c.lelp = ml_collections.ConfigDict(
        dict(
            num_subclasses=4,  # S
            beta=1.0,  # softmax temperature over the S subclass scores
            tau=1.0,  # teacher class temperature for p_c
            null_space=True,
            rotate=True,
            standardize=True,  # divide z by each direction's std (beta becomes scale-free); workdirs made before this default record false
            target_entropy=_p(float),  # in (0, 1): solve beta per class at fit time so the split's mean normalised entropy is this; None = use beta
            fit_labels="labels",  # labels | teacher (teacher argmax)
            alpha=0.0,  # weight of the hard-label CE term
            student_tau=1.0,  # the student's softmax temperature in the soft term (1 = the paper's: none)
            seed=0,  # Haar rotation / random-projection seed
        )
    )
    # student_tau: the student's softmax temperature in KD (None = tau, Hinton; 1 = LELP's convention).
    # tau_squared_scaling: multiply the soft term by tau^2 (Hinton's gradient scale; False with
    # student_tau=1 makes KD equal LELP at S = 1).
    c.kd = ml_collections.ConfigDict(dict(tau=2.0, alpha=0.0, student_tau=_p(float), tau_squared_scaling=True))
    # scale: 'standardized' = the same rule as lelp.standardize (lelp_jax.clustering docstring); 'gmm' divides
    # squared distances by 2 sigma_c^2 (the GMM posterior), 'raw' does not. temperature: None = lelp.beta.
    # Both k-means-style methods (kmeans, agglomerative) also follow lelp.target_entropy.
    c.kmeans = ml_collections.ConfigDict(dict(num_iters=50, temperature=_p(float), scale="standardized"))
    # lelp_kmeans: k-means inside each class's null-space top-k principal subspace (lelp_jax.subspace_kmeans);
    # S, beta, tau, alpha, seed, null_space and target_entropy come from `lelp`, num_iters from `kmeans`.
    c.lelp_kmeans = ml_collections.ConfigDict(dict(subspace_dim=8))  # k
    c.fitnet = ml_collections.ConfigDict(dict(weight=1.0))
    c.rkd = ml_collections.ConfigDict(dict(distance_weight=25.0, angle_weight=50.0))
    c.subclass = ml_collections.ConfigDict(
        dict(num_subclasses=4, aux_weight=1.0, aux_temperature=1.0, tau=1.0, alpha=0.0))

    # Per-method grids for `lelp sweep --default-grids` (docs/PROTOCOL.md): space-separated axes
    # KEY=V1,V2; every non-empty grid has the same size (12), so each method gets as many tries.
    # A method with an empty grid runs once at the config's settings (ce: nothing to tune).
    # Every method that splits a class gets the same axes (sharpness, S, alpha).
    split_grid = "lelp.beta=0.3,1,3 lelp.num_subclasses=2,4 lelp.alpha=0,0.5"
    c.selection = ml_collections.ConfigDict(dict(grids=ml_collections.ConfigDict(dict(
        ce="",
        kd="kd.tau=1,2,4 kd.alpha=0,0.5 kd.student_tau=none,1",
        lelp=split_grid,
        random=split_grid,
        pca=split_grid,
        kmeans=split_grid,
        agglomerative=split_grid,
        lelp_kmeans=split_grid,
        oracle="lelp.tau=0.5,1,2,4,8,16 lelp.alpha=0,0.5",
        fitnet="fitnet.weight=0.1,1,10 kd.tau=1,4 kd.alpha=0,0.5",
        rkd="kd.tau=1,2,4 rkd.distance_weight=5,25 rkd.angle_weight=10,50",
        subclass="subclass.tau=1,2,4 subclass.alpha=0,0.5 subclass.num_subclasses=2,4",
    ))))

    c.train = _train_section()
    c.methods = ("ce", "kd", "lelp")
    c.seeds = (0,)
    c.teacher_cache = False  # cache teacher (embedding, logits) per example once; needs a frozen teacher

    # num_devices: None = every device of every host. model > 1: a ('data', 'model') mesh whose 'model'
    # axis splits the teacher's large kernels (a teacher larger than one device; docs/LAUNCHING.md).
    c.mesh = ml_collections.ConfigDict(dict(num_devices=_p(int), model=1))
    c.distributed = ml_collections.ConfigDict(
        dict(
            coordinator_address=_p(str),  # "host:port"; None = auto-detect (TPU pod, SLURM) or one process
            num_processes=_p(int),
            process_id=_p(int),
            initialization_timeout=_p(int),  # seconds
            auto=True,
        )
    )
    return c


# ----------------------------------------------------------------------------- loading


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
    repo_configs = Path(__file__).resolve().parent.parent / "configs"
    if not repo_configs.is_dir():
        repo_configs = Path(__file__).resolve().parent / "_configs"
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


# ----------------------------------------------------------------------------- overrides


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """Split ``--config.a.b=value`` strings into ``(a.b, value)`` pairs (values unparsed)."""
    pairs = []
    for item in overrides:
        text = item
        for prefix in ("--config.", "config."):
            if text.startswith(prefix):
                text = text[len(prefix):]
                break
        else:
            if text.startswith("-"):
                raise ConfigError(f"unrecognised argument {item!r}; config overrides look like --config.train.num_steps=100.")
        if "=" not in text:
            raise ConfigError(f"override {item!r} has no value; write --config.{text}=VALUE.")
        key, value = text.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key; write --config.section.key=VALUE.")
        pairs.append((key, value))
    return pairs


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
    text = text.strip()
    if len(text) >= 2 and text[0] + text[-1] in ("[]", "()"):
        text = text[1:-1]
    return [part for part in (p.strip() for p in text.split(",")) if part]


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

    New keys are accepted only inside a ``model_kwargs`` section (model constructor
    arguments differ between models); their values parse as Python literals.
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
    """Reject values no stage can use, with the key and the fix."""

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    methods = tuple(config.methods)
    need(len(methods) > 0, "config.methods is empty; list at least one method, e.g. --methods ce,kd,lelp.")
    from lelp_jax.methods import method_names  # the registry: register_method() extends it

    known = tuple(method_names())
    unknown = [m for m in methods if m not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown method {unknown[0]!r}{hint}; known methods: {', '.join(known)}.")
    need(len(set(methods)) == len(methods), f"config.methods lists a method twice: {methods}.")
    seeds = tuple(config.seeds)
    need(len(seeds) > 0, "config.seeds is empty; give at least one seed, e.g. --seeds 0.")
    need(all(isinstance(s, int) and s >= 0 for s in seeds), f"config.seeds must be non-negative ints, got {seeds}.")
    need(len(set(seeds)) == len(seeds), f"config.seeds lists a seed twice: {seeds}.")
    need(config.lelp.num_subclasses >= 1, f"lelp.num_subclasses must be >= 1, got {config.lelp.num_subclasses}.")
    need(config.lelp.beta > 0, f"lelp.beta must be > 0, got {config.lelp.beta}.")
    need(config.lelp.tau > 0, f"lelp.tau must be > 0, got {config.lelp.tau}.")
    need(config.kd.tau > 0, f"kd.tau must be > 0, got {config.kd.tau}.")
    te = config.lelp.target_entropy
    need(te is None or 0.0 < te < 1.0,
         f"lelp.target_entropy must lie in (0, 1) (the split's mean normalised entropy: 0 = hard, 1 = uniform) "
         f"or be none (use lelp.beta), got {te}.")
    need(config.lelp_kmeans.subspace_dim >= 1,
         f"lelp_kmeans.subspace_dim must be >= 1 (the principal subspace's dimension k), got "
         f"{config.lelp_kmeans.subspace_dim}.")
    kt = config.kmeans.temperature
    need(kt is None or kt > 0, f"kmeans.temperature must be > 0 or none (= lelp.beta), got {kt}.")
    need(config.kmeans.scale in ("standardized", "gmm", "raw"),  # lelp_jax.clustering.KMEANS_SCALES
         f"kmeans.scale must be 'standardized', 'gmm' or 'raw', got {config.kmeans.scale!r}.")
    need(
        config.lelp.fit_labels in ("labels", "teacher"),
        f"lelp.fit_labels must be 'labels' or 'teacher', got {config.lelp.fit_labels!r}.",
    )
    for name, section in (("teacher.train", config.teacher.train), ("train", config.train)):
        need(section.num_steps >= 1, f"{name}.num_steps must be >= 1, got {section.num_steps}.")
        need(section.batch_size >= 1, f"{name}.batch_size must be >= 1, got {section.batch_size}.")
        need(section.learning_rate > 0, f"{name}.learning_rate must be > 0, got {section.learning_rate}.")
        need(
            section.optimizer in ("adam", "adamw", "sgd"),
            f"{name}.optimizer must be adam, adamw or sgd, got {section.optimizer!r}.",
        )
        need(
            section.compute_dtype in ("float32", "bfloat16"),
            f"{name}.compute_dtype must be float32 or bfloat16, got {section.compute_dtype!r}.",
        )
    if config.teacher.model == "precomputed":
        _validate_precomputed(config, need)
    need(config.data.features in ("", "minilm"),  # lelp_jax.data.features.ENCODERS
         f"data.features must be '' (off) or 'minilm' (frozen MiniLM sentence embeddings), "
         f"got {config.data.features!r}.")
    need(0.0 <= config.data.val_fraction < 1.0, f"data.val_fraction must be in [0, 1), got {config.data.val_fraction}.")
    folds, fold = config.data.num_folds, config.data.fold
    need(folds == 0 or folds >= 2, f"data.num_folds must be 0 (off) or >= 2, got {folds}.")
    need(folds == 0 or 0 <= fold < folds, f"data.fold must be in [0, data.num_folds) = [0, {folds}), got {fold}.")
    need(folds == 0 or 0.0 < config.data.val_fraction < 1.0,
         f"data.num_folds={folds} carves validation from the training folds: data.val_fraction must be in (0, 1), "
         f"got {config.data.val_fraction}.")
    need(isinstance(config.mesh.model, int) and config.mesh.model >= 1,
         f"mesh.model must be an int >= 1 (1: parameters replicated; m > 1: the teacher's large kernels split "
         f"over m devices), got {config.mesh.model!r}.")


def _validate_precomputed(config: ml_collections.ConfigDict, need) -> None:
    """``teacher.model='precomputed'``: outputs named, no checkpoint, no method that needs the network.

    The network's settings (``model_kwargs``, ``pretrained``, ``teacher.train``) are unused.
    """
    out = config.teacher.outputs
    need(bool(out.train), "teacher.model='precomputed' needs teacher.outputs.train (the exported train outputs); "
         "pass --config.teacher.outputs.train=FILE.npz (scripts/export_teacher_outputs.py writes it).")
    need(bool(out.test), "teacher.model='precomputed' needs teacher.outputs.test (the exported test outputs); "
         "pass --config.teacher.outputs.test=FILE.npz.")
    need(out.tolerance > 0, f"teacher.outputs.tolerance must be > 0, got {out.tolerance}.")
    need(not config.teacher.checkpoint, f"teacher.checkpoint={config.teacher.checkpoint!r} has no meaning with "
         "teacher.model='precomputed' (the exported outputs are the teacher); unset it.")
    from lelp_jax.precomputed import check_methods

    check_methods(config.methods)


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
