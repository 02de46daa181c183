"""The manifest: the last file written into every artifact directory, and the proof that it is complete.

A manifest records what the artifact is (kind, schema version), who made it (tool, version, image, commit),
from what (resolved config, inputs with their manifests' digests), what it holds (files with sizes and
sha256) and when (start and end). Its presence means the producing tool finished; a reader checks the
kind, the schema and every listed file before doing any heavy work. See PROTOCOL.md beside this file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from collections.abc import Iterable
from datetime import datetime, timezone
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from omni3_shared.errors import InvalidInputError

MANIFEST_FILE = "omni3-manifest.json"
SCHEMA_VERSION = 1
HASH_CHUNK_BYTES = 8 * 1024 * 1024


class ArtifactKind(str, Enum):
    DATASET = "dataset"
    HF_CHECKPOINT = "hf-checkpoint"
    MEGATRON_CHECKPOINT = "megatron-checkpoint"
    TRAINING_RUN = "training-run"
    ADAPTER = "adapter"


class ToolInfo(BaseModel):
    name: str
    version: str
    image: str | None = None
    source_commit: str | None = None
    host: str = Field(default_factory=socket.gethostname)
    python: str = Field(default_factory=platform.python_version)
    packages: dict[str, str] = Field(default_factory=dict)


class FileEntry(BaseModel):
    path: str  # relative to the artifact directory, POSIX separators
    size: int
    sha256: str | None = None  # None only for files left to lazy hashing


class Hashing(BaseModel):
    mode: Literal["full", "lazy"] = "full"
    lazy_threshold_bytes: int | None = None  # files at or above it carry no sha256 in lazy mode


class InputRef(BaseModel):
    role: str  # what the input is to the tool: "dataset", "hf_model", "lora_checkpoint", ...
    path: str
    kind: ArtifactKind | None = None
    external: bool = False  # a plain directory without an omni3 manifest (e.g. a Hugging Face checkpoint)
    manifest_sha256: str | None = None


class Manifest(BaseModel):
    schema_version: int = SCHEMA_VERSION
    kind: ArtifactKind
    tool: ToolInfo
    config: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputRef] = Field(default_factory=list)
    files: list[FileEntry] = Field(default_factory=list)
    hashing: Hashing = Field(default_factory=Hashing)
    started_at: datetime
    finished_at: datetime
    extra: dict[str, Any] = Field(default_factory=dict)  # the tool's own facts: counts, shards, checks


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def tool_info(name: str, version: str, packages: Iterable[str] = ()) -> ToolInfo:
    """Describe the running tool; the image and commit come from variables the Dockerfiles set."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return ToolInfo(
        name=name,
        version=version,
        image=os.environ.get("OMNI3_IMAGE") or None,
        source_commit=os.environ.get("OMNI3_SOURCE_COMMIT") or None,
        packages=versions,
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(directory: Path, hashing: Hashing) -> list[FileEntry]:
    """Every regular file under ``directory`` except the manifest, sorted, with size and (per policy) sha256."""
    entries = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()):
        relative = path.relative_to(directory).as_posix()
        if relative == MANIFEST_FILE:
            continue
        size = path.stat().st_size
        lazy = hashing.mode == "lazy" and hashing.lazy_threshold_bytes is not None
        skip_hash = lazy and size >= hashing.lazy_threshold_bytes
        entries.append(FileEntry(path=relative, size=size, sha256=None if skip_hash else sha256_file(path)))
    return entries


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write the manifest atomically (temporary file, fsync, rename): a reader sees all of it or none."""
    target = directory / MANIFEST_FILE
    temporary = directory / f".{MANIFEST_FILE}.tmp"
    with temporary.open("w") as handle:
        handle.write(manifest.model_dump_json(indent=2))
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)
    return target


def manifest_digest(directory: Path) -> str:
    return sha256_file(directory / MANIFEST_FILE)


def is_complete(directory: Path) -> bool:
    return (directory / MANIFEST_FILE).is_file()


def read_manifest(
    directory: Path,
    expect_kind: ArtifactKind | Iterable[ArtifactKind] | None = None,
    verify: Literal["none", "size", "sha256"] = "size",
) -> Manifest:
    """Read and check an artifact's manifest before any heavy work.

    Checks that the directory exists and is complete, the schema is one this version reads, the kind is
    what the caller expects, and every listed file is present (with its size, or also its sha256).

    Raises:
        InvalidInputError: any check fails; the message names the artifact and the fix.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInputError(f"input {directory} does not exist", fix="check the path or the OMNI3_* setting")
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InvalidInputError(
            f"{directory} is not a complete omni3 artifact (no {MANIFEST_FILE})",
            fix="rerun the stage that produces it; a killed run leaves no manifest",
        )
    try:
        raw = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{manifest_path} is unreadable ({exc.__class__.__name__})") from None
    manifest = _parse(raw, manifest_path)
    _check_kind(manifest, expect_kind, directory)
    if verify != "none":
        _check_files(directory, manifest, verify)
    return manifest


def _parse(raw: Any, manifest_path: Path) -> Manifest:
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if not isinstance(version, int):
        raise InvalidInputError(f"{manifest_path} has no schema_version", fix="rerun the producing stage")
    if version > SCHEMA_VERSION:
        raise InvalidInputError(
            f"{manifest_path} has schema {version}, newer than this omni3 reads ({SCHEMA_VERSION})",
            fix="upgrade this tool to the version that produced the artifact",
        )
    raw = migrate(raw)
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InvalidInputError(f"{manifest_path} is malformed at '{where}': {first['msg']}") from None


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """Bring an older manifest to the current schema. Schema 1 is the first; later versions add steps here."""
    return raw


def _check_kind(manifest: Manifest, expect_kind: ArtifactKind | Iterable[ArtifactKind] | None, directory: Path) -> None:
    if expect_kind is None:
        return
    expected = {expect_kind} if isinstance(expect_kind, ArtifactKind) else set(expect_kind)
    if manifest.kind not in expected:
        wanted = " or ".join(sorted(kind.value for kind in expected))
        raise InvalidInputError(
            f"{directory} is a {manifest.kind.value} (made by {manifest.tool.name}), expected a {wanted}",
            fix="point the setting at an artifact of the expected kind",
        )


def _check_files(directory: Path, manifest: Manifest, verify: str) -> None:
    for entry in manifest.files:
        path = directory / entry.path
        if not path.is_file():
            raise InvalidInputError(
                f"{directory} is incomplete: listed file {entry.path} is missing",
                fix=f"restore it or rerun {manifest.tool.name} with --force",
            )
        if path.stat().st_size != entry.size:
            raise InvalidInputError(
                f"{directory} is damaged: {entry.path} has {path.stat().st_size} bytes, the manifest says {entry.size}",
                fix=f"rerun {manifest.tool.name} with --force",
            )
        if verify == "sha256" and entry.sha256 is not None and sha256_file(path) != entry.sha256:
            raise InvalidInputError(
                f"{directory} is damaged: {entry.path} does not match its sha256",
                fix=f"rerun {manifest.tool.name} with --force",
            )


def describe_input(
    role: str,
    directory: Path,
    expect_kind: ArtifactKind | Iterable[ArtifactKind] | None = None,
    allow_external: bool = False,
    verify: Literal["none", "size", "sha256"] = "size",
) -> tuple[InputRef, Manifest | None]:
    """Check one input and describe it for the output's manifest.

    An omni3 artifact is verified through its manifest. With ``allow_external`` a plain directory without
    a manifest (a Hugging Face checkpoint, say) is accepted and recorded as external.
    """
    directory = Path(directory)
    if allow_external and directory.is_dir() and not is_complete(directory):
        return InputRef(role=role, path=str(directory), external=True), None
    manifest = read_manifest(directory, expect_kind=expect_kind, verify=verify)
    ref = InputRef(role=role, path=str(directory), kind=manifest.kind, manifest_sha256=manifest_digest(directory))
    return ref, manifest
