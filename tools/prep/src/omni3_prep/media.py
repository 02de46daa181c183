"""Media checks and conversions: images with Pillow, audio and video with the ffmpeg command line.

Every ffmpeg call runs single-threaded (``-threads 1``): parallelism comes from the shard workers, and a
multi-threaded ffmpeg would make one worker take every core.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from omni3_prep.records import BadRecordError
from omni3_shared.errors import ToolFailure

AUDIO_RATE = 16000
FFMPEG_TIMEOUT_S = 300
IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg"}
# ffmpeg flags that keep its output free of version strings and timestamps, so equal input gives equal bytes.
BITEXACT = ["-fflags", "+bitexact", "-flags", "+bitexact", "-map_metadata", "-1"]


def require_ffmpeg() -> None:
    """Fail early, before any work, when ffmpeg or ffprobe is missing."""
    missing = [tool for tool in ("ffmpeg", "ffprobe") if shutil.which(tool) is None]
    if missing:
        raise ToolFailure(
            f"{' and '.join(missing)} not found on PATH",
            fix="install the Debian package ffmpeg (apt-get install ffmpeg)",
        )


def run_ffmpeg(args: list[str], what: str) -> None:
    """Run ffmpeg quietly; a failure is the record's fault (undecodable or unusable media)."""
    command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    try:
        result = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise BadRecordError(f"{what}: ffmpeg took longer than {FFMPEG_TIMEOUT_S} s") from None
    if result.returncode != 0:
        detail = " ".join(result.stderr.decode(errors="replace").split())[-300:] or f"exit {result.returncode}"
        raise BadRecordError(f"{what}: {detail}")


@dataclass(frozen=True)
class ImageFacts:
    ext: str
    width: int
    height: int
    pixel_sha256: str  # of the decoded RGB pixels, which is what the training decoder yields


def image_facts(data: bytes) -> ImageFacts:
    """Decode an image fully; PNG and JPEG are kept as they are, other formats are refused here."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            fmt = image.format or ""
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadRecordError(f"undecodable image ({exc.__class__.__name__}: {exc})") from None
    if fmt not in IMAGE_FORMATS:
        raise BadRecordError(f"image format {fmt or 'unknown'} is not PNG or JPEG")
    return ImageFacts(IMAGE_FORMATS[fmt], rgb.width, rgb.height, hashlib.sha256(rgb.tobytes()).hexdigest())


def normalize_image(data: bytes) -> tuple[bytes, ImageFacts]:
    """Keep PNG/JPEG bytes untouched; convert other decodable formats (WebP, BMP, ...) to PNG losslessly."""
    try:
        return data, image_facts(data)
    except BadRecordError as exc:
        if "not PNG or JPEG" not in exc.reason:
            raise
    with Image.open(io.BytesIO(data)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
    converted = buffer.getvalue()
    return converted, image_facts(converted)


@dataclass(frozen=True)
class AudioFacts:
    frames: int
    pcm_sha256: str  # of the 16-bit samples, which the training decoder turns into floats


def wav_facts(data: bytes) -> AudioFacts | None:
    """Facts of a 16 kHz mono 16-bit PCM WAV, or None when the bytes are anything else."""
    try:
        with wave.open(io.BytesIO(data)) as reader:
            if (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) != (AUDIO_RATE, 1, 2):
                return None
            pcm = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError, ValueError):
        return None
    if not pcm:
        return None
    return AudioFacts(len(pcm) // 2, hashlib.sha256(pcm).hexdigest())


def to_wav16k(source: Path, what: str) -> tuple[bytes, AudioFacts]:
    """The first audio track of ``source`` (an audio or a video file) as 16 kHz mono 16-bit WAV."""
    if source.suffix.lower() == ".wav":
        data = source.read_bytes()
        facts = wav_facts(data)
        if facts is not None:
            return data, facts
    with tempfile.TemporaryDirectory(prefix="omni3-prep-audio-") as scratch:
        # A seekable file, not a pipe: through a pipe ffmpeg cannot fill in the WAV header's sizes.
        target = Path(scratch) / "audio.wav"
        args = ["-threads", "1", "-i", str(source), "-vn", "-map", "0:a:0", "-ac", "1", "-ar", str(AUDIO_RATE)]
        run_ffmpeg([*args, "-c:a", "pcm_s16le", *BITEXACT, str(target)], what)
        data = target.read_bytes()
    facts = wav_facts(data)
    if facts is None:
        raise BadRecordError(f"{what}: the audio track decoded to no samples")
    return data, facts


@dataclass(frozen=True)
class VideoFacts:
    width: int
    height: int
    duration_s: float
    has_audio: bool


def video_facts(path: Path, what: str, wav_target: Path | None = None) -> VideoFacts:
    """Probe a video and decode its first frame: a file that passes can be opened by the training decoder.

    With ``wav_target`` the same ffmpeg run also writes the first audio track there as 16 kHz mono WAV (one
    process instead of two: on small clips ffmpeg's start-up costs more than the work).
    """
    command = ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)]
    result = subprocess.run(command, capture_output=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    if result.returncode != 0:
        detail = " ".join(result.stderr.decode(errors="replace").split())[-300:]
        raise BadRecordError(f"{what}: undecodable video ({detail or 'ffprobe failed'})")
    info = json.loads(result.stdout or b"{}")
    streams = info.get("streams", [])
    video = next((stream for stream in streams if stream.get("codec_type") == "video"), None)
    if video is None:
        raise BadRecordError(f"{what}: no video stream")
    has_audio = any(stream.get("codec_type") == "audio" for stream in streams)
    args = ["-threads", "1", "-i", str(path), "-map", "0:v:0", "-frames:v", "1", "-f", "null", "-"]
    if wav_target is not None and has_audio:
        args += ["-map", "0:a:0", "-ac", "1", "-ar", str(AUDIO_RATE), "-c:a", "pcm_s16le", *BITEXACT, str(wav_target)]
    run_ffmpeg(args, what)
    duration = float(info.get("format", {}).get("duration") or video.get("duration") or 0.0)
    return VideoFacts(
        width=int(video.get("width", 0)),
        height=int(video.get("height", 0)),
        duration_s=duration,
        has_audio=has_audio,
    )


def is_mp4(data: bytes) -> bool:
    """ISO base media files carry 'ftyp' at byte 4; that is what the training path's video decoder expects."""
    return len(data) > 12 and data[4:8] == b"ftyp"


def to_mp4(source: Path, what: str) -> bytes:
    """Re-encode a video in another container (WebM, MKV, AVI, ...) to H.264/AAC MP4."""
    with tempfile.TemporaryDirectory(prefix="omni3-prep-video-") as scratch:
        target = Path(scratch) / "video.mp4"
        args = ["-threads", "1", "-i", str(source), "-map", "0:v:0", "-map", "0:a:0?", "-c:v", "libx264"]
        args += ["-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "+faststart"]
        run_ffmpeg([*args, *BITEXACT, str(target)], what)
        return target.read_bytes()
