"""The energon flow: validating an existing dataset in place, and every way one can be unreadable."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml
from prep_testkit import tree_digest

from omni3_prep import energon_meta


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small published receipts dataset, built once for this module."""
    from omni3_prep import pipeline, source_synth

    root = tmp_path_factory.mktemp("built") / "receipts"
    options = pipeline.BuildOptions(output=root, workers=1, shard_size=2)
    pipeline.build(source_synth.plan("receipts", 5, 1, 0.2, 0.2), options, inputs=[])
    return root


def test_a_published_dataset_validates_and_is_left_untouched(run, built: Path) -> None:
    before = tree_digest(built)
    code, out, err = run("energon", "--input", str(built))
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["field_map"] == {"conversation": "conversation.json", "imgs": "image.png"}
    assert {
        name: (split["indexed"], split["read"], split["decoded"]["image"]) for name, split in report["splits"].items()
    } == {
        "train": (3, 3, 3),
        "val": (1, 1, 1),
        "test": (1, 1, 1),
    }
    assert tree_digest(built) == before, "validation modified the dataset"


def test_sample_limits_what_is_read_per_split(run, built: Path) -> None:
    code, out, _ = run("energon", "--input", str(built), "--sample", "1")
    assert code == 0 and json.loads(out)["splits"]["train"]["read"] == 1


def _copy(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    return copy


def _edit_yaml(root: Path, **changes: object) -> None:
    path = root / ".nv-meta" / "dataset.yaml"
    config = yaml.safe_load(path.read_text())
    config.update(changes)
    path.write_text(yaml.safe_dump(config))
    # Edited, it is no longer the published artifact (its manifest would refuse it first): validate it as a
    # plain Energon dataset, which is what these tests are about.
    (root / "omni3-manifest.json").unlink()


def test_a_loader_other_than_bridges_is_refused(run, built: Path, tmp_path: Path) -> None:
    copy = _copy(built, tmp_path)
    _edit_yaml(copy, __module__="megatron.energon", __class__="CaptioningWebdataset")
    code, _, err = run("energon", "--input", str(copy))
    assert code == 3 and "ChatMLWebdataset" in err


def test_a_field_map_member_the_samples_lack_is_refused(run, built: Path, tmp_path: Path) -> None:
    copy = _copy(built, tmp_path)
    _edit_yaml(copy, field_map={"conversation": "conversation.json", "imgs": "image.png", "audio": "audio.wav"})
    code, _out, err = run("energon", "--input", str(copy))
    assert code == 3 and "lack a member for 'audio'" in err


def test_a_directory_that_is_not_prepared_is_refused(run, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run("energon", "--input", str(tmp_path / "empty"))
    assert code == 3 and "not a prepared Energon dataset" in err


def test_undecodable_members_are_reported_per_split(run, tmp_path: Path, built: Path) -> None:
    root = tmp_path / "hand"
    root.mkdir()
    samples = {
        "good": [
            ("conversation.json", b'[{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "x"}]')
        ],
        "noturns": [("conversation.json", b'{"messages": []}')],
        "badimage": [
            ("conversation.json", b'[{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "y"}]')
        ],
    }
    image = next(built.glob("train-*.tar"))
    with tarfile.open(image) as archive:
        png = next(archive.extractfile(m).read() for m in archive.getmembers() if m.name.endswith(".png"))
    samples["good"].append(("image.png", png))
    samples["noturns"].append(("image.png", png))
    samples["badimage"].append(("image.png", b"\x89PNG broken"))
    with tarfile.open(root / "train-shard-000000.tar", "w") as archive:
        for key, members in samples.items():
            for name, data in members:
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    mapping = {"conversation": "conversation.json", "imgs": "image.png"}
    energon_meta.write_metadata(root, {"train": ["train-shard-000000.tar"]}, mapping, workers=1)
    code, out, _err = run("energon", "--input", str(root))
    assert code == 3
    split = json.loads(out)["splits"]["train"]
    text = " | ".join(split["errors"])
    assert "noturns" in text and "non-empty list" in text
    assert "sample badimage cannot be loaded" in text
    assert split["read"] >= 2 and split["decoded"]["image"] == 1


def test_a_listed_shard_that_is_gone_is_invalid_input(run, built: Path, tmp_path: Path) -> None:
    copy = _copy(built, tmp_path)
    next(copy.glob("train-shard-*.tar")).unlink()
    code, _, err = run("energon", "--input", str(copy))
    assert code == 3 and "listed file train-shard-" in err and "Traceback" not in err


def test_a_truncated_file_is_caught_by_the_manifest_before_energon_reads_it(run, built: Path, tmp_path: Path) -> None:
    copy = _copy(built, tmp_path)
    index = copy / ".nv-meta" / "index.sqlite"
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    code, _, err = run("energon", "--input", str(copy))
    assert code == 3 and "is damaged: .nv-meta/index.sqlite" in err


def test_a_damaged_index_without_a_manifest_is_invalid_input_not_a_crash(run, built: Path, tmp_path: Path) -> None:
    copy = _copy(built, tmp_path)
    (copy / "omni3-manifest.json").unlink()
    index = copy / ".nv-meta" / "index.sqlite"
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    code, _, err = run("energon", "--input", str(copy))
    assert code == 3 and "cannot be read" in err and "Traceback" not in err


def test_loader_processes_read_back_every_sample_and_catch_a_changed_image(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read-back's parallel path (Energon loader processes), which only large splits take by default."""
    from omni3_prep import readback
    from omni3_prep.shards import SIDECAR_DIR

    monkeypatch.setattr(readback, "LOADER_WORKERS_FROM", 0)
    report = readback.read_back(built, expected=readback.BuildFacts(built / SIDECAR_DIR), workers=2)
    assert report.ok, report.first_problem()
    assert sum(split.read for split in report.splits.values()) == 5
    copy = tmp_path / "changed"
    shutil.copytree(built, copy)
    sidecar = next((copy / SIDECAR_DIR).glob("train-*.json"))
    facts = json.loads(sidecar.read_text())
    facts["samples"][0]["image"]["pixels"] = "0" * 64
    sidecar.write_text(json.dumps(facts))
    report = readback.read_back(copy, expected=readback.BuildFacts(copy / SIDECAR_DIR), workers=2)
    assert not report.ok and "image pixels differ from the source" in report.first_problem()


def test_one_loader_reads_every_split_and_files_each_failure_under_its_split(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every split goes through one Energon loader (and its processes): verdicts and failures keep their split."""
    from omni3_prep import readback

    monkeypatch.setattr(readback, "LOADER_WORKERS_FROM", 0)  # loader processes even for this small dataset

    root = tmp_path / "two-splits"
    root.mkdir()
    image = next(built.glob("train-*.tar"))
    with tarfile.open(image) as archive:
        png = next(archive.extractfile(m).read() for m in archive.getmembers() if m.name.endswith(".png"))
    turns = b'[{"role": "user", "content": "<image>hi"}, {"role": "assistant", "content": "x"}]'
    layout = {"train": {f"t{index}": png for index in range(6)}, "val": {"v0": png, "v1": b"\x89PNG broken"}}
    for split, samples in layout.items():
        with tarfile.open(root / f"{split}-shard-000000.tar", "w") as archive:
            for key, data in samples.items():
                for name, payload in (("conversation.json", turns), ("image.png", data)):
                    info = tarfile.TarInfo(f"{key}.{name}")
                    info.size = len(payload)
                    archive.addfile(info, io.BytesIO(payload))
    shards = {split: [f"{split}-shard-000000.tar"] for split in layout}
    energon_meta.write_metadata(root, shards, {"conversation": "conversation.json", "imgs": "image.png"}, 1)
    for workers in (0, 2):
        report = readback.read_back(root, workers=workers)
        train, val = report.splits["train"], report.splits["val"]
        assert (train.read, train.error_count, train.decoded["image"]) == (6, 0, 6), workers
        assert (val.read, val.decoded["image"]) == (1, 1), workers
        assert any("sample v1 cannot be loaded" in error for error in val.errors), (workers, val.errors)
        assert not report.ok and not report.problems
