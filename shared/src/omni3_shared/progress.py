"""Progress lines for long work: count, rate and time left, on stderr, at most every few seconds."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Reports ``label: done/total unit (pct) rate unit/s, ETA h:mm:ss`` while work advances."""

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str = "items",
        interval_s: float = 5.0,
        stream: TextIO | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.interval_s = interval_s
        self.stream = stream or sys.stderr
        self.done = 0
        self.details: dict[str, object] = {}
        self._start = time.monotonic()
        self._last_report = float("-inf")

    def advance(self, count: int = 1, **details: object) -> None:
        self.done += count
        self.details.update(details)
        now = time.monotonic()
        if now - self._last_report >= self.interval_s:
            self._last_report = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def finish(self) -> None:
        self.stream.write(self.line(time.monotonic()) + " done\n")
        self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.label}: {self.done}"
        if self.total:
            text += f"/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            text += f" {self.unit}"
        text += f", {rate:.1f} {self.unit}/s"
        extras = "".join(f", {key} {value}" for key, value in self.details.items())
        text += extras
        if self.total and rate > 0:
            text += f", ETA {format_duration((self.total - self.done) / rate)}"
        else:
            text += f", elapsed {format_duration(elapsed)}"
        return text
