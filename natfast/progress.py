"""A dependency-free progress bar: redraws one line on a terminal, prints sparse lines otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, enabled: bool = True, stream=sys.stderr, every: float = 10.0):
        self.total, self.enabled, self.stream = total, enabled, stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.start = time.time()
        self.last = 0.0
        self.every = 0.1 if self.tty else every

    def update(self, done: int, text: str = "") -> None:
        now = time.time()
        if not self.enabled or (now - self.last < self.every and done < self.total):
            return
        self.last = now
        frac = done / max(self.total, 1)
        elapsed = now - self.start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        line = f"[{bar}] {done}/{self.total} {elapsed:5.0f}s eta {eta:4.0f}s {text}"
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the bar's line on a terminal, so that a log line can be printed in its place
        (the next update redraws the bar)."""
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
