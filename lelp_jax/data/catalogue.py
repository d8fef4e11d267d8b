"""The paper's datasets, read from a prepared tfds data_dir (never downloaded here).

- `sentiment140`: tweets, polarity 0 -> 0 (negative), 4 -> 1 (positive); the
  test split's neutral tweets (polarity 2) are dropped. Splits: train =
  `train[:95%]`, validation = `train[95%:]`, test = `test`.
- `amazon_us_reviews` (tfds `amazon_us_reviews/<config>`, default config
  `Books_v1_02`; set `data.tfds_config`): 5 classes from `star_rating` 1..5 ->
  label 0..4, text = `review_body`. tfds has only a train split: train =
  `train[:80%]`, validation = `train[80%:90%]`, test = `train[90%:]` (tfds
  stores records in a key-hash-shuffled order, so the slices are random).
  Amazon withdrew the source files (the public S3 bucket) in 2023, so
  `tfds build` of it fails even online: this serves users who already hold a
  prepared copy; others can export their reviews to CSV and use `local`.
- `cifar100_binary` (tfds `cifar100`): label = fine % 2, fine_label = the 100
  fine classes. Splits: train = `train[:45000]`, validation = `train[45000:]`,
  test = `test`.

Reading needs no TensorFlow (array_record + `as_data_source`; PNG images are
decoded with Pillow); preparing a copy (`tfds build`) does need it.

Before touching a builder's data, `catalogue_builder` checks that the data_dir
holds a prepared copy and raises at once otherwise: nothing here downloads.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import tensorflow_datasets as tfds

from lelp_jax.data.sources import read_records


def tfds_full_name(entry: Mapping[str, Any], tfds_config: str | None = None) -> str:
    """`tfds_name[/config]` for a catalogue entry."""
    config = tfds_config or entry.get("default_config")
    return entry["tfds_name"] + (f"/{config}" if config else "")


def catalogue_builder(name: str, entry: Mapping[str, Any], *, data_dir: str, tfds_config: str | None = None):
    """The tfds builder of a prepared copy in `data_dir`, or a FileNotFoundError at once.

    Builder construction reads no data and opens no connection; `is_prepared`
    only looks for `dataset_info.json` in the version folder.
    """
    full = tfds_full_name(entry, tfds_config)
    builder = tfds.builder(full, data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"{name}: no prepared copy of the tfds dataset '{full}' in data_dir '{data_dir}' "
            f"(looked for {builder.data_path}). lelp_jax never downloads at run time. "
            f"On a machine with network run `tfds build {full} --data_dir=DIR "
            f"--file_format=array_record` (TensorFlow is needed there only), then copy DIR here "
            "and set data.data_dir (or the LELP_DATA_DIR environment variable)."
        )
    if builder.info.file_format is not None and builder.info.file_format.value != "array_record":
        raise ValueError(
            f"{name}: the copy in {builder.data_path} is in {builder.info.file_format.value} "
            "format, which needs TensorFlow to read. Rebuild it with "
            "`--file_format=array_record`, or convert it with `tfds convert_format`."
        )
    return builder


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def sentiment140_record(record: Mapping[str, Any]) -> tuple[str, int] | None:
    """(text, label) with polarity 0 -> 0, 4 -> 1; None for neutral (2)."""
    polarity = int(record["polarity"])
    if polarity == 2:
        return None
    if polarity not in (0, 4):
        raise ValueError(f"sentiment140: unexpected polarity {polarity} (expected 0, 2 or 4).")
    return _text(record["text"]), int(polarity == 4)


def amazon_record(record: Mapping[str, Any]) -> tuple[str, int]:
    """(review_body, star_rating - 1) for star ratings 1..5."""
    data = record["data"]
    stars = int(data["star_rating"])
    if not 1 <= stars <= 5:
        raise ValueError(f"amazon_us_reviews: star_rating {stars} outside 1..5.")
    return _text(data["review_body"]), stars - 1


def cifar100_record(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """image / 255 (float32), label = fine % 2, fine_label = fine."""
    fine = int(record["label"])
    return {
        "image": np.asarray(record["image"], np.float32) / 255.0,
        "label": np.int32(fine % 2),
        "fine_label": np.int32(fine),
    }


# The paper's datasets, each registered by lelp_jax.data.loaders (tfds_catalogue_loader). `record` maps a raw
# tfds record to (text, label) (None: dropped) for text, to {image, label, fine_label} for images.
CATALOGUE: dict[str, dict[str, Any]] = {
    "sentiment140": {
        "tfds_name": "sentiment140",
        "splits": {"train": "train[:95%]", "validation": "train[95%:]", "test": "test"},
        "class_names": ("negative", "positive"),
        "input_kind": "text",
        "record": sentiment140_record,
    },
    "amazon_us_reviews": {
        "tfds_name": "amazon_us_reviews",
        "default_config": "Books_v1_02",
        "splits": {"train": "train[:80%]", "validation": "train[80%:90%]", "test": "train[90%:]"},
        "class_names": ("1 star", "2 stars", "3 stars", "4 stars", "5 stars"),
        "input_kind": "text",
        "record": amazon_record,
    },
    "cifar100_binary": {
        "tfds_name": "cifar100",
        "splits": {"train": "train[:45000]", "validation": "train[45000:]", "test": "test"},
        "class_names": ("even_fine_class", "odd_fine_class"),
        "input_kind": "image",
        "num_fine_classes": 100,
        "input_shape": (32, 32, 3),
        "record": cifar100_record,
    },
}


def read_text_split(
    record: Callable[[Mapping[str, Any]], tuple[str, int] | None], raw: Any, *, limit: int | None = None,
    chunk: int = 4096,
) -> tuple[list[str], np.ndarray]:
    """`record(r)` of every record of a raw tfds source in order, the rows it maps to None dropped,
    stopping after `limit` kept (text, label) pairs (None: all)."""
    texts: list[str] = []
    labels: list[int] = []
    for start in range(0, len(raw), chunk):
        if limit is not None and len(texts) >= limit:
            break
        for rec in read_records(raw, range(start, min(start + chunk, len(raw)))):
            out = record(rec)
            if out is not None:
                texts.append(out[0])
                labels.append(out[1])
    return texts[:limit], np.asarray(labels[:limit], np.int32)
