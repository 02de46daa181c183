"""The same flow inside the omni3-prep image, on a mounted volume, through testcontainers.

Skipped when no Docker engine answers or the image omni3-prep:latest is not built (ci/images/build.sh prep).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.container
IMAGE = "omni3-prep:latest"


def _docker_ready() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        if subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False).returncode != 0:
            return "no Docker engine answers"
        found = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer in time"
    return None if found.returncode == 0 else f"{IMAGE} is not built (ci/images/build.sh prep)"


def _run(volume: Path, *command: str, timeout: float = 600) -> tuple[int, str]:
    # testcontainers' reaper image comes from a registry these machines cannot reach: remove containers ourselves.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(IMAGE).with_command(list(command)).with_volume_mapping(str(volume), "/data", "rw")
    container.start()
    try:
        wrapped = container.get_wrapped_container()
        deadline = time.monotonic() + timeout
        while True:
            wrapped.reload()
            if wrapped.status in ("exited", "dead"):
                break
            assert time.monotonic() < deadline, "the container did not finish in time"
            time.sleep(0.5)
        code = int(wrapped.attrs["State"]["ExitCode"])
        logs = wrapped.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.stop()
    return code, logs


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(0o777)  # the image runs as uid 1000
    return folder


def test_prep_image_builds_and_validates_datasets_on_a_mounted_volume(volume: Path) -> None:
    code, logs = _run(volume, "synth", "--kind", "avqa", "--sample", "4", "--shard-size", "2", "--output", "avqa")
    assert code == 0, logs
    manifest = json.loads((volume / "avqa" / "omni3-manifest.json").read_text())
    assert manifest["extra"]["counts"]["total"]["samples"] == 4
    assert manifest["extra"]["energon"]["version"] == "7.4.1"
    code, logs = _run(volume, "synth", "--kind", "receipts", "--sample", "6", "--raw", "--output", "raw")
    assert code == 0, logs
    code, logs = _run(volume, "jsonl", "--input", "raw/jsonl/receipts.jsonl", "--output", "receipts")
    assert code == 0, logs
    code, logs = _run(volume, "energon", "--input", "receipts")
    assert code == 0, logs
    assert json.loads(logs[logs.index("{") :])["ok"] is True
    code, logs = _run(volume, "jsonl", "--input", "raw/jsonl/missing.jsonl", "--output", "x")
    assert code == 3, logs
