"""The valor32k flow: raw videos (directory or tar) + AVQA files to Energon; its bad-input cases."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

from prep_testkit import manifest, pcm, read_dataset, text_of, tree_digest

from omni3_prep import media
from omni3_prep.pipeline import failed_report_path


def _qa(raw: Path) -> dict[str, list[dict]]:
    return {
        split: json.loads((raw / "valor" / f"combined_dataset_{split}_flattened.json").read_text())
        for split in ("train", "val", "test")
    }


def test_valor32k_from_a_directory_matches_videos_and_answers(run, raw_avqa: Path, tmp_path: Path) -> None:
    before = tree_digest(raw_avqa)
    code, _, err = run(
        "valor32k", "--videos", str(raw_avqa / "valor" / "videos"), "--qa", str(raw_avqa / "valor"), "--output", "out"
    )
    assert code == 0, err
    assert tree_digest(raw_avqa) == before, "the input was modified"
    samples = read_dataset(Path("out"))
    qa = _qa(raw_avqa)
    assert {split: len(keys) for split, keys in samples.items()} == {split: len(items) for split, items in qa.items()}
    videos = {path.name.split("_")[0]: path for path in (raw_avqa / "valor" / "videos").glob("*.mp4")}
    for split, entries in qa.items():
        for entry in entries:
            sample = samples[split][f"{entry['video_id']}_{entry['id']}".replace(".", "_")]
            video = videos[entry["video_id"]]
            assert sample.videos == video.read_bytes()
            wav, _ = media.to_wav16k(video, "test")
            assert pcm(sample.audio) == pcm(wav)
            assert text_of(sample.conversation, "user") == entry["question"]
            assert text_of(sample.conversation, "assistant") == entry["options"][entry["correct_answer_idx"]]
    extra = manifest(Path("out"))["extra"]
    assert extra["source"]["type"] == "valor32k" and extra["counts"]["total"]["video"] == 12


def test_valor32k_reads_an_uncompressed_tar_in_place(run, raw_avqa: Path) -> None:
    code, _, err = run(
        "valor32k",
        "--videos",
        str(raw_avqa / "valor" / "videos.tar"),
        "--qa",
        str(raw_avqa / "valor"),
        "--output",
        "tar",
    )
    assert code == 0, err
    code, _, err = run(
        "valor32k", "--videos", str(raw_avqa / "valor" / "videos"), "--qa", str(raw_avqa / "valor"), "--output", "dir"
    )
    assert code == 0, err
    from_tar, from_dir = read_dataset(Path("tar")), read_dataset(Path("dir"))
    assert {s: sorted(k) for s, k in from_tar.items()} == {s: sorted(k) for s, k in from_dir.items()}
    for split, keys in from_dir.items():
        for key, sample in keys.items():
            assert from_tar[split][key].videos == sample.videos


def _silent_video(path: Path) -> None:
    command = [
        "ffmpeg",
        "-v",
        "error",
        "-f",
        "lavfi",
        "-i",
        "color=c=red:s=32x32:r=4:d=1",
        "-c:v",
        "libx264",
        str(path),
    ]
    subprocess.run(command, check=True, capture_output=True)


def _bad_valor(tmp_path: Path, raw: Path) -> tuple[Path, Path]:
    """A tar with two good clips, hostile members and damaged videos; QA files with bad entries."""
    folder = tmp_path / "valor"
    folder.mkdir()
    good = sorted((raw / "valor" / "videos").glob("*.mp4"))[:2]
    silent = tmp_path / "silent_0.000_1.000.mp4"
    _silent_video(silent)
    with tarfile.open(folder / "videos.tar", "w") as archive:
        for path in [*good, silent]:
            archive.add(path, arcname=f"clips/{path.name}")
        for name, data in (("../evil_0.000_1.000.mp4", good[0].read_bytes()), ("/abs_0.000_1.000.mp4", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("clips/link_0.000_1.000.mp4")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        archive.addfile(link)
        broken = b"\x00\x00\x00\x18ftypmp42 definitely not a video"
        info = tarfile.TarInfo("clips/broken_0.000_1.000.mp4")
        info.size = len(broken)
        archive.addfile(info, io.BytesIO(broken))
    entry = {"question": "What colour?", "options": ["red", "blue"], "correct_answer_idx": 0, "modality": "visual"}
    ids = [path.name.split("_")[0] for path in good]
    train = [{**entry, "video_id": ids[0], "id": "a"}, {**entry, "video_id": ids[1], "id": "b"}]
    train += [{**entry, "video_id": "ghost", "id": "c"}, {**entry, "video_id": "silent", "id": "d"}]
    train += [
        {**entry, "video_id": "broken", "id": "e"},
        {**entry, "video_id": ids[0], "id": "f", "correct_answer_idx": 5},
    ]
    (folder / "qa_train.json").write_text(json.dumps(train))
    (folder / "qa_val.json").write_text('[{"video_id": ')
    return folder / "videos.tar", folder


def test_bad_valor_records_stop_the_build_and_nothing_escapes(run, raw_avqa: Path, tmp_path: Path) -> None:
    videos, qa = _bad_valor(tmp_path, raw_avqa)
    before = tree_digest(qa)
    code, _, err = run("valor32k", "--videos", str(videos), "--qa", str(qa), "--output", "out")
    assert code == 3, err
    assert not Path("out").exists()
    report = json.loads(failed_report_path(Path("out").absolute()).read_text())["bad_records"]
    reasons = " | ".join(f"{item['origin']}: {item['reason']}" for item in report)
    assert reasons.count("escapes the target") == 3, reasons
    assert "QA without its video" in reasons and "no audio track" in reasons
    assert "undecodable video" in reasons and "does not select" in reasons and "malformed JSON" in reasons
    assert len(report) == 8, reasons
    assert tree_digest(qa) == before
    assert not list(tmp_path.parent.rglob("evil*")) and not list(Path("/").glob("abs_*"))


def test_bad_valor_records_can_be_skipped(run, raw_avqa: Path, tmp_path: Path) -> None:
    videos, qa = _bad_valor(tmp_path, raw_avqa)
    code, _, err = run("valor32k", "--videos", str(videos), "--qa", str(qa), "--output", "out", "--skip-bad")
    assert code == 0, err
    samples = read_dataset(Path("out"))
    assert sorted(key.rsplit("_", 1)[1] for key in samples["train"]) == ["a", "b"]
    assert manifest(Path("out"))["extra"]["skipped"]["count"] == 8


def test_valor32k_refuses_a_compressed_archive_with_a_fix(run, raw_avqa: Path, tmp_path: Path) -> None:
    packed = tmp_path / "videos.tar.gz"
    with tarfile.open(packed, "w:gz") as archive:
        archive.add(raw_avqa / "valor" / "videos", arcname="videos")
    shutil.copy(raw_avqa / "valor" / "combined_dataset_train_flattened.json", tmp_path / "qa_train.json")
    code, _, err = run("valor32k", "--videos", str(packed), "--qa", str(tmp_path / "qa_train.json"), "--output", "out")
    assert code == 2 and "decompress" in err
