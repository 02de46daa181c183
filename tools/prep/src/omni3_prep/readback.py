"""Reading an Energon dataset back the way the training path does, and checking what comes out.

Every split in ``split.yaml`` is opened with megatron-energon's ``get_val_dataset`` through the loader
``dataset.yaml`` names, and all splits are read by one Energon loader. Each sample's conversation must parse
into ChatML turns whose media parts match the sample's media, and each mapped field must decode. With the
facts a build recorded, every sample is also compared with its source: conversation bytes, decoded pixels,
PCM samples, MP4 bytes.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import sqlite3
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omni3_prep import media
from omni3_prep.energon_meta import (
    BRIDGE_CLASS,
    BRIDGE_MODULE,
    META_DIR,
    SAMPLE_FIELDS,
    read_dataset_yaml,
    read_splits,
)
from omni3_prep.records import COLLATOR_AUDIO_PLACEHOLDER, BadRecordError

MAX_LISTED_ERRORS = 20
# A dataset smaller than this is read in this process: starting loader processes costs more than it saves
# (measured on the 2-core machine: about 0.3 s of start-up against about 0.4 s per 150 receipts).
LOADER_WORKERS_FROM = 512


@dataclass
class SplitReport:
    split: str
    shards: int = 0
    indexed: int = 0
    read: int = 0
    decoded: dict[str, int] = field(default_factory=lambda: {"image": 0, "audio": 0, "video": 0})
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(message)


@dataclass
class Report:
    path: str
    loader: str = ""
    sample_class: str = ""
    field_map: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    splits: dict[str, SplitReport] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems and all(not split.error_count for split in self.splits.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "loader": self.loader,
            "sample_class": self.sample_class,
            "field_map": self.field_map,
            "problems": self.problems,
            "splits": {name: vars(split) for name, split in self.splits.items()},
        }

    def first_problem(self) -> str:
        if self.problems:
            return self.problems[0]
        for split in self.splits.values():
            if split.errors:
                return f"split {split.split}: {split.errors[0]}"
        return ""


class BuildFacts:
    """What a build recorded per sample (the shard sidecars), loaded one shard at a time to keep memory flat."""

    def __init__(self, sidecar_dir: Path) -> None:
        self.sidecar_dir = Path(sidecar_dir)
        self._shard = ""
        self._facts: dict[str, dict[str, Any]] = {}

    def lookup(self, shard: str, key: str) -> dict[str, Any] | None:
        if shard != self._shard:
            sidecar = json.loads((self.sidecar_dir / f"{shard}.json").read_text())
            self._shard, self._facts = shard, {sample["key"]: sample for sample in sidecar["samples"]}
        return self._facts.get(key)

    def keys(self, split: str, shards: list[str]) -> set[str]:
        keys: set[str] = set()
        for shard in shards:
            keys.update(
                sample["key"] for sample in json.loads((self.sidecar_dir / f"{shard}.json").read_text())["samples"]
            )
        return keys


def parse_conversation(payload: Any) -> list[dict[str, Any]]:
    """The turns Bridge's ChatML cooker accepts: a list (or wrapped list) of role/content or from/value turns."""
    if isinstance(payload, (bytes, str)):
        payload = json.loads(payload)
    if isinstance(payload, dict):
        payload = payload.get("conversations", payload.get("messages", payload.get("conversation")))
    if not isinstance(payload, list) or not payload:
        raise ValueError("conversation is not a non-empty list of turns")
    turns = []
    for index, turn in enumerate(payload):
        if not isinstance(turn, dict) or not ("role" in turn or "from" in turn):
            raise ValueError(f"turn {index} has neither 'role' nor 'from'")
        turns.append({"role": turn.get("role", turn.get("from")), "content": turn.get("content", turn.get("value"))})
    if not any(turn["role"] in ("assistant", "gpt") for turn in turns):
        raise ValueError("conversation has no assistant turn")
    return turns


def media_parts(turns: list[dict[str, Any]]) -> dict[str, int]:
    """Media each modality's placeholders ask for: typed parts, or <image>/<video> in string content."""
    counts = {"image": 0, "video": 0, "audio": 0}
    for turn in turns:
        content = turn["content"]
        pieces = content if isinstance(content, list) else [{"type": "text", "text": str(content or "")}]
        for part in pieces:
            if not isinstance(part, dict):
                continue
            if part.get("type") in ("image", "video"):
                counts[part["type"]] += 1
            elif part.get("type") == "text":
                text = str(part.get("text", ""))
                counts["image"] += text.count("<image>")
                counts["video"] += text.count("<video>")
                counts["audio"] += text.count(COLLATOR_AUDIO_PLACEHOLDER)
    return counts


def _pixels_digest(image: Any) -> tuple[int, int, str]:
    # float32 is exact here: a decoded value is k/255, and k/255*255 rounds back to k.
    if hasattr(image, "permute"):  # a torch tensor: round in place on a copy, in torch (faster than numpy here)
        import torch  # already loaded by Energon's decoder whenever it hands out tensors

        pixels = image.mul(255.0).round_().to(dtype=torch.uint8).permute(1, 2, 0).contiguous().numpy()
    else:
        pixels = np.rint(np.asarray(image) * np.float32(255.0)).astype(np.uint8)
    return pixels.shape[1], pixels.shape[0], hashlib.sha256(pixels.tobytes()).hexdigest()


def _pcm_digest(waveform: Any) -> tuple[int, str]:
    array = waveform.numpy() if hasattr(waveform, "numpy") else np.asarray(waveform)
    pcm = np.clip(np.rint(array.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")
    return pcm.size, hashlib.sha256(pcm.tobytes()).hexdigest()


def _check_field_map(root: Path, report: Report) -> None:
    config = read_dataset_yaml(root)
    report.sample_class = f"{config.get('__module__', '?')}.{config.get('__class__', '?')}"
    mapping = config.get("field_map")
    if (config.get("__module__"), config.get("__class__")) != (BRIDGE_MODULE, BRIDGE_CLASS):
        report.problems.append(
            f"dataset.yaml names {report.sample_class}; the Omni task encoder reads {BRIDGE_MODULE}.{BRIDGE_CLASS}"
        )
    if not isinstance(mapping, dict) or "conversation" not in mapping:
        report.problems.append("dataset.yaml has no field_map with a 'conversation' entry")
        return
    report.field_map = {str(key): str(value) for key, value in mapping.items()}
    unknown = sorted(set(mapping) - set(SAMPLE_FIELDS))
    if unknown:
        report.problems.append(f"field_map fills {unknown}, which ChatMLSample does not have")


def _check_parts(root: Path, report: Report) -> None:
    """Every sample of the index must hold a member for every mapped field (read-only look at index.sqlite)."""
    index = root / META_DIR / "index.sqlite"
    if not index.is_file():
        report.problems.append(f"{META_DIR}/index.sqlite is missing: the dataset was not prepared with energon")
        return
    connection = sqlite3.connect(f"{index.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        total = connection.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        for name, members in report.field_map.items():
            options = [member.strip() for member in members.split(",")]
            marks = ",".join("?" for _ in options)
            query = (
                "SELECT COUNT(DISTINCT tar_file_id || ':' || sample_index) FROM sample_parts "
                f"WHERE part_name IN ({marks})"
            )
            having = connection.execute(query, options).fetchone()[0]
            if having != total:
                report.problems.append(f"{total - having} of {total} samples lack a member for '{name}' ({members})")
    finally:
        connection.close()


def _shard_counts(root: Path) -> dict[str, int]:
    info = root / META_DIR / ".info.json"
    if info.is_file():
        return json.loads(info.read_text()).get("shard_counts", {})
    import yaml

    legacy = root / META_DIR / ".info.yaml"
    return (yaml.safe_load(legacy.read_text()) or {}).get("shard_counts", {}) if legacy.is_file() else {}


def _video_decodes(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="omni3-prep-check-") as scratch:
        path = Path(scratch) / "video.mp4"
        path.write_bytes(data)
        media.video_facts(path, "video")


class _Checker:
    """Checks one sample where Energon decoded it (in its loader workers); returns a small verdict.

    Decoding and digests run in parallel that way; the main process only counts keys and gathers errors.
    """

    def __init__(self, expected: BuildFacts | None, decode_videos: int, split: str) -> None:
        self.expected = expected
        self.decode_videos = decode_videos
        self.split = split
        self.videos_decoded = 0  # per process: each loader worker decodes its first few videos

    def __call__(self, sample: Any) -> dict[str, Any]:
        verdict: dict[str, Any] = {
            "key": sample.__key__,
            "split": self.split,
            "errors": [],
            "decoded": {"image": 0, "audio": 0, "video": 0},
        }
        try:
            self._check(sample, verdict)
        except Exception as exc:  # a check that cannot run on this sample is itself a finding
            verdict["errors"].append(f"sample {sample.__key__}: {exc.__class__.__name__}: {exc}")
        return verdict

    def _check(self, sample: Any, verdict: dict[str, Any]) -> None:
        key, errors = sample.__key__, verdict["errors"]
        facts = None
        if self.expected is not None:
            sources = getattr(sample, "__sources__", None) or []
            facts = self.expected.lookup(getattr(sources[0], "shard_name", "") if sources else "", key)
            if facts is None:
                errors.append(f"sample {key} was read back but never written")
                return
        try:
            turns = parse_conversation(sample.conversation)
        except (ValueError, json.JSONDecodeError) as exc:
            errors.append(f"sample {key}: {exc}")
            return
        if facts is not None:
            written = json.dumps(turns_as_written(sample.conversation), ensure_ascii=False, sort_keys=True)
            if hashlib.sha256(written.encode()).hexdigest() != facts["conversation_sha256"]:
                errors.append(f"sample {key}: conversation differs from its source")
        parts = media_parts(turns)
        _check_image(sample, key, parts, facts, verdict)
        _check_audio(sample, key, parts, facts, verdict)
        self._check_video(sample, key, parts, facts, verdict)

    def _check_video(self, sample: Any, key: str, parts: dict[str, int], facts: dict | None, verdict: dict) -> None:
        video, errors = sample.videos, verdict["errors"]
        if video is None:
            if parts["video"]:
                errors.append(f"sample {key}: {parts['video']} video placeholder(s) but no video")
            return
        if not isinstance(video, (bytes, bytearray)) or not video:
            errors.append(f"sample {key}: video is {type(video).__name__}, not MP4 bytes for the Omni task encoder")
            return
        if parts["video"] != 1:
            errors.append(f"sample {key}: one video but {parts['video']} video placeholders")
        if facts is not None:
            want = facts.get("members", {}).get("video.mp4", {})
            if hashlib.sha256(video).hexdigest() != want.get("sha256"):
                errors.append(f"sample {key}: video bytes differ from the source")
        if self.videos_decoded < self.decode_videos:  # decoding is costly: the first few prove the format
            self.videos_decoded += 1
            try:
                _video_decodes(bytes(video))
            except BadRecordError as exc:
                errors.append(f"sample {key}: {exc.reason}")
                return
            verdict["decoded"]["video"] += 1


def read_back(
    root: Path,
    expected: BuildFacts | None = None,
    limit: int | None = None,
    decode_videos: int = 1,
    workers: int = 0,
) -> Report:
    """Read ``root`` through Energon and check it; with ``expected``, compare every sample with its source.

    ``workers``: Energon loader processes that decode and check samples in parallel (0: in this process).
    """
    from megatron.energon import DefaultTaskEncoder, WorkerConfig, get_val_dataset
    from megatron.energon.savable_loader import BasicDataLoader
    from megatron.energon.wrappers.concat_dataset import ConcatDataset

    from omni3_prep.chatml_mirror import bridge_loader

    root = Path(root)
    report = Report(path=str(root))
    if not (root / META_DIR / "dataset.yaml").is_file() or not (root / META_DIR / "split.yaml").is_file():
        report.problems.append(f"{root} has no {META_DIR}/dataset.yaml and split.yaml: not a prepared Energon dataset")
        return report
    _check_field_map(root, report)
    if report.problems:
        return report
    _check_parts(root, report)
    counts = _shard_counts(root)

    class _Verdicts(DefaultTaskEncoder):  # each sample becomes its verdict in the worker; batches stay lists
        def __init__(self, checker: _Checker) -> None:
            super().__init__()
            self.checker = checker

        def encode_sample(self, sample: Any) -> dict[str, Any]:
            return self.checker(sample)

        def batch(self, samples: list[Any]) -> list[Any]:
            return samples

    with (
        bridge_loader() as loader,
        warnings.catch_warnings(),
        tempfile.TemporaryDirectory() as scratch,
        _gc_frozen(),
    ):
        warnings.filterwarnings("ignore", message=".*pin_memory.*")
        report.loader = loader
        splits = sorted(read_splits(root).items())
        for split, shards in splits:
            indexed = sum(counts.get(name, 0) for name in shards)
            report.splits[split] = SplitReport(split, shards=len(shards), indexed=indexed)
        if not splits:  # nothing to read (and Energon's ConcatDataset needs at least one dataset)
            return report
        # One loader for every split (Energon's ConcatDataset): its processes start once and share out the
        # small splits too, instead of a loader, its start-up and a forced gc.collect() per split.
        failures = Path(scratch) / "failures"
        total = sum(split.indexed for split in report.splits.values())
        num_workers = 0 if total < LOADER_WORKERS_FROM or limit is not None else workers

        def config(split: str) -> WorkerConfig:  # the same loader processes; failures name their split
            return WorkerConfig(
                rank=0, world_size=1, num_workers=num_workers, global_error_handler=_FailureLog(failures, split)
            )

        parts = [
            get_val_dataset(
                str(root),
                split_part=split,
                worker_config=config(split),
                batch_size=1,
                limit=limit,  # batches of one sample: at most ``limit`` samples of each split
                task_encoder=_Verdicts(_Checker(expected, decode_videos, split)),
            )
            for split, _ in splits
        ]
        seen: dict[str, set[str]] = {split: set() for split, _ in splits}
        # Energon prints every failure on stdout, which belongs to the command's result: keep it quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            # get_loader()'s loader, without its forced gc.collect() every 10 samples: a verdict is a small
            # dict, and those collections were a sixth of the read-back's time on image jobs.
            every_split = ConcatDataset(*parts, worker_config=config(""))
            for batch in BasicDataLoader(every_split, gc_collect_every_n_steps=0):
                for verdict in batch:
                    split_report = report.splits[verdict["split"]]
                    split_report.read += 1
                    if verdict["key"] in seen[verdict["split"]]:
                        split_report.error(f"sample {verdict['key']} was read twice")
                    seen[verdict["split"]].add(verdict["key"])
                    for error in verdict["errors"]:
                        split_report.error(error)
                    for kind, number in verdict["decoded"].items():
                        split_report.decoded[kind] += number
        for split, line in _FailureLog.read(failures):
            report.splits[split].error(line)
        for split, shards in splits:
            split_report = report.splits[split]
            if expected is not None:
                missing = sorted(expected.keys(split, shards) - seen[split])
                for key in missing[:MAX_LISTED_ERRORS]:
                    split_report.error(f"sample {key} was written but not read back")
                split_report.error_count += max(0, len(missing) - MAX_LISTED_ERRORS)
            if limit is None and split_report.read != split_report.indexed:
                split_report.error(f"read {split_report.read} samples, the index lists {split_report.indexed}")
    return report


@contextlib.contextmanager
def _gc_frozen() -> Iterator[None]:
    """Energon's loader runs a full ``gc.collect()`` whenever one is made, once per split: with torch loaded
    that scans every object of the process (about 0.1 s). Freezing what exists before the read-back leaves
    those collections only the read-back's own objects to scan; nothing is leaked, it is unfrozen after."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


class _FailureLog:
    """Energon's error handler: records each sample it had to skip, from any loader process, in one file."""

    def __init__(self, path: Path, split: str) -> None:
        self.path = path
        self.split = split

    def __call__(self, exc: Exception, sample: Any, sources: Any) -> None:
        names = [name for source in sources or [] for name in getattr(source, "file_names", [])]
        where = names[0].split(".", 1)[0] if names else _raw_key(sample)
        causes = []
        while exc is not None and len(causes) < 3:  # Energon wraps the decoder's error: show the chain
            causes.append(f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:160]}".rstrip(": "))
            exc = exc.__cause__ or exc.__context__
        line = f"sample {where} cannot be loaded: {' <- '.join(causes)}"
        with self.path.open("a") as handle:  # one short append per failure: whole lines from every process
            handle.write(json.dumps([self.split, line]) + "\n")

    @staticmethod
    def read(path: Path) -> list[tuple[str, str]]:
        """(split, message) of every recorded failure."""
        if not path.is_file():
            return []
        return [tuple(json.loads(line)) for line in path.read_text().splitlines() if line]


def _raw_key(sample: Any) -> str:
    """The key of a raw sample Energon could not load (a dict, or a wrapper holding dicts)."""
    for candidate in [sample, *getattr(sample, "data", [])]:
        if isinstance(candidate, dict) and "__key__" in candidate:
            return str(candidate["__key__"])
    return "a sample"


def turns_as_written(conversation: Any) -> Any:
    return json.loads(conversation) if isinstance(conversation, (bytes, str)) else conversation


def _check_image(sample: Any, key: str, parts: dict[str, int], facts: dict | None, verdict: dict) -> None:
    image, errors = sample.imgs, verdict["errors"]
    if image is None:
        if parts["image"]:
            errors.append(f"sample {key}: {parts['image']} image placeholder(s) but no image")
        return
    if parts["image"] != 1:
        errors.append(f"sample {key}: one image but {parts['image']} image placeholders")
    if getattr(image, "ndim", 0) != 3 or image.shape[0] != 3:
        errors.append(f"sample {key}: image decoded to shape {tuple(getattr(image, 'shape', ()))}, not [3, H, W]")
        return
    verdict["decoded"]["image"] += 1
    if facts is not None:
        width, height, digest = _pixels_digest(image)
        want = facts.get("image", {})
        if (width, height, digest) != (want.get("width"), want.get("height"), want.get("pixels")):
            errors.append(f"sample {key}: image pixels differ from the source")


def _check_audio(sample: Any, key: str, parts: dict[str, int], facts: dict | None, verdict: dict) -> None:
    waveform, errors = sample.audio, verdict["errors"]
    if waveform is None:
        if parts["audio"] or (facts is not None and "audio" in facts):
            errors.append(f"sample {key}: audio missing or undecodable")
        return
    if getattr(waveform, "ndim", 0) != 1 or waveform.shape[0] == 0:
        errors.append(f"sample {key}: audio decoded to shape {tuple(getattr(waveform, 'shape', ()))}")
        return
    verdict["decoded"]["audio"] += 1
    if facts is not None:
        frames, digest = _pcm_digest(waveform)
        want = facts.get("audio", {})
        if (frames, digest) != (want.get("frames"), want.get("pcm")):
            errors.append(f"sample {key}: audio samples differ from the source")
