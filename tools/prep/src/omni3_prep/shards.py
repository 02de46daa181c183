"""Building WebDataset shards with parallel worker processes, and reusing finished ones after a kill.

The main process cuts the record stream into shards, and each shard into small chunks of records. Worker
processes turn chunks into sample members (loading, converting and checking media: the expensive part) and
write them, as ready-made tar members, into a fragment file; they send back only the samples' facts. The main
process appends the fragments, in order and without parsing them, to the shard being assembled and hashes it
on the way (no sample bytes are pickled between processes, no tar headers are built in the main process, which
shares the cores with the workers). Small chunks keep every core busy even when a job has only a few shards,
and a bounded window of chunks in flight keeps memory and disk use flat however many samples a job has.

A shard is written as ``<name>.tmp`` and renamed when complete; then a sidecar under ``prep/shards/`` records
its facts and a fingerprint of its records. A rerun that finds a sidecar with the same fingerprint and the
shard's size reuses the shard instead of building it again.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tarfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni3_prep.records import BadRecord, BadRecordError, Record
from omni3_prep.samples import materialize

# Bump when the bytes a record turns into change, so that old finished shards are not reused.
SHARD_FORMAT = 1
SIDECAR_DIR = "prep/shards"
CACHE_DIR = ".cache"
FRAGMENT_DIR = f"{CACHE_DIR}/fragments"
# Records per chunk: enough that a chunk's round trip to a worker is small against its work (an image takes a
# few milliseconds), few enough that at the end of a job no worker waits long for the last one. Audio and video
# take ffmpeg runs of a few hundred milliseconds per record, so they go one per chunk.
CHUNK_SIZE = 4
FFMPEG_CHUNK_SIZE = 1
# tar's end of archive: two zero blocks, then zeros up to a whole record (what tarfile.close() writes).
TAR_END = 2 * tarfile.BLOCKSIZE


def shard_name(split: str, index: int) -> str:
    return f"{split}-shard-{index:06d}.tar"


@dataclass(frozen=True)
class ShardTask:
    name: str
    split: str
    records: tuple[Record, ...]
    staging: str


@dataclass(frozen=True)
class ChunkTask:
    records: tuple[Record, ...]
    cache_dir: str
    fragment: str  # where the worker writes the chunk's tar members


@dataclass
class ChunkResult:
    fragment: str
    samples: list[dict[str, Any]] = field(default_factory=list)  # each sample's facts, in record order
    bad: list[dict[str, str]] = field(default_factory=list)


@dataclass
class ShardResult:
    name: str
    split: str
    samples: int
    size: int
    sha256: str | None
    bad: list[BadRecord] = field(default_factory=list)
    modalities: dict[str, int] = field(default_factory=dict)
    image_exts: list[str] = field(default_factory=list)
    reused: bool = False


def _stat(path: str) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def task_fingerprint(task: ShardTask) -> str:
    """What the shard's bytes depend on: its records, their media sources (with size and mtime), the format."""
    description = {
        "format": SHARD_FORMAT,
        "name": task.name,
        "records": [
            {
                "key": record.key,
                "split": record.split,
                "conversation": record.conversation,
                "media": [item.fingerprint() for item in record.media],
                "stat": [_stat(item.location) for item in record.media if item.how in ("file", "tar")],
            }
            for record in task.records
        ],
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def tar_member(name: str, data: bytes) -> bytes:
    """One tar member exactly as ``tarfile.TarFile.addfile`` writes it: header blocks, data, zero padding."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0  # fixed, so equal samples give equal shards
    header = info.tobuf(tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape")
    return header + data + tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE)


def encode_record(record: Record, cache_dir: Path) -> tuple[bytes, dict[str, Any]]:
    """One record's tar members, ready to append to a shard, and the facts of its sample.

    Raises:
        BadRecordError: the record cannot be published (a decoder's own error on damaged media included).
    """
    try:
        out = materialize(record, cache_dir)
    except BadRecordError:
        raise
    except Exception as exc:  # a decoder's own error on damaged media is still the record's fault
        reason = f"unreadable media ({exc.__class__.__name__}: {' '.join(str(exc).split())[:200]})"
        raise BadRecordError(reason) from exc
    members = b"".join(tar_member(f"{record.key}.{member}", data) for member, data in out.members)
    return members, {"key": record.key, "origin": record.origin, **out.facts}


def process_chunk(task: ChunkTask) -> ChunkResult:
    """Materialize a few records into a tar fragment (runs in a worker). Bad records are reported, never raised."""
    result = ChunkResult(task.fragment)
    cache_dir = Path(task.cache_dir)
    with open(task.fragment, "wb") as fragment:
        for record in task.records:
            try:
                members, sample = encode_record(record, cache_dir)
            except BadRecordError as exc:
                result.bad.append(BadRecord(record.key, record.origin, exc.reason).as_dict())
                continue
            fragment.write(members)
            result.samples.append(sample)
    return result


def _summarize(samples: list[dict[str, Any]]) -> tuple[dict[str, int], list[str]]:
    counts = {"image": 0, "audio": 0, "video": 0}
    exts: set[str] = set()
    for sample in samples:
        for kind in counts:
            counts[kind] += kind in sample
        exts.update(name.split(".", 1)[1] for name in sample["members"] if name.startswith("image."))
    return counts, sorted(exts)


def _result_from_sidecar(sidecar: dict[str, Any], reused: bool) -> ShardResult:
    counts, exts = _summarize(sidecar["samples"])
    return ShardResult(
        name=sidecar["name"],
        split=sidecar["split"],
        samples=len(sidecar["samples"]),
        size=sidecar["size"],
        sha256=sidecar["sha256"],
        bad=[BadRecord(**item) for item in sidecar["bad"]],
        modalities=counts,
        image_exts=exts,
        reused=reused,
    )


def reusable(task: ShardTask, fingerprint: str) -> ShardResult | None:
    """The finished shard of an earlier run with the same fingerprint, if it is still intact."""
    staging = Path(task.staging)
    try:
        sidecar = json.loads((staging / SIDECAR_DIR / f"{task.name}.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if sidecar.get("fingerprint") != fingerprint:
        return None
    shard = staging / task.name
    if sidecar["samples"] and (not shard.is_file() or shard.stat().st_size != sidecar["size"]):
        return None
    return _result_from_sidecar(sidecar, reused=True)


class ShardWriter:
    """Assembles one shard from chunk fragments, in record order, then publishes it inside staging.

    The shard is hashed while it is written, so its sha256 (for the manifest) costs no second read.
    """

    def __init__(self, task: ShardTask, fingerprint: str) -> None:
        self.task = task
        self.fingerprint = fingerprint
        self.staging = Path(task.staging)
        self.temporary = self.staging / f"{task.name}.tmp"
        self.handle = self.temporary.open("wb")  # closed in close(), after the last fragment
        self.digest = hashlib.sha256()
        self.size = 0
        self.chunks = 0
        self.samples: list[dict[str, Any]] = []
        self.bad: list[dict[str, str]] = []

    def next_fragment(self) -> str:
        """A fresh fragment path for this shard's next chunk."""
        self.chunks += 1
        return str(self.staging / FRAGMENT_DIR / f"{self.task.name}.{self.chunks:05d}")

    def add(self, chunk: ChunkResult) -> None:
        fragment = Path(chunk.fragment)
        self._write(fragment.read_bytes())  # a chunk's members: a few MB at most
        fragment.unlink()
        self.samples.extend(chunk.samples)
        self.bad.extend(chunk.bad)

    def add_sample(self, members: bytes, sample: dict[str, Any]) -> None:
        """One sample written in this process (``encode_record``'s output), without a fragment in between."""
        self._write(members)
        self.samples.append(sample)

    def _write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)

    def close(self) -> ShardResult:
        self._write(tarfile.NUL * TAR_END)
        self._write(tarfile.NUL * (-self.size % tarfile.RECORDSIZE))
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        shard = self.staging / self.task.name
        if self.samples:
            os.replace(self.temporary, shard)
            size, digest = self.size, self.digest.hexdigest()
        else:  # every record was bad: no empty shard for Energon to index
            self.temporary.unlink()
            shard.unlink(missing_ok=True)
            size, digest = 0, None
        sidecar = {
            "fingerprint": self.fingerprint,
            "name": self.task.name,
            "split": self.task.split,
            "size": size,
            "sha256": digest,
            "samples": self.samples,
            "bad": self.bad,
        }
        path = self.staging / SIDECAR_DIR / f"{self.task.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(sidecar, sort_keys=True))
        os.replace(temporary, path)  # last: its presence means the shard is finished
        return _result_from_sidecar(sidecar, reused=False)


def cut_into_shards(records: Iterable[Record], staging: Path, shard_size: int) -> Iterator[ShardTask]:
    """Group a record stream into per-split shard tasks, holding at most one open shard per split."""
    buffers: dict[str, list[Record]] = {}
    next_index: dict[str, int] = {}

    def task(split: str, records: list[Record]) -> ShardTask:
        index = next_index.get(split, 0)
        next_index[split] = index + 1
        return ShardTask(shard_name(split, index), split, tuple(records), str(staging))

    for record in records:
        buffer = buffers.setdefault(record.split, [])
        buffer.append(record)
        if len(buffer) >= shard_size:
            yield task(record.split, buffer)
            buffers[record.split] = []
    for split, buffer in sorted(buffers.items()):
        if buffer:
            yield task(split, buffer)


def _chunks(tasks: Iterable[ShardTask], on_result: Callable[[ShardResult], None]) -> Iterator[tuple[Any, ChunkTask]]:
    """(writer, chunk) pairs in order; a writer's last chunk is followed by ``(writer, None)``."""
    for task in tasks:
        fingerprint = task_fingerprint(task)
        finished = reusable(task, fingerprint)
        if finished is not None:
            on_result(finished)
            continue
        cache_dir = Path(task.staging) / CACHE_DIR
        (Path(task.staging) / FRAGMENT_DIR).mkdir(parents=True, exist_ok=True)
        writer = ShardWriter(task, fingerprint)
        uses_ffmpeg = any(record.modalities() & {"audio", "video"} for record in task.records)
        size = FFMPEG_CHUNK_SIZE if uses_ffmpeg else CHUNK_SIZE
        for start in range(0, len(task.records), size):
            records = task.records[start : start + size]
            yield writer, ChunkTask(records, str(cache_dir), writer.next_fragment())
        yield writer, None


def run_tasks(tasks: Iterable[ShardTask], workers: int, on_result: Callable[[ShardResult], None]) -> None:
    """Build every shard: chunks in this process (``workers`` 1) or in a pool with a bounded window in flight."""
    chunks = _chunks(tasks, on_result)
    if workers <= 1:
        for writer, chunk in chunks:
            if chunk is None:
                on_result(writer.close())
            else:
                writer.add(process_chunk(chunk))
        return
    # spawn, not fork: children must not inherit the output lock's descriptor or the caller's threads.
    context = multiprocessing.get_context("spawn")
    window: deque[tuple[ShardWriter, Future[ChunkResult] | None]] = deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for writer, chunk in chunks:
            window.append((writer, None if chunk is None else pool.submit(process_chunk, chunk)))
            while sum(future is not None for _, future in window) > 3 * workers:
                _drain_one(window, on_result)
        while window:
            _drain_one(window, on_result)


def _drain_one(window: deque[tuple[ShardWriter, Future[ChunkResult] | None]], on_result: Callable) -> None:
    """Hand the oldest result to its shard (in submission order, so shards keep their record order)."""
    writer, future = window.popleft()
    if future is None:
        on_result(writer.close())
    else:
        writer.add(future.result())
