"""Run metrics: ``metrics.jsonl`` (one JSON object per line) and TensorBoard events."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping

from lelp_jax.core import atomic

__all__ = ["MetricsLog"]


class MetricsLog:
    """``metrics.jsonl`` and TensorBoard events, written by process 0 only (a no-op elsewhere).

    On resume from ``start``, lines and events written after it (by a killed run) are dropped.
    """

    def __init__(self, workdir: str, start: int, *, enabled: bool):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.writer = None
        if enabled:
            _truncate_jsonl(self.path, start)
            self.writer = _summary_writer_class()(logdir=os.path.join(workdir, "tensorboard"),
                                                  purge_step=start + 1 if start else None)

    def emit(self, step: int, values: Mapping[str, float]) -> None:
        if self.writer is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _truncate_jsonl(path: str, max_step: int) -> None:
    """Drop metric lines written after the restored step, and final test lines (they will be written again)."""
    if not os.path.exists(path):
        return
    lines = []
    with open(path) as f:
        for ln in f:
            try:
                row = json.loads(ln)
            except json.JSONDecodeError:  # a line cut by a kill mid-write
                continue
            if row.get("step", 0) <= max_step and "test_accuracy_last" not in row:
                lines.append(ln if ln.endswith("\n") else ln + "\n")
    atomic.write_text(path, "".join(lines))


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch.

    tensorboardX imports torch (if installed) only to accept torch tensors; we log
    Python floats, and importing torch costs seconds per process, so torch is
    hidden from that one import unless it is already loaded.
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter
