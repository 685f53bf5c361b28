"""Progress for long work: a rich bar on a terminal, plain log lines in batch jobs."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger("newsdl")
T = TypeVar("T")

# Batch logs get one line per this many seconds, so a day-long job does not flood its log.
LOG_EVERY_S = 10.0


def interactive() -> bool:
    return sys.stderr.isatty()


@contextlib.contextmanager
def fd2_hidden(enabled: bool = True):
    """Point file descriptor 2 at /dev/null while the block runs: what C++ libraries and child
    processes (TensorFlow's loader, the caption metrics' java) write there bypasses Python's
    logging, and would bury our one-line logs and errors. Python exceptions still raise."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class Progress:
    """Count units of work; draw a bar on a TTY, else log a line every LOG_EVERY_S seconds."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "items"):
        self.desc, self.total, self.unit = desc, total, unit
        self.done = 0
        self._start = time.monotonic()
        self._last_log = self._start
        self._bar = None
        if interactive():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)
            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn(),
                                     transient=True, console=None)
            self._bar.start()
            self._task = self._bar.add_task(desc, total=total)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.info("%s", self._line(now))

    def _line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        of = f"/{self.total}" if self.total is not None else ""
        return f"{self.desc}: {self.done}{of} {self.unit} ({self.done / elapsed:,.0f} {self.unit}/s)"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        log.info("%s, done in %.1f s", self._line(time.monotonic()), time.monotonic() - self._start)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    with Progress(desc, total=total, unit=unit) as bar:
        for item in items:
            yield item
            bar.update()
