"""omni3's pytest plugin, loaded through the workspace's pytest11 entry point: marker skips and fixtures.

- ``gpu``: skipped unless torch sees CUDA (the lent GPU machines run them through ci/gpu/).
- ``container``: skipped unless a Docker engine answers; in CI (``CI`` set) a missing engine is an error,
  so a broken .ci/run cannot turn the container tests into silent skips.
- ``omni3_isolated``: no OMNI3_*, launcher or Slurm variable of the machine leaks in; the test runs in its
  own scratch directory (a test folder's conftest makes it autouse).
- ``make_artifact``: publish a small artifact of a kind, through the real protocol.
- ``nothing_written`` and ``dry_run_plan``: what the tools' CLI tests assert about outputs and dry runs.
- ``load_script``: a script that is not in a package (tests/bench/*.py), imported by path for its tests.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from omni3_shared.hf_checkpoint import INDEX_FILE
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


def load_script(path: Path, module_name: str) -> ModuleType:
    """Import the script at ``path`` as ``module_name`` (registered in sys.modules: its dataclasses need that)."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def nothing_written(output: Path) -> bool:
    """Neither the output nor any of its siblings (staging, lock) exists."""
    return not output.exists() and not list(output.parent.glob(f".{output.name}.*"))


def dry_run_plan(cli: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    """Run ``cli`` with ``--dry-run``, expect exit 0, and return the printed plan."""
    assert cli([*argv, "--dry-run"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


# A LoRA training run and its base, as the lifecycle tools read them (omni3_shared.lora_run).
LORA_BASE_ARCHITECTURE = "NemotronH_Nano_Omni_Reasoning_V3"
LORA_BASE_LAYER = "language_model.backbone.layers."
# module -> (out, in): a Mamba in_proj, two routed experts' up/down projections and the shared expert.
LORA_BASE_MODULES = {
    f"{LORA_BASE_LAYER}0.mixer.in_proj": (16, 8),
    f"{LORA_BASE_LAYER}1.mixer.experts.0.up_proj": (12, 8),
    f"{LORA_BASE_LAYER}1.mixer.experts.1.up_proj": (12, 8),
    f"{LORA_BASE_LAYER}1.mixer.experts.0.down_proj": (8, 12),
    f"{LORA_BASE_LAYER}1.mixer.experts.1.down_proj": (8, 12),
    f"{LORA_BASE_LAYER}1.mixer.shared_experts.up_proj": (12, 8),
}
LORA_PEFT = {
    "type": "lora",
    "target_modules": ["in_proj", "linear_fc1", "linear_fc2"],
    "dim": 4,
    "alpha": 8,
    "dropout": 0.0,
}


@pytest.fixture
def make_lora_base() -> Callable[..., Path]:
    """A small base HF checkpoint, Omni config.json and real safetensors: ``make(path, architecture, modules)``."""

    def make(
        path: Path, architecture: str = LORA_BASE_ARCHITECTURE, modules: dict[str, tuple[int, int]] | None = None
    ) -> Path:
        torch = pytest.importorskip("torch")
        from safetensors.torch import save_file

        generator = torch.Generator().manual_seed(0)
        modules = LORA_BASE_MODULES if modules is None else modules
        tensors = {f"{m}.weight": torch.randn(*shape, generator=generator).bfloat16() for m, shape in modules.items()}
        tensors[f"{LORA_BASE_LAYER}0.norm.weight"] = torch.ones(8, dtype=torch.bfloat16)
        path.mkdir(parents=True)
        shard = "model-00001-of-00001.safetensors"
        save_file(tensors, str(path / shard))
        index = {"metadata": {}, "weight_map": dict.fromkeys(tensors, shard)}
        (path / INDEX_FILE).write_text(json.dumps(index))
        (path / "config.json").write_text(json.dumps({"architectures": [architecture], "llm_config": {}}))
        return path

    return make


@pytest.fixture
def make_lora_run() -> Callable[..., Path]:
    """A published LoRA training-run artifact as omni3-sft writes it (manifest extra with checkpoint, hf_model, peft,
    parallel; an iteration folder with run_config.yaml and torch_dist marker files):
    ``make(path, hf_model, peft=LORA_PEFT, iteration=5, drop=(), run_config_peft=..., extra_changes={})``."""

    def make(
        path: Path,
        hf_model: Path | None,
        peft: dict[str, Any] | None = LORA_PEFT,
        iteration: int = 5,
        drop: tuple[str, ...] = (),
        run_config_peft: dict[str, Any] | None = None,
        extra_changes: dict[str, Any] | None = None,
    ) -> Path:
        name = f"checkpoints/iter_{iteration:07d}"
        saved_peft = run_config_peft
        if saved_peft is None and peft:
            saved_peft = {
                "_target_": "megatron.bridge.peft.lora.LoRA",
                **{k: v for k, v in peft.items() if k != "type"},
            }
        files = {
            f"{name}/.metadata": b"dcp",
            f"{name}/metadata.json": json.dumps({"sharded_backend": "torch_dist"}).encode(),
            f"{name}/__0_0.distcp": b"\x01" * 4096,
            f"{name}/common.pt": b"\x00" * 64,
            f"{name}/run_config.yaml": yaml.safe_dump({"model": {}, "peft": saved_peft}).encode(),
            "checkpoints/latest_checkpointed_iteration.txt": str(iteration).encode(),
            "metrics.jsonl": b"",
        }
        files = {key: value for key, value in files.items() if key.rsplit("/", 1)[-1] not in drop}
        extra: dict[str, Any] = {
            "checkpoint": {"dir": "checkpoints", "format": "torch_dist", "iteration": iteration, "path": name},
            "hf_model": str(hf_model) if hf_model else None,
            "pretrained_checkpoint": "/nowhere/megatron",
            "peft": peft,
            "parallel": {"tensor_model_parallel_size": 1, "expert_model_parallel_size": 1},
        }
        extra.update(extra_changes or {})
        tool = tool_info("omni3-sft", "0.0")
        with publish_artifact(path, kind=ArtifactKind.TRAINING_RUN, tool=tool, config={}, inputs=[]) as staging:
            for relative, data in files.items():
                (staging.path / relative).parent.mkdir(parents=True, exist_ok=True)
                (staging.path / relative).write_bytes(data)
            staging.extra.update(extra)
        return path

    return make
