"""The config schema: every key any stage reads, its one default, and the checks of its values.

``base_config()`` is the only place a default is written: the methods (each ``parse_options``),
the data layer (``lelp_jax.data.default_data_config``) and training read theirs from it. Config
files edit a copy (``from lelp_jax.config import base_config``; :mod:`lelp_jax.config` loads,
overrides and locks them). ``validate_values`` rejects values no stage can use; the checks that
need the method registry (which reads this module) are :func:`lelp_jax.config.validate_config`'s.
"""
from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from lelp_jax.runtime.errors import ConfigError

__all__ = ["base_config", "validate_values", "validate_train", "OPTIMIZERS", "SCHEDULES", "COMPUTE_DTYPES"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
COMPUTE_DTYPES = ("float32", "bfloat16")
SEED_LIMIT = 2**31  # every seed key lies in [0, SEED_LIMIT)


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
            steps_per_call=1,  # device-resident data: k steps per compiled call (a lax.scan); 1 = bit for bit
            on_nonfinite="stop",  # stop | skip_step: a non-finite loss or parameter fails the run, or skips the step
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
            in_memory=False,  # image datasets: read the split into memory once (lelp_jax.data.loaders)
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
            device_resident="auto",  # auto | on | off: training split held on the device, batches gathered there
            device_resident_max_mb=1024.0,  # 'auto' keeps a split on the host above this size (teacher cache included)
            features="",  # text: '' = off; 'minilm' adds frozen MiniLM sentence embeddings as `features` (cached)
            # k-fold evaluation (lelp_jax.data.folds): 0 = the dataset's own splits; k >= 2 pools its splits,
            # tests on fold `fold` and carves validation (val_fraction, split_seed) from the other folds.
            num_folds=0,
            fold=0,
            # regrouped binarisation (lelp_jax.data.regroup): fine classes relabelled 1 (others 0), and the
            # first n train examples kept per fine class (0 = all); e.g. configs/fashion_mnist_hidden.py.
            class_one_fine=(),
            train_per_fine_class=0,
            # unlabelled transfer rows (lelp_jax.data.splits): the students distil on train = labelled ∪ transfer,
            # transfer rows carry label -1; data.files.transfer (local), transfer_split (a dataset's split name).
            labelled_fraction=1.0,  # 0 < f <= 1: this seeded, stratified share of train keeps its labels
            transfer_split="",  # '' = none; e.g. 'unsupervised' for a dataset with an unlabelled split
            transfer_labels="ignore",  # a transfer file with a label column: 'ignore' (said once) | 'use'
            # synthetic_subclasses (lelp_jax.data.synthetic): K modes per class in a latent space, mapped
            # non-linearly to input_dim features; fine labels kept.
            synthetic=ml_collections.ConfigDict(dict(
                num_classes=2, modes_per_class=8, latent_dim=8, hidden_dim=64, input_dim=64,
                separation=1.0, noise=0.5, num_train=2000, num_validation=2000, num_test=10000, seed=0,
                num_transfer=0,  # unlabelled transfer rows drawn like train (fine labels kept for oracle/NMI)
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
            train_on="labelled",  # labelled | all: with data.labelled_fraction < 1, all = every train row's true label
            train=_train_section(num_steps=1000),
            # model='precomputed': a teacher from any framework, as its exported outputs
            # (lelp_jax.pipeline.precomputed; scripts/export_teacher_outputs.py). One .npz or .npy folder per split.
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
    # scale: 'standardized' = the same rule as lelp.standardize (lelp_jax.core.clustering docstring); 'gmm' divides
    # squared distances by 2 sigma_c^2 (the GMM posterior), 'raw' does not. temperature: None = lelp.beta.
    # Both k-means-style methods (kmeans, agglomerative) also follow lelp.target_entropy.
    c.kmeans = ml_collections.ConfigDict(dict(num_iters=50, temperature=_p(float), scale="standardized"))
    # lelp_kmeans: k-means inside each class's null-space top-k principal subspace (lelp_jax.core.subspace_kmeans);
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
        # tau from 2: at tau = 1, student_tau none (= tau) and 1 would be one setting twice.
        kd="kd.tau=2,4,8 kd.alpha=0,0.5 kd.student_tau=none,1",
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


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate_train(section: Any, name: str = "train") -> None:
    """Reject a training section (``train`` or ``teacher.train``: a ConfigDict or a dict with every key)
    no optimizer can use."""
    steps, batch, lr = section["num_steps"], section["batch_size"], section["learning_rate"]
    optimizer, schedule, dtype = section["optimizer"], section["schedule"], section["compute_dtype"]
    _need(steps >= 1, f"{name}.num_steps must be >= 1, got {steps}.")
    epochs = section["num_epochs"]
    _need(epochs is None or epochs > 0, f"{name}.num_epochs must be > 0 (or none: use {name}.num_steps), got {epochs}.")
    _need(section["eval_batch_size"] >= 0,
          f"{name}.eval_batch_size must be >= 1 (or 0: = {name}.batch_size), got {section['eval_batch_size']}.")
    _need(batch >= 1, f"{name}.batch_size must be >= 1, got {batch}.")
    _need(lr > 0, f"{name}.learning_rate must be > 0, got {lr}.")
    _need(optimizer in OPTIMIZERS, f"{name}.optimizer must be adam, adamw or sgd, got {optimizer!r}.")
    _need(schedule in SCHEDULES, f"{name}.schedule must be cosine or constant, got {schedule!r}.")
    _need(dtype in COMPUTE_DTYPES, f"{name}.compute_dtype must be float32 or bfloat16, got {dtype!r}.")
    _need(section["steps_per_call"] >= 1, f"{name}.steps_per_call must be >= 1, got {section['steps_per_call']}.")
    _need(section["on_nonfinite"] in ("stop", "skip_step"),
          f"{name}.on_nonfinite must be 'stop' or 'skip_step', got {section['on_nonfinite']!r}.")


def validate_values(config: ml_collections.ConfigDict) -> None:
    """Reject values no stage can use, with the key and the fix (method names: ``validate_config``)."""
    seeds = tuple(config.seeds)
    _need(len(seeds) > 0, "config.seeds is empty; give at least one seed, e.g. --seeds 0.")
    _need(all(isinstance(s, int) and s >= 0 for s in seeds), f"config.seeds must be non-negative ints, got {seeds}.")
    _need(len(set(seeds)) == len(seeds), f"config.seeds lists a seed twice: {seeds}.")
    # Seeds feed int32 PRNG keys and NumPy generators: one range for all, checked before any work.
    for key, value in (*((f"seeds[{i}]", v) for i, v in enumerate(seeds)), ("teacher.seed", config.teacher.seed),
                       ("lelp.seed", config.lelp.seed), ("data.split_seed", config.data.split_seed),
                       ("data.synthetic.seed", config.data.synthetic.seed)):
        _need(isinstance(value, int) and 0 <= value < SEED_LIMIT,
              f"{key} must be an int in [0, 2**31), got {value}; pick a smaller seed.")
    _need(config.data.eval_batch_size >= 1,
          f"data.eval_batch_size must be >= 1 (the batch of teacher outputs, statistics and teacher evaluation), "
          f"got {config.data.eval_batch_size}; pass e.g. --config.data.eval_batch_size=256.")
    _need(config.data.device_resident in ("auto", "on", "off"),
          f"data.device_resident must be 'auto', 'on' or 'off', got {config.data.device_resident!r}.")
    _need(config.lelp.num_subclasses >= 1, f"lelp.num_subclasses must be >= 1, got {config.lelp.num_subclasses}.")
    _need(config.lelp.beta > 0, f"lelp.beta must be > 0, got {config.lelp.beta}.")
    _need(config.lelp.tau > 0, f"lelp.tau must be > 0, got {config.lelp.tau}.")
    _need(config.kd.tau > 0, f"kd.tau must be > 0, got {config.kd.tau}.")
    te = config.lelp.target_entropy
    _need(te is None or 0.0 < te < 1.0,
          f"lelp.target_entropy must lie in (0, 1) (the split's mean normalised entropy: 0 = hard, 1 = uniform) "
          f"or be none (use lelp.beta), got {te}.")
    _need(config.lelp_kmeans.subspace_dim >= 1,
          f"lelp_kmeans.subspace_dim must be >= 1 (the principal subspace's dimension k), got "
          f"{config.lelp_kmeans.subspace_dim}.")
    kt = config.kmeans.temperature
    _need(kt is None or kt > 0, f"kmeans.temperature must be > 0 or none (= lelp.beta), got {kt}.")
    _need(config.kmeans.scale in ("standardized", "gmm", "raw"),  # lelp_jax.core.clustering.KMEANS_SCALES
          f"kmeans.scale must be 'standardized', 'gmm' or 'raw', got {config.kmeans.scale!r}.")
    _need(config.lelp.fit_labels in ("labels", "teacher"),
          f"lelp.fit_labels must be 'labels' or 'teacher', got {config.lelp.fit_labels!r}.")
    validate_train(config.teacher.train, "teacher.train")
    validate_train(config.train, "train")
    if config.teacher.model == "precomputed":
        _validate_precomputed(config.teacher)
    lf = config.data.labelled_fraction
    _need(0.0 < lf <= 1.0, f"data.labelled_fraction must be in (0, 1] (the share of train that keeps its labels), "
          f"got {lf}.")
    _need(config.data.transfer_labels in ("ignore", "use"),
          f"data.transfer_labels must be 'ignore' or 'use', got {config.data.transfer_labels!r}.")
    _need(config.teacher.train_on in ("labelled", "all"),
          f"teacher.train_on must be 'labelled' or 'all', got {config.teacher.train_on!r}.")
    _need(config.data.synthetic.num_transfer >= 0,
          f"data.synthetic.num_transfer must be >= 0, got {config.data.synthetic.num_transfer}.")
    _need(config.data.features in ("", "minilm"),  # lelp_jax.data.features.ENCODERS
          f"data.features must be '' (off) or 'minilm' (frozen MiniLM sentence embeddings), "
          f"got {config.data.features!r}.")
    _need(0.0 <= config.data.val_fraction < 1.0,
          f"data.val_fraction must be in [0, 1), got {config.data.val_fraction}.")
    folds, fold = config.data.num_folds, config.data.fold
    _need(folds == 0 or folds >= 2, f"data.num_folds must be 0 (off) or >= 2, got {folds}.")
    _need(folds == 0 or 0 <= fold < folds, f"data.fold must be in [0, data.num_folds) = [0, {folds}), got {fold}.")
    _need(folds == 0 or 0.0 < config.data.val_fraction < 1.0,
          f"data.num_folds={folds} carves validation from the training folds: data.val_fraction must be in (0, 1), "
          f"got {config.data.val_fraction}.")
    _need(isinstance(config.mesh.model, int) and config.mesh.model >= 1,
          f"mesh.model must be an int >= 1 (1: parameters replicated; m > 1: the teacher's large kernels split "
          f"over m devices), got {config.mesh.model!r}.")


def _validate_precomputed(teacher: ml_collections.ConfigDict) -> None:
    """``teacher.model='precomputed'``: outputs named, no checkpoint (the methods: ``validate_config``).

    The network's settings (``model_kwargs``, ``pretrained``, ``teacher.train``) are unused.
    """
    out = teacher.outputs
    _need(bool(out.train), "teacher.model='precomputed' needs teacher.outputs.train (the exported train outputs); "
          "pass --config.teacher.outputs.train=FILE.npz (scripts/export_teacher_outputs.py writes it).")
    _need(bool(out.test), "teacher.model='precomputed' needs teacher.outputs.test (the exported test outputs); "
          "pass --config.teacher.outputs.test=FILE.npz.")
    _need(out.tolerance > 0, f"teacher.outputs.tolerance must be > 0, got {out.tolerance}.")
    _need(not teacher.checkpoint, f"teacher.checkpoint={teacher.checkpoint!r} has no meaning with "
          "teacher.model='precomputed' (the exported outputs are the teacher); unset it.")
