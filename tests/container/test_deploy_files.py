"""Static checks of the deployment files: Dockerfiles, compose files, Slurm templates, CI scripts.

No Docker engine needed; compose files are also validated by `docker compose config` (or docker-compose)
when one is installed.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from container_commands import TOOLS
from container_runner import compose_command

REPO = Path(__file__).resolve().parents[2]
PIPELINE_ORDER = ["prep", "import", "sft", "lora-merge", "adapter-export", "export"]
GPU_TOOLS = [tool for tool in TOOLS if tool != "prep"]
SHELL_SCRIPTS = [".ci/run", "ci/images/build.sh", "ci/images/wheelhouse.sh", "ci/images/base/build-base.sh"]


def load_yaml(relative: str) -> dict:
    return yaml.safe_load((REPO / relative).read_text())


# Dockerfiles -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", list(TOOLS))
def test_dockerfile_conventions(tool: str) -> None:
    text = (REPO / "tools" / tool / "Dockerfile").read_text()
    image = TOOLS[tool]
    default_base = "python:3.11-slim" if tool == "prep" else "nvcr.io/nvidia/nemo:26.04"
    assert f"ARG BASE_IMAGE={default_base}\n" in text
    assert text.index("ARG BASE_IMAGE") < text.index("FROM ${BASE_IMAGE}")
    assert f'ENTRYPOINT ["{image}"]' in text
    assert "USER 1000:1000" in text
    assert "WORKDIR /data" in text and "OMNI3_STORAGE_ROOT=/data" in text
    for key in ("title", "version", "revision", "source"):
        assert f"org.opencontainers.image.{key}=" in text
    # the shared build steps (ci/images/tool-install.sh) come in first; dependencies (from pyproject files) are
    # installed before any source is copied, so a source change leaves the dependency layer cached
    install = "sh /tmp/omni3-build/tool-install.sh"
    assert text.index("COPY ci/images/tool-install.sh") < text.index(f"RUN {install} user")
    assert text.index(f"COPY tools/{tool}/pyproject.toml") < text.index(f"RUN {install} deps")
    assert text.index(f"RUN {install} deps") < text.index(f"COPY tools/{tool}/ ")
    assert text.index(f"COPY tools/{tool}/ ") < text.index(f"RUN {install} source {image}")
    env_lines = [line for line in text.splitlines() if line.startswith(("ENV", "ARG"))]
    assert not [line for line in env_lines if re.search(r"TOKEN|PASSWORD|SECRET|_KEY", line)]


def test_prep_installs_ffmpeg_only_when_missing() -> None:
    text = (REPO / "tools/prep/Dockerfile").read_text()
    assert "if ! command -v ffmpeg" in text and "apt-get install" in text


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    assert lines[lines.index("**")] == "**"  # everything out, then the few folders the Dockerfiles copy
    helpers = {"!ci/images/pyproject_reqs.py", "!ci/images/tool-install.sh"}
    assert {"!shared/", "!tools/", "!stages/", *helpers} <= set(lines)


# Shell scripts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_script_parses_and_is_strict(script: str) -> None:
    path = REPO / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True, check=False).returncode == 0
    assert "set -euo pipefail" in path.read_text()
    assert os.access(path, os.X_OK), f"{script} is not executable"


def test_tool_install_script_is_strict_posix_sh() -> None:
    """ci/images/tool-install.sh runs under the bases' /bin/sh (dash on Debian), not bash."""
    path = REPO / "ci/images/tool-install.sh"
    assert subprocess.run(["sh", "-n", str(path)], capture_output=True, check=False).returncode == 0
    text = path.read_text()
    assert text.startswith("#!/bin/sh\n") and "\nset -eu\n" in text
    assert os.access(path, os.X_OK), "ci/images/tool-install.sh is not executable"
    usage = subprocess.run(["sh", str(path), "nope"], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def test_pyproject_reqs_lists_third_party_requirements_only(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "ci/images/pyproject_reqs.py", "--build-requires", "shared/pyproject.toml"]
        + [f"tools/{tool}/pyproject.toml" for tool in TOOLS],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert lines and not [line for line in lines if line.lower().startswith("omni3")]
    assert any(line.startswith("pydantic") for line in lines)
    assert any(line.startswith("setuptools") for line in lines)  # the build backend, for offline builds
    assert len(lines) == len(set(lines))


# Compose ---------------------------------------------------------------------------------------------------


def test_pipeline_chains_every_tool_on_one_volume() -> None:
    compose = load_yaml("compose/pipeline.yaml")
    services = compose["services"]
    assert list(services) == PIPELINE_ORDER
    assert set(compose["volumes"]) == {"omni3-data"}
    for previous, name in itertools.pairwise(PIPELINE_ORDER):
        assert services[name]["depends_on"] == {previous: {"condition": "service_completed_successfully"}}
    for name, service in services.items():
        assert service["image"].startswith(f"omni3-{name}:")
        assert "omni3-data:/data" in service["volumes"]
        assert "HF_TOKEN" in service["environment"]  # passed through by name, never with a value
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        if name == "prep":
            assert devices is None
        else:
            assert devices and devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]


def option(service: dict, flag: str) -> str:
    command = service["command"]
    return command[command.index(flag) + 1]


def test_pipeline_hands_each_tool_the_artifact_it_accepts() -> None:
    """Each consumer reads what its producer writes; export gets the merged Megatron checkpoint, not the LoRA run
    (which holds adapters only: omni3-export refuses it)."""
    services = load_yaml("compose/pipeline.yaml")["services"]
    run = option(services["sft"], "--run-dir")
    assert option(services["lora-merge"], "--lora-checkpoint") == run
    assert option(services["adapter-export"], "--lora-checkpoint") == run
    assert option(services["lora-merge"], "--output-format") == "megatron"
    assert option(services["export"], "--megatron-path") == option(services["lora-merge"], "--output") != run
    assert option(services["sft"], "--megatron-checkpoint") == option(services["import"], "--megatron-path")


def test_cpu_compose_is_prep_then_validation() -> None:
    compose = load_yaml("compose/cpu.yaml")
    services = compose["services"]
    assert list(services) == ["synth", "validate"]
    assert services["validate"]["depends_on"] == {"synth": {"condition": "service_completed_successfully"}}
    for service in services.values():
        assert service["image"].startswith("omni3-prep:")
        assert "omni3-data:/data" in service["volumes"]
        assert "deploy" not in service


@pytest.mark.parametrize("compose_file", ["compose/pipeline.yaml", "compose/cpu.yaml"])
def test_compose_config_is_valid(compose_file: str) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed; the structure tests still run")
    result = subprocess.run(
        [*command, "-f", compose_file, "config", "--quiet"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# Slurm -----------------------------------------------------------------------------------------------------

FAKE_SCONTROL = '#!/bin/bash\n[ "$1 $2" = "show hostnames" ] && printf "node-a\\nnode-b\\n"\n'
FAKE_SRUN = '#!/bin/bash\nprintf "%s\\n" "$@" > "$SRUN_ARGS"\n'


def render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "ci/slurm/render.py", *args], cwd=REPO, capture_output=True, text=True, check=False
    )


def run_job(script: str, tmp_path: Path, nodes: int) -> list[str]:
    """Run a rendered job with stand-ins for scontrol and srun; the arguments srun got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    job = tmp_path / "job.sbatch"
    job.write_text(script)
    args_file = tmp_path / "srun-args"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SRUN_ARGS": str(args_file),
    }
    result = subprocess.run(["bash", str(job)], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return args_file.read_text().splitlines()


@pytest.mark.parametrize("tool", list(TOOLS))
def test_slurm_template_renders_for_every_tool(tool: str, tmp_path: Path) -> None:
    result = render(tool, "--data-dir", "/lustre/omni3", "--", "--help")
    assert result.returncode == 0, result.stderr
    assert "{{" not in result.stdout
    job = tmp_path / "job.sbatch"
    job.write_text(result.stdout)
    assert subprocess.run(["bash", "-n", str(job)], capture_output=True, check=False).returncode == 0
    assert f"#SBATCH --job-name={TOOLS[tool]}" in result.stdout
    assert ("#SBATCH --gpus-per-node=" in result.stdout) == (tool in GPU_TOOLS)


def test_multi_node_sft_job_runs_torchrun_in_the_container(tmp_path: Path) -> None:
    result = render(
        "sft", "--nodes", "2", "--image", "images/omni3-sft.sqsh", "--data-dir", "/lustre/omni3",
        "--mount", "/lustre/hf:/hf:ro", "--", "--config", "valor32k", "train.train_iters=5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "#SBATCH --nodes=2" in result.stdout
    args = run_job(result.stdout, tmp_path, nodes=2)
    assert "--container-image=./images/omni3-sft.sqsh" in args  # pyxis: a path starts with / or ./
    assert "--container-mounts=/lustre/omni3:/data,/lustre/hf:/hf:ro" in args
    assert "--container-workdir=/data" in args
    torchrun = args[args.index("torchrun") :]
    assert "--nnodes=2" in torchrun and "--nproc-per-node=8" in torchrun
    assert "--rdzv-backend=c10d" in torchrun and "--rdzv-id=4242" in torchrun
    assert any(arg.startswith("--rdzv-endpoint=node-a:") for arg in torchrun)
    assert torchrun[-5:] == ["-m", "omni3_sft", "--config", "valor32k", "train.train_iters=5"]


def test_prep_job_runs_the_tool_once(tmp_path: Path) -> None:
    result = render("prep", "--data-dir", "/scratch/omni3", "--", "synth", "--output", "datasets/a b")
    assert result.returncode == 0, result.stderr
    args = run_job(result.stdout, tmp_path, nodes=1)
    assert "torchrun" not in args
    assert args[-4:] == ["omni3-prep", "synth", "--output", "datasets/a b"]


@pytest.mark.parametrize(
    "bad",
    [["nope"], ["prep", "--nodes", "2"], ["sft", "--time", "soon"], ["sft", "--mount", "/a"]],
    ids=["unknown-tool", "multi-node-prep", "bad-time", "bad-mount"],
)
def test_render_refuses_bad_requests(bad: list[str]) -> None:
    result = render(*bad)
    assert result.returncode == 2
    assert "render.py:" in result.stderr


# CI pipeline -----------------------------------------------------------------------------------------------


def test_github_pipeline_builds_images_and_chains_the_tools() -> None:
    workflow = load_yaml("ci/github/pipeline.yml")
    jobs = workflow["jobs"]
    assert {"checks", "images", "gpu-chain"} <= set(jobs)
    steps = " ".join(str(step.get("run", "")) for job in jobs.values() for step in job["steps"])
    assert "ci/images/build.sh" in steps
    assert "compose/cpu.yaml" in steps and "compose/pipeline.yaml" in steps
    assert "ruff check" in steps and "pytest" in steps
