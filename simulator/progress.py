"""How far a long run is, on stderr: a bar redrawn in place in a terminal, a plain line every
few seconds in a log (CI, ``| tee``), nothing when switched off."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

#: Seconds between two redraws of the bar in a terminal.
BAR_EVERY_S = 0.25
#: Seconds between two lines in a log.
LINE_EVERY_S = 5.0


class Progress:
    """Counts units of work done out of ``total`` and reports them; ``mode`` is ``"bar"``,
    ``"lines"`` or ``"off"`` (``None``: a bar on a terminal, lines otherwise). ``clock`` is
    injectable so tests move time without sleeping."""

    def __init__(self, total: int, what: str = "pods placed", stream: TextIO = sys.stderr,
                 mode: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = max(total, 1)
        self.what = what
        self.done = 0
        self.stream = stream
        self.mode = mode if mode is not None else ("bar" if stream.isatty() else "lines")
        self.clock = clock
        self.start = clock()
        self._last = self.start

    def update(self, done: int, force: bool = False) -> None:
        self.done = done
        now = self.clock()
        every = BAR_EVERY_S if self.mode == "bar" else LINE_EVERY_S
        if self.mode == "off" or (not force and now - self._last < every):
            return
        self._last = now
        self.stream.write(self.render(now))
        self.stream.flush()

    def render(self, now: float) -> str:
        frac = min(self.done / self.total, 1.0)
        elapsed = now - self.start
        left = f"~{elapsed / frac - elapsed:.0f}s left" if frac > 0 else "time left unknown yet"
        if self.mode == "bar":
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            return f"\r[{bar}] {100 * frac:5.1f}%  {elapsed:5.0f}s elapsed, {left} "
        return f"{self.done} of {self.total} {self.what} ({100 * frac:.0f}%), {elapsed:.0f}s elapsed, {left}\n"

    def close(self) -> None:
        if self.mode == "off":
            return
        if self.mode == "bar":
            self.update(self.total, force=True)
            self.stream.write("\n")
            self.stream.flush()
        else:
            self.done = self.total
            self.stream.write(f"{self.total} {self.what} in {self.clock() - self.start:.1f}s\n")
            self.stream.flush()
