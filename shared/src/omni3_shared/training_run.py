"""Where the weights of a Megatron artifact lie: an omni3-import checkpoint, or the saved iteration of an omni3-sft run.

An omni3-sft ``training-run`` artifact is a run directory (metrics, report, ``run_config.yaml`` of omni3 itself)
whose manifest ``extra.checkpoint`` names the Megatron-Bridge checkpoint inside it: ``path`` is the iteration
folder the run saved last and completely (``checkpoints/iter_0000050``), with ``iteration`` and ``format``. The
lifecycle tools load that folder, never the run directory itself: Megatron-Bridge would read omni3's
``run_config.yaml`` there as its own. ``omni3_shared.lora_run`` adds what a LoRA run must carry on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omni3_shared.errors import InvalidInputError
from omni3_shared.manifest import ArtifactKind, Manifest

RUN_CONFIG_FILE = "run_config.yaml"
# What Megatron-Bridge 0.6.2 writes into a finished torch_dist iteration folder (see omni3_sft.checkpoints).
ITERATION_MARKERS = (".metadata", "metadata.json", RUN_CONFIG_FILE)


def saved_iteration(run_dir: Path, extra: Mapping[str, Any]) -> tuple[int, Path]:
    """The iteration a run's manifest records as saved, and its folder, which must exist and be complete.

    Raises:
        InvalidInputError: no checkpoint recorded, another format than torch_dist, the folder missing or incomplete.
    """
    run_dir = Path(run_dir)
    entry = extra.get("checkpoint")
    if not isinstance(entry, Mapping) or not entry.get("path") or not isinstance(entry.get("iteration"), int):
        raise InvalidInputError(
            f"{run_dir} records no saved checkpoint (extra.checkpoint.path and .iteration)",
            fix="rerun omni3-sft until it saves a checkpoint; a run stopped before its first save has nothing",
        )
    if entry.get("format", "torch_dist") != "torch_dist":
        raise InvalidInputError(
            f"{run_dir}'s checkpoint has format {entry['format']!r}; only torch_dist is supported",
            fix="train with checkpoint.ckpt_format torch_dist (the omni3-sft default)",
        )
    path = run_dir / str(entry["path"])
    if not path.is_dir():
        raise InvalidInputError(
            f"{run_dir} is incomplete: its checkpoint folder {entry['path']} is missing",
            fix="restore the run directory, or rerun omni3-sft",
        )
    missing = [name for name in ITERATION_MARKERS if not (path / name).is_file()]
    if missing:
        raise InvalidInputError(
            f"checkpoint folder {path} is incomplete: {', '.join(missing)} missing",
            fix="the save was interrupted; use an earlier complete iteration or rerun omni3-sft",
        )
    return entry["iteration"], path


def weights_folder(artifact_dir: Path, manifest: Manifest | None) -> Path:
    """The folder to load full model weights from: a training run's saved iteration, else the artifact itself.

    Raises:
        InvalidInputError: a LoRA run, whose checkpoint holds the adapters and not the model; or what
            ``saved_iteration`` raises.
    """
    artifact_dir = Path(artifact_dir)
    if manifest is None or manifest.kind != ArtifactKind.TRAINING_RUN:
        return artifact_dir
    if manifest.extra.get("peft"):
        raise InvalidInputError(
            f"{artifact_dir} is a LoRA run: its checkpoint holds the adapters only, not a whole model",
            fix="omni3-lora-merge --lora-checkpoint RUN --output DIR writes the merged HF checkpoint itself; "
            "omni3-adapter-export writes an HF PEFT adapter",
        )
    return saved_iteration(artifact_dir, manifest.extra)[1]
