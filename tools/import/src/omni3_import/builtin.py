"""Built-in model names accepted by ``--hf-model`` (today only ``tiny``), resolved to a local HF directory."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omni3_import.tiny_model import BUILTIN_NAME, TINY_RECORD, build_tiny_omni, remote
from omni3_import.tiny_model.build import REMOTE_FILES

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


def ships_only_builtin_code(path: Path) -> bool:
    """True when the only code ``path`` can make transformers run is the tiny model's own, byte for byte.

    That is a directory written by ``omni3-import tiny`` (or a copy of it): it needs no --trust-remote-code,
    just as ``--hf-model tiny`` does not. Any edited or extra Python file, or an auto_map entry naming code in
    another repository ("org/repo--module.Class"), makes it an ordinary checkpoint that needs the opt-in.
    """
    path = Path(path)
    own_dir = Path(remote.__file__).parent
    python_files = sorted(path.rglob("*.py"))
    if not python_files:
        return False  # nothing of ours: the ordinary remote-code check decides
    for file in python_files:
        if file.parent != path or file.name not in REMOTE_FILES:
            return False
        if file.read_bytes() != (own_dir / file.name).read_bytes():
            return False
    for config_file in path.glob("*.json"):
        try:
            document = json.loads(config_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        if isinstance(document, dict) and any("--" in ref for ref in _strings(document.get("auto_map"))):
            return False
    return True


def _strings(value: Any) -> list[str]:
    """Every string inside an auto_map value (a name, a [slow, fast] pair, or a mapping of them)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []
