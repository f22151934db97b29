"""Progress a person can read: rate and ETA lines, and a channel from Ray workers to the driver's terminal.

Ray forwards every worker's stdout to the driver with a `(RayTrainWorker pid=...)` prefix, and Ray Train's print
redirection can print a line twice. Training workers therefore send their progress lines through a `Board` (a tiny
Ray actor) and the driver prints each line once, without prefixes, whether or not worker logs are forwarded.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any


def fmt_duration(seconds: float) -> str:
    """65 -> '1:05', 3723 -> '1:02:03'."""
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def rate_eta(done: float, total: float | None, elapsed: float) -> tuple[float, str]:
    """(units per second, ETA text) after `done` of `total` units in `elapsed` seconds; ETA '?' before any unit."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if total is None or rate <= 0:
        return rate, "?"
    return rate, fmt_duration(max(0.0, total - done) / rate)


def say(msg: str, prefix: str = "rayrm") -> None:
    """One progress line on stdout, flushed (so `ray job logs` and pipes see it at once)."""
    print(f"[{prefix}] {msg}", file=sys.stdout, flush=True)


class Counter:
    """Counts finished units (rows, steps) and prints `verb N/M unit (p%) r unit/s, ETA t` at most every `every_s`."""

    def __init__(self, verb: str, unit: str, total: int | None, prefix: str = "rayrm", every_s: float = 10.0):
        self.verb, self.unit, self.total, self.prefix, self.every_s = verb, unit, total, prefix, every_s
        self.done = 0
        self.t0 = time.perf_counter()
        self._last = self.t0

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate, eta = rate_eta(self.done, self.total, elapsed)
        of = f"/{self.total:,}" if self.total is not None else ""
        pct = f" ({self.done / self.total:.0%})" if self.total else ""
        return f"{self.verb} {self.done:,}{of} {self.unit}{pct} in {fmt_duration(elapsed)}, {rate:,.1f} {self.unit}/s, ETA {eta}"

    def add(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.perf_counter()
        if force or now - self._last >= self.every_s:
            self._last = now
            say(self.line(), self.prefix)


def _board_class() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class Board:
        """Lines from workers, collected until the driver drains them."""

        def __init__(self) -> None:
            self.lines: list[str] = []

        def put(self, line: str) -> None:
            self.lines.append(line)

        def drain(self) -> list[str]:
            out, self.lines = self.lines, []
            return out

    return Board


class Board:
    """Driver side: start with `Board.start()`, hand `.handle` to workers (`post(handle, line)`), `close()` at the end.

    A daemon thread drains the actor every `poll_s` seconds and prints each line once with `say`.
    """

    def __init__(self, handle: Any, prefix: str, poll_s: float):
        self.handle, self.prefix, self.poll_s = handle, prefix, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rayrm-progress", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, prefix: str = "rayrm", poll_s: float = 0.5) -> Board:
        return cls(_board_class().remote(), prefix, poll_s)

    def _flush(self) -> None:
        import ray

        for line in ray.get(self.handle.drain.remote()):
            say(line, self.prefix)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._flush()
            except Exception:  # the actor or Ray is gone (shutdown): nothing more to print
                return

    def close(self) -> None:
        import ray

        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._flush()
        except Exception:
            pass
        ray.kill(self.handle)


def post(handle: Any, line: str, prefix: str = "rayrm") -> None:
    """Worker side: send a line to the driver's board, or print it when there is none (a plain process)."""
    if handle is None:
        say(line, prefix)
    else:
        handle.put.remote(line)
