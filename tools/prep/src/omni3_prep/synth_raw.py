"""``omni3-prep synth --raw``: the synthetic samples as the raw inputs the other sources read.

- ``receipts``: ``cord/data/{train,validation,test}-00000-of-00001.parquet`` (CORD-v2 columns ``image``
  with JPEG bytes and ``ground_truth`` JSON) and ``jsonl/receipts.jsonl`` with ``jsonl/images/*.png``.
- ``avqa``: ``valor/videos/*.mp4``, the same clips as ``valor/videos.tar``, the QA files
  ``valor/combined_dataset_{train,val,test}_flattened.json`` (two questions per clip), and
  ``jsonl/avqa.jsonl`` with ``jsonl/videos/*.mp4`` and ``jsonl/audios/*.wav``.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from omni3_prep import media, synth
from omni3_prep.source_synth import placements

HF_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
VALOR_TAR_PREFIX = "raid/datasets/audioset/valor_videos"


def _receipt_files(args: tuple[int, int, int]) -> tuple[bytes, bytes]:
    seed, index, width = args
    return synth.receipt_image(seed, index, "JPEG", width), synth.receipt_image(seed, index, "PNG", width)


def _clip_files(args: tuple[int, int]) -> tuple[bytes, bytes]:
    seed, index = args
    video = synth.clip_video(seed, index)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="omni3-prep-raw-") as scratch:
        path = Path(scratch) / "clip.mp4"
        path.write_bytes(video)
        audio, _ = media.to_wav16k(path, "synthetic clip audio")
    return video, audio


def _render_all(function: Any, jobs: list[tuple[int, int]], workers: int) -> list[tuple[bytes, bytes]]:
    if workers <= 1:
        return [function(job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(function, jobs, chunksize=8))


def write_receipts(
    root: Path,
    count: int,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    workers: int,
    width: int = synth.RECEIPT_WIDTH,
) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    placement = list(placements(count, val_fraction, test_fraction))
    files = _render_all(_receipt_files, [(seed, index, width) for index, _ in placement], workers)
    rows: dict[str, dict[str, list[Any]]] = {}
    lines = []
    (root / "jsonl" / "images").mkdir(parents=True, exist_ok=True)
    for (index, split), (jpeg, png) in zip(placement, files, strict=True):
        truth = synth.receipt_ground_truth(seed, index)
        column = rows.setdefault(HF_SPLIT_NAMES[split], {"image": [], "ground_truth": []})
        column["image"].append({"bytes": jpeg, "path": f"receipt_{index:06d}.jpg"})
        column["ground_truth"].append(json.dumps(truth, ensure_ascii=False))
        image_path = f"images/receipt_{index:06d}.png"
        (root / "jsonl" / image_path).write_bytes(png)
        target = synth.json2token(truth["gt_parse"])
        lines.append({
            "id": f"receipt-{index:06d}",
            "split": split,
            "messages": [
                {"role": "user", "content": f"<image>{synth.CORD_PROMPT}"},
                {"role": "assistant", "content": target},
            ],
            "images": [image_path],
        })  # fmt: skip
    (root / "cord" / "data").mkdir(parents=True, exist_ok=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image_type), ("ground_truth", pa.string())])
    for split, column in rows.items():
        table = pa.table(column, schema=schema)
        pq.write_table(table, root / "cord" / "data" / f"{split}-00000-of-00001.parquet")
    _write_jsonl(root / "jsonl" / "receipts.jsonl", lines)
    return {"cord": "cord", "jsonl": "jsonl/receipts.jsonl", "samples": count}


def write_avqa(root: Path, count: int, seed: int, val_fraction: float, test_fraction: float, workers: int) -> dict:
    placement = list(placements(count, val_fraction, test_fraction))
    files = _render_all(_clip_files, [(seed, index) for index, _ in placement], workers)
    videos = root / "valor" / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for directory in ("videos", "audios"):
        (root / "jsonl" / directory).mkdir(parents=True, exist_ok=True)
    qa: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    lines = []
    with tarfile.open(root / "valor" / "videos.tar", "w") as archive:
        for (index, split), (video, audio) in zip(placement, files, strict=True):
            stem = synth.clip_name(seed, index)
            (videos / f"{stem}.mp4").write_bytes(video)
            info = tarfile.TarInfo(f"{VALOR_TAR_PREFIX}/{stem}.mp4")
            info.size = len(video)
            archive.addfile(info, io.BytesIO(video))
            bare_id = stem.split("_")[0]
            for number, question in enumerate(synth.clip_questions(seed, index)):
                qa[split].append({"video_id": bare_id, "id": f"{bare_id}-q{number}", **question})
            (root / "jsonl" / "videos" / f"{stem}.mp4").write_bytes(video)
            (root / "jsonl" / "audios" / f"{stem}.wav").write_bytes(audio)
            question = synth.clip_questions(seed, index)[index % 2]
            lines.append({
                "id": f"clip-{index:06d}",
                "split": split,
                "messages": [
                    {"role": "user", "content": f"<video><audio>{question['question']}"},
                    {"role": "assistant", "content": question["options"][question["correct_answer_idx"]]},
                ],
                "videos": [f"videos/{stem}.mp4"],
                "audios": [f"audios/{stem}.wav"],
            })  # fmt: skip
    for split, entries in qa.items():
        synth.dump_json(root / "valor" / f"combined_dataset_{split}_flattened.json", entries)
    _write_jsonl(root / "jsonl" / "avqa.jsonl", lines)
    return {
        "valor_videos": "valor/videos",
        "valor_tar": "valor/videos.tar",
        "valor_qa": "valor",
        "jsonl": "jsonl/avqa.jsonl",
    }


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    with path.open("w") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
