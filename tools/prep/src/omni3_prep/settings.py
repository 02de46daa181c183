"""Settings of omni3-prep (environment prefix OMNI3_)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from omni3_prep.synth import CORD_PROMPT, RECEIPT_WIDTH
from omni3_shared.settings import ToolSettings


def usable_cores() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class PrepSettings(ToolSettings):
    output: Path | None = None
    """Directory the dataset is published to (every source except energon)."""

    input: str | None = None
    """Source to read: a JSONL file (jsonl), a parquet/arrow/save_to_disk path or Hub id (hf), a dataset (energon)."""

    videos: Path | None = None
    """valor32k: directory of VALOR-32K videos, or an uncompressed tar of them."""

    qa: Path | None = None
    """valor32k: a VALOR32K-AVQA QA JSON file, or a directory of them (split taken from each file name)."""

    kind: Literal["receipts", "avqa"] = "avqa"
    """synth: receipts (images with CORD-style ground truth) or avqa (video+audio clips with multiple-choice QA)."""

    raw: bool = False
    """synth: write the raw inputs the other sources read (CORD parquet, VALOR videos+QA, JSONL) instead of Energon."""

    sample: int | None = Field(default=None, ge=1)
    """At most this many records from each split of the source; synth: how many samples to make (default 64)."""

    seed: int = 0
    """Seed of the synthetic data and of the split drawn for records that have none."""

    workers: int | None = Field(default=None, ge=1)
    """Worker processes that make the samples; unset: one per usable core."""

    shard_size: int = Field(default=100, ge=1)
    """Samples per WebDataset shard."""

    skip_bad: bool = False
    """Leave bad records out and go on (the manifest counts them) instead of stopping with exit 3."""

    val_fraction: float = Field(default=0.1, ge=0, le=0.5)
    """Share of records drawn into val when the source has no splits."""

    test_fraction: float = Field(default=0.1, ge=0, le=0.5)
    """Share of records drawn into test when the source has no splits."""

    receipt_width: int = Field(default=RECEIPT_WIDTH, ge=64, le=4096)
    """synth receipts: image width in pixels, the receipt scaled in proportion (CORD's scans are about 1,000 wide)."""

    prompt: str = CORD_PROMPT
    """hf and synth receipts: the user prompt of each image (Megatron-Bridge's CORD-v2 default)."""

    def worker_count(self) -> int:
        return self.workers or usable_cores()
