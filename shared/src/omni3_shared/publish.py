"""Publishing an artifact: lock, stage under a temporary name, write the manifest last, rename into place.

    with publish_artifact(output, kind=ArtifactKind.DATASET, tool=info, config=cfg, inputs=refs) as staging:
        write_files_into(staging.path)
        staging.extra["samples"] = 1000

On success the staging directory gets its manifest and is renamed to ``output`` in one step, so a reader
never sees a half-written artifact. A second writer on the same output is refused by the lock. A complete
artifact is never replaced unless ``force`` is given. After a failure or a kill the published path is
untouched; a tool that can reuse finished work passes ``resume=True`` and finds it in the staging directory.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omni3_shared.errors import ArtifactExistsError, LockedError, ToolFailure, UsageError
from omni3_shared.manifest import (
    MANIFEST_FILE,
    ArtifactKind,
    Hashing,
    InputRef,
    Manifest,
    ToolInfo,
    is_complete,
    list_files,
    utc_now,
    write_manifest,
)


def staging_path(output: Path) -> Path:
    return output.parent / f".{output.name}.partial"


def lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


@dataclass
class Staging:
    """Where a tool writes its artifact before it is published."""

    path: Path
    started_at: datetime
    resumed: bool
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def output_lock(output: Path, holder: str) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` (a flock on a sibling file, released by the kernel if we die)."""
    path = lock_path(output)
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                handle.close()
                raise
            handle.seek(0)
            owner = handle.read().strip() or "unknown writer"
            handle.close()
            raise LockedError(
                f"{output} is being written by another process ({owner})",
                fix="wait for it to finish; a lock held by a dead process is released by the system",
            ) from None
        # The previous holder may have unlinked the file between our open and our flock: retry on the new one.
        try:
            same_file = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"holder": holder, "host": socket.gethostname(), "pid": os.getpid()}))
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


def ensure_free_space(directory: Path, needed_bytes: int) -> None:
    """Refuse early when the output's filesystem cannot hold ``needed_bytes`` more."""
    probe = directory
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise ToolFailure(
            f"not enough disk under {probe}: {needed_bytes / 1e9:.2f} GB needed, {free / 1e9:.2f} GB free",
            fix="free space or choose another output location",
        )


def check_output(output: Path, force: bool) -> None:
    """What --dry-run and the real run both check about the output path before any work."""
    if is_complete(output) and not force:
        raise ArtifactExistsError(str(output))
    if output.exists() and not output.is_dir():
        raise UsageError(f"output {output} exists and is not a directory", fix="choose another output path")
    if output.is_dir() and not is_complete(output) and any(output.iterdir()) and not force:
        raise UsageError(
            f"output {output} is a non-empty directory that is not an omni3 artifact",
            fix="choose a new or empty directory, or pass --force to replace it",
        )
    parent = output.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write under {parent}", fix="choose a writable output location")


@contextmanager
def publish_artifact(
    output: Path,
    *,
    kind: ArtifactKind,
    tool: ToolInfo,
    config: dict[str, Any],
    inputs: list[InputRef],
    force: bool = False,
    resume: bool = False,
    hashing: Hashing | None = None,
) -> Iterator[Staging]:
    """Stage, then publish ``output`` atomically with its manifest. See the module docstring."""
    output = Path(output).absolute()
    check_output(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(output, holder=tool.name):
        check_output(output, force)  # again under the lock: another writer may have finished meanwhile
        staging_dir = staging_path(output)
        resumed = resume and staging_dir.is_dir()
        if staging_dir.exists() and not resumed:
            shutil.rmtree(staging_dir)
        staging_dir.mkdir(exist_ok=True)
        (staging_dir / MANIFEST_FILE).unlink(missing_ok=True)
        staging = Staging(path=staging_dir, started_at=utc_now(), resumed=resumed)
        try:
            yield staging
        except BaseException:
            # A tool that can resume keeps its finished work for the next run; others leave nothing behind.
            if not resume:
                shutil.rmtree(staging_dir, ignore_errors=True)
            raise
        policy = hashing or Hashing()
        manifest = Manifest(
            kind=kind,
            tool=tool,
            config=config,
            inputs=inputs,
            files=list_files(staging_dir, policy),
            hashing=policy,
            started_at=staging.started_at,
            finished_at=utc_now(),
            extra=staging.extra,
        )
        write_manifest(staging_dir, manifest)
        _move_into_place(staging_dir, output)


def _move_into_place(staging_dir: Path, output: Path) -> None:
    if output.exists() and (output.is_file() or any(output.iterdir())):
        # Only reached with --force: set the old artifact aside, publish, then delete the old one.
        retired = output.parent / f".{output.name}.replaced"
        shutil.rmtree(retired, ignore_errors=True)
        os.rename(output, retired)
        os.rename(staging_dir, output)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        if output.is_dir():
            output.rmdir()
        os.rename(staging_dir, output)
