"""Shared helpers of the benchmark scripts: arguments, timing, machine info, Markdown tables.

Every script reports medians over ``--repeats`` runs and, where it compares two
things, the ratio of the two medians measured side by side in the same run
(interleaved where possible), so a noisy shared machine shifts both sides alike.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

__all__ = [
    "base_parser",
    "check_repeats",
    "machine_info",
    "machine_table",
    "markdown_table",
    "median",
    "time_call",
    "fmt",
    "peak_rss_reset",
    "peak_rss_delta_mb",
    "jit_init",
]


def base_parser(description: str, *, default_repeats: int) -> argparse.ArgumentParser:
    """``--smoke`` (tiny sizes, seconds; for the tests) and ``--repeats K`` (medians over K runs)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the script runs (seconds)")
    p.add_argument("--repeats", type=int, default=default_repeats, help="timed repeats; medians are reported")
    p.add_argument("--json", metavar="PATH", help="also write the raw results (every repeat) as JSON")
    return p


def check_repeats(repeats: int) -> int:
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}.")
    return repeats


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(*, jax_info: bool = True) -> dict[str, str]:
    """CPU model, core count, RAM, Python, jax version/backend/devices, load average (1/5/15 min)."""
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/meminfo") as f:
            kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
        info["ram"] = f"{kb / 2**20:.1f} GiB"
    except (OSError, AttributeError):
        pass
    if jax_info:
        import jax

        devices = jax.devices()
        info["jax"] = f"{jax.__version__} ({jax.default_backend()}, {len(devices)} device(s): {devices[0].device_kind})"
    info["load average (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def machine_table(info: dict[str, str], extra: Optional[dict[str, Any]] = None) -> str:
    rows = [[k, str(v)] for k, v in {**info, **(extra or {})}.items()]
    return markdown_table(["machine", ""], rows)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_json(path: Optional[str], payload: dict[str, Any]) -> None:
    """Write the raw results (``--json PATH``) when a path was given."""
    if path:
        import json

        with open(path, "w") as f:
            json.dump(payload, f, indent=2)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def time_call(fn: Callable[[], Any]) -> float:
    """Wall seconds of ``fn()`` (the callee blocks on its own results)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fmt(x: float, digits: int = 3) -> str:
    """Compact number: 3 significant digits, thousands separators for large values."""
    if x != x:  # NaN
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def peak_rss_reset() -> int:
    """Reset this process's peak RSS (VmHWM) to its current RSS; return the current RSS in kB.

    Linux: writing 5 to /proc/self/clear_refs resets the high-water mark, so a
    following ``peak_rss_delta_mb`` sees only what the measured code added
    (NumPy, XLA buffers and allocator pools alike: they are all resident memory).
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def peak_rss_delta_mb(baseline_kb: int) -> float:
    """Peak RSS since ``peak_rss_reset`` minus the RSS at that reset, in MB (10^6 bytes)."""
    return max(0, _status_kb("VmHWM") - baseline_kb) * 1024 / 1e6


def jit_init(fn: Callable[[], Any]) -> Any:
    """``fn()`` traced and compiled as one XLA program.

    Flax's eager ``init`` (and ``init_train_state``) dispatches each initializer op
    on its own, compiling one tiny program per op and shape (over a hundred for a
    small CNN); one jitted program gives identical values in a fraction of the time.
    """
    import jax

    return jax.jit(fn)()
