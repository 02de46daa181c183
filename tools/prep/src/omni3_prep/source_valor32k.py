"""``omni3-prep valor32k``: raw VALOR-32K videos plus the VALOR32K-AVQA question/answer files.

Videos come from a directory or an uncompressed tar (read in place, member by member: nothing is extracted).
Their names are ``{youtube id}_{start}_{end}.mp4``; QA entries name the bare id. ``--qa`` is one JSON file or
a directory of them; a file's split comes from its name (``..._train_...``, ``val``, ``test``). Each QA
entry (``video_id``, ``question``, ``options``, ``correct_answer_idx``) becomes one sample: the question on
the video, the chosen option as the answer, the video's audio as 16 kHz mono WAV.
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omni3_prep.records import BadRecord, MediaRef, PlannedSource, Record, sanitize_key, split_for
from omni3_shared.errors import InvalidInputError, UsageError

VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".avi", ".mov"}
_TIMESTAMPS = re.compile(r"^(?P<id>.+)_\d+(?:\.\d+)?_\d+(?:\.\d+)?$")
_SPLIT_IN_NAME = re.compile(r"(?:^|[_.-])(train|val|valid|validation|test)(?:[_.-]|$)")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def _index_names(stem: str) -> list[str]:
    match = _TIMESTAMPS.match(stem)
    return [stem, match.group("id")] if match else [stem]


def _unsafe(name: str) -> bool:
    normalized = posixpath.normpath(name)
    return name.startswith("/") or normalized == ".." or normalized.startswith("../") or "/../" in f"/{normalized}/"


def index_videos(videos: Path) -> tuple[dict[str, MediaRef], list[BadRecord]]:
    """Video id (full stem and bare id) -> where its bytes are; plus archive members that are refused."""
    index: dict[str, MediaRef] = {}
    bad: list[BadRecord] = []
    if videos.is_dir():
        for path in sorted(videos.rglob("*")):
            if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
                for name in _index_names(path.stem):
                    index.setdefault(name, MediaRef("video", "file", str(path.absolute())))
        return index, bad
    try:
        archive = tarfile.open(videos, "r:")  # noqa: SIM115 - closed below; uncompressed only: read in place
    except tarfile.ReadError:
        raise UsageError(
            f"{videos} is neither a directory nor an uncompressed tar",
            fix="decompress the archive (gunzip, xz -d) or extract it to a directory",
        ) from None
    with archive:
        for member in archive:
            name = member.name
            stem = Path(name).stem
            if _unsafe(name) or ((member.issym() or member.islnk()) and _unsafe(member.linkname or "")):
                target = f" -> {member.linkname}" if member.linkname else ""
                bad.append(
                    BadRecord(
                        sanitize_key(name), f"{videos}::{name}", f"archive member path escapes the target{target}"
                    )
                )
                continue
            if not member.isfile() or Path(name).suffix.lower() not in VIDEO_SUFFIXES:
                continue  # directories, links and other files are not videos: never followed
            ref = MediaRef(
                "video",
                "tar",
                str(videos.absolute()),
                offset=member.offset_data,
                size=member.size,
                params=(("member", name),),
            )
            for key in _index_names(stem):
                index.setdefault(key, ref)
    return index, bad


def _qa_files(qa: Path) -> list[Path]:
    if qa.is_dir():
        files = sorted(path for path in qa.iterdir() if path.suffix == ".json" and path.is_file())
        if not files:
            raise InvalidInputError(f"no QA .json files in {qa}", fix="point --qa at the VALOR32K-AVQA JSON files")
        return files
    return [qa]


def _qa_record(entry: Any, number: int, split: str, origin: str, videos: dict[str, MediaRef]) -> Record:
    if not isinstance(entry, dict):
        raise ValueError("a QA entry must be an object")
    missing = [name for name in ("video_id", "question", "options", "correct_answer_idx") if name not in entry]
    if missing:
        raise ValueError(f"QA entry lacks {', '.join(missing)}")
    options, choice = entry["options"], entry["correct_answer_idx"]
    if not isinstance(options, list) or not isinstance(choice, int) or not 0 <= choice < len(options):
        raise ValueError(
            f"correct_answer_idx {choice!r} does not select one of the "
            f"{len(options) if isinstance(options, list) else 0} options"
        )
    video_id = str(entry["video_id"])
    video = videos.get(video_id)
    if video is None:
        raise ValueError(f"QA without its video: no video named {video_id} (or {video_id}_<start>_<end>)")
    key = sanitize_key(f"{video_id}_{entry.get('id', f'{split}{number}')}")
    question = str(entry["question"]).strip()
    return Record(
        key=key,
        split=split,
        conversation=(
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": str(options[choice])}]},
        ),
        media=(
            video,
            MediaRef(
                "audio",
                video.how,
                video.location,
                video.offset,
                video.size,
                params=video.params,
                derive="audio-from-video",
            ),
        ),
        origin=origin,
    )


def _load(path: Path) -> list[Any] | str:
    """The QA entries of one file, or why it cannot be read."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"malformed JSON ({exc})"
    if isinstance(entries, dict):
        entries = entries.get("data", entries.get("annotations"))
    return entries if isinstance(entries, list) else "malformed JSON (expected a list of QA entries)"


def _items(
    loaded: list[tuple[Path, list[Any] | str]],
    videos: dict[str, MediaRef],
    refused: list[BadRecord],
    seed: int,
    fractions: tuple[float, float],
) -> Iterator[Record | BadRecord]:
    yield from refused
    for path, entries in loaded:
        if isinstance(entries, str):
            yield BadRecord(sanitize_key(path.stem), str(path), entries)
            continue
        match = _SPLIT_IN_NAME.search(path.stem.lower())
        file_split = SPLIT_NAMES[match.group(1)] if match else None
        for number, entry in enumerate(entries):
            origin = f"{path.name}[{number}]"
            split = file_split or split_for(f"{path.stem}-{number}", seed, *fractions)
            try:
                yield _qa_record(entry, number, split, origin, videos)
            except ValueError as exc:
                key = (
                    sanitize_key(f"{entry.get('video_id', 'qa')}_{number}")
                    if isinstance(entry, dict)
                    else f"qa-{number}"
                )
                yield BadRecord(key, origin, str(exc))


def plan(videos: Path, qa: Path, seed: int, val_fraction: float, test_fraction: float) -> PlannedSource:
    index, refused = index_videos(videos)
    loaded = [(path, _load(path)) for path in _qa_files(qa)]
    unique = len({ref.describe() for ref in index.values()})
    total = sum(len(entries) for _, entries in loaded if isinstance(entries, list))
    return PlannedSource(
        name="valor32k",
        description={
            "type": "valor32k",
            "videos": str(videos),
            "qa": [str(path) for path, _ in loaded],
            "video_files": unique,
            "qa_entries": total,
        },
        items=_items(loaded, index, refused, seed, (val_fraction, test_fraction)),
        total_hint=total,
        input_paths=[str(videos), *(str(path) for path, _ in loaded)],
    )
