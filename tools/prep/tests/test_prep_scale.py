"""Scale: memory stays flat on a 10,000-sample job (parent and workers), and progress is reported."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _tree_rss(pid: int) -> dict[int, int]:
    """Resident kB of ``pid`` and of every process below it."""
    found: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents = {int(entry.name): int(fields.get("PPid", "0").strip())}
        if int(entry.name) == pid or parents[int(entry.name)] == pid:
            found[int(entry.name)] = int(fields.get("VmRSS", "0 kB").split()[0] or 0)
    return found


def _peak_rss(tmp_path: Path, samples: int) -> tuple[int, int, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OMNI3_")}
    command = [sys.executable, "-m", "omni3_prep", "synth", "--kind", "receipts", "--sample", str(samples)]
    command += ["--workers", "2", "--output", str(tmp_path / f"out{samples}")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent_peak = worker_peak = 0
    while process.poll() is None:
        for pid, rss in _tree_rss(process.pid).items():
            if pid == process.pid:
                parent_peak = max(parent_peak, rss)
            else:
                worker_peak = max(worker_peak, rss)
        time.sleep(0.2)
    _, err = process.communicate()
    assert process.returncode == 0, err[-3000:]
    return parent_peak, worker_peak, err


def test_memory_stays_flat_from_1000_to_10000_samples(tmp_path: Path) -> None:
    small_parent, small_worker, _ = _peak_rss(tmp_path, 1000)
    large_parent, large_worker, progress = _peak_rss(tmp_path, 10_000)
    print(f"peak RSS kB, 1,000 -> 10,000 samples: main {small_parent} -> {large_parent}", end=", ")
    print(f"worker {small_worker} -> {large_worker}")
    assert large_parent - small_parent < 40_000, (small_parent, large_parent)  # kB
    assert large_worker - small_worker < 20_000, (small_worker, large_worker)
    last = [line for line in progress.splitlines() if "10000/10000 samples" in line][-1]
    assert "samples/s" in last and "shards 100" in last and "ETA" in last
