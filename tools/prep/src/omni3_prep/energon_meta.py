"""The ``.nv-meta`` metadata, written through megatron-energon's own preparation API.

Energon indexes the shards (``*.tar.idx``, ``index.sqlite``, ``index.uuid``, ``.info.json``) and writes the
split assignment (``split.yaml``). The sample loader (``dataset.yaml``) names Megatron-Bridge's
``ChatMLWebdataset``: Energon cannot generate it because it is a Bridge class, not an Energon built-in.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from omni3_shared.errors import ToolFailure

META_DIR = ".nv-meta"
DATASET_YAML = "dataset.yaml"
SPLIT_YAML = "split.yaml"
BRIDGE_MODULE = "megatron.bridge.data.energon.task_encoder_utils"
BRIDGE_CLASS = "ChatMLWebdataset"
# ChatMLSample's fields that a field map may fill, and the member each modality is stored as.
SAMPLE_FIELDS = ("conversation", "imgs", "videos", "audio", "tools")
MODALITY_FIELDS = {"image": "imgs", "audio": "audio", "video": "videos"}


def energon_version() -> str:
    from megatron.energon import __version__

    return str(__version__)


def field_map(modalities: Iterable[str], image_exts: Iterable[str] = ("png",)) -> dict[str, str]:
    """The field map Bridge's Omni task encoder reads: one member per ChatMLSample field."""
    mapping = {"conversation": "conversation.json"}
    present = set(modalities)
    if "image" in present:
        # A comma lists alternatives: Energon takes the first member a sample has (PNG and JPEG mixed).
        mapping["imgs"] = ",".join(f"image.{ext}" for ext in sorted(set(image_exts)) or ["png"])
    if "audio" in present:
        mapping["audio"] = "audio.wav"
    if "video" in present:
        mapping["videos"] = "video.mp4"
    return mapping


def dataset_yaml(mapping: Mapping[str, str]) -> dict[str, Any]:
    return {"__module__": BRIDGE_MODULE, "__class__": BRIDGE_CLASS, "field_map": dict(mapping), "subflavors": {}}


def split_pattern(split: str) -> str:
    # No braces: Energon brace-expands split patterns before compiling them as regular expressions.
    return rf"^{re.escape(split)}-shard-[0-9]+\.tar$"


def write_metadata(root: Path, shards: Mapping[str, list[str]], mapping: Mapping[str, str], workers: int) -> None:
    """Index ``shards`` (split -> shard file names under ``root``) and write every ``.nv-meta`` file."""
    from megatron.energon.flavors.webdataset.base_webdataset import BaseWebdatasetFactory

    # Metadata of an earlier, killed run may describe other shards: start clean.
    shutil.rmtree(root / META_DIR, ignore_errors=True)
    for stale in root.glob("*.tar.idx"):
        stale.unlink()
    paths = [name for split in sorted(shards) for name in sorted(shards[split])]
    if not paths:
        raise ToolFailure("no sample survived: there is nothing to index", fix="check the bad-record report")
    patterns = [(split, split_pattern(split)) for split in sorted(shards) if shards[split]]
    # Energon prints progress to stdout; stdout belongs to the command's result.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            BaseWebdatasetFactory.prepare_dataset(
                root,
                paths,
                split_parts_patterns=patterns,
                shuffle_seed=None,
                workers=max(1, min(workers, len(paths))),
            )
        except SystemExit as exc:  # Energon exits on duplicate keys; keys are checked before, so this is a bug
            raise ToolFailure(f"megatron-energon refused the shards (exit {exc.code})") from None
    with (root / META_DIR / DATASET_YAML).open("w") as handle:
        yaml.safe_dump(dataset_yaml(mapping), handle, sort_keys=False)


def read_dataset_yaml(root: Path) -> dict[str, Any]:
    with (root / META_DIR / DATASET_YAML).open() as handle:
        loaded = yaml.safe_load(handle)
    return loaded if isinstance(loaded, dict) else {}


def read_splits(root: Path) -> dict[str, list[str]]:
    """split name -> shard names, from ``split.yaml`` (brace-collapsed names expanded)."""
    import braceexpand

    with (root / META_DIR / SPLIT_YAML).open() as handle:
        loaded = yaml.safe_load(handle) or {}
    parts = loaded.get("split_parts", {}) or {}
    return {
        split: [name for entry in entries for name in braceexpand.braceexpand(entry)]
        for split, entries in parts.items()
    }
