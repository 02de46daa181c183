"""``omni3-prep jsonl``: the generic one-JSON-object-per-line format (the one ms-swift users have).

    {"messages": [{"role": "user", "content": "<image>What is shown?"}, {"role": "assistant", "content": "..."}],
     "images": ["img/1.png"], "audios": [], "videos": []}

Media paths are relative to the file (absolute paths are kept). Optional ``id`` (the sample key) and
``split`` (train, val or test; otherwise one is drawn from the key and the seed).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omni3_prep.records import (
    SPLITS,
    BadRecord,
    MediaRef,
    PlannedSource,
    Record,
    sanitize_key,
    split_for,
    typed_content,
)

MEDIA_FIELDS = {"images": "image", "audios": "audio", "videos": "video"}
SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}


def _record(line_no: int, raw: str, base: Path, origin: str, seed: int, fractions: tuple[float, float]) -> Record:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"a line must hold a JSON object, not {type(obj).__name__}")
    key = sanitize_key(str(obj["id"])) if obj.get("id") is not None else f"line-{line_no:07d}"
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{index}] must be an object with a text 'content'")
        turns.append({"role": message.get("role"), "content": typed_content(message["content"])})
    media: list[MediaRef] = []
    for field_name, kind in MEDIA_FIELDS.items():
        paths = obj.get(field_name) or []
        if not isinstance(paths, list) or not all(isinstance(path, str) and path for path in paths):
            raise ValueError(f"'{field_name}' must be a list of file paths")
        media += [MediaRef(kind, "file", str(base / path)) for path in paths]
    split = obj.get("split")
    if split is None:
        split = split_for(key, seed, *fractions)
    split = SPLIT_ALIASES.get(str(split), str(split))
    if split not in SPLITS:
        raise ValueError(f"split {obj.get('split')!r} is not one of {', '.join(SPLITS)}")
    return Record(key=key, split=split, conversation=tuple(turns), media=tuple(media), origin=origin)


def _items(path: Path, seed: int, fractions: tuple[float, float]) -> Iterator[Record | BadRecord]:
    base = path.parent.absolute()
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            origin = f"{path.name}:{line_no}"
            try:
                yield _record(line_no, raw, base, origin, seed, fractions)
            except ValueError as exc:
                yield BadRecord(f"line-{line_no:07d}", origin, str(exc))


def plan(path: Path, seed: int, val_fraction: float, test_fraction: float) -> PlannedSource:
    with path.open("rb") as handle:
        lines = sum(1 for raw in handle if raw.strip())
    return PlannedSource(
        name="jsonl",
        description={"type": "jsonl", "path": str(path), "lines": lines, "seed": seed},
        items=_items(path, seed, (val_fraction, test_fraction)),
        total_hint=lines,
        input_paths=[str(path)],
    )
