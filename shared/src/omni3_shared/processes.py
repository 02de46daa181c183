"""Ending a launched command together with every process it started, for the scripts that launch tools (the GPU
tests, the benchmarks).

torchrun starts each worker in a session of its own. So killing torchrun, or its process group, leaves the workers
running, holding their GPUs and, after a SIGKILL meant to skip the final save, writing that checkpoint anyway
(the 1-GPU SFT benchmark of 2026-11-27). These helpers find the whole tree through /proc (Linux) and wait until
none of it runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# (signal, seconds to wait for every process to exit). SIGTERM reaches the launcher's process group: torchrun
# passes it on to its workers and omni3-sft saves before it stops. SIGKILL then reaches each process of the tree.
GENTLE = ((signal.SIGTERM, 20), (signal.SIGKILL, 10))
AT_ONCE = ((signal.SIGKILL, 10),)


def process_tree(root: int) -> list[int]:
    """``root`` and its running descendants, parents first (only ``root`` on a system without /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        parent = _parent_if_running(stat)
        if parent is not None:
            children.setdefault(parent, []).append(int(stat.parent.name))
    tree = [root]
    for pid in tree:  # grows while it is walked: breadth first
        tree.extend(children.get(pid, ()))
    return tree


def alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie has ended (it holds no memory and no GPU)."""
    return _parent_if_running(Path(f"/proc/{pid}/stat")) is not None


def _parent_if_running(stat: Path) -> int | None:
    """The parent pid of the process whose ``/proc/<pid>/stat`` this is; None once it has ended (a zombie) or gone."""
    try:
        # The command name, in parentheses, may hold spaces and ")": the fields after its last ")" are fixed.
        state, parent = stat.read_text().rsplit(")", 1)[1].split()[:2]
        return int(parent) if state != "Z" else None
    except (OSError, IndexError, ValueError):
        return None  # ended meanwhile


def end_process_tree(process: subprocess.Popen, steps: Sequence[tuple[int, int]] = GENTLE) -> list[int]:
    """Signal ``process`` (started with ``start_new_session=True``) and its whole tree, step by step, until none of
    it runs. Returns the processes that outlived every step (an empty list when all ended)."""
    tree: list[int] = []
    for sig, wait in steps:
        # Processes an earlier step orphaned are no longer below the root: keep them from the earlier walk. A root
        # already reaped is neither walked nor signalled: its pid may belong to another process by now.
        running = process.poll() is None
        if running:
            tree += [pid for pid in process_tree(process.pid) if pid not in tree]
        if sig == signal.SIGKILL:
            for pid in tree:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
        elif running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process.poll() is not None and not any(alive(pid) for pid in tree):
                return []
            time.sleep(0.1)
    process.poll()
    return [pid for pid in tree if alive(pid)]


def run_to_end(
    command: Sequence[str],
    timeout: float,
    *,
    capture_output: bool = False,
    steps: Sequence[tuple[int, int]] = GENTLE,
    **popen: Any,
) -> subprocess.CompletedProcess:
    """``subprocess.run(command, timeout=timeout, capture_output=..., **popen)``, except that a timeout or an
    interruption ends the command's whole process tree (``steps``), torchrun's workers included, before the
    exception goes on."""
    if capture_output:
        popen |= {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    with subprocess.Popen(command, start_new_session=True, **popen) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except BaseException:
            end_process_tree(process, steps)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.communicate(timeout=30)  # drain and close the pipes
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
