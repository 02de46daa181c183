"""Built-in model names accepted by ``--hf-model`` (today only ``tiny``), resolved to a local HF directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from omni3_import.tiny_model import BUILTIN_NAME, TINY_RECORD, build_tiny_omni

CACHE_ENV = "OMNI3_CACHE_DIR"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "omni3")


def is_builtin(name: str) -> bool:
    return name == BUILTIN_NAME


def builtin_dir(name: str, seed: int = 0, vision: str = "full") -> Path:
    return cache_root() / f"tiny-omni-seed{seed}-{vision}"


def cached_builtin(name: str, seed: int = 0, vision: str = "full") -> Path | None:
    """The built-in model's directory if it was generated already, else None (nothing is written)."""
    target = builtin_dir(name, seed, vision)
    return target if (target / TINY_RECORD).is_file() else None


def resolve_hf_model(name: str, seed: int = 0, vision: str = "full") -> Path:
    """Return the directory of ``name``: a built-in is generated once into the cache, anything else is a path.

    Generation writes into a temporary sibling and renames it into place, so a killed run never leaves a
    half-written model that a later run would take for complete.
    """
    if not is_builtin(name):
        return Path(name)
    target = builtin_dir(name, seed, vision)
    if cached_builtin(name, seed, vision) is not None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_tiny_omni(staging / "model", seed=seed, vision=vision)  # type: ignore[arg-type]
        if target.exists():  # an incomplete leftover: no record file
            shutil.rmtree(target)
        os.replace(staging / "model", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
