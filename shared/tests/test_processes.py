"""A launched command ends with everything it started, also what runs in a session of its own (as torchrun's
workers do). Real processes throughout."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omni3_shared import processes

# A launcher like torchrun: its worker runs in a session of its own and starts a helper of its own; each writes its
# pid. The launcher ignores SIGTERM, as a stuck one would.
LAUNCHER = """
import subprocess, sys, time, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pids = sys.argv[1]
worker = '''
import os, subprocess, sys, time
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[1], "w").write(f"[{os.getpid()}, {helper.pid}]")
time.sleep(300)
'''
subprocess.Popen([sys.executable, "-c", worker, pids], start_new_session=True)
time.sleep(300)
"""


def _launch(tmp_path: Path) -> tuple[subprocess.Popen, list[int]]:
    pids = tmp_path / "pids.json"
    process = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(pids)], start_new_session=True)
    deadline = time.monotonic() + 60
    while not pids.is_file() or not pids.read_text().endswith("]"):
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.1)
    return process, json.loads(pids.read_text())


def test_the_tree_holds_a_worker_in_its_own_session(tmp_path: Path) -> None:
    process, (worker, helper) = _launch(tmp_path)
    try:
        tree = processes.process_tree(process.pid)
        assert tree[0] == process.pid and worker in tree and helper in tree
        assert tree.index(worker) < tree.index(helper)  # parents first
    finally:
        assert processes.end_process_tree(process, processes.AT_ONCE) == []


def test_a_group_kill_misses_the_worker_and_the_tree_kill_does_not(tmp_path: Path) -> None:
    process, (worker, helper) = _launch(tmp_path)
    try:
        process.send_signal(signal.SIGKILL)  # what killing the launcher's group did
        process.wait(timeout=30)
        time.sleep(0.5)
        assert processes.alive(worker) and processes.alive(helper)
    finally:
        for pid in (worker, helper):
            if processes.alive(pid):
                subprocess.run(["kill", "-9", str(pid)], check=False)
    process, (worker, helper) = _launch(tmp_path)
    assert processes.end_process_tree(process, processes.AT_ONCE) == []
    assert process.returncode == -signal.SIGKILL
    assert not processes.alive(worker) and not processes.alive(helper)


def test_sigterm_first_then_sigkill_for_what_ignores_it(tmp_path: Path) -> None:
    process, (worker, helper) = _launch(tmp_path)
    started = time.monotonic()
    assert processes.end_process_tree(process, ((signal.SIGTERM, 1), (signal.SIGKILL, 10))) == []
    assert process.returncode == -signal.SIGKILL  # the launcher ignored SIGTERM
    assert not processes.alive(worker) and not processes.alive(helper)
    assert time.monotonic() - started < 15


def test_run_to_end_returns_what_the_command_printed() -> None:
    done = processes.run_to_end([sys.executable, "-c", "print('hello'); raise SystemExit(3)"], 60, capture_output=True)
    assert (done.returncode, done.stdout.strip()) == (3, b"hello")


def test_run_to_end_past_its_timeout_leaves_nothing_running(tmp_path: Path) -> None:
    pids = tmp_path / "pids.json"
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        processes.run_to_end(
            [sys.executable, "-c", LAUNCHER, str(pids)],
            3,
            capture_output=True,
            steps=((signal.SIGTERM, 1), *processes.AT_ONCE),
        )
    assert time.monotonic() - started < 30  # the launcher ignores SIGTERM: SIGKILL one second later
    worker, helper = json.loads(pids.read_text())
    assert not processes.alive(worker) and not processes.alive(helper)


def test_a_zombie_is_not_alive() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not processes.alive(process.pid)  # ended, not yet reaped
    process.wait()
    assert not processes.alive(process.pid)


def test_an_ended_and_reaped_command_is_not_walked_again() -> None:
    """Its pid may already belong to another process: nothing is signalled."""
    process = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    process.wait()
    started = time.monotonic()
    assert processes.end_process_tree(process, processes.GENTLE) == []
    assert time.monotonic() - started < 1
