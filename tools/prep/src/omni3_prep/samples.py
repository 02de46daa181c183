"""Turning a planned record into the members of one WebDataset sample (runs in the shard workers).

Members follow what Megatron-Bridge's Omni Energon path reads: ``conversation.json`` (ChatML turns),
``image.png``/``image.jpg``, ``audio.wav`` (16 kHz mono PCM) and ``video.mp4``. Along the way every item is
decoded once, and the facts that prove a later read-back (pixel and PCM digests, sizes) are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni3_prep import media, synth
from omni3_prep.records import BadRecordError, MediaRef, Record, conversation_json

CONVERSATION_MEMBER = "conversation.json"


@dataclass
class SampleOut:
    key: str
    origin: str
    members: list[tuple[str, bytes]]
    facts: dict[str, Any] = field(default_factory=dict)


def _read(ref: MediaRef) -> bytes:
    """The item's bytes, or a bad record naming what is missing."""
    if ref.how == "inline":
        if not ref.data:
            raise BadRecordError(f"{ref.kind} is empty")
        return ref.data
    if ref.how == "synth":
        return synth.render(ref.params_dict())
    if ref.how == "file":
        try:
            data = Path(ref.location).read_bytes()
        except FileNotFoundError:
            raise BadRecordError(f"missing {ref.kind} file {ref.location}") from None
        except OSError as exc:
            raise BadRecordError(f"unreadable {ref.kind} file {ref.location} ({exc.strerror})") from None
        if not data:
            raise BadRecordError(f"{ref.kind} file {ref.location} is empty")
        return data
    if ref.how == "tar":
        with open(ref.location, "rb") as handle:
            handle.seek(ref.offset)
            data = handle.read(ref.size)
        if len(data) != ref.size:
            raise BadRecordError(f"{ref.kind} member {ref.describe()} is truncated")
        return data
    raise ValueError(f"unknown media source {ref.how!r}")


class _Scratch:
    """Gives ffmpeg a file path for an item: the source file itself when there is one, else a temporary copy."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.written: dict[tuple[Any, ...], Path] = {}

    def path_for(self, ref: MediaRef, data: bytes | None, suffix: str) -> Path:
        if ref.how == "file":
            return Path(ref.location)
        # A video and the audio derived from it name the same source: write (or render) it once.
        identity = (ref.how, ref.location, ref.offset, ref.size, ref.params, ref.data)
        if identity not in self.written:
            path = self.directory / f"item{len(self.written)}{suffix}"
            path.write_bytes(data if data is not None else _read(ref))
            self.written[identity] = path
        return self.written[identity]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cache_name(ref: MediaRef) -> str:
    """One name per media source, shared by a video and the audio derived from it."""
    source = {key: value for key, value in ref.fingerprint().items() if key not in ("kind", "derive")}
    if ref.how in ("file", "tar"):  # a source replaced between a killed run and its rerun gets a new name
        try:
            info = os.stat(ref.location)
            source["stat"] = [info.st_size, info.st_mtime_ns]
        except OSError:
            pass
    return hashlib.sha1(json.dumps(source, sort_keys=True).encode()).hexdigest()


def _video(
    ref: MediaRef, scratch: _Scratch, cache_dir: Path | None, want_audio: bool
) -> tuple[bytes, dict, bytes | None]:
    """The video's bytes, facts and (when asked) its WAV track; checked once per video, even with many QAs."""
    data = _read(ref)
    cached = cache_dir / _cache_name(ref) if cache_dir is not None else None
    if (
        cached is not None
        and cached.with_suffix(".json").is_file()
        and (not want_audio or cached.with_suffix(".wav").is_file())
    ):
        facts = json.loads(cached.with_suffix(".json").read_text())
        wav = cached.with_suffix(".wav").read_bytes() if want_audio else None
        return (data if media.is_mp4(data) else _converted(ref, data, scratch)), facts, wav
    path = scratch.path_for(ref, data, ".mp4")
    wav_path = scratch.directory / f"{_cache_name(ref)}.wav"
    probed = media.video_facts(path, f"video {ref.describe()}", wav_path if want_audio else None)
    facts = {
        "width": probed.width,
        "height": probed.height,
        "duration_s": round(probed.duration_s, 3),
        "has_audio": probed.has_audio,
    }
    wav = None
    if want_audio:
        if not probed.has_audio:
            raise BadRecordError(f"video {ref.describe()} has no audio track")
        wav = wav_path.read_bytes()
        if media.wav_facts(wav) is None:
            raise BadRecordError(f"the audio track of {ref.describe()} decoded to no samples")
    if cached is not None:
        # Concurrent workers may race on one video: each writes a private file, then renames (same bytes).
        for suffix, payload in ((".wav", wav), (".json", json.dumps(facts).encode())):
            if payload is not None:
                temporary = cached.with_suffix(f".{os.getpid()}{suffix}.tmp")
                temporary.write_bytes(payload)
                os.replace(temporary, cached.with_suffix(suffix))
    return (data if media.is_mp4(data) else _converted(ref, data, scratch)), facts, wav


def _converted(ref: MediaRef, data: bytes, scratch: _Scratch) -> bytes:
    return media.to_mp4(scratch.path_for(ref, data, ".video"), f"video {ref.describe()}")


def materialize(record: Record, cache_dir: Path | None = None) -> SampleOut:
    """Load, convert and check every item of ``record``; raise ``BadRecordError`` on the first problem."""
    conversation = conversation_json(record.conversation)
    out = SampleOut(record.key, record.origin, [(CONVERSATION_MEMBER, conversation)])
    out.facts["conversation_sha256"] = _digest(conversation)
    derived = next((item for item in record.media if item.derive == "audio-from-video"), None)
    with tempfile.TemporaryDirectory(prefix="omni3-prep-sample-") as directory:
        scratch = _Scratch(Path(directory))
        for ref in record.media:
            if ref.kind == "image":
                data, image = media.normalize_image(_read(ref))
                out.members.append((f"image.{image.ext}", data))
                out.facts["image"] = {"width": image.width, "height": image.height, "pixels": image.pixel_sha256}
            elif ref.kind == "video":
                data, facts, wav = _video(ref, scratch, cache_dir, want_audio=derived is not None)
                out.members.append(("video.mp4", data))
                out.facts["video"] = facts
                if wav is not None:
                    out.members.append(("audio.wav", wav))
            elif ref.derive is None:
                data, _ = media.to_wav16k(scratch.path_for(ref, None, ".bin"), f"audio {ref.describe()}")
                out.members.append(("audio.wav", data))
        audio = dict(out.members).get("audio.wav")
        if audio is not None:
            facts = media.wav_facts(audio)
            if facts is None:
                raise BadRecordError(f"audio of {record.key} did not convert to 16 kHz mono WAV")
            out.facts["audio"] = {"frames": facts.frames, "pcm": facts.pcm_sha256}
    out.facts["members"] = {name: {"size": len(data), "sha256": _digest(data)} for name, data in out.members}
    return out
