"""The scripts that carry the GPU proofs (ci/gpu/, ci/dev/) parse and stop on unset variables and failed pipes.

They run only on lent GPU machines, where a syntax error costs device time; this catches it on the CPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(str(path.relative_to(REPO)) for path in [*REPO.glob("ci/gpu/*.sh"), *REPO.glob("ci/dev/*.sh")])
SOURCED = {"ci/gpu/common.sh"}  # sourced by the others, which set the shell options


def test_the_scripts_are_found() -> None:
    assert {"ci/gpu/run-all.sh", "ci/gpu/session.sh", "ci/gpu/run-layout.sh"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_gpu_script_parses_and_is_strict(script: str) -> None:
    checked = subprocess.run(["bash", "-n", script], cwd=REPO, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    if script not in SOURCED:
        lines = (REPO / script).read_text().splitlines()
        assert any(line.startswith("set -") and "u" in line and "pipefail" in line for line in lines), script
