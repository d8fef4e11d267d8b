"""What the stages of one command share: the :class:`Run` (config, workdir, mesh, data splits, the
teacher and its outputs, each built on first use), and the checks made before anything is written.

A stage takes the run and asks it for what it needs; the run asks the data layer and the
checkpoints, once. Also here: :func:`preflight`, and the one recipe that trains a teacher
(:func:`train_teacher`, for the teacher and the Subclass-Distillation teacher).
"""
from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from lelp_jax import train
from lelp_jax.runtime import sharding
from lelp_jax.runtime.errors import ConfigError
from lelp_jax.data.iterator import eval_batches
from lelp_jax.data.sources import DatasetInfo
from lelp_jax.data.loaders import transfer_origin
from lelp_jax.data.splits import TransferSource, data_config, load_splits, source_labels
from lelp_jax.methods import METHODS, Method
from lelp_jax.models import build_model, minilm_init_variables
from lelp_jax.models import head_weights as model_head_weights
from lelp_jax.pipeline.checks import check_data
from lelp_jax.pipeline.workdir import Workdir, WorkdirError, check_workdir, teacher_source_dir
from lelp_jax.pipeline.precomputed import (SPLITS, PrecomputedTeacher, SplitRows, check_methods,
                                           load_precomputed_teacher)
from lelp_jax.pipeline.teacher import TeacherCache, cache_teacher_outputs, load_teacher_cache

__all__ = ["PRETRAINED", "Run", "check_method_names", "check_transfer", "preflight", "model_kwargs", "train_teacher",
           "evaluate_split"]


def _minilm_variables(model, seed: int):
    return minilm_init_variables(model, jax.random.PRNGKey(seed))


# teacher.pretrained name -> (model, seed) -> initial variables for fine-tuning.
PRETRAINED: dict[str, Callable[[Any, int], Any]] = {"minilm": _minilm_variables}


class Run:
    """One command's experiment: the locked ``config``, its ``workdir`` and what its stages share.

    Built once per command from ``(config, workdir)``; every other attribute is computed on first
    use and kept, so a stage that skips loads nothing and the stages after it reuse what it
    loaded: the ``mesh``, the data splits (:meth:`split`, :meth:`sources`, :attr:`info`,
    :attr:`train_labels`), a precomputed teacher's validated outputs (:attr:`precomputed`), the
    trained teacher (:attr:`teacher`, its head :attr:`head_weights`), its cached train outputs
    (:attr:`teacher_cache`) and its outputs on every train example (:attr:`train_outputs`). The
    teacher's attributes are read once the teacher stage has made it.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | os.PathLike):
        self.config = config
        self.workdir = Workdir(workdir)
        self._splits: dict[str, tuple[Any, DatasetInfo]] = {}  # split -> (source, info), filled by split()
        self._carved: dict[str, tuple[int, np.ndarray]] = {}  # carved split -> (train file size, its rows in it)
        self.data_checked = False  # preflight's data checks passed (they run once per run)

    @functools.cached_property
    def mesh(self) -> Mesh:
        return sharding.make_mesh(self.config.mesh)

    def split(self, name: str) -> tuple[Any, DatasetInfo]:
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

    def sources(self, *, labelled_only: bool = False) -> dict[str, Any]:
        """``train_source``, ``val_source``, ``test_source``: the splits as ``train_and_evaluate`` takes them.

        ``labelled_only``: train is its labelled rows (what ``ce`` learns from); the default is the
        distillation split, labelled ∪ transfer (transfer rows' label -1, :mod:`lelp_jax.data.splits`)."""
        train = self.split("train")[0]
        if labelled_only and isinstance(train, TransferSource):
            train = train.labelled()
        return {"train_source": train, "val_source": self.split("validation")[0],
                "test_source": self.split("test")[0]}

    def teacher_sources(self) -> dict[str, Any]:
        """The teacher's :meth:`sources`: train's labelled rows (``teacher.train_on='labelled'``), or with
        ``'all'`` every train row with its true label (``data.labelled_fraction`` hides labels from the
        students only; a transfer file's rows have none)."""
        train = self.split("train")[0]
        if self.config.teacher.train_on == "all" and isinstance(train, TransferSource):
            return {**self.sources(), "train_source": train.train}
        return self.sources(labelled_only=True)

    @property
    def transfer_counts(self) -> dict[str, int]:
        """``{'labelled_examples', 'transfer_examples'}`` of the distillation split (train)."""
        train = self.split("train")[0]
        if isinstance(train, TransferSource):
            return {"labelled_examples": train.num_labelled, "transfer_examples": train.num_transfer}
        return {"labelled_examples": len(train), "transfer_examples": 0}

    @property
    def info(self) -> DatasetInfo:
        return self.split("train")[1]

    @functools.cached_property
    def train_labels(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(labels, fine labels or None) of every train example, in index order (-1: a transfer row)."""
        return source_labels(self.split("train")[0])

    @functools.cached_property
    def precomputed(self) -> PrecomputedTeacher:
        """The validated exported teacher outputs (``teacher.model='precomputed'``)."""
        rows = {}
        for name in SPLITS:
            source = self.split(name)[0]
            if name in self._carved:  # validation carved from train: rows of the whole train file
                rows[name] = SplitRows("train", *self._carved[name])
            else:
                rows[name] = SplitRows(name, len(source))
        return load_precomputed_teacher(
            self.config.teacher.outputs, splits=rows, num_classes=self.info.num_classes,
            labels_of=lambda name: source_labels(self._true_labelled(name))[0],
            max_examples_per_split=self.config.data.max_examples_per_split)

    def _true_labelled(self, name: str) -> Any:
        """Split ``name`` with its true labels (train without the rows' hidden labels)."""
        source = self.split(name)[0]
        return source.train if isinstance(source, TransferSource) else source

    @property
    def teacher_dir(self) -> Path:
        """Where the teacher's checkpoints live: ``teacher.checkpoint`` or ``WORKDIR/teacher``."""
        return teacher_source_dir(self.config, self.workdir.root)

    @functools.cached_property
    def teacher_model(self) -> nn.Module:
        """``teacher.model`` with a C-way head (its weights: :attr:`teacher`)."""
        return build_model(self.config.teacher.model, num_outputs=self.info.num_classes,
                           **model_kwargs(self.config.teacher))

    @functools.cached_property
    def teacher(self) -> tuple[nn.Module, Any]:
        """The trained teacher as ``(model, variables)`` (best-validation weights), on the mesh: replicated,
        or with ``mesh.model > 1`` its large kernels split along ``'model'`` (``sharding.param_shardings``)."""
        variables = train.load_variables(str(self.teacher_dir), which="best", mesh=self.mesh, shard_params=True)
        return self.teacher_model, variables

    @functools.cached_property
    def teacher_cache(self) -> TeacherCache | None:
        """The cached teacher outputs of the train split when ``teacher_cache`` is on, else None.

        A precomputed teacher's exported outputs are such a cache, whatever ``teacher_cache`` says.
        """
        if self.config.teacher.model == "precomputed":
            return self.precomputed.caches["train"]
        if not self.config.teacher_cache:
            return None
        return load_teacher_cache(str(self.workdir.teacher_outputs("train")))

    @functools.cached_property
    def train_outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (N, D), logits (N, C)) of the teacher on every train example (its cache or one pass),
        shared by the fits, the calibration and the diagnostics."""
        cache = self.teacher_cache
        if cache is None:
            model, variables = self.teacher
            cache = cache_teacher_outputs(model.apply, variables, self.split("train")[0], mesh=self.mesh,
                                          batch_size=int(self.config.data.eval_batch_size),
                                          compute_dtype=self.config.train.compute_dtype)
        return np.asarray(cache.embeddings), np.asarray(cache.logits)

    @functools.cached_property
    def head_weights(self) -> np.ndarray:
        """The teacher head's W = kernel^T (C, D) (a precomputed teacher's own head), on the host: a fit whose
        inputs are replicated over a multi-device CPU mesh runs the eigh on every device at once and was seen
        to deadlock (8 emulated devices)."""
        if self.config.teacher.model == "precomputed":
            return self.precomputed.head_weights()[0]
        variables = train.load_variables(str(self.teacher_dir), which="best", mesh=self.mesh)
        return sharding.to_host(model_head_weights(variables)[0])


def check_method_names(methods) -> None:
    """Every name in ``methods`` is a registered method (``register_method`` extends the registry)."""
    known = tuple(METHODS)
    unknown = [m for m in methods if m not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown method {unknown[0]!r}{hint}; known methods: {', '.join(known)}.")


def preflight(run: Run, *, force: bool = False, data: bool = True) -> None:
    """Every check that can fail on user input, before anything is written.

    The workdir must be new or made by this config (unless ``force``); every method
    must be registered; ``local`` data needs existing train/test files; a
    ``teacher.pretrained`` name must be known; a given ``teacher.checkpoint`` must
    exist and hold Orbax checkpoints; a precomputed teacher's exported outputs are
    loaded and validated (``run.precomputed``, kept on the run for its stages). With ``data`` (any
    stage but ``eval`` will run), the data's labels and the teacher's embedding width are checked
    too (:func:`lelp_jax.pipeline.checks.check_data`: label ranges, two classes, S against D - C and
    the class sizes), once per run: the splits it loads serve the stages.
    """
    config = run.config
    if not force:
        check_workdir(config, run.workdir.root)
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
    if config.teacher.checkpoint and not (not force and run.workdir.teacher_json.exists()):
        src = run.teacher_dir
        if not (src / "checkpoints").is_dir():
            what = "does not exist" if not src.exists() else "holds no checkpoints/ folder"
            raise WorkdirError(
                f"teacher.checkpoint {config.teacher.checkpoint!r} {what}; pass the teacher/ folder of an earlier "
                "run (or that run's workdir), or leave teacher.checkpoint unset to train a teacher here."
            )
    check_transfer(run)
    if config.teacher.model == "precomputed":
        check_methods(config.methods)
        run.precomputed  # loaded and validated now; the stages reuse it
    if data and not run.data_checked:
        check_data(run)
        run.data_checked = True


def check_transfer(run: Run) -> None:
    """With unlabelled transfer rows (``data.labelled_fraction`` < 1 or a transfer source), the train split is
    built now, so a bad transfer file or fraction is one error before any work (:func:`lelp_jax.data.splits.with_transfer`).
    A precomputed teacher's exported outputs cover the dataset's own train rows only: no transfer source."""
    data = run.config.data
    origin = transfer_origin(data_config(data))
    if origin is None and float(data.labelled_fraction) >= 1.0:
        return
    if origin is not None and run.config.teacher.model == "precomputed":
        raise ConfigError(f"{origin} adds transfer rows, which a precomputed teacher's exported outputs do not "
                          "cover; export its outputs on them into the train file instead, or unset it.")
    run.split("train")


# ----------------------------------------------------------------------------- the teacher


def model_kwargs(section: ml_collections.ConfigDict) -> dict[str, Any]:
    """A model section's ``model_kwargs`` as the model takes them (lists become tuples)."""
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.model_kwargs.to_dict().items()}


def train_teacher(run: Run, *, model: nn.Module, method: Method, folder: Path, desc: str) -> dict:
    """Train a teacher ``model`` with ``method``'s loss in ``folder`` (resumable; its ``result.json`` marks it
    done): ``teacher.train`` as the run's ``train`` section (methods read e.g. ``train.label_smoothing``
    there), seed ``teacher.seed``, from ``teacher.pretrained`` weights when set, else from scratch."""
    config = run.config
    init = {}
    if config.teacher.pretrained:
        init = {"init_variables": PRETRAINED[config.teacher.pretrained](model, int(config.teacher.seed))}
    teacher_cfg = ml_collections.ConfigDict(config.to_dict())
    teacher_cfg.train = config.teacher.train.to_dict()
    teacher_cfg.lock()
    return train.train_and_evaluate(**init, **run.teacher_sources(), model=model, method=method, cfg=teacher_cfg,
                                    train_cfg=teacher_cfg.train, mesh=run.mesh, workdir=str(folder),
                                    seed=int(config.teacher.seed), num_classes=run.info.num_classes,
                                    progress_desc=desc)


def evaluate_split(eval_step: Callable, variables: Any, source: Any, run: Run) -> float:
    """Accuracy of ``eval_step`` with ``variables`` over every example of ``source``."""
    batches = eval_batches(source, int(run.config.data.eval_batch_size))
    return train.evaluate(eval_step, variables["params"], variables.get("batch_stats", {}), batches, run.mesh)
