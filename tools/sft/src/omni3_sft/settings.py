"""Settings of omni3-sft (environment prefix OMNI3_).

A stage variant's ``settings:`` block sits below the environment, so ``--config tiny`` brings the tiny
model and data by default while ``OMNI3_MEGATRON_CHECKPOINT`` still wins.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from omni3_shared.settings import ToolSettings

HUB_MODEL_ID = "nvidia/Nemotron-3-Nano-Omni-30B-A3B-Reasoning-BF16"


class SftSettings(ToolSettings):
    config: str = "default"
    """Stage config: a variant name (see `omni3-sft variants`) or the path of a YAML file."""

    stage_dir: Path | None = None
    """Folder of the stage's variant YAML files; unset: the stages/stage0_sft of this checkout or image."""

    run_dir: Path = Path("runs/stage0_sft")
    """Training run directory written by this tool (checkpoints, metrics, report, manifest)."""

    megatron_checkpoint: Path = Path("checkpoints/nemotron_omni")
    """Megatron checkpoint training starts from (the output of omni3-import)."""

    hf_model: str = HUB_MODEL_ID
    """HF checkpoint directory providing config, tokenizer and processor; hub ids need hf://org/name."""

    cord_v2_path: Path = Path("datasets/cord_v2")
    """CORD-v2-style image+text dataset (from omni3-prep hf or synth) for the image-text variants."""

    valor32k_energon_path: Path = Path("datasets/valor32k/energon")
    """Valor32k-AVQA Energon dataset (from omni3-prep valor32k) for the Valor32k variants."""

    triton_cache_dir: Path = Path("cache/triton")
    """Triton's kernel cache (compiled kernels, autotuning results), kept on the shared storage so containers that
    come and go reuse it: the first run of a model spends about 2 minutes of its first iteration autotuning the
    Mamba and MoE kernels, later runs of that model skip most of it. TRITON_CACHE_DIR, when set, wins."""

    trust_remote_code: bool = False
    """Run Python code shipped inside the HF checkpoint (configuration_*.py). Off unless you trust the source."""

    nproc: int | None = Field(default=None, gt=0)
    """GPUs the run will have, for the checks before launch; unset: torchrun's WORLD_SIZE, else the Slurm job's."""

    gpu_memory_gb: float = Field(default=80.0, gt=0)
    """Memory of one GPU in GB: a per-GPU memory estimate above it prints a warning before the run."""
