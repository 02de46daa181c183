"""The built-in synthetic data and the synth flow: deterministic real files, datasets that read back intact."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from PIL import Image
from prep_testkit import manifest, pcm, pixels, read_dataset, text_of

from omni3_prep import media, synth
from omni3_prep.energon_meta import BRIDGE_CLASS, BRIDGE_MODULE


def test_receipts_are_deterministic_real_images_with_cord_ground_truth() -> None:
    assert synth.receipt_image(3, 5) == synth.receipt_image(3, 5)
    assert synth.receipt_image(3, 5) != synth.receipt_image(4, 5)
    png, jpeg = (
        Image.open(io.BytesIO(synth.receipt_image(3, 5))),
        Image.open(io.BytesIO(synth.receipt_image(3, 5, "JPEG"))),
    )
    assert (png.format, jpeg.format) == ("PNG", "JPEG")
    truth = synth.receipt_ground_truth(3, 5)
    parse = truth["gt_parse"]
    assert set(parse) == {"menu", "sub_total", "total"} and parse["menu"]
    assert all(set(item) == {"nm", "cnt", "price"} for item in parse["menu"])
    total = int(parse["total"]["total_price"].replace(",", ""))
    subtotal = int(parse["sub_total"]["subtotal_price"].replace(",", ""))
    assert total == subtotal + int(parse["sub_total"]["tax_price"].replace(",", ""))


def test_receipts_scale_to_the_width_asked_for() -> None:
    small = Image.open(io.BytesIO(synth.receipt_image(3, 5)))
    assert small.width == synth.RECEIPT_WIDTH
    assert synth.receipt_image(3, 5, "PNG", synth.RECEIPT_WIDTH) == synth.receipt_image(3, 5)
    large = Image.open(io.BytesIO(synth.receipt_image(3, 5, "PNG", 1024)))
    assert large.size == (1024, small.height * 4)  # CORD-sized, the same receipt in proportion


def test_synth_receipts_at_cord_size_read_back_at_that_size(run) -> None:
    code, _, err = run(
        "synth", "--output", "big", "--kind", "receipts", "--sample", "3", "--seed", "5", "--receipt-width", "1024"
    )
    assert code == 0, err
    assert manifest(Path("big"))["config"]["receipt_width"] == 1024
    for split_samples in read_dataset(Path("big")).values():
        for key, sample in split_samples.items():
            assert pixels(sample.imgs) == pixels(synth.receipt_image(5, int(key.split("-")[1]), "PNG", 1024))
            assert sample.imgs.shape[-1] == 1024  # decoded [3, H, W]
    code, _, err = run("synth", "--output", "bad", "--kind", "receipts", "--receipt-width", "10")
    assert code == 2 and "receipt_width" in err


def test_json2token_follows_the_cord_target_convention() -> None:
    value = {"menu": [{"nm": "TEA", "cnt": "1"}, {"nm": "CAKE", "cnt": "2"}], "total": {"total_price": "9"}}
    assert synth.json2token(value) == (
        "<s_total><s_total_price>9</s_total_price></s_total>"
        "<s_menu><s_nm>TEA</s_nm><s_cnt>1</s_cnt><sep/><s_nm>CAKE</s_nm><s_cnt>2</s_cnt></s_menu>"
    )
    assert synth.json2token({"text_sequence": "as is"}) == "as is"


def test_clips_are_deterministic_mp4_with_aac_audio_and_consistent_qa(tmp_path: Path) -> None:
    clip = synth.clip_video(1, 2)
    assert clip == synth.clip_video(1, 2) and media.is_mp4(clip) and len(clip) < 50_000
    path = tmp_path / "clip.mp4"
    path.write_bytes(clip)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(probe.stdout.split()) == ["aac", "h264"]
    params = synth.clip_params(1, 2)
    colour, pitch = synth.clip_questions(1, 2)
    assert colour["options"][colour["correct_answer_idx"]] == params["colour"] and len(colour["options"]) == 4
    assert pitch["options"][pitch["correct_answer_idx"]] == params["pitch"]


def test_synth_receipts_builds_a_dataset_that_reads_back_as_its_source(run) -> None:
    code, out, err = run("synth", "--output", "receipts", "--kind", "receipts", "--sample", "7", "--seed", "5")
    assert code == 0, err
    assert yaml.safe_load(out)["counts"]["total"]["samples"] == 7
    root = Path("receipts")
    config = yaml.safe_load((root / ".nv-meta" / "dataset.yaml").read_text())
    assert (config["__module__"], config["__class__"]) == (BRIDGE_MODULE, BRIDGE_CLASS)
    assert config["field_map"] == {"conversation": "conversation.json", "imgs": "image.png"}
    samples = read_dataset(root)
    assert {split: len(keys) for split, keys in samples.items()} == {"train": 5, "val": 1, "test": 1}
    for split_samples in samples.values():
        for key, sample in split_samples.items():
            index = int(key.split("-")[1])
            assert pixels(sample.imgs) == pixels(synth.receipt_image(5, index))
            target = synth.json2token(synth.receipt_ground_truth(5, index)["gt_parse"])
            assert text_of(sample.conversation, "assistant") == target
            assert sample.conversation[0]["content"][0] == {"type": "image"}
    facts = manifest(root)
    assert facts["kind"] == "dataset" and facts["extra"]["energon"]["version"] == "7.4.1"
    assert facts["extra"]["counts"]["total"] == {"samples": 7, "shards": 4, "image": 7, "audio": 0, "video": 0}
    listed = {entry["path"]: entry for entry in facts["files"]}
    for shard in facts["extra"]["shards"]:
        assert listed[shard["path"]]["sha256"] == shard["sha256"] and listed[shard["path"]]["size"] == shard["bytes"]
    assert facts["extra"]["skipped"]["count"] == 0 and facts["extra"]["elapsed_s"] > 0


def test_synth_avqa_builds_video_audio_samples_equal_to_their_source(run, tmp_path: Path) -> None:
    code, _, err = run("synth", "--output", "avqa", "--sample", "5", "--seed", "2", "--workers", "2")
    assert code == 0, err
    samples = read_dataset(Path("avqa"))
    assert sum(len(keys) for keys in samples.values()) == 5
    for split_samples in samples.values():
        for key, sample in split_samples.items():
            index = int(key.split("-")[1])
            clip = synth.clip_video(2, index)
            assert sample.videos == clip
            source = tmp_path / "source.mp4"
            source.write_bytes(clip)
            wav, facts = media.to_wav16k(source, "test")
            assert pcm(sample.audio) == pcm(wav)
            assert abs(facts.frames - 2 * media.AUDIO_RATE) < 0.1 * media.AUDIO_RATE  # AAC pads a frame
            question = synth.clip_questions(2, index)[index % 2]
            assert text_of(sample.conversation, "assistant") == question["options"][question["correct_answer_idx"]]
            assert text_of(sample.conversation, "user") == question["question"]
    assert manifest(Path("avqa"))["extra"]["counts"]["total"]["audio"] == 5


def test_synth_raw_writes_the_inputs_of_the_other_sources(raw_receipts: Path, raw_avqa: Path) -> None:
    table = pq.read_table(raw_receipts / "cord" / "data" / "train-00000-of-00001.parquet")
    assert table.column_names == ["image", "ground_truth"]
    assert "gt_parse" in json.loads(table.column("ground_truth")[0].as_py())
    assert (raw_avqa / "valor" / "videos.tar").is_file()
    qa = json.loads((raw_avqa / "valor" / "combined_dataset_train_flattened.json").read_text())
    assert {"video_id", "question", "options", "correct_answer_idx"} <= set(qa[0])
    lines = (raw_avqa / "jsonl" / "avqa.jsonl").read_text().splitlines()
    assert len(lines) == 6 and "<video><audio>" in lines[0]
