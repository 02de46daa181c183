"""``omni3-prep hf``: a CORD-v2-style image+text dataset (columns ``image`` and ``ground_truth``).

Local inputs, read with pyarrow without loading everything: a parquet file or a directory of them (the Hub's
``data/{split}-*.parquet`` layout), an Arrow file, or a ``datasets`` ``save_to_disk`` directory. A Hub id is
read through the optional ``datasets`` package, where a hub is reachable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omni3_prep.records import BadRecord, MediaRef, PlannedSource, Record
from omni3_prep.synth import CORD_PROMPT, cord_conversation
from omni3_shared.errors import InvalidInputError, ToolFailure, UsageError

SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val", "test": "test"}
REQUIRED_COLUMNS = ("image", "ground_truth")
_SPLIT_PREFIX = re.compile(r"^(train|validation|valid|val|dev|test)(?:[-_.]|$)")


def _split_of(path: Path, root: Path) -> str:
    for part in (path.name, *reversed(path.relative_to(root).parts[:-1])):
        match = _SPLIT_PREFIX.match(part.lower())
        if match:
            return SPLIT_NAMES[match.group(1)]
    return "train"


def _arrow_batches(path: Path) -> Iterator[Any]:
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))  # what save_to_disk writes
    except pa.ArrowInvalid:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        for number in range(reader.num_record_batches):
            yield reader.get_batch(number)
        return
    yield from reader


def _parquet_batches(path: Path) -> Iterator[Any]:
    import pyarrow.parquet as pq

    yield from pq.ParquetFile(path).iter_batches(batch_size=64)


def local_files(root: Path) -> list[tuple[str, Path]]:
    """(split, file) pairs of a local dataset, in a stable order."""
    if root.is_file():
        return [(_split_of(root, root.parent), root)]
    manifest = root / "dataset_dict.json"
    if manifest.is_file():  # save_to_disk of a DatasetDict: one sub-directory per split
        splits = json.loads(manifest.read_text()).get("splits", [])
        return [(SPLIT_NAMES.get(s, s), path) for s in splits for path in sorted((root / s).glob("*.arrow"))]
    files = sorted(path for path in root.rglob("*") if path.suffix in (".parquet", ".arrow") and path.is_file())
    if not files:
        raise InvalidInputError(f"{root} holds no parquet or arrow files", fix="point --input at a CORD-style dataset")
    return [(_split_of(path, root), path) for path in files]


def _rows(split: str, path: Path) -> Iterator[dict[str, Any]]:
    batches = _arrow_batches(path) if path.suffix == ".arrow" else _parquet_batches(path)
    for batch in batches:
        missing = [name for name in REQUIRED_COLUMNS if name not in batch.schema.names]
        if missing:
            raise InvalidInputError(
                f"{path} has no {', '.join(missing)} column: not a CORD-v2-style dataset",
                fix=f"use a dataset with columns {', '.join(REQUIRED_COLUMNS)}",
            )
        yield from batch.select(list(REQUIRED_COLUMNS)).to_pylist()


def _image_bytes(value: Any, base: Path) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            path = Path(value["path"])
            path = path if path.is_absolute() else base / path
            if path.is_file():
                return path.read_bytes()
            raise ValueError(f"missing image file {path}")
    raise ValueError("the row has no image bytes")


def row_record(row: dict[str, Any], split: str, number: int, origin: str, base: Path, prompt: str) -> Record:
    try:
        truth = json.loads(row["ground_truth"])
        conversation = cord_conversation(truth, prompt)
    except (TypeError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"malformed ground_truth JSON ({exc.__class__.__name__}: {exc})") from None
    image = _image_bytes(row["image"], base)
    return Record(
        key=f"{split}-{number:07d}",
        split=split,
        conversation=conversation,
        media=(MediaRef("image", "inline", data=image),),
        origin=origin,
    )


def _numbered_rows(root: Path, limit: int | None) -> Iterator[tuple[str, int, Path, dict[str, Any]]]:
    numbers: dict[str, int] = {}
    for split, path in local_files(root):
        for row in _rows(split, path):
            number = numbers.get(split, 0)
            if limit is not None and number >= limit:
                break
            numbers[split] = number + 1
            yield split, number, path, row


def _local_items(root: Path, limit: int | None, prompt: str) -> Iterator[Record | BadRecord]:
    base = root if root.is_dir() else root.parent
    for split, number, path, row in _numbered_rows(root, limit):
        origin = f"{path.name} row {number}"
        try:
            yield row_record(row, split, number, origin, base, prompt)
        except ValueError as exc:
            yield BadRecord(f"{split}-{number:07d}", origin, str(exc))


def _hub_items(dataset_id: str, limit: int | None, prompt: str) -> Iterator[Record | BadRecord]:
    try:
        import datasets
    except ImportError:
        raise UsageError(
            f"{dataset_id} is not a local path, and reading a Hub id needs the 'datasets' package",
            fix="pip install 'omni3-prep[hub]' on a machine that reaches the hub, or pass a local parquet/arrow path",
        ) from None
    try:
        splits = datasets.load_dataset(dataset_id, streaming=True)
    except Exception as exc:
        raise ToolFailure(
            f"cannot open {dataset_id} on the hub ({exc.__class__.__name__})", fix="check the id and the network"
        ) from None
    for name, rows in splits.items():
        split = SPLIT_NAMES.get(name, name)
        for number, row in enumerate(rows):
            if limit is not None and number >= limit:
                break
            image = row["image"]
            if hasattr(image, "save"):  # a decoded PIL image: store it losslessly
                import io

                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                row = {**row, "image": buffer.getvalue()}
            try:
                yield row_record(row, split, number, f"{dataset_id}[{name}] row {number}", Path("."), prompt)
            except ValueError as exc:
                yield BadRecord(f"{split}-{number:07d}", f"{dataset_id}[{name}] row {number}", str(exc))


def count_rows(root: Path) -> dict[str, int]:
    """Rows per split from file metadata (parquet footers, arrow batch lengths), without decoding images."""
    import pyarrow.parquet as pq

    counts: dict[str, int] = {}
    for split, path in local_files(root):
        if path.suffix == ".parquet":
            rows = pq.ParquetFile(path).metadata.num_rows
        else:
            rows = sum(batch.num_rows for batch in _arrow_batches(path))
        counts[split] = counts.get(split, 0) + rows
    return counts


def plan(source: str, limit: int | None, prompt: str = CORD_PROMPT) -> PlannedSource:
    root = Path(source)
    if root.exists():
        counts = count_rows(root)
        total = sum(min(rows, limit) if limit else rows for rows in counts.values())
        description = {"type": "hf", "path": str(root.absolute()), "rows": counts, "schema": "cord-v2"}
        return PlannedSource("hf", description, _local_items(root, limit, prompt), total, [str(root)])
    description = {"type": "hf", "hf_dataset_id": source, "schema": "cord-v2"}
    return PlannedSource("hf", description, _hub_items(source, limit, prompt), None, [])


def write_parquet_subset(source: str, root: Path, keys: set[str], limit: int | None, prompt: str) -> dict[str, int]:
    """The published rows again, in the Hub's parquet layout that Bridge's Direct-HF CORD path loads offline.

    Local rows are copied as they are; rows from the Hub keep their target text as ``text_sequence``, which
    the CORD adapter's json2token returns unchanged, so both paths train on the same text.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image_type), ("ground_truth", pa.string())])
    columns: dict[str, dict[str, list[Any]]] = {}

    def add(split: str, key: str, image: bytes, ground_truth: str) -> None:
        column = columns.setdefault({"val": "validation"}.get(split, split), {"image": [], "ground_truth": []})
        column["image"].append({"bytes": image, "path": f"{key}.img"})
        column["ground_truth"].append(ground_truth)

    local = Path(source)
    if local.exists():
        base = local if local.is_dir() else local.parent
        for split, number, _, row in _numbered_rows(local, limit):
            if f"{split}-{number:07d}" in keys:
                add(split, f"{split}-{number:07d}", _image_bytes(row["image"], base), row["ground_truth"])
    else:
        for record in _hub_items(source, limit, prompt):
            if isinstance(record, Record) and record.key in keys:
                target = record.conversation[-1]["content"][0]["text"]
                truth = json.dumps({"gt_parse": {"text_sequence": target}}, ensure_ascii=False)
                add(record.split, record.key, record.media[0].data or b"", truth)
    (root / "hf" / "data").mkdir(parents=True, exist_ok=True)
    for split, column in columns.items():
        pq.write_table(pa.table(column, schema=schema), root / "hf" / "data" / f"{split}-00000-of-00001.parquet")
    return {split: len(column["image"]) for split, column in columns.items()}
