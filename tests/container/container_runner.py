"""Run a tool image to completion with testcontainers and collect its exit code and output."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# testcontainers' reaper (Ryuk) comes from a registry, which these machines cannot reach; run_container
# removes every container it starts instead. Set before testcontainers reads its configuration.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.config import testcontainers_config
from testcontainers.core.container import DockerContainer

testcontainers_config.ryuk_disabled = True
# A tool run in-process by another test may leave a root log handler on pytest's closed capture stream;
# testcontainers' own INFO lines would then raise "Logging error" noise. They are not needed.
logging.getLogger("testcontainers").propagate = False


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def docker_answers() -> bool:
    """True when a Docker engine answers the docker CLI."""
    if shutil.which("docker") is None:
        return False
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def compose_command() -> list[str] | None:
    """`docker compose` (the plugin) when it answers, else the standalone docker-compose, else None."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def run_container(
    image: str,
    command: Sequence[str],
    *,
    volumes: Sequence[tuple[Path, str]] = (),
    env: dict[str, str] | None = None,
    entrypoint: str | None = None,
    timeout: float = 300,
) -> Result:
    """Start ``image`` with ``command`` as its arguments, wait for it to exit, remove it."""
    extra = {"entrypoint": entrypoint} if entrypoint else {}
    container = DockerContainer(image, **extra).with_command(list(command))
    for host, target in volumes:
        container.with_volume_mapping(str(host), target, "rw")
    for key, value in (env or {}).items():
        container.with_env(key, value)
    container.start()
    try:
        status = container.get_wrapped_container().wait(timeout=timeout)
        stdout, stderr = container.get_logs()
    finally:
        container.stop()
    return Result(int(status["StatusCode"]), stdout.decode(errors="replace"), stderr.decode(errors="replace"))
