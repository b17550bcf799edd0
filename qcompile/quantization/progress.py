"""A dependency-free progress bar on stderr (shown when stderr is a terminal, or when forced)."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int | None, desc: str, enabled: bool | None = None, stream=None):
        self.total, self.desc, self.n = total, desc, 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.t0 = self._last = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.n += k
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.2 or self.n == self.total):
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        el = now - self.t0
        if self.total:
            frac = min(self.n / self.total, 1.0)
            bar = "#" * int(frac * 30)
            eta = el / max(frac, 1e-9) - el
            text = f"\r{self.desc}: [{bar:<30}] {self.n}/{self.total} {el:5.1f}s eta {eta:5.1f}s"
        else:
            text = f"\r{self.desc}: {self.n} {el:5.1f}s"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
