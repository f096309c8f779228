"""A one-line progress bar for the operator tools, on stderr and only when stderr is a terminal.

Hand-rolled (about 50 lines) rather than tqdm: two commands need one bar each, and this stays off
stdout (``simulate`` writes its data there) and quiet in logs and CI by construction.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO

BAR_WIDTH = 30


class Progress:
    def __init__(
        self,
        label: str,
        total: int | None,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.1,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = self._stream.isatty()
        self.total = total
        self._label, self._clock, self._interval = label, clock, interval
        self._done = 0
        self._started = clock()
        self._drawn_at: float | None = None

    def advance(self, count: int = 1) -> None:
        self._done += count
        if self.enabled and (self._drawn_at is None or self._clock() - self._drawn_at >= self._interval):
            self._draw()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()

    def line(self) -> str:
        elapsed = max(self._clock() - self._started, 1e-9)
        rate = f"{self._done / elapsed:,.0f}/s"
        if not self.total:
            return f"{self._label}  {self._done:,}  {rate}"
        share = min(1.0, self._done / self.total)
        filled = round(share * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        return f"{self._label}  [{bar}] {share:4.0%}  {self._done:,}/{self.total:,}  {rate}"

    def _draw(self) -> None:
        self._drawn_at = self._clock()
        self._stream.write("\r" + self.line() + "\x1b[K")
        self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
