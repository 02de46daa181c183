"""Fixtures of the CLI tests: a clean OMNI3_* environment and a scratch working directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from omni3_shared.manifest import ArtifactKind, tool_info
from omni3_shared.publish import publish_artifact


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No OMNI3_* variable of the machine running the tests leaks in; relative paths land in tmp_path."""
    for name in list(os.environ):
        if name.startswith("OMNI3_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def make_artifact() -> Callable[..., Path]:
    """Publish a small artifact of ``kind`` at ``path`` with ``files`` (relative name -> bytes)."""

    def make(path: Path, kind: ArtifactKind, files: dict[str, bytes] | None = None, **options: object) -> Path:
        contents = {"weights.bin": b"\x00" * 64, "config.json": b"{}"} if files is None else files
        with publish_artifact(
            path, kind=kind, tool=tool_info("omni3-test", "0.0"), config={}, inputs=[], **options
        ) as staging:
            for name, data in contents.items():
                target = staging.path / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        return path

    return make
