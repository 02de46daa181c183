"""What a source hands to the shard writers: planned records, their media, and bad records.

A ``Record`` is cheap to plan and to pickle: it names its media instead of holding them (except for sources
whose media only exist inline, such as parquet image bytes). Loading, transcoding and checking media happens
in the shard workers, so that the expensive part runs in parallel.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "val", "test")
MEDIA_KINDS = ("image", "audio", "video")
# Placeholders users write in their text; <audio> becomes the token the Omni collator expands in place.
PLACEHOLDERS = {"image": "<image>", "audio": "<audio>", "video": "<video>"}
COLLATOR_AUDIO_PLACEHOLDER = "<|audio_1|>"
ROLES = ("system", "user", "assistant")

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class BadRecordError(Exception):
    """A record that cannot be published, with the reason the report gives."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MediaRef:
    """One media item of a record and how a worker obtains its bytes.

    ``how`` says where the bytes come from: ``file`` (``location`` is a path), ``tar`` (``location`` is an
    archive path, ``offset``/``size`` locate the member's data), ``inline`` (``data`` holds the bytes),
    ``synth`` (``params`` drive the built-in generator). ``derive`` asks for a transformation on the way, for
    example ``audio-from-video``: the 16 kHz mono WAV track of the referenced video.
    """

    kind: str
    how: str
    location: str = ""
    offset: int = 0
    size: int = 0
    data: bytes | None = None
    params: tuple[tuple[str, Any], ...] = ()
    derive: str | None = None

    def describe(self) -> str:
        if self.how == "tar":
            return f"{self.location}::{self.params_dict().get('member', '?')}"
        if self.how == "inline":
            return f"inline {self.kind} ({len(self.data or b'')} bytes)"
        if self.how == "synth":
            return f"synthetic {self.kind}"
        return self.location

    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this item's content cheaply, for reusing finished shards on a rerun."""
        info: dict[str, Any] = {"kind": self.kind, "how": self.how, "location": self.location, "derive": self.derive}
        if self.how == "inline":
            info["sha256"] = hashlib.sha256(self.data or b"").hexdigest()
        elif self.how == "tar":
            info.update(offset=self.offset, size=self.size)
        info["params"] = [list(item) for item in self.params]
        return info


@dataclass(frozen=True)
class Record:
    """One sample to publish: key, split, ChatML turns and the media they refer to."""

    key: str
    split: str
    conversation: tuple[dict[str, Any], ...]
    media: tuple[MediaRef, ...] = ()
    origin: str = ""

    def modalities(self) -> frozenset[str]:
        return frozenset(item.kind for item in self.media)


@dataclass
class BadRecord:
    """A record left out of the dataset, and why."""

    key: str
    origin: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"key": self.key, "origin": self.origin, "reason": self.reason}


@dataclass
class PlannedSource:
    """What a source found: records to build (or bad ones), plus facts for the manifest and the plan."""

    name: str
    description: dict[str, Any]
    items: Any  # Iterator[Record | BadRecord]
    total_hint: int | None = None
    input_paths: list[str] = field(default_factory=list)


def sanitize_key(raw: str) -> str:
    """Energon cuts a member name at its first dot, so keys keep only letters, digits, '-' and '_'."""
    key = _KEY_UNSAFE.sub("_", raw).strip("_")
    return key[:120] or "sample"


def split_for(key: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """A deterministic split for sources that have none: the same key and seed always land in the same split."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < val_fraction:
        return "val"
    if position < val_fraction + test_fraction:
        return "test"
    return "train"


def typed_content(text: str, media_counts: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Turn text with <image>/<video>/<audio> placeholders into the typed parts Bridge's Omni path reads.

    Images and videos become ``{"type": "image"|"video"}`` parts (their media come from the sample's
    ``imgs``/``videos`` fields in order); audio has no part type in the collator, so ``<audio>`` becomes the
    collator's audio placeholder inside the text, where the sound tokens are expanded.
    """
    parts: list[dict[str, Any]] = []
    pending = ""
    for piece in re.split(r"(<image>|<video>)", text):
        if piece in ("<image>", "<video>"):
            if pending.strip():
                parts.append({"type": "text", "text": pending.strip()})
            pending = ""
            parts.append({"type": piece[1:-1]})
            if media_counts is not None:
                media_counts[piece[1:-1]] = media_counts.get(piece[1:-1], 0) + 1
        else:
            if media_counts is not None:
                media_counts["audio"] = media_counts.get("audio", 0) + piece.count("<audio>")
            pending += piece.replace("<audio>", COLLATOR_AUDIO_PLACEHOLDER)
    if pending.strip():
        parts.append({"type": "text", "text": pending.strip()})
    return parts


def count_media_parts(conversation: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> dict[str, int]:
    """How many media items each modality's parts in a typed conversation ask for."""
    counts = {kind: 0 for kind in MEDIA_KINDS}
    for turn in conversation:
        content = turn.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") in ("image", "video"):
                counts[part["type"]] += 1
            elif part.get("type") == "text":
                counts["audio"] += str(part.get("text", "")).count(COLLATOR_AUDIO_PLACEHOLDER)
    return counts


def conversation_json(conversation: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> bytes:
    """The ``conversation.json`` member: a JSON list of role/content turns (stable key order)."""
    return json.dumps(list(conversation), ensure_ascii=False, sort_keys=True).encode()


def check_structure(record: Record) -> None:
    """What can be told about a record without opening its media; raises ``BadRecordError``."""
    if not record.conversation:
        raise BadRecordError("conversation is empty")
    for index, turn in enumerate(record.conversation):
        if turn.get("role") not in ROLES:
            raise BadRecordError(f"turn {index} has role {turn.get('role')!r}; expected one of {', '.join(ROLES)}")
        content = turn.get("content")
        if not isinstance(content, (str, list)):
            raise BadRecordError(f"turn {index} content is {type(content).__name__}, not text")
    if record.conversation[-1].get("role") != "assistant":
        raise BadRecordError("the last turn is not the assistant's: there is nothing to learn from")
    held = {kind: sum(item.kind == kind for item in record.media) for kind in MEDIA_KINDS}
    for kind in MEDIA_KINDS:
        if held[kind] > 1:
            raise BadRecordError(f"{held[kind]} {kind}s; an Omni Energon sample holds at most one {kind}")
    asked = count_media_parts(record.conversation)
    for kind in ("image", "video"):
        if asked[kind] != held[kind]:
            raise BadRecordError(f"{asked[kind]} {PLACEHOLDERS[kind]} placeholder(s) but {held[kind]} {kind}(s)")
    if asked["audio"] > held["audio"]:
        raise BadRecordError(f"{asked['audio']} {PLACEHOLDERS['audio']} placeholder(s) but {held['audio']} audio(s)")
