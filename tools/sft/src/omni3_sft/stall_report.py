"""Stall reports: a rank that finishes no training step for a while prints where its Python threads are.

A run that sits in its first iteration for minutes, or hangs in a collective, otherwise shows nothing until
Slurm's time limit. With ``train.stall_report_seconds: N`` every rank writes its Python stacks to stderr (the
standard library's ``faulthandler``, which needs no debugger and works while the main thread is stuck in C)
when no step has ended for N seconds, and again every N seconds until one does. Each step that ends re-arms
the timer, so a healthy run prints nothing. 0 (the default) turns it off.
"""

from __future__ import annotations

import faulthandler
import sys
from dataclasses import dataclass


@dataclass
class StallReport:
    seconds: int = 0

    @property
    def enabled(self) -> bool:
        return self.seconds > 0

    def step(self) -> None:
        """A step ended (or training starts): the next report comes ``seconds`` from now, unless another step ends."""
        if self.enabled:
            # sys.__stderr__: faulthandler writes to a file descriptor, which a captured sys.stderr may lack.
            faulthandler.dump_traceback_later(self.seconds, repeat=True, file=sys.__stderr__)

    def stop(self) -> None:
        if self.enabled:
            faulthandler.cancel_dump_traceback_later()
