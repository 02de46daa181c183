"""Fixtures of omni3-prep's tests: a clean OMNI3_* environment, raw synthetic inputs, a CLI runner."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from omni3_prep import synth_raw
from omni3_prep.cli import cli

RAW_SEED = 7
# The tests import their helpers (prep_testkit) by name; importlib import mode does not add this folder.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def clean_environment(omni3_isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Isolated (omni3_shared.pytest_plugin), with small shards and one worker."""
    monkeypatch.setenv("OMNI3_SHARD_SIZE", "3")
    monkeypatch.setenv("OMNI3_WORKERS", "1")


@pytest.fixture(scope="session")
def raw_receipts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 synthetic receipts as CORD parquet (cord/) and JSONL with PNGs (jsonl/receipts.jsonl)."""
    root = tmp_path_factory.mktemp("raw-receipts")
    synth_raw.write_receipts(root, 10, RAW_SEED, 0.1, 0.1, workers=1)
    return root


@pytest.fixture(scope="session")
def raw_avqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 synthetic clips as VALOR videos (dir and tar) + QA files, and as JSONL with MP4s and WAVs."""
    root = tmp_path_factory.mktemp("raw-avqa")
    synth_raw.write_avqa(root, 6, RAW_SEED, 0.2, 0.2, workers=2)
    return root


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run omni3-prep in-process: (exit code, stdout, stderr)."""

    def invoke(*argv: str) -> tuple[int, str, str]:
        code = cli(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke
