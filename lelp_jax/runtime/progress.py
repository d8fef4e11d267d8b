"""Progress of long loops: tqdm's bar on a terminal, a plain line every ~30 s in a log file.

A log file cannot redraw a bar, so when the output is not a terminal ``Progress``
prints a line at most every ``every_s`` seconds (checked at each update):

    teacher: step 120/500 (24%), 310 examples/s, ETA 2m03s

examples/s is measured since the previous line; the ETA extrapolates the time per step
done since the loop (re)started, not counting time spent in a *phase*. A phase (``with
progress.phase('compiling (bucket 64)'):``, ``'evaluating validation'``) names what the loop is
doing when it is not stepping; a line written meanwhile says so instead of a stalled rate:

    teacher: compiling (bucket 64) for 42s, at step 49/421 (12%), ETA 3m10s

A step can take minutes (the first one compiles): a daemon thread calls ``tick`` every
second, so a line still comes every ``every_s``.
The clock, the writer and the thread are arguments, so a test drives it with a fake
clock and calls ``tick`` itself.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``75 -> '1m15s'``, ``3725 -> '1h02m'``, ``9 -> '9s'``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _print_line(line: str) -> None:
    print(line, flush=True)


class Progress:
    """Progress of a loop of ``total`` steps starting after step ``initial``.

    ``update(step, examples)``: step ``step`` (absolute) is done and ``examples`` more
    examples were processed. On a terminal (``bar=None`` asks ``sys.stderr.isatty()``) a
    tqdm bar is drawn; otherwise a line is written when ``every_s`` seconds have passed
    since the last line (or the start), checked at each update and, with ``heartbeat``,
    every second by a daemon thread. ``postfix`` adds e.g. the loss to the bar; ``close``
    stops the thread.
    """

    def __init__(self, total: int, *, desc: str, initial: int = 0, every_s: float = 30.0,
                 bar: Optional[bool] = None, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] = _print_line, heartbeat: bool = True):
        self.total, self.desc, self.every_s = int(total), desc, float(every_s)
        self._clock, self._write = clock, write
        self._start_step = self._step = int(initial)
        self._t_start = self._t_line = clock()
        self._examples = 0
        self._phase: Optional[str] = None
        self._t_phase = 0.0
        self._phase_s = 0.0  # time spent in finished phases (not counted in the ETA's time per step)
        self._bar: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if sys.stderr.isatty() if bar is None else bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self._step, desc=desc, dynamic_ncols=True)
        elif heartbeat:
            threading.Thread(target=self._beat, daemon=True, name=f"progress {desc}").start()

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            self.tick()

    def update(self, step: int, examples: int = 0) -> None:
        """Step ``step`` is done; ``examples`` examples since the previous update."""
        with self._lock:
            if self._bar is not None:
                self._bar.update(int(step) - self._step)
            self._step = int(step)
            self._examples += int(examples)
        self.tick()

    def tick(self) -> None:
        """Write a line if ``every_s`` seconds have passed since the last one (line mode)."""
        with self._lock:
            now = self._clock()
            if self._bar is None and not self._stop.is_set() and now - self._t_line >= self.every_s:
                self._write(self.line(now))
                self._t_line, self._examples = now, 0

    @contextlib.contextmanager
    def phase(self, what: str) -> Iterator[None]:
        """The loop is ``what`` (compiling, evaluating) rather than stepping; its time is kept out of the ETA."""
        with self._lock:
            self._phase, self._t_phase = what, self._clock()
            if self._bar is not None:
                self._bar.set_description_str(f"{self.desc} ({what})")
        try:
            yield
        finally:
            with self._lock:
                now = self._clock()
                self._phase_s += now - self._t_phase
                self._phase = None
                # examples/s of the next line counts stepping time only (a line written during the
                # phase restarts the count at its end)
                self._t_line = min(self._t_line + (now - self._t_phase), now)
                if self._bar is not None:
                    self._bar.set_description_str(self.desc)

    def line(self, now: float) -> str:
        """The log line at time ``now``: step, percent, examples/s since the last line (or the phase), ETA."""
        done = self._step - self._start_step
        phase_s = self._phase_s + (now - self._t_phase if self._phase else 0.0)
        eta = (self.total - self._step) * (now - self._t_start - phase_s) / done if done > 0 else float("nan")
        eta_s = format_duration(eta) if eta == eta else "?"
        pct = 100.0 * self._step / max(self.total, 1)
        if self._phase is not None:
            return (f"{self.desc}: {self._phase} for {format_duration(now - self._t_phase)}, at step "
                    f"{self._step}/{self.total} ({pct:.0f}%), ETA {eta_s}")
        rate = self._examples / max(now - self._t_line, 1e-9)
        return f"{self.desc}: step {self._step}/{self.total} ({pct:.0f}%), {rate:.0f} examples/s, ETA {eta_s}"

    def postfix(self, **values: Any) -> None:
        """Extra values shown on the bar (ignored in line mode)."""
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        self._stop.set()
        if self._bar is not None:
            self._bar.close()
