"""Fixtures of the container tests: the tool images, built once per session from the local base.

The images come from ci/images/build.sh (omni3-base:local from debootstrap, a local wheelhouse, no
registry), which reuses the cached base and layers, so a warm session starts in seconds.
Set OMNI3_SKIP_IMAGE_BUILD=1 to test images that are already built.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The helper modules beside this file (container_commands, container_runner); pytest runs with
# --import-mode=importlib, which does not put test folders on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from container_commands import TOOLS
from container_runner import docker_answers

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "ci" / "images" / "build.sh"
BUILD_TIMEOUT_S = 1500


@pytest.fixture(scope="session")
def image_build() -> dict[str, object]:
    """Run ci/images/build.sh for all six tools once; its exit code, output and duration."""
    if not docker_answers():
        pytest.skip("no Docker engine answers")
    if os.environ.get("OMNI3_SKIP_IMAGE_BUILD") == "1":
        return {"returncode": 0, "stderr": "skipped (OMNI3_SKIP_IMAGE_BUILD=1)", "seconds": 0.0}
    start = time.monotonic()
    build = subprocess.run(
        ["bash", str(BUILD_SCRIPT), *TOOLS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    return {"returncode": build.returncode, "stderr": build.stderr, "seconds": time.monotonic() - start}


@pytest.fixture(scope="session")
def images(image_build: dict[str, object]) -> dict[str, str]:
    """Folder name -> image reference (:latest) of every tool; fails when the build failed."""
    if image_build["returncode"] != 0:
        pytest.fail(f"ci/images/build.sh failed ({image_build['returncode']}):\n{str(image_build['stderr'])[-6000:]}")
    return {tool: f"{image}:latest" for tool, image in TOOLS.items()}


@pytest.fixture
def shared_dir(tmp_path: Path) -> Path:
    """A host folder to mount as /data, writable by the images' unprivileged user (uid 1000)."""
    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(0o777)
    return folder
