"""A build killed at any point publishes nothing, and rerunning it completes, reusing finished shards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prep_testkit import manifest, read_dataset

COMMAND = ["synth", "--kind", "receipts", "--sample", "240", "--shard-size", "10", "--workers", "1", "--output", "out"]


def _start(cwd: Path) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OMNI3_")}
    return subprocess.Popen(
        [sys.executable, "-m", "omni3_prep", *COMMAND],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the kill reaches every worker too
    )


def _wait_for(condition, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the build ended before the kill: {process.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the build never reached the kill point"
        time.sleep(0.01)


def _wait_until_gone(group: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {group} outlived SIGKILL")


@pytest.mark.parametrize("kill_point", ["first-shard", "indexing"])
def test_killed_build_publishes_nothing_and_a_rerun_completes(run, tmp_path: Path, kill_point: str) -> None:
    staging = tmp_path / ".out.partial"
    process = _start(tmp_path)
    if kill_point == "first-shard":
        _wait_for(lambda: len(list((staging / "prep" / "shards").glob("*.json"))) >= 2, process)
    else:
        _wait_for(lambda: (staging / ".nv-meta").is_dir(), process)
    code, _, err = run(*COMMAND)  # a second writer meanwhile is refused by the lock
    assert code == 1 and "being written by another process" in err
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    _wait_until_gone(process.pid)  # Energon's forked helpers hold the lock until the kernel has reaped them
    assert not (tmp_path / "out").exists(), "a killed build published something"

    code, _, err = run(*COMMAND)
    assert code == 0, err
    extra = manifest(tmp_path / "out")["extra"]
    assert extra["reused_shards"] >= 2
    assert extra["counts"]["total"]["samples"] == 240
    assert sum(len(keys) for keys in read_dataset(tmp_path / "out").values()) == 240
    assert not staging.exists() and not (tmp_path / ".out.lock").exists()


def test_a_complete_dataset_is_replaced_only_with_force(run) -> None:
    args = ("synth", "--kind", "receipts", "--sample", "4", "--output", "out")
    assert run(*args)[0] == 0
    code, _, err = run(*args, "--seed", "9")
    assert code == 2 and "--force" in err
    assert run(*args, "--seed", "9", "--force")[0] == 0
    assert manifest(Path("out"))["extra"]["source"]["seed"] == 9


def test_a_rerun_after_fixing_the_input_rebuilds_only_the_changed_shard(
    run, tmp_path: Path, raw_receipts: Path
) -> None:
    folder = tmp_path / "input"
    shutil.copytree(raw_receipts / "jsonl", folder)
    lines = (folder / "receipts.jsonl").read_text().splitlines()
    broken = json.loads(lines[-1])
    broken["images"] = ["images/arrives-later.png"]
    (folder / "receipts.jsonl").write_text("\n".join([*lines[:-1], json.dumps(broken)]) + "\n")
    args = ["jsonl", "--input", str(folder / "receipts.jsonl"), "--output", "out"]
    assert run(*args)[0] == 3
    shutil.copy(folder / "images" / "receipt_000000.png", folder / "images" / "arrives-later.png")
    code, _, err = run(*args)
    assert code == 0, err
    extra = manifest(Path("out"))["extra"]
    assert extra["reused_shards"] == extra["counts"]["total"]["shards"] - 1
    assert extra["counts"]["total"]["samples"] == len(lines)
