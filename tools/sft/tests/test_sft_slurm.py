"""The Slurm job of omni3-sft, on the CPU: ci/slurm renders it for one and two nodes, bash accepts it, and run
with stand-ins for scontrol and srun it wires torchrun's rendezvous the way omni3-sft's world-size check reads it.

The template rendezvouses through c10d at the first node, so torchrun assigns node ranks itself: the job
passes --nnodes, --nproc-per-node and --rdzv-endpoint=MASTER_ADDR:MASTER_PORT, and no static --node-rank.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from omni3_sft import preflight, stage_config
from omni3_sft.settings import SftSettings
from omni3_shared.settings import load_settings

ROOT = Path(__file__).resolve().parents[3]
RENDER = ROOT / "ci" / "slurm" / "render.py"

pytestmark = pytest.mark.skipif(
    not RENDER.is_file() or shutil.which("bash") is None, reason="needs ci/slurm/render.py and bash"
)


def render(tmp_path: Path, nodes: int, gpus: int = 8, *tool_args: str) -> Path:
    output = tmp_path / f"sft-{nodes}.sbatch"
    command = [
        sys.executable,
        str(RENDER),
        "sft",
        "--nodes",
        str(nodes),
        "--gpus-per-node",
        str(gpus),
        "--image",
        "/lustre/images/omni3-sft.sqsh",
        "--data-dir",
        "/lustre/omni3",
        "-o",
        str(output),
        "--",
        *tool_args,
    ]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=30)
    return output


def stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run_job(tmp_path: Path, script: Path, hosts: list[str], job_id: int = 4242) -> list[str]:
    """Run the batch script with scontrol and srun stand-ins; returns what srun was asked to run, one per line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "srun-calls.txt"
    stub(bin_dir, "scontrol", 'if [[ "$1 $2" == "show hostnames" ]]; then printf "%s\\n" ' + " ".join(hosts) + "; fi\n")
    # srun records its arguments and the rendezvous variables the job exported
    stub(
        bin_dir,
        "srun",
        f'echo "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT OMNI3_STORAGE_ROOT=$OMNI3_STORAGE_ROOT" >> {calls}\n'
        f'printf "%s\\n" "$@" >> {calls}\n',
    )
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_NUM_NODES": str(len(hosts)),
        "SLURM_JOB_NODELIST": ",".join(hosts),
        "HOME": str(tmp_path),
    }
    subprocess.run(["bash", str(script)], check=True, env=env, cwd=tmp_path, capture_output=True, timeout=30)
    return calls.read_text().splitlines()


@pytest.mark.parametrize("nodes", [1, 2])
def test_the_job_renders_and_passes_bash_syntax_check(tmp_path: Path, nodes: int) -> None:
    script = render(tmp_path, nodes, 8, "--config", "valor32k")
    text = script.read_text()
    assert f"#SBATCH --nodes={nodes}" in text
    assert "#SBATCH --ntasks-per-node=1" in text
    assert "#SBATCH --gpus-per-node=8" in text
    assert "IMAGE=/lustre/images/omni3-sft.sqsh" in text
    assert "TOOL_MODULE=omni3_sft" in text
    assert "TOOL_ARGS=(--config valor32k)" in text
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


@pytest.mark.parametrize("hosts", [["gpu-a"], ["gpu-a", "gpu-b"]])
def test_the_job_wires_the_torchrun_rendezvous(tmp_path: Path, hosts: list[str]) -> None:
    script = render(tmp_path, len(hosts), 8, "--config", "valor32k", "train.train_iters=20")
    calls = run_job(tmp_path, script, hosts, job_id=4242)
    assert calls[0] == f"MASTER_ADDR={hosts[0]} MASTER_PORT={20000 + 4242 % 20000} OMNI3_STORAGE_ROOT=/data"
    argv = calls[1:]
    assert argv[:4] == [
        "--ntasks-per-node=1",
        "--container-image=/lustre/images/omni3-sft.sqsh",
        "--container-mounts=/lustre/omni3:/data",
        "--container-workdir=/data",
    ]
    torchrun = argv[argv.index("torchrun") :]
    assert f"--nnodes={len(hosts)}" in torchrun
    assert "--nproc-per-node=8" in torchrun
    assert "--rdzv-backend=c10d" in torchrun
    assert "--rdzv-id=4242" in torchrun
    assert f"--rdzv-endpoint={hosts[0]}:24242" in torchrun
    assert not [arg for arg in torchrun if arg.startswith("--node-rank")]  # c10d assigns node ranks
    assert torchrun[-5:] == ["-m", "omni3_sft", "--config", "valor32k", "train.train_iters=20"]


def test_world_size_seen_by_omni3_sft_in_a_two_node_job() -> None:
    # Inside the job: torchrun gives each worker WORLD_SIZE = nodes x GPUs per node; before torchrun (a dry run
    # under srun) the Slurm allocation gives the same number.
    torchrun_env = {"WORLD_SIZE": "16", "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_PER_NODE": "8"}
    assert preflight.world_size(None, torchrun_env).size == 16
    slurm_env = {"SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_PER_NODE": "8"}
    assert preflight.world_size(None, slurm_env).size == 16
    path = stage_config.variant_path("valor32k", None)
    config = stage_config.interpolate(
        stage_config.validate(stage_config.read_variant(path), "valor32k"), load_settings(SftSettings, {})
    )
    assert preflight.world_problems(config, 16) == []  # TP 4 x EP 4 fits two 8-GPU nodes
    assert preflight.world_problems(config, 6)  # and an odd allocation is refused before training
