"""The GPU tests' tool runner: an omni3 tool's own command line in a subprocess, its whole output in a log file.

Loaded by ``conftest.py`` (the ``run_tool`` fixture) and by ``tests/contract/test_gpu_tool_runs.py``, which runs it
on the CPU.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omni3_shared import processes
from omni3_shared.rendezvous import free_port


@dataclass(frozen=True)
class ToolRun:
    """One tool process: its exit code, its output, and the log file holding both."""

    label: str
    returncode: int
    stdout: str
    stderr: str
    log: Path
    seconds: float

    def tail(self, lines: int = 40) -> str:
        return "\n".join((self.stdout + self.stderr).splitlines()[-lines:])


def tool_command(module: str, nproc: int) -> list[str]:
    """``python -m module``, under torchrun when ``nproc`` > 1."""
    if nproc == 1:
        return [sys.executable, "-m", module]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-port", str(free_port()), "-m", module]  # fmt: skip


def run_tool(
    root: Path,
    label: str,
    module: str,
    *args: str,
    nproc: int = 1,
    timeout: int = 1800,
    env: dict[str, str] | None = None,
) -> ToolRun:
    """Run ``python -m module args`` (torchrun with ``nproc`` > 1) with ``OMNI3_STORAGE_ROOT=root`` plus ``env``.

    The command, exit code and whole output go to ``$OMNI3_GPU_LOG_DIR/<label>.log`` (else ``root/logs``); one
    line with the exit code and wall time is printed. While the tool runs, its output grows in ``<label>.out`` and
    ``<label>.err`` there, so a run cut short by the end of a device session still leaves what it printed.
    """
    command = [*tool_command(module, nproc), *args]
    folder = Path(os.environ.get("OMNI3_GPU_LOG_DIR") or Path(root) / "logs")
    folder.mkdir(parents=True, exist_ok=True)
    log, live_out, live_err = (folder / f"{label}{suffix}" for suffix in (".log", ".out", ".err"))
    started = time.monotonic()
    with live_out.open("w") as out, live_err.open("w") as err:
        # run_to_end: a timeout ends torchrun's workers too, so the next test does not find the GPUs taken.
        completed = processes.run_to_end(command, timeout, stdout=out, stderr=err, text=True,
                                         env=os.environ | {"OMNI3_STORAGE_ROOT": str(root), "PYTHONUNBUFFERED": "1"}
                                         | (env or {}))  # fmt: skip
    stdout, stderr = live_out.read_text(), live_err.read_text()
    log.write_text(f"$ {' '.join(command)}\nexit {completed.returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr}")
    live_out.unlink()
    live_err.unlink()
    seconds = time.monotonic() - started
    print(f"[gpu-tool {time.strftime('%H:%M:%S')}] {label}: exit {completed.returncode} in {seconds:.0f} s",
          flush=True)  # fmt: skip
    return ToolRun(label, completed.returncode, stdout, stderr, log, seconds)
