"""The manifest: round trip through publish_artifact, and every check read_manifest makes before heavy work."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from omni3_shared.errors import InvalidInputError
from omni3_shared.manifest import (
    MANIFEST_FILE,
    SCHEMA_VERSION,
    ArtifactKind,
    Hashing,
    InputRef,
    describe_input,
    manifest_digest,
    read_manifest,
    tool_info,
)
from omni3_shared.publish import publish_artifact

MakeArtifact = Callable[..., Path]


def edit_manifest(directory: Path, change: Callable[[dict], object]) -> None:
    path = directory / MANIFEST_FILE
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI3_IMAGE", "omni3/test:1")
    monkeypatch.setenv("OMNI3_SOURCE_COMMIT", "abc123")
    output = tmp_path / "ds"
    source = InputRef(role="raw", path="/somewhere", external=True)
    with publish_artifact(
        output,
        kind=ArtifactKind.DATASET,
        tool=tool_info("omni3-test", "1.2.3", packages=["pydantic", "surely-not-installed-pkg"]),
        config={"seed": 7, "nested": {"a": [1, 2]}},
        inputs=[source],
    ) as staging:
        (staging.path / "shards").mkdir()
        (staging.path / "shards" / "0.tar").write_bytes(b"abc")
        (staging.path / "index.json").write_text("{}")
        staging.extra["samples"] = 12

    manifest = read_manifest(output, expect_kind=ArtifactKind.DATASET, verify="sha256")
    assert manifest.schema_version == SCHEMA_VERSION
    assert manifest.kind is ArtifactKind.DATASET
    assert (manifest.tool.name, manifest.tool.version) == ("omni3-test", "1.2.3")
    assert (manifest.tool.image, manifest.tool.source_commit) == ("omni3/test:1", "abc123")
    assert manifest.tool.packages["surely-not-installed-pkg"] == "not installed"
    assert manifest.tool.packages["pydantic"][0].isdigit()
    assert manifest.config == {"seed": 7, "nested": {"a": [1, 2]}}
    assert manifest.inputs == [source]
    assert manifest.extra == {"samples": 12}
    assert [(f.path, f.size) for f in manifest.files] == [("index.json", 2), ("shards/0.tar", 3)]
    assert manifest.files[1].sha256 == hashlib.sha256(b"abc").hexdigest()
    assert manifest.hashing.mode == "full"
    assert manifest.started_at <= manifest.finished_at
    assert manifest.started_at.tzinfo is not None


def test_expect_kind_accepts_any_of_several(tmp_path: Path, make_artifact: MakeArtifact) -> None:
    run = make_artifact(tmp_path / "run", ArtifactKind.TRAINING_RUN)
    kinds = (ArtifactKind.MEGATRON_CHECKPOINT, ArtifactKind.TRAINING_RUN)
    assert read_manifest(run, expect_kind=kinds).kind is ArtifactKind.TRAINING_RUN


def test_wrong_kind_is_invalid_input(tmp_path: Path, make_artifact: MakeArtifact) -> None:
    adapter = make_artifact(tmp_path / "adapter", ArtifactKind.ADAPTER)
    with pytest.raises(InvalidInputError) as caught:
        read_manifest(adapter, expect_kind=ArtifactKind.DATASET)
    assert caught.value.exit_code == 3
    assert "made by omni3-test" in str(caught.value)
    assert "expected a dataset" in str(caught.value)


def test_missing_directory_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")


def test_directory_without_manifest_is_invalid_input(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "weights.bin").write_bytes(b"1")
    with pytest.raises(InvalidInputError, match="not a complete omni3 artifact"):
        read_manifest(tmp_path / "half")


def test_missing_listed_file(tmp_path: Path, make_artifact: MakeArtifact) -> None:
    artifact = make_artifact(tmp_path / "a", ArtifactKind.HF_CHECKPOINT)
    (artifact / "weights.bin").unlink()
    with pytest.raises(InvalidInputError, match=r"listed file weights\.bin is missing"):
        read_manifest(artifact)


def test_size_mismatch(tmp_path: Path, make_artifact: MakeArtifact) -> None:
    artifact = make_artifact(tmp_path / "a", ArtifactKind.HF_CHECKPOINT)
    (artifact / "weights.bin").write_bytes(b"\x00" * 63)
    with pytest.raises(InvalidInputError, match="63 bytes, the manifest says 64"):
        read_manifest(artifact)
    read_manifest(artifact, verify="none")  # "none" checks the manifest only


def test_sha256_mismatch_only_with_sha256_verification(tmp_path: Path, make_artifact: MakeArtifact) -> None:
    artifact = make_artifact(tmp_path / "a", ArtifactKind.HF_CHECKPOINT)
    (artifact / "weights.bin").write_bytes(b"\x01" * 64)  # same size, other content
    read_manifest(artifact, verify="size")
    with pytest.raises(InvalidInputError, match="sha256"):
        read_manifest(artifact, verify="sha256")


def test_newer_schema_is_refused(tmp_path: Path, make_artifact: MakeArtifact) -> None:
    artifact = make_artifact(tmp_path / "a", ArtifactKind.DATASET)
    edit_manifest(artifact, lambda raw: raw.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(InvalidInputError, match="newer than this omni3 reads") as caught:
        read_manifest(artifact)
    assert "upgrade" in (caught.value.fix or "")


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2]", '{"kind": "dataset"}', '{"schema_version": "1"}'],
    ids=["not-json", "not-an-object", "no-schema", "schema-not-int"],
)
def test_malformed_manifest_is_invalid_input(tmp_path: Path, content: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / MANIFEST_FILE).write_text(content)
    with pytest.raises(InvalidInputError) as caught:
        read_manifest(tmp_path / "a")
    assert "\n" not in caught.value.one_line()


def test_manifest_with_a_bad_field_names_it(tmp_path: Path, make_artifact: MakeArtifact) -> None:
    artifact = make_artifact(tmp_path / "a", ArtifactKind.DATASET)
    edit_manifest(artifact, lambda raw: raw.update(kind="spreadsheet"))
    with pytest.raises(InvalidInputError, match="malformed at 'kind'"):
        read_manifest(artifact)


def test_lazy_hashing_skips_large_files_and_records_the_choice(tmp_path: Path, make_artifact: MakeArtifact) -> None:
    policy = Hashing(mode="lazy", lazy_threshold_bytes=100)
    files = {"small.bin": b"s" * 99, "edge.bin": b"e" * 100, "big.bin": b"b" * 500}
    artifact = make_artifact(tmp_path / "a", ArtifactKind.MEGATRON_CHECKPOINT, files, hashing=policy)
    manifest = read_manifest(artifact, verify="sha256")
    hashes = {entry.path: entry.sha256 for entry in manifest.files}
    assert hashes == {"big.bin": None, "edge.bin": None, "small.bin": hashlib.sha256(b"s" * 99).hexdigest()}
    assert manifest.hashing == policy
    raw = json.loads((artifact / MANIFEST_FILE).read_text())
    assert raw["hashing"] == {"mode": "lazy", "lazy_threshold_bytes": 100}
    (artifact / "big.bin").write_bytes(b"x" * 499)
    with pytest.raises(InvalidInputError, match="499 bytes"):  # lazily hashed files still have their size checked
        read_manifest(artifact)


def test_describe_input_records_kind_and_manifest_digest(tmp_path: Path, make_artifact: MakeArtifact) -> None:
    artifact = make_artifact(tmp_path / "ckpt", ArtifactKind.MEGATRON_CHECKPOINT)
    ref, manifest = describe_input("megatron_checkpoint", artifact, ArtifactKind.MEGATRON_CHECKPOINT)
    assert manifest is not None
    assert ref.kind is ArtifactKind.MEGATRON_CHECKPOINT
    assert not ref.external
    assert ref.manifest_sha256 == manifest_digest(artifact)
    assert ref.manifest_sha256 == hashlib.sha256((artifact / MANIFEST_FILE).read_bytes()).hexdigest()


def test_describe_input_accepts_a_plain_directory_only_when_allowed(tmp_path: Path) -> None:
    plain = tmp_path / "hf"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    ref, manifest = describe_input("hf_model", plain, ArtifactKind.HF_CHECKPOINT, allow_external=True)
    assert manifest is None
    assert ref.external
    assert ref.kind is None
    with pytest.raises(InvalidInputError, match="not a complete omni3 artifact"):
        describe_input("hf_model", plain, ArtifactKind.HF_CHECKPOINT)
    with pytest.raises(InvalidInputError, match="does not exist"):
        describe_input("hf_model", tmp_path / "absent", ArtifactKind.HF_CHECKPOINT, allow_external=True)


def test_describe_input_checks_kind_of_an_artifact_even_when_external_is_allowed(
    tmp_path: Path, make_artifact: MakeArtifact
) -> None:
    dataset = make_artifact(tmp_path / "ds", ArtifactKind.DATASET)
    with pytest.raises(InvalidInputError, match="expected a hf-checkpoint"):
        describe_input("hf_model", dataset, ArtifactKind.HF_CHECKPOINT, allow_external=True)
