"""Megatron-Bridge checkpoints on disk: which are complete, where a run resumes, what a stage consumes.

How Megatron-Bridge 0.6.2 saves ``<save>/iter_<7 digits>/`` (``torch_dist`` format), in order:
  1. every rank writes its shards; torch DCP writes ``.metadata`` when they are all written;
  2. rank 0 writes ``metadata.json`` (the Megatron dist-checkpoint config), then a barrier;
  3. rank 0 writes ``train_state.pt`` into the iteration, copies it to ``<save>/latest_train_state.pt``,
     writes the tracker ``<save>/latest_checkpointed_iteration.txt`` (the iteration number), and finally
     ``run_config.yaml`` into the iteration.

So an iteration is complete only when all four files are there and ``metadata.json`` parses: a run killed
at any point before step 3 ends leaves an iteration without ``run_config.yaml``, which is never taken. The
tracker is written in place (not atomically): a resume takes the newest complete iteration at or below the
tracker's, and when the tracker is unreadable, the newest complete iteration (its ``run_config.yaml`` proves
the tracker had reached it). When that is not the tracker's iteration, the run must load it explicitly
(Megatron-Bridge ``checkpoint.ckpt_step``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omni3_shared.errors import InvalidInputError

TRACKER_FILE = "latest_checkpointed_iteration.txt"
TRAIN_STATE_TRACKER = "latest_train_state.pt"
TRAIN_STATE_FILE = "train_state.pt"
RUN_CONFIG_FILE = "run_config.yaml"
DIST_METADATA_FILE = "metadata.json"
DCP_METADATA_FILE = ".metadata"
COMPLETE_MARKERS = (DCP_METADATA_FILE, DIST_METADATA_FILE, TRAIN_STATE_FILE, RUN_CONFIG_FILE)
ITERATION_DIR = re.compile(r"^iter_(\d{7,})$")

# The omni3 model shape (model_shape.LlmShape fields) -> the Megatron provider fields run_config.yaml stores.
SHAPE_FIELDS = {
    "hidden_size": ("hidden_size",),
    "num_attention_heads": ("num_attention_heads",),
    "num_key_value_heads": ("num_query_groups",),
    "n_routed_experts": ("num_moe_experts",),
    "mamba_num_heads": ("mamba_num_heads",),
    "mamba_head_dim": ("mamba_head_dim",),
    "ssm_state_size": ("mamba_state_dim",),
    "n_groups": ("mamba_num_groups",),
    "hybrid_override_pattern": ("hybrid_override_pattern", "hybrid_layer_pattern"),
    "vocab_size": ("vocab_size",),
}


def iteration_dir_name(iteration: int) -> str:
    return f"iter_{iteration:07d}"


@dataclass(frozen=True)
class IterationCheckpoint:
    iteration: int
    path: Path
    missing: tuple[str, ...] = ()  # markers absent or unreadable; empty means complete

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run restarts from."""

    iteration: int
    path: Path
    tracker_iteration: int | None
    skipped: tuple[IterationCheckpoint, ...] = field(default=())  # newer iterations that are not complete

    @property
    def needs_explicit_step(self) -> bool:
        """Megatron would load the tracker's iteration; this one must be named (checkpoint.ckpt_step)."""
        return self.tracker_iteration != self.iteration


def inspect_iteration(path: Path) -> IterationCheckpoint:
    match = ITERATION_DIR.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not an iteration directory (iter_NNNNNNN)")
    missing = [name for name in COMPLETE_MARKERS if not (path / name).is_file()]
    if DIST_METADATA_FILE not in missing and not _valid_dist_metadata(path / DIST_METADATA_FILE):
        missing.append(f"{DIST_METADATA_FILE} (unreadable)")
    for name in (TRAIN_STATE_FILE, RUN_CONFIG_FILE):
        if name not in missing and (path / name).stat().st_size == 0:
            missing.append(f"{name} (empty)")
    return IterationCheckpoint(int(match.group(1)), path, tuple(missing))


def _valid_dist_metadata(path: Path) -> bool:
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(document, dict) and "sharded_backend" in document


def iterations(save_dir: Path) -> list[IterationCheckpoint]:
    """Every iteration directory under ``save_dir``, oldest first."""
    save_dir = Path(save_dir)
    if not save_dir.is_dir():
        return []
    found = [inspect_iteration(p) for p in save_dir.iterdir() if p.is_dir() and ITERATION_DIR.match(p.name)]
    return sorted(found, key=lambda checkpoint: checkpoint.iteration)


def read_tracker(save_dir: Path) -> int | None:
    """The iteration the tracker names; ``None`` when it is absent, empty, torn or says 'release'."""
    try:
        text = (Path(save_dir) / TRACKER_FILE).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def resume_point(save_dir: Path) -> ResumePoint | None:
    """The newest complete checkpoint a run in ``save_dir`` restarts from, or ``None`` to start fresh."""
    tracker = read_tracker(save_dir)
    found = iterations(save_dir)
    eligible = [c for c in found if c.complete and (tracker is None or c.iteration <= tracker)]
    if not eligible:
        return None
    chosen = eligible[-1]
    skipped = tuple(c for c in found if c.iteration > chosen.iteration and not c.complete)
    return ResumePoint(chosen.iteration, chosen.path, tracker, skipped)


def describe(save_dir: Path) -> dict[str, Any]:
    """What the dry run prints about a run directory's checkpoints."""
    point = resume_point(save_dir)
    found = iterations(save_dir)
    if point is None:
        status = "no complete checkpoint: the run starts from the pretrained checkpoint"
    else:
        status = f"resumes from iteration {point.iteration}"
        if point.needs_explicit_step:
            status += f" (the tracker says {point.tracker_iteration}; the run loads {point.iteration} explicitly)"
    entry: dict[str, Any] = {"path": str(save_dir), "status": status}
    incomplete = [f"{c.path.name} (missing {', '.join(c.missing)})" for c in found if not c.complete]
    if incomplete:
        entry["incomplete_never_loaded"] = incomplete
    return entry


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints other stages hand over


def checkpoint_dir_of(artifact_dir: Path, extra: Mapping[str, Any] | None) -> Path:
    """Where the Megatron checkpoint of an artifact lies: its manifest's ``extra.checkpoint.dir``, else itself.

    omni3-sft's run manifest names ``checkpoints`` (see ``run_outputs.checkpoint_entry``).
    """
    entry = (extra or {}).get("checkpoint")
    if isinstance(entry, Mapping) and isinstance(entry.get("dir"), str):
        return Path(artifact_dir) / entry["dir"]
    return Path(artifact_dir)


def latest_run_config(checkpoint_dir: Path) -> Path | None:
    """run_config.yaml of the checkpoint a load would take (the dir itself when it is an iteration)."""
    checkpoint_dir = Path(checkpoint_dir)
    if ITERATION_DIR.match(checkpoint_dir.name) and (checkpoint_dir / RUN_CONFIG_FILE).is_file():
        return checkpoint_dir / RUN_CONFIG_FILE
    point = resume_point(checkpoint_dir)
    return point.path / RUN_CONFIG_FILE if point else None


def saved_model_fields(run_config: Path) -> dict[str, Any] | None:
    """The scalar fields of the ``model`` section of a run_config.yaml; ``None`` when it cannot be read."""
    try:
        document = yaml.safe_load(run_config.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    model = document.get("model") if isinstance(document, dict) else None
    if not isinstance(model, dict):
        return None
    return {key: value for key, value in model.items() if isinstance(value, (int, str, float, bool))}


def compatibility_problems(saved: Mapping[str, Any], shape_fields: Mapping[str, Any], source: str) -> list[str]:
    """Differences between the model a checkpoint was saved from and the one the HF config describes."""
    problems = []
    for ours, theirs in SHAPE_FIELDS.items():
        expected = shape_fields.get(ours)
        for key in theirs:
            if key in saved and saved[key] is not None and expected is not None:
                if saved[key] != expected:
                    problems.append(f"{key} {saved[key]!r} in {source}, {expected!r} in the HF config")
                break
    return problems


def check_compatible(checkpoint_dir: Path, shape_fields: Mapping[str, Any]) -> str:
    """Refuse a checkpoint saved from another model shape; returns what was checked, for the dry run.

    Raises:
        InvalidInputError: the checkpoint's run_config.yaml disagrees with the HF config.
    """
    run_config = latest_run_config(checkpoint_dir)
    if run_config is None:
        return "no run_config.yaml found: shape not compared"
    saved = saved_model_fields(run_config)
    if saved is None:
        return f"{run_config} unreadable as plain YAML: shape not compared"
    problems = compatibility_problems(saved, shape_fields, str(run_config))
    if problems:
        raise InvalidInputError(
            f"checkpoint {checkpoint_dir} was saved from another model: {problems[0]}",
            fix="use the Megatron checkpoint omni3-import made from this HF checkpoint, or the matching --hf-model",
        )
    return f"shape matches {run_config}"
