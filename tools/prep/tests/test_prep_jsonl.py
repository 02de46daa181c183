"""The jsonl flow: ms-swift style records to Energon, compared sample by sample; every bad-input case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prep_testkit import manifest, pcm, pixels, read_dataset, text_of, tree_digest

from omni3_prep.pipeline import failed_report_path
from omni3_prep.records import COLLATOR_AUDIO_PLACEHOLDER


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_images_become_samples_equal_to_their_source(run, raw_receipts: Path) -> None:
    source = raw_receipts / "jsonl" / "receipts.jsonl"
    before = tree_digest(raw_receipts)
    code, _, err = run("jsonl", "--input", str(source), "--output", "out", "--workers", "2")
    assert code == 0, err
    assert tree_digest(raw_receipts) == before, "the input was modified"
    samples = read_dataset(Path("out"))
    records = {line["id"]: line for line in _lines(source)}
    read = {key: sample for split in samples.values() for key, sample in split.items()}
    assert set(read) == set(records)
    for key, sample in read.items():
        line = records[key]
        assert key in samples[line["split"]]
        assert pixels(sample.imgs) == pixels((source.parent / line["images"][0]).read_bytes())
        assert text_of(sample.conversation, "assistant") == line["messages"][1]["content"]
        assert sample.conversation[0]["content"] == [
            {"type": "image"},
            {"type": "text", "text": "Describe this image."},
        ]


def test_jsonl_video_and_audio_keep_their_bytes_and_placeholders(run, raw_avqa: Path) -> None:
    source = raw_avqa / "jsonl" / "avqa.jsonl"
    code, _, err = run("jsonl", "--input", str(source), "--output", "out")
    assert code == 0, err
    read = {key: sample for split in read_dataset(Path("out")).values() for key, sample in split.items()}
    for line in _lines(source):
        sample = read[line["id"]]
        assert sample.videos == (source.parent / line["videos"][0]).read_bytes()
        assert pcm(sample.audio) == pcm((source.parent / line["audios"][0]).read_bytes())
        user = sample.conversation[0]["content"]
        assert user[0] == {"type": "video"} and user[1]["text"].startswith(COLLATOR_AUDIO_PLACEHOLDER)
    counts = manifest(Path("out"))["extra"]["counts"]["total"]
    assert counts == {"samples": 6, "shards": counts["shards"], "image": 0, "audio": 6, "video": 6}


def _bad_input(tmp_path: Path, raw_receipts: Path) -> tuple[Path, int]:
    """A JSONL file with two good records and one of every kind of bad record."""
    folder = tmp_path / "input"
    shutil.copytree(raw_receipts / "jsonl" / "images", folder / "images")
    (folder / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    good = {"messages": [{"role": "user", "content": "<image>Read it."}, {"role": "assistant", "content": "ok"}]}
    lines = [
        json.dumps({**good, "id": "good-1", "images": ["images/receipt_000000.png"]}),
        json.dumps({**good, "id": "good-2", "images": ["images/receipt_000001.png"]}),
        '{"messages": [{"role": "user", "content": "<image>',  # malformed JSON
        json.dumps({**good, "id": "missing", "images": ["images/nowhere.png"]}),
        json.dumps({**good, "id": "broken", "images": ["images/broken.png"]}),
        json.dumps({**good, "id": "good-1", "images": ["images/receipt_000002.png"]}),  # duplicate key
        json.dumps({**good, "id": "count", "images": ["images/receipt_000003.png", "images/receipt_000004.png"]}),
        json.dumps(
            {
                "id": "audio-only",
                "messages": [{"role": "user", "content": "<audio>Hear it."}, good["messages"][1]],
                "audios": ["x.wav"],
            }
        ),
        json.dumps([1, 2, 3]),
    ]
    source = folder / "data.jsonl"
    source.write_text("\n".join(lines) + "\n")
    return source, len(lines) - 2


def test_bad_records_stop_the_build_with_exit_3_and_a_report(run, tmp_path: Path, raw_receipts: Path) -> None:
    source, bad_count = _bad_input(tmp_path, raw_receipts)
    before = tree_digest(source.parent)
    code, out, err = run("jsonl", "--input", str(source), "--output", "out")
    assert code == 3 and out == ""
    error = err.splitlines()[-1]  # progress lines come before it
    assert error.startswith("omni3-prep: error: ") and f"{bad_count} bad record(s)" in error and "--skip-bad" in error
    assert not Path("out").exists(), "a failed build published something"
    report = json.loads(failed_report_path(Path("out").absolute()).read_text())["bad_records"]
    reasons = {item["origin"].split(":")[-1]: item["reason"] for item in report}
    assert len(report) == bad_count
    assert "malformed JSON" in reasons["3"]
    assert "missing image file" in reasons["4"]
    assert "undecodable image" in reasons["5"]
    assert "duplicate key good-1" in reasons["6"]
    assert "2 images" in reasons["7"] or "placeholder" in reasons["7"]
    assert "differ from the dataset's image" in reasons["8"]
    assert "JSON object" in reasons["9"]
    assert tree_digest(source.parent) == before, "the input was modified"


def test_skip_bad_publishes_the_good_records_and_counts_the_rest(run, tmp_path: Path, raw_receipts: Path) -> None:
    source, bad_count = _bad_input(tmp_path, raw_receipts)
    code, _, err = run("jsonl", "--input", str(source), "--output", "out", "--skip-bad")
    assert code == 0, err
    read = {key for split in read_dataset(Path("out")).values() for key in split}
    assert read == {"good-1", "good-2"}
    skipped = manifest(Path("out"))["extra"]["skipped"]
    assert skipped["count"] == bad_count and len(skipped["records"]) == bad_count
    listed = json.loads((Path("out") / skipped["report"]).read_text())["bad_records"]
    assert {item["reason"] for item in listed} == {item["reason"] for item in skipped["records"]}


def test_dry_run_counts_records_and_writes_nothing(run, raw_receipts: Path) -> None:
    code, out, _ = run(
        "jsonl", "--input", str(raw_receipts / "jsonl" / "receipts.jsonl"), "--output", "out", "--dry-run"
    )
    assert code == 0 and "records:" in out and "ready" in out
    assert not Path("out").exists() and not list(Path(".").glob(".out*"))
