"""`omni3-import tiny`: publish the built-in tiny Omni as an omni3 hf-checkpoint artifact, on the CPU.

The model is the one ``--hf-model tiny`` generates into the private cache, but written where the other tools
read it (``models/tiny_omni_hf`` by default, the tiny SFT variant's ``hf_model``) through the shared publish
protocol: lock, staging directory, manifest last, one rename.
"""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omni3_import import __version__
from omni3_import.tiny_model import BUILTIN_NAME, build_tiny_omni
from omni3_import.tiny_model.spec import vision_shapes
from omni3_shared.errors import Omni3Error, UsageError
from omni3_shared.manifest import ArtifactKind, tool_info
from omni3_shared.plan import OutputSpec, Plan, preflight
from omni3_shared.publish import ensure_free_space, publish_artifact
from omni3_shared.settings import ToolSettings

TOOL = "omni3-import"
DEFAULT_OUTPUT = "models/tiny_omni_hf"  # the tiny SFT variant's hf_model (stages/stage0_sft/tiny.yaml)
VISION_MODES = ("full", "omit")
PACKAGES = ("transformers", "tokenizers", "safetensors", "torch")
BYTES_PER_PARAMETER = 2  # build_tiny_omni writes bf16
# Config, tokenizer, processor and the LLM, sound and projector tensors are about 13 MB; the rest is headroom.
SMALL_PART_BYTES = 64 * 1024 * 1024
MAX_SEED = 2**63 - 2  # torch seeds are 64-bit and the vision stream uses seed + 1

log = logging.getLogger(TOOL)


def check_options(output: object, seed: object, vision: object) -> tuple[str, int, str]:
    """The flags as the command uses them, or a usage error (exit 2) naming the fix; nothing is written."""
    if vision not in VISION_MODES:
        raise UsageError(
            f"--vision must be full or omit, not '{vision}'",
            fix="use --vision full (round trips, image training; ~1.3 GB) or --vision omit (light CI runs)",
        )
    # Fire turns "--seed abc" into a string and "--seed 1.5" into a float; bool is an int subclass.
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be a whole number from 0 to {MAX_SEED}, not '{seed}'", fix="e.g. --seed 0")
    # Fire turns "--output 7" into an int; a path is text either way. An empty one would mean the storage root.
    if output is None or isinstance(output, bool) or not str(output).strip():
        raise UsageError("--output needs a directory", fix=f"e.g. --output {DEFAULT_OUTPUT}")
    return str(output), seed, str(vision)


def estimated_bytes(vision: str) -> int:
    """Disk the artifact needs: the full-size RADIO tower dominates (~1.3 GB bf16); 10% headroom on top."""
    vision_parameters = sum(math.prod(shape) for shape in vision_shapes().values()) if vision == "full" else 0
    return int((SMALL_PART_BYTES + vision_parameters * BYTES_PER_PARAMETER) * 1.1)


def vision_note(vision: str) -> str:
    if vision == "full":
        return "full-size RADIO ViT-H/16 tensors: every tensor round-trips and image training starts from them"
    return "no vision tensors: Megatron-Bridge initialises the vision tower randomly when it imports this model"


def tiny_config(output: Path, seed: int, vision: str) -> dict[str, Any]:
    """What the manifest records as the command's configuration (and the dry run prints)."""
    return {"builtin": BUILTIN_NAME, "output": str(output), "seed": seed, "vision": vision, "dtype": "bfloat16"}


def plan_tiny(settings: ToolSettings, output: Path, seed: int, vision: str, force: bool) -> Plan:
    """Every check before the model is generated: the output is new (or --force) and its disk has room."""
    plan = preflight(
        TOOL,
        "tiny",
        settings,
        inputs=[],  # the model is generated from the seed: nothing is read
        outputs=[OutputSpec("hf_model", output, ArtifactKind.HF_CHECKPOINT)],
        force=force,
        config=tiny_config(output, seed, vision),
        not_checked=["that transformers loads the written model (the tests do; omni3-import --hf-model DIR checks it)"],
    )
    # Only storage_root matters here; the conversion settings of `run` would only mislead in this plan.
    plan.settings = {"storage_root": str(settings.storage_root)}
    needed = estimated_bytes(vision)
    plan.sections["tiny_model"] = {"estimated_gb": round(needed / 1e9, 3), "vision_note": vision_note(vision)}
    try:
        # A --force run publishes the new model before it deletes the old one, so the whole size is needed.
        ensure_free_space(output.parent, needed)
    except Omni3Error as exc:
        plan.problems.append(exc)
    return plan


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (docker stop, Slurm, kill) like Ctrl-C, so the staging directory and lock are removed.

    Without it SIGTERM ends the process at once and leaves the hidden staging directory for the next run to
    delete; SIGKILL still does, which the protocol allows for. The shared runner reports the interruption
    on one line (exit 130).
    """
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread (an embedding program): keep the default behaviour
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def write_tiny_artifact(output: Path, seed: int, vision: str, force: bool) -> dict[str, Any]:
    """Generate the model into the staging directory and publish it; returns the manifest's ``extra``."""
    log.info("generating the built-in tiny Omni (seed %d, vision %s) into the staging directory", seed, vision)
    with (
        sigterm_as_interrupt(),
        publish_artifact(
            output,
            kind=ArtifactKind.HF_CHECKPOINT,
            tool=tool_info(TOOL, __version__, PACKAGES),
            config=tiny_config(output, seed, vision),
            inputs=[],
            force=force,
        ) as staging,
    ):
        # build_tiny_omni wants an empty directory; the staging directory is fresh (no resume).
        record = build_tiny_omni(staging.path, seed=seed, vision=vision)  # type: ignore[arg-type]
        staging.extra.update(
            {
                "builtin": BUILTIN_NAME,
                "seed": seed,
                "vision": vision,
                "vision_note": vision_note(vision),
                "tiny_record": record,  # the same as omni3-tiny.json in the artifact
            }
        )
    return staging.extra
