"""Stall reports: a rank that finishes no training step for a while prints where its Python threads are.

A run that sits in its first iteration for minutes, or hangs in a collective, otherwise shows nothing until
Slurm's time limit. With ``train.stall_report_seconds: N`` every rank writes the Python stacks of its threads to
stderr when no step has ended for N seconds, and again every N seconds until one does. Each step that ends
moves the deadline, so a healthy run prints nothing. 0 (the default) turns it off.

A watcher thread reads the stacks with ``sys._current_frames()``, under the interpreter lock. Not
``faulthandler.dump_traceback_later``: it walks other threads' frames without that lock, and on 2026-11-27 it
crashed one rank of each of the benchmark's three runs (SIGSEGV) while they compiled Triton kernels.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from typing import TextIO

from omni3_sft.cli import TOOL
from omni3_shared.rendezvous import global_rank


class StallReport:
    def __init__(self, seconds: int = 0, stream: TextIO | None = None) -> None:
        self.seconds = seconds
        self._stream = stream
        self._last_step = time.monotonic()
        self._stopped = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    def step(self) -> None:
        """A step ended (or training starts): the next report is due ``seconds`` from now."""
        if not self.enabled:
            return
        self._last_step = time.monotonic()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name=f"{TOOL}-stall-report", daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None

    def _watch(self) -> None:
        due = self._last_step + self.seconds
        while not self._stopped.wait(max(due - time.monotonic(), 0.0)):
            now = time.monotonic()
            idle = now - self._last_step
            if idle >= self.seconds:
                self._report(idle)
                due = now + self.seconds
            else:
                due = self._last_step + self.seconds

    def _report(self, idle: float) -> None:
        names = {thread.ident: thread.name for thread in threading.enumerate()}
        rank = global_rank()
        parts = [f"[{TOOL}] rank {rank}: no training step has ended for {idle:.0f} s; where its threads are:\n"]
        for ident, frame in sys._current_frames().items():
            if ident == threading.get_ident():
                continue  # this watcher
            parts.append(f"-- thread {names.get(ident, ident)}\n")
            parts.extend(traceback.format_stack(frame))
        stream = self._stream or sys.__stderr__
        if stream is not None:
            stream.write("".join(parts))  # one write: ranks sharing a terminal interleave less
            stream.flush()
