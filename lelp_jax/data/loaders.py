"""`load_split(data_config, split) -> (source, DatasetInfo)` for every dataset.

Config keys read (all optional except `name`; see `default_data_config`):
name, data_dir, max_examples_per_split, in_memory, input_kind, max_length, bucket_lengths,
tokenizer, tfds_config, files, dataset_name, text_column, label_column, fine_label_column,
class_names, num_classes, num_fine_classes, num_folds, fold, val_fraction, split_seed, synthetic, class_one_fine, train_per_fine_class.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping

import ml_collections
import numpy as np

from lelp_jax.config import schema
from lelp_jax.data import builders, catalogue, local
from lelp_jax.data.folds import load_fold_split
from lelp_jax.data.regroup import regroup
from lelp_jax.data.synthetic import load_synthetic
from lelp_jax.data.sources import (ArraySource, DataSection, DatasetInfo, MappedSource, TextSource, plain,
                                   read_records)
from lelp_jax.data.tokenizer import bucket_lengths, load_tokenizer, tokenize

def default_data_config() -> ml_collections.ConfigDict:
    """Every key `load_split` reads, with its default: a copy of `base_config().data` (their one source;
    the pipeline's own data keys ride along, unused here)."""
    return ml_collections.ConfigDict(schema.base_config().data.to_dict())


def _get(config: DataSection, key: str, default: Any = None) -> Any:
    value = config.get(key, default)
    return default if value is None else value


def resolve_data_dir(config: DataSection) -> str:
    """data.data_dir, else $LELP_DATA_DIR, else ~/tensorflow_datasets."""
    d = _get(config, "data_dir") or os.environ.get("LELP_DATA_DIR") or "~/tensorflow_datasets"
    return os.path.expanduser(str(d))


def _check_split(name: str, split: str, available: Any) -> None:
    if split not in available:
        raise ValueError(f"{name}: unknown split {split!r}; choose one of {sorted(available)}.")


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str | None, max_length: int):
    return load_tokenizer(path, max_length=max_length)


def text_source(texts, labels, fine_labels, config) -> tuple[TextSource, int, int]:
    """Tokenised TextSource with bucket lengths; also returns max_length and vocab size."""
    max_length = int(_get(config, "max_length", 128))
    tok = _tokenizer(_get(config, "tokenizer"), max_length)
    src = TextSource(tokenize(texts, tokenizer=tok), labels, fine_labels)
    src.buckets = bucket_lengths(max_length, _get(config, "bucket_lengths"))
    return src, max_length, tok.get_vocab_size()


def _image_view(input_kind: str | None, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    if input_kind in (None, "image"):
        return "image", shape
    if input_kind == "features":
        return "features", (int(np.prod(shape)),)
    raise ValueError(f"input_kind {input_kind!r} does not apply to an image dataset; use 'image' or 'features'.")


def _text_view(input_kind: str | None) -> None:
    if input_kind not in (None, "text"):
        raise ValueError(f"input_kind {input_kind!r} does not apply to a text dataset; use 'text' or None.")


def _source(raw: Any, fn: Callable[[Any], dict], config: DataSection, rows: np.ndarray | None = None):
    """MappedSource of raw tfds records; with data.in_memory the raw records (uint8
    images stay uint8) are first read once into NumPy arrays: faster epochs."""
    if _get(config, "in_memory", False):
        keep = range(len(raw)) if rows is None else rows
        records = read_records(raw, keep)
        raw = ArraySource({k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]})
        rows = None
    return MappedSource(raw, fn, rows)


def _image_fn(kind: str, scale: float, fine: bool) -> Callable[[Mapping[str, Any]], dict]:
    def fn(r):
        x = np.asarray(r["image"], np.float32) / scale
        out = {kind: x if kind == "image" else x.reshape(-1), "label": np.int32(r["label"])}
        if fine:
            out["fine_label"] = np.int32(r["fine_label"])
        return out
    return fn


def _load_builder(builder_cls: type, name: str, config: DataSection, split: str):
    b = builders.prepared_builder(
        builder_cls, data_dir=resolve_data_dir(config),
        max_examples_per_split=_get(config, "max_examples_per_split"),
    )
    _check_split(name, split, b.info.splits)
    raw = b.as_data_source(split=split)
    sizes = {k: v.num_examples for k, v in b.info.splits.items()}
    feats = b.info.features
    class_names = tuple(feats["label"].names)
    fine = "fine_label" in feats
    common = dict(
        name=name, num_classes=len(class_names), class_names=class_names, split_sizes=sizes,
        num_fine_classes=feats["fine_label"].num_classes if fine else None,
        fine_class_names=tuple(feats["fine_label"].names) if fine else None,
    )
    if "text" in feats:
        _text_view(_get(config, "input_kind"))
        records = read_records(raw, range(len(raw)))
        texts = [r["text"].decode("utf-8") if isinstance(r["text"], bytes) else r["text"] for r in records]
        labels = np.asarray([r["label"] for r in records], np.int32)
        src, max_length, vocab = text_source(texts, labels, None, config)
        return src, DatasetInfo(input_kind="text", input_shape=(max_length,), vocab_size=vocab, **common)
    shape = tuple(feats["image"].shape)
    kind, in_shape = _image_view(_get(config, "input_kind"), shape)
    scale = 255.0 if feats["image"].np_dtype == np.uint8 else 1.0
    src = _source(raw, _image_fn(kind, scale, fine), config)
    return src, DatasetInfo(input_kind=kind, input_shape=in_shape, **common)


def _flattened(fn: Callable[[Any], dict], kind: str, record: Any) -> dict:
    """fn(record), with `image` flattened into `features` when kind == 'features'."""
    out = fn(record)
    if kind == "features":
        out["features"] = out.pop("image").reshape(-1)
    return out


def _load_catalogue(entry: Mapping[str, Any], name: str, config: DataSection, split: str):
    _check_split(name, split, entry["splits"])
    b = catalogue.catalogue_builder(name, entry, data_dir=resolve_data_dir(config),
                                    tfds_config=_get(config, "tfds_config"))
    raw = b.as_data_source(split=entry["splits"][split])
    common = dict(name=name, num_classes=len(entry["class_names"]), class_names=entry["class_names"],
                  num_fine_classes=entry.get("num_fine_classes"))
    cap = _get(config, "max_examples_per_split")
    if entry["input_kind"] == "text":
        _text_view(_get(config, "input_kind"))
        texts, labels = catalogue.read_text_split(entry["record"], raw, limit=cap)
        src, max_length, vocab = text_source(texts, labels, None, config)
        return src, DatasetInfo(input_kind="text", input_shape=(max_length,), vocab_size=vocab,
                                split_sizes={split: len(src)}, **common)
    kind, in_shape = _image_view(_get(config, "input_kind"), entry["input_shape"])
    rows = None if cap is None else np.arange(min(int(cap), len(raw)))
    src = _source(raw, functools.partial(_flattened, entry["record"], kind), config, rows)
    return src, DatasetInfo(input_kind=kind, input_shape=in_shape, split_sizes={split: len(src)},
                            fine_class_names=None, **common)


def _train_classes(path: str, label_column: str) -> tuple[tuple[str, ...] | None, int]:
    if not os.path.exists(path):
        raise ValueError(f"{path}: file not found (data.files['train']). Fix the path.")
    return local.train_classes(path, label_column=label_column)


def _announce_classes(class_names: tuple[str, ...]) -> None:
    """Print the label -> class id mapping read from the training file (process 0, when train is loaded)."""
    import jax

    if jax.process_index() == 0:
        print("classes: " + ", ".join(f"{n}={i}" for i, n in enumerate(class_names)), flush=True)


def _load_local(name: str, config: DataSection, split: str):
    files = plain(_get(config, "files", {}))
    if split not in files:
        raise ValueError(f"local data: no file for split {split!r}; set data.files['{split}'] "
                         f"(have {sorted(files)}).")
    path = os.path.expanduser(str(files[split]))
    if not os.path.exists(path):
        raise ValueError(f"{path}: file not found (data.files['{split}']). Fix the path.")
    class_names = _get(config, "class_names")
    num_classes = _get(config, "num_classes")
    names_from = None
    if class_names is None and num_classes is None and "train" in files:
        train_path = os.path.expanduser(str(files["train"]))
        class_names, num_classes = _train_classes(train_path, _get(config, "label_column", "label"))
        if class_names is not None:
            names_from = train_path
            if split == "train":
                _announce_classes(class_names)
    cap = _get(config, "max_examples_per_split")
    if path.lower().endswith(".npz"):
        arrays = local.read_npz(path, class_names=class_names, num_classes=num_classes, names_from=names_from)
        arrays = {k: v[:cap] for k, v in arrays.items()}
        if "image" in arrays:
            kind, shape = _image_view(_get(config, "input_kind"), arrays["image"].shape[1:])
            if kind == "features":
                arrays["features"] = arrays.pop("image").reshape(len(arrays["label"]), -1)
        else:
            kind, shape = "features", arrays["features"].shape[1:]
        src = ArraySource(arrays)
        fine = arrays.get("fine_label")
        vocab = None
    else:
        _text_view(_get(config, "input_kind"))
        texts, labels, fine = local.read_text_file(
            path, text_column=_get(config, "text_column", "text"),
            label_column=_get(config, "label_column", "label"),
            fine_label_column=_get(config, "fine_label_column"),
            class_names=class_names, num_classes=num_classes, names_from=names_from)
        fine = None if fine is None else fine[:cap]
        src, max_len, vocab = text_source(texts[:cap], labels[:cap], fine, config)
        kind, shape = "text", (max_len,)
    n_cls = len(class_names) if class_names is not None else int(num_classes)
    n_fine = _get(config, "num_fine_classes") or (None if fine is None else int(fine.max()) + 1)
    if fine is not None and int(fine.max()) >= n_fine:
        raise ValueError(f"{path}: fine labels reach {int(fine.max())} but data.num_fine_classes="
                         f"{n_fine}. Raise num_fine_classes or fix the file.")
    names = tuple(str(c) for c in class_names) if class_names is not None else tuple(
        str(c) for c in range(n_cls))
    return src, DatasetInfo(
        name=_get(config, "dataset_name", "local"), num_classes=n_cls, num_fine_classes=n_fine,
        input_kind=kind, class_names=names, split_sizes={split: len(src)},
        input_shape=tuple(int(s) for s in shape), vocab_size=vocab)


Loader = Callable[[str, Any, str], tuple[Any, DatasetInfo]]
DATASETS: dict[str, Loader] = {}  # data.name -> loader; filled by register_dataset only


def register_dataset(name: str, loader: Loader) -> Loader:
    """Make ``data.name = name`` load with ``loader(name, data_config, split) -> (source, DatasetInfo)``.

    The one way to add a dataset (a name can be registered once). For a tfds dataset the loader
    is :func:`tfds_builder_loader` (a builder class that generates its data offline) or
    :func:`tfds_catalogue_loader` (a prepared copy of a tfds catalogue dataset).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_dataset: the name must be a non-empty string, got {name!r}.")
    if name in DATASETS:
        raise ValueError(f"register_dataset: {name!r} is already registered; pick another name.")
    if not callable(loader):
        raise ValueError(f"register_dataset: the loader of {name!r} must be a function "
                         f"(name, data_config, split) -> (source, DatasetInfo), got {loader!r}.")
    DATASETS[name] = loader
    return loader


def tfds_builder_loader(builder_cls: type) -> Loader:
    """The loader of an offline tfds builder (a ``builders.CappedBuilder`` subclass), prepared
    into the data_dir on first use; uint8 images are scaled by 1/255, text is tokenised."""
    return functools.partial(_load_builder, builder_cls)


def tfds_catalogue_loader(entry: Mapping[str, Any]) -> Loader:
    """The loader of a tfds catalogue dataset read from a prepared copy (never downloaded); ``entry``
    has the keys of a ``catalogue.CATALOGUE`` value (tfds name, split strings, class names,
    input kind, record function)."""
    return functools.partial(_load_catalogue, entry)


register_dataset("digits_binary", tfds_builder_loader(builders.DigitsBinary))
register_dataset("fashion_mnist_binary", tfds_builder_loader(builders.FashionMnistBinary))
register_dataset("rotten_tomatoes", tfds_builder_loader(builders.RottenTomatoes))
for _name, _entry in catalogue.CATALOGUE.items():
    register_dataset(_name, tfds_catalogue_loader(_entry))
register_dataset("local", _load_local)
register_dataset("synthetic_subclasses", load_synthetic)


def load_split(data_config: DataSection, split: str) -> tuple[Any, DatasetInfo]:
    """The random-access source of one split and the dataset's `DatasetInfo`.

    `data_config` is the `data` section of the config (ConfigDict or mapping);
    `split` is 'train', 'validation' or 'test' (local data: any key of files).
    """
    name = _get(data_config, "name")
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.")
    class_one = tuple(_get(data_config, "class_one_fine", ()))
    per_fine = int(_get(data_config, "train_per_fine_class", 0))
    if int(_get(data_config, "num_folds", 0)):
        if class_one or per_fine:
            raise ValueError("data.num_folds cannot be combined with data.class_one_fine / train_per_fine_class; "
                             "unset one of them.")
        return load_fold_split(name, plain(data_config), split, DATASETS[name])
    source, info = DATASETS[name](name, data_config, split)
    return regroup(source, info, split, class_one_fine=class_one, train_per_fine_class=per_fine)


def transfer_origin(data_config: DataSection) -> str | None:
    """Where a dataset's unlabelled transfer rows come from: ``data.files.transfer`` (local),
    ``data.transfer_split``, ``synthetic.num_transfer`` (the generator), or None."""
    if _get(data_config, "name") == "local" and plain(_get(data_config, "files", {})).get("transfer"):
        return "data.files.transfer"
    if _get(data_config, "transfer_split"):
        return "data.transfer_split"
    if _get(data_config, "name") == "synthetic_subclasses" and int(
            plain(_get(data_config, "synthetic", {})).get("num_transfer") or 0):
        return "data.synthetic.num_transfer"
    return None


def load_transfer(data_config: DataSection, info: DatasetInfo) -> tuple[Any, bool] | None:
    """``(source, keep_labels)`` of the transfer rows (:func:`transfer_origin`), or None. A labelled transfer
    file's or split's labels are ignored (said once; the caller reads every transfer row's label as -1)
    unless ``data.transfer_labels='use'`` (``keep_labels`` True).

    ``info`` is the train split's: a local text file is tokenised like it, its labels mapped to its classes.
    """
    origin = transfer_origin(data_config)
    if origin is None:
        return None
    use = _get(data_config, "transfer_labels", "ignore") == "use"
    if origin == "data.files.transfer":
        path = os.path.expanduser(str(plain(_get(data_config, "files", {}))["transfer"]))
        if not os.path.exists(path):
            raise ValueError(f"{path}: file not found (data.files.transfer). Fix the path.")
        names = None if info.class_names == tuple(str(c) for c in range(info.num_classes)) else info.class_names
        arrays, had = local.read_transfer_file(
            path, text_column=_get(data_config, "text_column", "text"),
            label_column=_get(data_config, "label_column", "label"), use_labels=use, class_names=names,
            num_classes=None if names is not None else info.num_classes)
        if "texts" in arrays:
            src, _, _ = text_source(arrays["texts"], arrays["label"], None, data_config)
        else:
            if "image" in arrays and info.input_kind == "features":
                arrays["features"] = arrays.pop("image").reshape(len(arrays["label"]), -1)
            src = ArraySource(arrays)
        what = f"{path} has a label column"
    else:
        split = "transfer" if origin == "data.synthetic.num_transfer" else str(_get(data_config, "transfer_split"))
        src, _ = load_split(data_config, split)
        had = origin == "data.transfer_split"
        what = f"transfer split {split!r} carries labels"
    if had:
        _say_once(f"{what}: {'kept (data.transfer_labels=use)' if use else 'ignored (data.transfer_labels=use keeps them)'}")
    return src, had and use


def _say_once(message: str) -> None:
    """One line on process 0."""
    import jax

    if jax.process_index() == 0:
        print(message, flush=True)
