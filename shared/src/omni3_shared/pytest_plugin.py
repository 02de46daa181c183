"""The one skip hook for omni3's test markers, loaded by pytest through the workspace's pytest11 entry point.

- ``gpu``: skipped unless torch sees CUDA (the lent GPU machines run them through ci/gpu/).
- ``container``: skipped unless a Docker engine answers; in CI (``CI`` set) a missing engine is an error,
  so a broken .ci/run cannot turn the container tests into silent skips.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest


@functools.cache
def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@functools.cache
def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "gpu" in item.keywords and not cuda_available():
            item.add_marker(pytest.mark.skip(reason="needs CUDA and the Megatron stack (run ci/gpu/ on a GPU machine)"))
        if "container" in item.keywords and not docker_available():
            if os.environ.get("CI"):
                raise pytest.UsageError("CI is set but no Docker engine answers `docker info`: start dockerd first")
            item.add_marker(pytest.mark.skip(reason="needs a running Docker engine"))
