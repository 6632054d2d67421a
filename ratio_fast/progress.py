"""A dependency-free progress line for long loops: redrawn in place on a terminal, sparse lines in logs."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, desc: str = "", stream=None, interval: float | None = None, unit: str = "it"):
        self.total, self.desc, self.count, self.unit = total, desc, 0, unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 15.0)
        self.start = self.last = time.perf_counter()
        self.postfix = ""
        self.skipped = 0  # work done before (a resumed evaluation's): counted, but not in the rate

    def skip(self, n: int) -> None:
        """Count n units as done without timing them."""
        self.count += n
        self.skipped += n

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.count += n
        if postfix is not None:
            self.postfix = postfix
        now = time.perf_counter()
        if now - self.last >= self.interval or self.count >= self.total:
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self.start
        rate = (self.count - self.skipped) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.count) / rate if rate > 0 else 0.0
        pct = 100.0 * self.count / max(self.total, 1)
        line = (f"{self.desc} {self.count}/{self.total} ({pct:3.0f}%) "
                f"{rate:.2f} {self.unit}/s, {elapsed:.0f}s elapsed, eta {eta:.0f}s {self.postfix}").rstrip()
        self.stream.write(("\r\x1b[2K" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
