"""omni3's pytest plugin, loaded through the workspace's pytest11 entry point: marker skips and fixtures.

- ``gpu``: skipped unless torch sees CUDA (the lent GPU machines run them through ci/gpu/).
- ``container``: skipped unless a Docker engine answers; in CI (``CI`` set) a missing engine is an error,
  so a broken .ci/run cannot turn the container tests into silent skips.
- ``omni3_isolated``: no OMNI3_*, launcher or Slurm variable of the machine leaks in; the test runs in its
  own scratch directory (a test folder's conftest makes it autouse).
- ``make_artifact``: publish a small artifact of a kind, through the real protocol.
- ``nothing_written`` and ``dry_run_plan``: what the tools' CLI tests assert about outputs and dry runs.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from omni3_shared.manifest import ArtifactKind, tool_info
from omni3_shared.publish import publish_artifact

LAUNCHER_VARIABLES = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK")


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


@pytest.fixture
def omni3_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in list(os.environ):
        if name.startswith(("OMNI3_", "SLURM_")) or name in LAUNCHER_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def make_artifact() -> Callable[..., Path]:
    """``make(path, kind, files=None, **publish_options)``: files maps relative names to bytes."""

    def make(path: Path, kind: ArtifactKind, files: dict[str, bytes] | None = None, **options: object) -> Path:
        contents = {"weights.bin": b"\x00" * 64, "config.json": b"{}"} if files is None else files
        tool = tool_info("omni3-test", "0.0")
        with publish_artifact(path, kind=kind, tool=tool, config={}, inputs=[], **options) as staging:
            for name, data in contents.items():
                target = staging.path / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        return path

    return make


def nothing_written(output: Path) -> bool:
    """Neither the output nor any of its siblings (staging, lock) exists."""
    return not output.exists() and not list(output.parent.glob(f".{output.name}.*"))


def dry_run_plan(cli: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    """Run ``cli`` with ``--dry-run``, expect exit 0, and return the printed plan."""
    assert cli([*argv, "--dry-run"]) == 0
    return yaml.safe_load(capsys.readouterr().out)
