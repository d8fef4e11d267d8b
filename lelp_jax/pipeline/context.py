"""What the stages of one invocation share: pre-flight checks, the mesh and data splits (:class:`Env`), the teacher.

:class:`Env` is built lazily, so a stage that skips loads nothing. The teacher helpers here
load it (:func:`load_teacher`), train one (:func:`train_teacher`, the one recipe for the
teacher and the Subclass-Distillation teacher), and give its outputs on the train split
(:func:`train_outputs`, :func:`teacher_cache`) and its head (:func:`head_weights`).
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from lelp_jax import train
from lelp_jax.runtime import sharding
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.data import make_iterator
from lelp_jax.data.splits import load_splits, source_labels
from lelp_jax.methods import METHODS
from lelp_jax.models import build_model, minilm_init_variables
from lelp_jax.models import head_weights as model_head_weights
from lelp_jax.pipeline.workdir import Workdir, WorkdirError, check_workdir, teacher_source_dir
from lelp_jax.pipeline.precomputed import SPLITS, SplitRows, check_methods, load_precomputed_teacher
from lelp_jax.pipeline.teacher import cache_teacher_outputs, load_teacher_cache

__all__ = ["PRETRAINED", "Env", "check_method_names", "preflight", "model_kwargs", "teacher_model", "load_teacher", "train_teacher",
           "evaluate_split", "teacher_cache", "head_weights", "train_outputs"]


def _minilm_variables(model, seed: int):
    return minilm_init_variables(model, jax.random.PRNGKey(seed))


# teacher.pretrained name -> (model, seed) -> initial variables for fine-tuning.
PRETRAINED: dict[str, Callable[[Any, int], Any]] = {"minilm": _minilm_variables}


class Env:
    """What the stages of one invocation share: the mesh and the loaded data splits.

    Built lazily, so a stage that skips loads nothing.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self._mesh = None
        self._splits: dict[str, Any] = {}
        self._precomputed = None
        self._carved: dict[str, Any] = {}  # carved split -> (train file size, its rows in it)
        self._train_outputs = None  # (workdir, embeddings, logits): see train_outputs()

    @property
    def mesh(self):
        if self._mesh is None:
            self._mesh = sharding.make_mesh(self.config.mesh)
        return self._mesh

    def split(self, name: str):
        """``(source, info)`` of ``train``, ``validation`` or ``test``, loaded once.

        A dataset without a validation split (your own files, some catalogue
        datasets) gets one carved from train: a seeded ``data.val_fraction`` share
        (``data.split_seed``), removed from the train split. With ``data.features``
        set, every split gains the frozen encoder's ``features`` (:mod:`lelp_jax.data.splits`).
        """
        if name not in self._splits:
            loaded, carved = load_splits(self.config.data, name)
            self._carved.update(carved)
            self._splits.update(loaded)
        return self._splits[name]

    def sources(self) -> dict[str, Any]:
        """``train_source``, ``val_source``, ``test_source``: the splits as ``train_and_evaluate`` takes them."""
        return {"train_source": self.split("train")[0], "val_source": self.split("validation")[0],
                "test_source": self.split("test")[0]}

    @property
    def info(self):
        return self.split("train")[1]

    def precomputed(self):
        """The validated exported teacher outputs (``teacher.model='precomputed'``), loaded once."""
        if self._precomputed is None:
            rows = {}
            for name in SPLITS:
                source = self.split(name)[0]
                if name in self._carved:  # validation carved from train: rows of the whole train file
                    rows[name] = SplitRows("train", *self._carved[name])
                else:
                    rows[name] = SplitRows(name, len(source))
            self._precomputed = load_precomputed_teacher(
                self.config.teacher.outputs, splits=rows, num_classes=self.info.num_classes,
                labels_of=lambda name: source_labels(self.split(name)[0])[0])
        return self._precomputed


def check_method_names(methods) -> None:
    """Every name in ``methods`` is a registered method (``register_method`` extends the registry)."""
    known = tuple(METHODS)
    unknown = [m for m in methods if m not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown method {unknown[0]!r}{hint}; known methods: {', '.join(known)}.")


def preflight(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, force: bool = False,
              env: Env | None = None) -> None:
    """Every check that can fail on user input, before anything is written.

    The workdir must be new or made by this config (unless ``force``); every method
    must be registered; ``local`` data needs existing train/test files; a
    ``teacher.pretrained`` name must be known; a given ``teacher.checkpoint`` must
    exist and hold Orbax checkpoints; a precomputed teacher's exported outputs are
    loaded and validated (``env.precomputed()``, kept for the stages when ``env`` is given).
    """
    if not force:
        check_workdir(config, workdir)
    check_method_names(config.methods)
    if config.data.name == "local":
        for split in ("train", "test"):
            path = config.data.files.get(split)
            if not path:
                raise ConfigError(f"data.name='local' needs data.files.{split}; pass --config.data.files.{split}=FILE.")
            if not Path(path).expanduser().is_file():
                raise ConfigError(f"data.files.{split}={path!r} does not exist; fix the path.")
    if config.teacher.pretrained and config.teacher.pretrained not in PRETRAINED:
        raise ConfigError(f"teacher.pretrained={config.teacher.pretrained!r} is unknown; choose one of "
                          f"{sorted(PRETRAINED)} or leave it unset (random init).")
    if config.teacher.checkpoint and not (not force and Workdir(workdir).teacher_json.exists()):
        src = teacher_source_dir(config, workdir)
        if not (src / "checkpoints").is_dir():
            what = "does not exist" if not src.exists() else "holds no checkpoints/ folder"
            raise WorkdirError(
                f"teacher.checkpoint {config.teacher.checkpoint!r} {what}; pass the teacher/ folder of an earlier "
                "run (or that run's workdir), or leave teacher.checkpoint unset to train a teacher here."
            )
    if config.teacher.model == "precomputed":
        check_methods(config.methods)
        (env or Env(config)).precomputed()


# ----------------------------------------------------------------------------- the teacher


def model_kwargs(section: ml_collections.ConfigDict) -> dict[str, Any]:
    """A model section's ``model_kwargs`` as the model takes them (lists become tuples)."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.model_kwargs.to_dict().items()}


def teacher_model(config: ml_collections.ConfigDict, num_classes: int):
    return build_model(config.teacher.model, num_outputs=num_classes, **model_kwargs(config.teacher))


def load_teacher(config: ml_collections.ConfigDict, workdir: str | os.PathLike, env: Env):
    """The trained teacher as ``(model, variables)`` (best-validation weights), on the mesh: replicated,
    or with ``mesh.model > 1`` its large kernels split along ``'model'`` (``sharding.param_shardings``)."""
    model = teacher_model(config, env.info.num_classes)
    variables = train.load_variables(str(teacher_source_dir(config, workdir)), which="best", mesh=env.mesh,
                                     shard_params=True)
    return model, variables


def train_teacher(config: ml_collections.ConfigDict, env: Env, *, model, method, folder: Path, desc: str) -> dict:
    """Train a teacher ``model`` with ``method``'s loss in ``folder`` (resumable; its ``result.json`` marks it
    done): ``teacher.train`` as the run's ``train`` section (methods read e.g. ``train.label_smoothing``
    there), seed ``teacher.seed``, from ``teacher.pretrained`` weights when set, else from scratch."""
    init = {}
    if config.teacher.pretrained:
        init = {"init_variables": PRETRAINED[config.teacher.pretrained](model, int(config.teacher.seed))}
    teacher_cfg = ml_collections.ConfigDict(config.to_dict())
    teacher_cfg.train = config.teacher.train.to_dict()
    teacher_cfg.lock()
    return train.train_and_evaluate(**init, **env.sources(), model=model, method=method, cfg=teacher_cfg,
                                    train_cfg=teacher_cfg.train, mesh=env.mesh, workdir=str(folder),
                                    seed=int(config.teacher.seed), num_classes=env.info.num_classes,
                                    progress_desc=desc)


def evaluate_split(eval_step, variables, source, config: ml_collections.ConfigDict, env: Env) -> float:
    """Accuracy of ``eval_step`` with ``variables`` over every example of ``source``."""
    batches = make_iterator(source, global_batch_size=int(config.data.eval_batch_size), seed=0, shuffle=False,
                            num_epochs=1, process_index=jax.process_index(), process_count=jax.process_count(),
                            drop_remainder=False)
    return train.evaluate(eval_step, variables["params"], variables.get("batch_stats", {}), batches, env.mesh)


def teacher_cache(config: ml_collections.ConfigDict, workdir: str | os.PathLike, env: Env, split: str = "train"):
    """The cached teacher outputs of ``split`` when ``teacher_cache`` is on, else None.

    A precomputed teacher's exported outputs are such a cache, whatever ``teacher_cache`` says.
    """
    if config.teacher.model == "precomputed":
        return env.precomputed().caches[split]
    if not config.teacher_cache:
        return None
    return load_teacher_cache(str(Workdir(workdir).teacher_outputs(split)))


def head_weights(config: ml_collections.ConfigDict, workdir: str | os.PathLike, env: Env):
    """The teacher head's W = kernel^T (C, D) (a precomputed teacher's own head), on the host: a fit whose
    inputs are replicated over a multi-device CPU mesh runs the eigh on every device at once and was seen
    to deadlock (8 emulated devices)."""
    if config.teacher.model == "precomputed":
        return env.precomputed().head_weights()[0]
    variables = train.load_variables(str(teacher_source_dir(config, workdir)), which="best", mesh=env.mesh)
    return sharding.to_host(model_head_weights(variables)[0])


def train_outputs(config: ml_collections.ConfigDict, workdir: str | os.PathLike, env: Env):
    """(embeddings (N, D), logits (N, C)) of the teacher on every train example (cache or one pass;
    kept on ``env`` so the fits, the calibration and the diagnostics of one invocation share it)."""
    memo = env._train_outputs
    if memo is not None and memo[0] == str(workdir):
        return memo[1], memo[2]
    cache = teacher_cache(config, workdir, env)
    if cache is None:
        model, variables = load_teacher(config, workdir, env)
        cache = cache_teacher_outputs(model.apply, variables, env.split("train")[0], mesh=env.mesh,
                                      batch_size=int(config.data.eval_batch_size),
                                      compute_dtype=config.train.compute_dtype)
    emb, logits = np.asarray(cache.embeddings), np.asarray(cache.logits)
    env._train_outputs = (str(workdir), emb, logits)
    return emb, logits
