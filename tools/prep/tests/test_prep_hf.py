"""The hf flow: CORD-v2-style parquet, arrow and save_to_disk inputs; manifest only, or a local subset."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prep_testkit import manifest, pixels, read_dataset, text_of, tree_digest

from omni3_prep import synth


def test_without_sample_only_the_manifest_is_written(run, raw_receipts: Path) -> None:
    code, _, err = run("hf", "--input", str(raw_receipts / "cord"), "--output", "out")
    assert code == 0, err
    assert sorted(path.name for path in Path("out").iterdir()) == ["omni3-manifest.json"]
    extra = manifest(Path("out"))["extra"]
    assert extra["format"] == "hf-manifest" and extra["counts"] == {"test": 1, "train": 8, "val": 1}


def test_a_hub_id_is_recorded_without_reaching_the_hub(run) -> None:
    code, _, err = run("hf", "--input", "naver-clova-ix/cord-v2", "--output", "out")
    assert code == 0, err
    assert manifest(Path("out"))["extra"]["source"]["hf_dataset_id"] == "naver-clova-ix/cord-v2"


def test_sample_writes_an_energon_subset_and_the_same_rows_as_parquet(run, raw_receipts: Path) -> None:
    before = tree_digest(raw_receipts)
    code, _, err = run("hf", "--input", str(raw_receipts / "cord"), "--output", "out", "--sample", "3")
    assert code == 0, err
    assert tree_digest(raw_receipts) == before
    samples = read_dataset(Path("out"))
    assert {split: len(keys) for split, keys in samples.items()} == {"train": 3, "val": 1, "test": 1}
    source = pq.read_table(raw_receipts / "cord" / "data" / "train-00000-of-00001.parquet").to_pylist()
    for number in range(3):
        sample = samples["train"][f"train-{number:07d}"]
        assert pixels(sample.imgs) == pixels(source[number]["image"]["bytes"])
        target = synth.json2token(json.loads(source[number]["ground_truth"])["gt_parse"])
        assert text_of(sample.conversation, "assistant") == target
    subset = pq.read_table(Path("out") / "hf" / "data" / "train-00000-of-00001.parquet").to_pylist()
    assert [row["ground_truth"] for row in subset] == [row["ground_truth"] for row in source[:3]]
    extra = manifest(Path("out"))["extra"]
    assert extra["energon"]["field_map"]["imgs"] == "image.jpg" and extra["subset"]["rows"]["train"] == 3


def _arrow_stream(path: Path, table: pa.Table) -> None:
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def test_save_to_disk_layout_is_read_with_its_splits(run, raw_receipts: Path, tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    for split in ("train", "validation"):
        (saved / split).mkdir(parents=True)
        table = pq.read_table(raw_receipts / "cord" / "data" / f"{split}-00000-of-00001.parquet")
        _arrow_stream(saved / split / "data-00000-of-00001.arrow", table)
    (saved / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation"]}))
    code, _, err = run("hf", "--input", str(saved), "--output", "out", "--sample", "2")
    assert code == 0, err
    assert {split: len(keys) for split, keys in read_dataset(Path("out")).items()} == {"train": 2, "val": 1}


@pytest.mark.parametrize("broken", ["ground_truth", "image"])
def test_a_malformed_row_is_a_bad_record(run, raw_receipts: Path, tmp_path: Path, broken: str) -> None:
    rows = pq.read_table(raw_receipts / "cord" / "data" / "train-00000-of-00001.parquet").to_pylist()[:3]
    if broken == "ground_truth":
        rows[1]["ground_truth"] = "{not json"
    else:
        rows[1]["image"] = {"bytes": b"garbage", "path": "x.jpg"}
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train-00000-of-00001.parquet")
    code, _, err = run("hf", "--input", str(tmp_path), "--output", "out", "--sample", "5")
    assert code == 3 and "train-0000001" in err
    code, _, err = run("hf", "--input", str(tmp_path), "--output", "out", "--sample", "5", "--skip-bad")
    assert code == 0, err
    assert sorted(read_dataset(Path("out"))["train"]) == ["train-0000000", "train-0000002"]


def test_a_dataset_without_the_cord_columns_is_refused(run, tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "train.parquet")
    code, _, err = run("hf", "--input", str(tmp_path), "--output", "out", "--sample", "1")
    assert code == 3 and "CORD" in err
