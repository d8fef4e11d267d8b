"""The experiment as resumable stages with artifacts in a workdir.

Each stage is a function ``stage_X(config, workdir, ...)`` that reads its inputs
from the workdir, writes its artifact atomically (temporary file + ``os.replace``)
and returns a summary dict; when its artifact is already there it does nothing
and returns the stored summary with ``skipped=True``. ``run_all`` chains them.

Workdir layout (docs/ARCHITECTURE.md):

    WORKDIR/config.json                 the resolved config; another config's workdir is refused
    WORKDIR/teacher/                    teacher checkpoint (Orbax) + teacher.json (accuracy, params)
    WORKDIR/teacher_outputs/SPLIT.npz   cached embeddings + logits (by example index)
    WORKDIR/statistics.npz, projections.npz (+ projections_VARIANT.npz for ablations)
    WORKDIR/runs/METHOD/seed_K/         checkpoints, metrics.jsonl, TensorBoard events, result.json
    WORKDIR/results.json                {"dataset", "config_name", "teacher": {...}, "runs": [...]}

Teacher-derived artifacts (teacher_outputs, statistics, projections) are stored once,
content-addressed by the config keys they depend on, in ``TEACHER/derived/`` and hard-linked
into each workdir (:mod:`lelp_jax.store`, :func:`artifact_parts`): sweep points that differ
only in student-side keys share them.

Multi-host: every process runs every stage (sharded compute is collective); only
process 0 writes JSON/npz artifacts. Skips are decided from files every process
can see (a shared filesystem, as Orbax needs anyway).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from lelp_jax import atomic
from lelp_jax.config import ConfigError, base_config, config_to_dict, identity_dict

__all__ = [
    "WorkdirError",
    "Workdir",
    "Env",
    "SubsetSource",
    "STAGES",
    "PRETRAINED",
    "check_workdir",
    "init_workdir",
    "preflight",
    "load_teacher",
    "load_statistics",
    "method_aux",
    "calibrate",
    "artifact_parts",
    "split_diagnostics",
    "stage_teacher",
    "stage_teacher_outputs",
    "stage_statistics",
    "stage_fit",
    "stage_distill",
    "stage_eval",
    "run_stages",
    "run_all",
    "summarize",
    "read_json",
    "is_main_process",
]

# What a workdir may contain that this pipeline wrote (``--force`` deletes exactly these).
_ARTIFACTS = (
    "config.json",
    "teacher",
    "teacher_outputs",
    "statistics.npz",
    "projections.npz",
    "projections_*.npz",
    "runs",
    "results.json",
    "subclass_teacher",
)


class WorkdirError(ConfigError):
    """The workdir cannot be used with this config (a user error, printed without a traceback)."""


class Workdir:
    """Paths of the artifacts in one workdir (no I/O)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def teacher_dir(self) -> Path:
        return self.root / "teacher"

    @property
    def teacher_json(self) -> Path:
        return self.teacher_dir / "teacher.json"

    def teacher_outputs(self, split: str) -> Path:
        return self.root / "teacher_outputs" / f"{split}.npz"

    @property
    def statistics(self) -> Path:
        return self.root / "statistics.npz"

    def projections(self, variant: str = "lelp") -> Path:
        """``projections.npz`` for LELP itself, ``projections_VARIANT.npz`` for an ablation."""
        return self.root / ("projections.npz" if variant == "lelp" else f"projections_{variant}.npz")

    def run_dir(self, method: str, seed: int) -> Path:
        return self.root / "runs" / method / f"seed_{seed}"

    def run_result(self, method: str, seed: int) -> Path:
        return self.run_dir(method, seed) / "result.json"

    @property
    def results(self) -> Path:
        return self.root / "results.json"


def is_main_process() -> bool:
    """Process 0 of a multi-host job (or the only process) writes the JSON artifacts."""
    import jax

    return jax.process_index() == 0


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _describe_difference(stored: Mapping, wanted: Mapping, limit: int = 3) -> str:
    a, b = _flat(stored), _flat(wanted)
    keys = sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))
    parts = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys[:limit]]
    more = f", and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(parts) + more


def _fill_missing(stored: Mapping, wanted: Mapping, defaults: Mapping) -> dict[str, Any]:
    """``stored`` plus each key it lacks that ``wanted`` sets to its ``defaults`` value (nested).

    Such a key did not exist when the workdir was made; at its default it changes
    nothing. A key set to anything else, or one without a default (free-form
    sections such as ``model_kwargs``), stays missing, so the difference is reported.
    """
    out = dict(stored)
    for k, v in wanted.items():
        if k not in defaults:
            continue
        if k not in out:
            if v == defaults[k]:
                out[k] = v
        elif isinstance(v, Mapping) and isinstance(out[k], Mapping) and isinstance(defaults[k], Mapping):
            out[k] = _fill_missing(out[k], v, defaults[k])
    return out


def check_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
    """Refuse a workdir made by a different config; read-only (touches nothing).

    Configs agree when ``identity_dict`` agrees: they may differ only in
    ``methods``, ``seeds``, ``mesh`` and ``distributed``. A key that the stored
    config lacks (the workdir predates it) is accepted at its ``base_config()``
    default, so upgrading lelp_jax does not orphan finished workdirs.
    """
    wd = Workdir(workdir)
    if wd.root.exists() and not wd.root.is_dir():
        raise WorkdirError(f"workdir {str(wd.root)!r} exists and is not a directory; pick another --workdir.")
    if not wd.config_json.exists():
        return
    try:
        stored = read_json(wd.config_json)
    except (OSError, json.JSONDecodeError) as e:
        raise WorkdirError(
            f"workdir {str(wd.root)!r} has an unreadable config.json ({e}); use a new --workdir or --force."
        ) from None
    stored = _fill_missing(stored, config_to_dict(config), config_to_dict(base_config()))
    if identity_dict(stored) != identity_dict(config):
        raise WorkdirError(
            f"workdir {str(wd.root)!r} was made by config {stored.get('name', '?')!r} with other settings "
            f"({_describe_difference(identity_dict(stored), identity_dict(config))}); "
            "use a new --workdir or --force."
        )


def init_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, force: bool = False) -> Workdir:
    """Check the workdir (unless ``force``), then create it and store ``config.json``.

    ``force`` deletes the artifacts this pipeline writes (and nothing else) before
    starting over. A matching workdir keeps its artifacts; its config.json is
    rewritten with the current methods/seeds.
    """
    wd = Workdir(workdir)
    if not force:
        check_workdir(config, wd.root)
    if is_main_process():
        if force and wd.root.is_dir():
            for pattern in _ARTIFACTS:
                for target in wd.root.glob(pattern):
                    if target.is_dir():
                        shutil.rmtree(target)
                    else:
                        target.unlink()
        wd.root.mkdir(parents=True, exist_ok=True)
        wanted = config_to_dict(config)
        if not (wd.config_json.exists() and read_json(wd.config_json) == wanted):
            atomic.write_json(wd.config_json, wanted)
    _sync("init_workdir")
    return wd


def _sync(name: str) -> None:
    """Barrier across processes (no-op with one), so later readers see process 0's files."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"lelp_pipeline_{name}")


# ----------------------------------------------------------------------------- pre-flight


def teacher_source_dir(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Path:
    """Where the teacher's checkpoints live: ``teacher.checkpoint`` or ``WORKDIR/teacher``.

    ``teacher.checkpoint`` may name a teacher folder (one holding ``checkpoints/``)
    or the root of an earlier workdir (its ``teacher/`` is used).
    """
    if config.teacher.checkpoint:
        path = Path(config.teacher.checkpoint).expanduser()
        if (path / "teacher" / "checkpoints").is_dir() and not (path / "checkpoints").is_dir():
            return path / "teacher"
        return path
    return Workdir(workdir).teacher_dir


def _minilm_variables(model, seed: int):
    from lelp_jax.models import minilm_init_variables

    import jax

    return minilm_init_variables(model, jax.random.PRNGKey(seed))


# teacher.pretrained name -> (model, seed) -> initial variables for fine-tuning.
PRETRAINED: dict[str, Callable[[Any, int], Any]] = {"minilm": _minilm_variables}


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
    from lelp_jax.methods import METHODS

    unknown = [m for m in config.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"method(s) {unknown} are not available in this installation; available: "
                          f"{', '.join(METHODS)}.")
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
        from lelp_jax.precomputed import check_methods

        check_methods(config.methods)
        (env or Env(config)).precomputed()


# ----------------------------------------------------------------------------- shared context


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

    @property
    def mesh(self):
        if self._mesh is None:
            from lelp_jax import sharding

            self._mesh = sharding.make_mesh(self.config.mesh)
        return self._mesh

    def split(self, name: str):
        """``(source, info)`` of ``train``, ``validation`` or ``test``, loaded once.

        A dataset without a validation split (your own files, some catalogue
        datasets) gets one carved from train: a seeded ``data.val_fraction`` share
        (``data.split_seed``), removed from the train split. With ``data.features``
        set, every split gains the frozen encoder's ``features`` (``lelp_jax.data.features``).
        """
        if name not in self._splits:
            if name in ("train", "validation") and not _has_split(self.config.data, "validation"):
                loaded = _carve_validation(self.config.data)
                self._carved = {k: src.parent_rows for k, (src, _) in loaded.items()}
            else:
                from lelp_jax.data import load_split

                loaded = {name: load_split(_data_config(self.config.data), name)}
            if self.config.data.features:
                from lelp_jax.data.features import feature_view

                loaded = {k: (feature_view(src, data_config=_data_config(self.config.data), split=k,
                                           dataset=info.name), info) for k, (src, info) in loaded.items()}
            self._splits.update(loaded)
        return self._splits[name]

    @property
    def info(self):
        return self.split("train")[1]

    def precomputed(self):
        """The validated exported teacher outputs (``teacher.model='precomputed'``), loaded once."""
        if self._precomputed is None:
            from lelp_jax.precomputed import SPLITS, SplitRows, load_precomputed_teacher

            rows = {}
            for name in SPLITS:
                source = self.split(name)[0]
                if name in self._carved:  # validation carved from train: rows of the whole train file
                    rows[name] = SplitRows("train", *self._carved[name])
                else:
                    rows[name] = SplitRows(name, len(source))
            self._precomputed = load_precomputed_teacher(
                self.config.teacher.outputs, splits=rows, num_classes=self.info.num_classes,
                labels_of=lambda name: _train_labels(self.split(name)[0])[0])
        return self._precomputed


def _data_config(data: ml_collections.ConfigDict) -> dict[str, Any]:
    """The data section as the data layer reads it (unset/empty ``files`` entries dropped)."""
    d = data.to_dict()
    d["files"] = {k: v for k, v in (d.get("files") or {}).items() if v}
    return d


def _has_split(data: ml_collections.ConfigDict, split: str) -> bool:
    if data.get("num_folds", 0):  # k-fold carves its own validation (lelp_jax.data.folds)
        return True
    if data.name == "local":
        return bool(data.files.get(split))
    from lelp_jax.data import catalogue

    entry = catalogue.CATALOGUE.get(data.name)
    return entry is None or split in entry["splits"]


class SubsetSource:
    """Rows ``rows`` of a source, re-indexed 0..n-1 (``index`` = position in the subset).

    Keeps ``lengths``/``buckets`` of text sources so batches still pad to buckets.
    """

    def __init__(self, parent: Any, rows: Any):
        import numpy as np

        self._parent = parent
        self._rows = np.asarray(rows, np.int64)
        lengths = getattr(parent, "lengths", None)
        if lengths is not None:
            self.lengths = np.asarray(lengths)[self._rows]
        if getattr(parent, "buckets", None) is not None:
            self.buckets = parent.buckets

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def parent_rows(self) -> tuple[int, Any]:
        """(size of the parent, the parent row of each subset position)."""
        return len(self._parent), self._rows

    def __getitem__(self, i: int) -> dict:
        import numpy as np

        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a source of {len(self)} examples")
        out = dict(self._parent[int(self._rows[i])])
        out["index"] = np.int64(i)
        return out


def _carve_validation(data: ml_collections.ConfigDict) -> dict[str, Any]:
    """``{'train': ..., 'validation': ...}``: a seeded random ``val_fraction`` of train held out."""
    import numpy as np

    from lelp_jax.data import load_split

    source, info = load_split(_data_config(data), "train")
    n = len(source)
    n_val = int(round(n * float(data.val_fraction)))
    if n_val < 1 or n_val >= n:
        raise ConfigError(
            f"dataset {data.name!r} has no validation split and data.val_fraction={data.val_fraction} of its "
            f"{n} train examples leaves no validation or no train rows; set data.val_fraction in (0, 1) or give "
            "a validation file (data.files.validation)."
        )
    perm = np.random.default_rng(int(data.split_seed)).permutation(n)
    return {"validation": (SubsetSource(source, np.sort(perm[:n_val])), info),
            "train": (SubsetSource(source, np.sort(perm[n_val:])), info)}


def _model_kwargs(section: ml_collections.ConfigDict) -> dict[str, Any]:
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in section.model_kwargs.to_dict().items()}


def _teacher_model(config: ml_collections.ConfigDict, num_classes: int):
    from lelp_jax.models import build_model

    return build_model(config.teacher.model, num_outputs=num_classes, **_model_kwargs(config.teacher))


def teacher_identity(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
    """A string naming the teacher (model + where its weights, or its exported outputs, are)."""
    if config.teacher.model == "precomputed":
        return f"precomputed@{Path(config.teacher.outputs.train).expanduser().resolve()}"
    return f"{config.teacher.model}@{teacher_source_dir(config, workdir).resolve()}"


_HOW = {"new": "computed", "shared": "shared (content-addressed)", "local": "already here"}


def _store(config: ml_collections.ConfigDict, workdir: str | os.PathLike):
    """The content-addressed store of the teacher's derived artifacts: ``TEACHER/derived/`` (:mod:`lelp_jax.store`)."""
    from lelp_jax.store import Store

    return Store(teacher_source_dir(config, workdir) / "derived")


def artifact_parts(config: ml_collections.ConfigDict, workdir: str | os.PathLike, kind: str,
                   method: Any = None) -> dict[str, Any]:
    """Exactly the config keys a teacher-derived artifact depends on (hashed into its stored name).

    ``teacher_outputs``: the teacher (identity = model @ weights folder, model kwargs), the data
    section, the compute dtype. ``statistics``: those + the fit labels + whether the cached
    outputs or the online teacher fed them. ``projections``: the statistics' keys + the method,
    its fit options (S, null space, rotation, directions, seed), ``lelp.standardize`` and
    ``lelp.target_entropy`` (the calibration's scores and target). Student-side keys (beta, tau,
    alpha, kd.*, train.*, student.*) are in none of them.
    """
    outputs = {"teacher": teacher_identity(config, workdir),
               "teacher_model_kwargs": config.teacher.model_kwargs.to_dict(),
               "data": config_to_dict(config)["data"], "compute_dtype": config.train.compute_dtype}
    if kind == "teacher_outputs":
        return outputs
    stats = {**outputs, "fit_labels": config.lelp.fit_labels, "teacher_cache": bool(config.teacher_cache)}
    if kind == "statistics":
        return stats
    if kind == "projections":
        return {"statistics": stats, "method": method.name, "fit": dict(method.fit_options(config)),
                "standardize": bool(config.lelp.standardize), "target_entropy": config.lelp.target_entropy}
    raise ValueError(f"artifact_parts: unknown kind {kind!r}.")


def load_teacher(config: ml_collections.ConfigDict, workdir: str | os.PathLike, env: Env):
    """The trained teacher as ``(model, variables)`` (best-validation weights), on the mesh: replicated,
    or with ``mesh.model > 1`` its large kernels split along ``'model'`` (``sharding.param_shardings``)."""
    from lelp_jax import train

    model = _teacher_model(config, env.info.num_classes)
    variables = train.load_variables(str(teacher_source_dir(config, workdir)), which="best", mesh=env.mesh,
                                     shard_params=True)
    return model, variables


# ----------------------------------------------------------------------------- stages


def stage_teacher(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, env: Env | None = None) -> dict:
    """Train the teacher (method 'ce' on ``teacher.model``) or take ``teacher.checkpoint``.

    Writes ``WORKDIR/teacher/teacher.json``: model, params, test/val accuracy, where
    the weights are, the data section it was measured on. A trained teacher keeps its
    Orbax checkpoints in ``WORKDIR/teacher/checkpoints`` (and resumes there if
    interrupted). A loaded teacher is evaluated only when its own teacher.json does not
    already hold its accuracy on this data (:func:`_recorded_teacher`).
    """
    wd = Workdir(workdir)
    if wd.teacher_json.exists():
        return {**read_json(wd.teacher_json), "skipped": True}
    env = env or Env(config)
    from lelp_jax import train
    from lelp_jax.methods import get_method
    from lelp_jax.models import count_params

    train_src, info = env.split("train")
    val_src, _ = env.split("validation")
    test_src, _ = env.split("test")
    t0 = time.perf_counter()
    if config.teacher.model == "precomputed":
        record = _precomputed_record(config, env)
    elif config.teacher.checkpoint and _recorded_teacher(config, workdir) is not None:
        known = _recorded_teacher(config, workdir)
        record = {"source": "checkpoint", "checkpoint": str(teacher_source_dir(config, workdir).resolve()),
                  **{k: known[k] for k in ("test_accuracy", "val_accuracy", "params")}, "evaluated": False}
    elif config.teacher.checkpoint:
        model = _teacher_model(config, info.num_classes)
        src = teacher_source_dir(config, workdir)
        variables = train.load_variables(str(src), which="best", mesh=env.mesh)
        ce = get_method("ce")
        eval_step = train.make_eval_step(model=model, method=ce, num_classes=info.num_classes, method_cfg=config,
                                         mesh=env.mesh)
        test_acc = _evaluate_split(train, eval_step, variables, test_src, config, env)
        val_acc = _evaluate_split(train, eval_step, variables, val_src, config, env)
        record = {"source": "checkpoint", "checkpoint": str(src.resolve()), "test_accuracy": test_acc,
                  "val_accuracy": val_acc, "params": count_params(variables["params"])}
    else:
        model = _teacher_model(config, info.num_classes)
        init = {}
        if config.teacher.pretrained:
            init = {"init_variables": PRETRAINED[config.teacher.pretrained](model, int(config.teacher.seed))}
        # The teacher's run sees teacher.train as its `train` section (methods read e.g.
        # train.label_smoothing from there).
        teacher_cfg = ml_collections.ConfigDict(config.to_dict())
        teacher_cfg.train = config.teacher.train.to_dict()
        teacher_cfg.lock()
        result = train.train_and_evaluate(
            **init, model=model, method=get_method("ce"), cfg=teacher_cfg, train_cfg=teacher_cfg.train,
            train_source=train_src, val_source=val_src, test_source=test_src, mesh=env.mesh,
            workdir=str(wd.teacher_dir), seed=int(config.teacher.seed), num_classes=info.num_classes,
            progress_desc="teacher",
        )
        record = {"source": "trained", "checkpoint": str(wd.teacher_dir.resolve()),
                  "test_accuracy": result["test_accuracy_best_val"], "test_accuracy_last": result["test_accuracy_last"],
                  "val_accuracy": result["best_val_accuracy"], "params": result["student_params"],
                  "steps": result["steps"]}
    record.update(model=config.teacher.model, model_kwargs=config.teacher.model_kwargs.to_dict(),
                  identity=teacher_identity(config, workdir), dataset=config.data.name,
                  data=config_to_dict(config)["data"], num_classes=info.num_classes,
                  seconds=time.perf_counter() - t0)
    if is_main_process():
        atomic.write_json(wd.teacher_json, record)
    _sync("teacher")
    return {**record, "skipped": False}


def _precomputed_record(config: ml_collections.ConfigDict, env: Env) -> dict:
    """teacher.json of exported outputs: accuracy of their logits' argmax on each split, the head's size."""
    teacher = env.precomputed()
    acc = {name: teacher.accuracy(name, _train_labels(env.split(name)[0])[0]) for name in teacher.caches}
    return {"source": "precomputed", "outputs": dict(teacher.paths), "test_accuracy": acc["test"],
            "val_accuracy": acc["validation"], "train_accuracy": acc["train"], "params": None,
            "embedding_dim": int(teacher.kernel.shape[0])}


def _recorded_teacher(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict | None:
    """The loaded teacher's own teacher.json when it holds test/val accuracy and params measured on
    this config's data (its recorded ``data`` section, or, for a record older than that field, the
    data section of the config.json of the workdir it was trained in), else None."""
    src = teacher_source_dir(config, workdir)
    try:
        rec = read_json(src / "teacher.json")
    except (OSError, json.JSONDecodeError):
        return None
    if any(rec.get(k) is None for k in ("test_accuracy", "val_accuracy", "params")):
        return None
    data = config_to_dict(config)["data"]
    if "data" in rec:
        return rec if rec["data"] == data else None
    try:
        made_by = read_json(src.parent / "config.json")
    except (OSError, json.JSONDecodeError):
        return None
    return rec if made_by.get("data") == data else None


def _evaluate_split(train, eval_step, variables, source, config, env) -> float:
    from lelp_jax.data import make_iterator

    import jax

    batches = make_iterator(source, global_batch_size=int(config.data.eval_batch_size), seed=0, shuffle=False,
                            num_epochs=1, process_index=jax.process_index(), process_count=jax.process_count(),
                            drop_remainder=False)
    return train.evaluate(eval_step, variables["params"], variables.get("batch_stats", {}), batches, env.mesh)


def _methods(config: ml_collections.ConfigDict):
    from lelp_jax.methods import get_method

    return [get_method(m) for m in config.methods]


def _teacher_cache(config: ml_collections.ConfigDict, workdir: str | os.PathLike, env: Env, split: str = "train"):
    """The cached teacher outputs of ``split`` when ``teacher_cache`` is on, else None.

    A precomputed teacher's exported outputs are such a cache, whatever ``teacher_cache`` says.
    """
    if config.teacher.model == "precomputed":
        return env.precomputed().caches[split]
    if not config.teacher_cache:
        return None
    from lelp_jax.teacher import load_teacher_cache

    return load_teacher_cache(str(Workdir(workdir).teacher_outputs(split)))


def stage_teacher_outputs(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                          env: Env | None = None) -> dict:
    """Cached mode (``teacher_cache=True``): teacher (embedding, logits) of every train example.

    Written once to ``WORKDIR/teacher_outputs/train.npz`` (row = example ``index``);
    statistics, k-means and every student run read it instead of running the
    teacher again. Students still read their own inputs from the dataset.
    """
    wd = Workdir(workdir)
    if config.teacher.model == "precomputed":
        return {"not_needed": True, "message": "precomputed teacher: its outputs are read from teacher.outputs"}
    if not config.teacher_cache:
        return {"not_needed": True, "message": "teacher_cache is off; teacher runs inside each step"}
    path = wd.teacher_outputs("train")
    if path.exists():
        return {"skipped": True, "message": str(path)}
    env = env or Env(config)
    from lelp_jax.teacher import cache_teacher_outputs

    def produce(target: Path) -> None:
        model, variables = load_teacher(config, workdir, env)
        target.parent.mkdir(parents=True, exist_ok=True)
        cache_teacher_outputs(model.apply, variables, env.split("train")[0], mesh=env.mesh,
                              batch_size=int(config.data.eval_batch_size), path=str(target),
                              compute_dtype=config.train.compute_dtype)

    how = _store(config, workdir).provide(path, "teacher_outputs", artifact_parts(config, workdir, "teacher_outputs"),
                                          produce, main=is_main_process())
    _sync("teacher_outputs")
    return {"skipped": how == "shared", "message": f"{_HOW[how]} -> {path}"}


def stage_statistics(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                     env: Env | None = None) -> dict:
    """Per-class moments (count, mean, M2) of the teacher embedding over the train split.

    Labels are the ground truth or the teacher's argmax (``lelp.fit_labels``).
    Written to ``WORKDIR/statistics.npz`` only when a requested method fits projections.
    """
    import numpy as np

    wd = Workdir(workdir)
    if not any(m.needs_projections for m in _methods(config)):
        return {"not_needed": True, "message": "no requested method fits projections"}
    if wd.statistics.exists():
        return {"skipped": True, "message": str(wd.statistics)}
    env = env or Env(config)

    def produce(target: Path) -> None:
        from lelp_jax import sharding
        from lelp_jax.teacher import accumulate_moments

        source, info = env.split("train")
        cache = _teacher_cache(config, workdir, env)
        model, variables = (None, None) if cache is not None else load_teacher(config, workdir, env)
        moments = accumulate_moments(model.apply if model is not None else None, variables, source, mesh=env.mesh,
                                     num_classes=info.num_classes, batch_size=int(config.data.eval_batch_size),
                                     fit_labels=config.lelp.fit_labels, cache=cache,
                                     compute_dtype=config.train.compute_dtype)
        host = sharding.to_host(moments)
        meta = {"fit_labels": config.lelp.fit_labels, "teacher": teacher_identity(config, workdir),
                "split": "train", "dataset": config.data.name}
        if is_main_process():
            atomic.save_npz(target, count=np.asarray(host.count), mean=np.asarray(host.mean),
                            m2=np.asarray(host.m2), metadata=np.array(json.dumps(meta)))

    how = _store(config, workdir).provide(wd.statistics, "statistics", artifact_parts(config, workdir, "statistics"),
                                          produce, main=is_main_process())
    _sync("statistics")
    with np.load(wd.statistics, allow_pickle=False) as f:
        counts, dim = ", ".join(f"{int(c)}" for c in f["count"]), f["mean"].shape[-1]
    return {"skipped": how == "shared", "message": f"{_HOW[how]}: class counts [{counts}], D={dim} -> {wd.statistics}"}


def load_statistics(workdir: str | os.PathLike):
    """The ``ClassMoments`` stored by ``stage_statistics``."""
    import jax.numpy as jnp
    import numpy as np

    from lelp_jax.statistics import ClassMoments

    with np.load(Workdir(workdir).statistics, allow_pickle=False) as f:
        return ClassMoments(count=jnp.asarray(f["count"]), mean=jnp.asarray(f["mean"]), m2=jnp.asarray(f["m2"]))


def stage_fit(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, env: Env | None = None) -> dict:
    """Fit the projections of every requested projection method from ``statistics.npz``.

    ``lelp`` -> ``projections.npz``; an ablation (``random``, ``pca``) ->
    ``projections_METHOD.npz``, each with the method's own fit options. Settings
    stored with them (what the artifact depends on, not the loss-time beta, tau,
    alpha): S, standardize, target entropy, seed, label source, teacher identity.
    Points of a sweep with the same fit settings share one stored fit (:mod:`lelp_jax.store`).
    """
    wd = Workdir(workdir)
    todo = [m for m in _methods(config) if m.needs_projections]
    if not todo:
        return {"not_needed": True, "message": "no requested method fits projections"}
    missing = [m for m in todo if not wd.projections(m.name).exists()]
    if not missing:
        return {"skipped": True, "message": ", ".join(str(wd.projections(m.name)) for m in todo)}
    env = env or Env(config)
    from lelp_jax.projections import fit_projections, save_projections

    inputs: dict[str, Any] = {}

    def fit_inputs(method) -> tuple[Any, Any]:
        """(statistics, head weights or None when the method keeps the row space), loaded once and
        only when a fit is computed."""
        if "moments" not in inputs:
            inputs["moments"] = load_statistics(workdir)
        if not dict(method.fit_options(config)).get("null_space", True):
            return inputs["moments"], None
        if "weights" not in inputs:
            inputs["weights"] = _head_weights(config, workdir, env)
        return inputs["moments"], inputs["weights"]

    settings = {"standardize": config.lelp.standardize, "target_entropy": config.lelp.target_entropy,
                "fit_labels": config.lelp.fit_labels, "teacher": teacher_identity(config, workdir),
                "dataset": config.data.name}
    written, store = [], _store(config, workdir)
    for method in missing:
        def produce(target: Path, method=method) -> None:
            moments, weights = fit_inputs(method)
            proj = fit_projections(moments, classifier_weights=weights, settings={**settings, "method": method.name},
                                   **dict(method.fit_options(config)))
            proj = calibrate(method, proj, config, workdir, env)
            if is_main_process():
                save_projections(target, proj)

        how = store.provide(wd.projections(method.name), "projections",
                            artifact_parts(config, workdir, "projections", method), produce, main=is_main_process())
        opts = dict(method.fit_options(config))
        written.append(f"{method.name} ({_HOW[how]}; S={opts.get('num_subclasses')}, "
                       f"null_space={opts.get('null_space')}, rotate={opts.get('rotate')}, {opts.get('directions')})")
    _sync("fit")
    return {"skipped": False, "message": "; ".join(written)}


def _head_weights(config, workdir, env: Env):
    """The teacher head's W = kernel^T (C, D) (a precomputed teacher's own head), on the host: a fit whose
    inputs are replicated over a multi-device CPU mesh runs the eigh on every device at once and was seen
    to deadlock (8 emulated devices)."""
    if config.teacher.model == "precomputed":
        return env.precomputed().head_weights()[0]
    from lelp_jax import sharding, train
    from lelp_jax.models import head_weights

    variables = train.load_variables(str(teacher_source_dir(config, workdir)), which="best", mesh=env.mesh)
    return sharding.to_host(head_weights(variables)[0])


def _all_train_outputs(config, workdir, env: Env):
    """(embeddings (N, D), logits (N, C)) of the teacher on every train example (cache or one pass;
    kept on ``env`` so the fits, the calibration and the diagnostics of one invocation share it)."""
    import numpy as np

    memo = getattr(env, "_train_outputs", None)
    if memo is not None and memo[0] == str(workdir):
        return memo[1], memo[2]
    cache = _teacher_cache(config, workdir, env)
    if cache is None:
        from lelp_jax.teacher import cache_teacher_outputs

        model, variables = load_teacher(config, workdir, env)
        cache = cache_teacher_outputs(model.apply, variables, env.split("train")[0], mesh=env.mesh,
                                      batch_size=int(config.data.eval_batch_size),
                                      compute_dtype=config.train.compute_dtype)
    emb, logits = np.asarray(cache.embeddings), np.asarray(cache.logits)
    env._train_outputs = (str(workdir), emb, logits)
    return emb, logits


def _fit_labels(config, labels, logits):
    """The labels every fit uses: ground truth, or the teacher's argmax (``lelp.fit_labels``)."""
    import numpy as np

    if config.lelp.fit_labels == "teacher":
        return np.argmax(np.asarray(logits), axis=-1).astype(np.int32)
    return labels


def _in_chunks(fn: Callable[[Any], Any], embeddings, rows: int = 4096):
    """``fn`` on row chunks of ``embeddings``, concatenated on the host (bounds the (B, C, D) intermediates)."""
    import numpy as np

    return np.concatenate([np.asarray(fn(embeddings[i:i + rows])) for i in range(0, len(embeddings), rows)])


def calibrate(method, aux, config: ml_collections.ConfigDict, workdir: str | os.PathLike, env: Env):
    """``aux`` with per-class ``betas`` solved for ``lelp.target_entropy`` on the train split (unchanged
    when it is None or the method has no scores): :func:`lelp_jax.sharpness.calibrate_betas` on the
    method's scores of every train example, each calibrating its fit-label class."""
    if config.lelp.target_entropy is None or method.scores is None:
        return aux
    import jax
    import jax.numpy as jnp

    from lelp_jax.sharpness import calibrate_betas

    emb, logits = _all_train_outputs(config, workdir, env)
    labels = _fit_labels(config, _train_labels(env.split("train")[0])[0], logits)
    scores = jax.jit(lambda a, h: method.scores(a, h, config))
    z = _in_chunks(lambda h: scores(aux, jnp.asarray(h)), emb)
    betas = calibrate_betas(z, labels, target_entropy=float(config.lelp.target_entropy))
    return aux.replace(betas=jnp.asarray(betas, jnp.float32))


def _train_labels(source) -> tuple[Any, Any]:
    """(labels, fine labels or None) of every example of a source, in index order."""
    import numpy as np

    rows = [source[i] for i in range(len(source))]
    labels = np.asarray([r["label"] for r in rows], np.int32)
    fine = np.asarray([r["fine_label"] for r in rows], np.int32) if "fine_label" in rows[0] else None
    return labels, fine


def split_diagnostics(method, aux, config: ml_collections.ConfigDict, workdir: str | os.PathLike, env: Env) -> dict:
    """What a splitting method teaches, on the train split (once per method and fit; {} for methods
    that do not split): :func:`lelp_jax.sharpness.split_diagnostics` of the method's split of every
    train example's true class — ``split_entropy``, ``split_top_share``, ``split_nmi`` (None without
    fine labels) — and ``split_betas``, the per-class temperatures calibrated to ``lelp.target_entropy``
    (None when the split used one configured beta)."""
    if method.split is None:
        return {}
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lelp_jax.sharpness import split_diagnostics as diagnose

    emb, _ = _all_train_outputs(config, workdir, env)
    labels, fine = _train_labels(env.split("train")[0])
    split = jax.jit(lambda a, h, b: method.split(a, h, b, config))
    rows = 4096
    parts = []
    for i in range(0, len(emb), rows):
        batch = {"label": jnp.asarray(labels[i:i + rows])}
        if fine is not None:
            batch["fine_label"] = jnp.asarray(fine[i:i + rows])
        parts.append(np.asarray(split(aux, jnp.asarray(emb[i:i + rows]), batch)))
    out = diagnose(np.concatenate(parts), labels, fine)
    betas = getattr(aux, "betas", None)
    out["split_betas"] = None if betas is None else np.asarray(betas, np.float64).tolist()
    return out


def method_aux(method, config: ml_collections.ConfigDict, workdir: str | os.PathLike, env: Env) -> Any:
    """What the method's train step gets as ``aux``: its fitted artifact (or None).

    ``projections``: the method's projections file; ``kmeans``: per-class k-means
    of the teacher's train embeddings (S = lelp.num_subclasses, seeded by lelp.seed);
    ``oracle``: the fine-label slot table of the train split (one slot per fine label: S = the
    most fine labels in a class, whatever lelp.num_subclasses is);
    ``agglomerative``: per-class Ward clusters' means on at most 2,000 train embeddings
    per class (scikit-learn, host); ``subclass_teacher``: the variables of the
    Subclass-Distillation teacher
    (:func:`subclass_teacher_variables`); ``subspace_kmeans``: the ``lelp_kmeans`` fit
    (:func:`_fit_subspace_kmeans`). With ``lelp.target_entropy`` set, k-means-style
    fits get their per-class betas here (:func:`calibrate`); projections got them at fit time.
    """
    import jax

    if method.fit is None:
        return None
    if method.fit == "projections":
        from lelp_jax.projections import load_projections

        return load_projections(Workdir(workdir).projections(method.name))
    source, info = env.split("train")
    if method.fit == "kmeans":
        from lelp_jax.clustering import fit_class_kmeans

        emb, logits = _all_train_outputs(config, workdir, env)
        labels = _fit_labels(config, _train_labels(source)[0], logits)
        fit = fit_class_kmeans(jax.random.PRNGKey(int(config.lelp.seed)), emb, labels,
                               num_classes=info.num_classes, num_subclasses=int(config.lelp.num_subclasses),
                               num_iters=int(config.kmeans.num_iters))
        return calibrate(method, fit, config, workdir, env)
    if method.fit == "oracle":
        from lelp_jax.clustering import oracle_slots

        labels, fine = _train_labels(source)
        if fine is None or info.num_fine_classes is None:
            raise ConfigError(f"method 'oracle' needs fine labels, and dataset {config.data.name!r} has none; "
                              "drop it from --methods.")
        return oracle_slots(labels, fine, num_classes=info.num_classes, num_fine=info.num_fine_classes)
    if method.fit == "agglomerative":
        from lelp_jax.clustering import fit_agglomerative_centroids

        emb, logits = _all_train_outputs(config, workdir, env)
        labels = _fit_labels(config, _train_labels(source)[0], logits)
        fit = fit_agglomerative_centroids(emb, labels, num_classes=info.num_classes,
                                          num_subclasses=int(config.lelp.num_subclasses), seed=int(config.lelp.seed))
        return calibrate(method, fit, config, workdir, env)
    if method.fit == "subspace_kmeans":
        return calibrate(method, _fit_subspace_kmeans(config, workdir, env), config, workdir, env)
    if method.fit == "subclass_teacher":
        return subclass_teacher_variables(config, workdir, env)
    raise ValueError(f"method {method.name!r} asks for fit {method.fit!r}, which the pipeline does not build.")


def _fit_subspace_kmeans(config: ml_collections.ConfigDict, workdir: str | os.PathLike, env: Env):
    """The ``lelp_kmeans`` fit (:mod:`lelp_jax.subspace_kmeans`) on the teacher's train embeddings: class
    moments (fit labels, streamed in chunks), the top-``lelp_kmeans.subspace_dim`` null-space principal
    directions (``lelp.null_space``; no rotation), then k-means with ``lelp.num_subclasses`` centroids
    (``kmeans.num_iters``, seed ``lelp.seed``) in each class's subspace."""
    import jax
    import jax.numpy as jnp

    from lelp_jax.projections import fit_projections
    from lelp_jax.statistics import init_moments, update_moments
    from lelp_jax.subspace_kmeans import fit_subspace_kmeans

    emb, logits = _all_train_outputs(config, workdir, env)
    info = env.info
    labels = _fit_labels(config, _train_labels(env.split("train")[0])[0], logits)
    moments = init_moments(info.num_classes, emb.shape[1])
    for i in range(0, len(emb), 4096):
        moments = update_moments(moments, jnp.asarray(emb[i:i + 4096], jnp.float32), jnp.asarray(labels[i:i + 4096]))
    null_space = bool(config.lelp.null_space)
    k, c, d = int(config.lelp_kmeans.subspace_dim), info.num_classes, emb.shape[1]
    if k > d - (c if null_space else 0):
        raise ConfigError(f"lelp_kmeans.subspace_dim={k} exceeds the teacher embedding's "
                          f"{'null space (D - C = ' + str(d - c) + ')' if null_space else 'dimension D = ' + str(d)}; "
                          f"lower it to <= {d - c if null_space else d}.")
    subspace = fit_projections(moments, classifier_weights=_head_weights(config, workdir, env) if null_space else None,
                               num_subclasses=int(config.lelp_kmeans.subspace_dim), key=int(config.lelp.seed),
                               null_space=null_space, rotate=False, directions="pca")
    return fit_subspace_kmeans(jax.random.PRNGKey(int(config.lelp.seed)), subspace, emb, labels,
                               num_subclasses=int(config.lelp.num_subclasses), num_iters=int(config.kmeans.num_iters))


def subclass_teacher_variables(config: ml_collections.ConfigDict, workdir: str | os.PathLike, env: Env) -> Any:
    """The Subclass-Distillation teacher's best-validation variables, trained once in ``WORKDIR/subclass_teacher/``.

    ``teacher.model`` with a C*S head (S = ``subclass.num_subclasses``), trained like
    the teacher (``teacher.train``, ``teacher.seed``, from ``teacher.pretrained`` weights
    when set, else from scratch as in Müller et al. 2020) with the loss of
    ``methods.SUBCLASS_TEACHER`` (class CE on logsumexp-aggregated subclass logits + the
    auxiliary loss). Resumable (its own Orbax checkpoints); its ``result.json`` (class
    accuracy, params) marks it done.
    """
    from lelp_jax import train
    from lelp_jax.methods import SUBCLASS_TEACHER, subclass_teacher_model

    if config.teacher.model == "precomputed":
        from lelp_jax.precomputed import check_methods

        check_methods(["subclass"])
    folder = Workdir(workdir).root / "subclass_teacher"
    if not (folder / "result.json").exists():
        train_src, info = env.split("train")
        val_src, _ = env.split("validation")
        test_src, _ = env.split("test")
        model = subclass_teacher_model(config, info.num_classes)
        init = {}
        if config.teacher.pretrained:
            init = {"init_variables": PRETRAINED[config.teacher.pretrained](model, int(config.teacher.seed))}
        teacher_cfg = ml_collections.ConfigDict(config.to_dict())  # its `train` section is teacher.train
        teacher_cfg.train = config.teacher.train.to_dict()
        teacher_cfg.lock()
        train.train_and_evaluate(**init, model=model, method=SUBCLASS_TEACHER, cfg=teacher_cfg,
                                 train_cfg=teacher_cfg.train, train_source=train_src, val_source=val_src,
                                 test_source=test_src, mesh=env.mesh, workdir=str(folder),
                                 seed=int(config.teacher.seed), num_classes=info.num_classes,
                                 progress_desc="subclass teacher")
        _sync("subclass_teacher")
    return train.load_variables(str(folder), which="best", mesh=env.mesh)


def stage_distill(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                  methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
                  overrides: Mapping[str, Any] | None = None, env: Env | None = None,
                  log: Callable[[str], None] | None = None) -> dict:
    """One student run per method x seed under ``WORKDIR/runs/METHOD/seed_K`` (``train_and_evaluate``).

    A run with a ``result.json`` is skipped; an interrupted one resumes from its
    last checkpoint. The teacher runs inside the step (online) or its cached
    outputs are looked up by example index (``teacher_cache``). Each result
    records the overrides, the teacher's accuracy and size.
    """
    wd = Workdir(workdir)
    methods = list(config.methods if methods is None else methods)
    seeds = [int(x) for x in (config.seeds if seeds is None else seeds)]
    todo = [(m, s) for m in methods for s in seeds if not wd.run_result(m, s).exists()]
    if not todo:
        return {"skipped": True, "message": f"{len(methods) * len(seeds)} runs already finished"}
    env = env or Env(config)
    from lelp_jax import train
    from lelp_jax.methods import get_method
    from lelp_jax.models import build_model

    train_src, info = env.split("train")
    val_src, _ = env.split("validation")
    test_src, _ = env.split("test")
    teacher = read_json(wd.teacher_json)
    extra = {"overrides": dict(overrides or {}), "teacher_params": teacher.get("params"),
             "teacher_test_accuracy": teacher.get("test_accuracy"), "dataset": config.data.name,
             "config_name": config.name}
    teacher_model = teacher_variables = cache = None
    done = []
    for name in dict.fromkeys(m for m, _ in todo):
        method = get_method(name)
        if method.needs_fine_labels and info.num_fine_classes is None:
            raise ConfigError(f"method {name!r} needs fine labels, and dataset {config.data.name!r} has none; "
                              "drop it from --methods.")
        if method.needs_teacher and teacher_model is None and cache is None:
            cache = _teacher_cache(config, workdir, env)
            if cache is None:
                teacher_model, teacher_variables = load_teacher(config, workdir, env)
        aux = method_aux(method, config, workdir, env)
        method_extra = {**extra, **split_diagnostics(method, aux, config, workdir, env)}
        student = build_model(config.student.model, num_outputs=method.student_outputs(info.num_classes, config, aux),
                              **_model_kwargs(config.student))
        for m, seed in todo:
            if m != name:
                continue
            t0 = time.perf_counter()
            result = train.train_and_evaluate(
                model=student, method=method, cfg=config, train_source=train_src, val_source=val_src,
                test_source=test_src, mesh=env.mesh, workdir=str(wd.run_dir(name, seed)), seed=seed,
                num_classes=info.num_classes,
                teacher_apply=teacher_model.apply if (method.needs_teacher and teacher_model is not None) else None,
                teacher_variables=teacher_variables if method.needs_teacher and cache is None else None,
                teacher_cache=cache if method.needs_teacher else None, aux=aux, record_extra=method_extra,
            )
            done.append(f"{name}/seed_{seed}")
            if log is not None:
                log(f"{name}/seed_{seed}: test acc {100 * result['test_accuracy_best_val']:.1f}% (best val), "
                    f"{100 * result['test_accuracy_last']:.1f}% (last), {time.perf_counter() - t0:.1f} s")
    _sync("distill")
    return {"skipped": False, "message": f"{len(done)} runs trained"}


def _run_order(config: ml_collections.ConfigDict, method: str, seed: int) -> tuple:
    methods = list(config.methods)
    return (methods.index(method) if method in methods else len(methods), method, seed)


def stage_eval(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
               methods: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
               env: Env | None = None) -> dict:
    """Aggregate every finished run into ``WORKDIR/results.json`` (rewritten each time).

    ``{"dataset", "config_name", "teacher": teacher.json, "runs": [result.json, ...]}``,
    runs ordered as ``config.methods`` then by seed. Every requested
    ``methods x seeds`` run must be finished; runs of other methods/seeds already in
    the workdir are kept too.
    """
    del env
    wd = Workdir(workdir)
    methods = list(config.methods if methods is None else methods)
    seeds = list(config.seeds if seeds is None else seeds)
    missing = [f"{m}/seed_{s}" for m in methods for s in seeds if not wd.run_result(m, s).exists()]
    if missing:
        raise WorkdirError(
            f"runs not finished in {str(wd.root)!r}: {', '.join(missing)}; run `lelp distill` (or `lelp run`) first."
        )
    if not wd.teacher_json.exists():
        raise WorkdirError(f"no teacher in {str(wd.root)!r}; run `lelp teacher` (or `lelp run`) first.")
    runs = []
    for path in sorted((wd.root / "runs").glob("*/seed_*/result.json")):
        runs.append(read_json(path))
    runs.sort(key=lambda r: _run_order(config, r["method"], int(r["seed"])))
    results = {"dataset": config.data.name, "config_name": config.name, "teacher": read_json(wd.teacher_json),
               "runs": runs}
    unchanged = wd.results.exists() and read_json(wd.results) == json.loads(json.dumps(results))
    if is_main_process() and not unchanged:
        atomic.write_json(wd.results, results)
    _sync("eval")
    return {"runs": len(runs), "results": str(wd.results), "summary": summarize(results), "skipped": unchanged}


def summarize(results: Mapping) -> dict[str, dict[str, float]]:
    """Per method: mean and std over seeds of ``test_accuracy_best_val`` and the number of seeds."""
    import numpy as np

    by_method: dict[str, list[float]] = {}
    for r in results["runs"]:
        by_method.setdefault(r["method"], []).append(float(r["test_accuracy_best_val"]))
    return {m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for m, v in by_method.items()}


# ----------------------------------------------------------------------------- driver

STAGES: dict[str, Callable[..., dict]] = {
    "teacher": stage_teacher,
    "teacher_outputs": stage_teacher_outputs,
    "statistics": stage_statistics,
    "fit": stage_fit,
    "distill": stage_distill,
    "eval": stage_eval,
}


def _describe(name: str, out: Mapping) -> str:
    if name == "teacher":
        acc = out.get("test_accuracy")
        params = f", {out['params']:,} params" if out.get("params") is not None else ""
        extra = f", test acc {100 * acc:.1f}%{params}" if acc is not None else ""
        return f"{out.get('source', '')} teacher {out.get('model', '')}{extra}"
    if name == "eval":
        parts = [f"{m} {100 * s['mean']:.1f}±{100 * s['std']:.1f}% (n={s['n']})" for m, s in out["summary"].items()]
        return f"{out['runs']} runs -> {out['results']}: " + ", ".join(parts)
    return str(out.get("message", ""))


def run_stages(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, stages: Sequence[str],
               force: bool = False, overrides: Mapping[str, Any] | None = None,
               log: Callable[[str], None] = print, env: Env | None = None) -> dict[str, dict]:
    """Pre-flight checks, ``init_workdir``, then each named stage in order; returns their summaries.

    Nothing is written before every check passed. ``env`` (optional) shares what an
    earlier ``preflight`` loaded. Each stage logs one line,
    e.g. ``[teacher] done in 12.3 s, trained teacher mlp, test acc 97.5%``.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {list(STAGES)}.")
    env = env or Env(config)
    preflight(config, workdir, force=force, env=env)
    init_workdir(config, workdir, force=force)
    outputs: dict[str, dict] = {}
    for name in stages:
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {"env": env}
        if name == "distill":
            kwargs["overrides"] = dict(overrides or {})
            kwargs["log"] = lambda m: log(f"[distill] {m}")
        out = STAGES[name](config, workdir, **kwargs)
        outputs[name] = out
        dt = time.perf_counter() - t0
        if out.get("not_needed"):
            log(f"[{name}] not needed ({out.get('message', '')})")
        elif out.get("skipped"):
            log(f"[{name}] already done, skipped ({_describe(name, out)})")
        else:
            log(f"[{name}] done in {dt:.1f} s, {_describe(name, out)}")
    return outputs


def run_all(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *, force: bool = False,
            overrides: Mapping[str, Any] | None = None, log: Callable[[str], None] = print) -> dict:
    """The whole experiment (teacher, outputs, statistics, fit, distill, eval); returns results.json.

    ``overrides`` ({dotted key: value}) is recorded in every new run's result.
    """
    run_stages(config, workdir, stages=list(STAGES), force=force, overrides=overrides, log=log)
    return read_json(Workdir(workdir).results)
