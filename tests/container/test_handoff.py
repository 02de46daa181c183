"""Two containers that share nothing but a mounted folder hand a dataset artifact from one to the other."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from container_commands import (
    DATA_MOUNT,
    DATASET,
    EXIT_INVALID_INPUT,
    PREP_SYNTH,
    PREP_VALIDATE,
    SFT_CONSUME,
    SFT_DATASET_ENV,
    SFT_DATASET_READY,
)
from container_runner import compose_command, run_container

from omni3_shared.manifest import MANIFEST_FILE, read_manifest

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]


def largest_listed_file(artifact: Path) -> Path:
    manifest = read_manifest(artifact)
    return artifact / max(manifest.files, key=lambda entry: entry.size).path


def remove_a_listed_file(artifact: Path) -> None:
    largest_listed_file(artifact).unlink()


def truncate_a_listed_file(artifact: Path) -> None:
    victim = largest_listed_file(artifact)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])


@pytest.fixture
def published(images: dict[str, str], shared_dir: Path) -> Path:
    """Container 1: omni3-prep publishes the synthetic dataset into the shared folder."""
    result = run_container(images["prep"], PREP_SYNTH, volumes=[(shared_dir, DATA_MOUNT)], timeout=600)
    assert result.exit_code == 0, result.output
    artifact = shared_dir / DATASET
    assert (artifact / MANIFEST_FILE).is_file(), f"no manifest in {artifact}: {result.output}"
    producer = read_manifest(artifact).tool
    assert (producer.image or "").startswith("omni3-prep:") and producer.source_commit, producer
    return artifact


def test_second_container_consumes_the_published_dataset(
    images: dict[str, str], shared_dir: Path, published: Path
) -> None:
    env = {SFT_DATASET_ENV: f"{DATA_MOUNT}/{DATASET}"}
    result = run_container(images["sft"], SFT_CONSUME, volumes=[(shared_dir, DATA_MOUNT)], env=env)
    assert result.exit_code == 0, result.output
    dataset_input = rf"- role: dataset\n\s+path: {DATA_MOUNT}/{DATASET}\n\s+{re.escape(SFT_DATASET_READY)}"
    assert re.search(dataset_input, result.output), result.output


def test_second_container_validates_the_published_dataset(
    images: dict[str, str], shared_dir: Path, published: Path
) -> None:
    command = [*PREP_VALIDATE, f"{DATA_MOUNT}/{DATASET}"]
    result = run_container(images["prep"], command, volumes=[(shared_dir, DATA_MOUNT)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "breakage", [remove_a_listed_file, truncate_a_listed_file], ids=["listed-file-gone", "listed-file-truncated"]
)
def test_second_container_rejects_a_broken_copy(
    images: dict[str, str], shared_dir: Path, published: Path, breakage
) -> None:
    broken = published.parent / f"{published.name}-broken"
    shutil.copytree(published, broken)
    breakage(broken)
    command = [*PREP_VALIDATE, f"{DATA_MOUNT}/{DATASET}-broken"]
    result = run_container(images["prep"], command, volumes=[(shared_dir, DATA_MOUNT)])
    assert result.exit_code == EXIT_INVALID_INPUT, result.output
    assert "error:" in result.output and "Traceback" not in result.output, result.output


def test_compose_cpu_chain_hands_over_through_a_named_volume(images: dict[str, str]) -> None:
    """compose/cpu.yaml: synth in one container, validation in another, one named volume between them."""
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    project = f"omni3test{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "OMNI3_VOLUME": f"{project}-data", "OMNI3_TAG": "latest"}
    compose = [*command, "-p", project, "-f", str(REPO / "compose/cpu.yaml")]
    try:
        result = subprocess.run(
            [*compose, "run", "--rm", "validate"], env=env, capture_output=True, text=True, timeout=900, check=False
        )
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    finally:
        subprocess.run([*compose, "down", "--volumes"], env=env, capture_output=True, timeout=300, check=False)
