"""Every tool image builds offline from the local base, answers in its container and carries no secrets."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import tomllib
from container_commands import HELP, SFT_DRY_RUN, TOOLS
from container_runner import run_container

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
# Names of environment variables and history lines that would betray a credential baked into an image.
SECRET_NAME = re.compile(r"TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL", re.IGNORECASE)
SECRET_ASSIGNMENT = re.compile(
    r"(TOKEN|PASSWORD|PASSWD|SECRET|API_?KEY|ACCESS_?KEY|CREDENTIAL)[A-Z0-9_]*\s*=\s*\S", re.IGNORECASE
)
SECRET_SHAPE = re.compile(
    r"\bhf_[A-Za-z0-9]{30,}|\bgh[pousr]_[A-Za-z0-9]{30,}|\bAKIA[0-9A-Z]{16}\b|BEGIN [A-Z ]*PRIVATE KEY"
)


def inspect(image: str) -> dict:
    raw = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True, check=True).stdout
    return json.loads(raw)[0]


def version_of(tool: str) -> str:
    return tomllib.loads((REPO / "tools" / tool / "pyproject.toml").read_text())["project"]["version"]


def test_every_tool_image_builds_from_the_local_base(image_build: dict, images: dict[str, str]) -> None:
    assert image_build["returncode"] == 0
    base_layers = inspect("omni3-base:local")["RootFS"]["Layers"]
    for tool, image in images.items():
        details = inspect(image)
        assert details["RootFS"]["Layers"][: len(base_layers)] == base_layers, f"{image} is not built on omni3-base"
        versioned = f"{TOOLS[tool]}:{version_of(tool)}"
        assert versioned in details["RepoTags"], f"{image} lacks the tag {versioned}"


@pytest.mark.parametrize("tool", list(TOOLS))
def test_image_labels_and_entrypoint(images: dict[str, str], tool: str) -> None:
    config = inspect(images[tool])["Config"]
    labels = config["Labels"] or {}
    assert labels["org.opencontainers.image.title"] == TOOLS[tool]
    assert labels["org.opencontainers.image.version"] == version_of(tool)
    for key in ("revision", "source"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"label {key} is empty"
    assert config["Entrypoint"] == [TOOLS[tool]]
    assert config["WorkingDir"] == "/data"
    assert "OMNI3_STORAGE_ROOT=/data" in config["Env"]


@pytest.mark.parametrize("tool", list(TOOLS))
def test_image_runs_as_unprivileged_user_and_holds_no_secrets(images: dict[str, str], tool: str) -> None:
    config = inspect(images[tool])["Config"]
    assert config["User"] not in ("", "root", "0", "0:0"), f"{images[tool]} runs as root"
    assert config["User"].split(":")[0] in ("1000", "omni3")
    names = [entry.split("=", 1)[0] for entry in config["Env"]]
    assert not [name for name in names if SECRET_NAME.search(name)], f"secret-like variables in {names}"
    history = subprocess.run(
        ["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", images[tool]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert not SECRET_ASSIGNMENT.search(history), "a build step assigns a secret-like value"
    assert not SECRET_SHAPE.search(history), "a build step contains something shaped like a credential"
    whoami = run_container(images[tool], ["-c", "id -u"], entrypoint="sh")
    assert whoami.exit_code == 0 and whoami.stdout.strip() == "1000", whoami.output


@pytest.mark.parametrize("tool", list(TOOLS))
def test_tool_answers_help_in_its_container(images: dict[str, str], tool: str) -> None:
    result = run_container(images[tool], HELP)
    assert result.exit_code == 0, result.output
    assert TOOLS[tool] in result.output


def test_sft_dry_run_of_the_tiny_config(images: dict[str, str]) -> None:
    result = run_container(images["sft"], SFT_DRY_RUN)
    assert result.exit_code == 0, result.output
    assert "tiny" in result.output
