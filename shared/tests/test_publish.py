"""Publishing: atomic (staging, manifest last, rename), locked against a second writer, never overwriting."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from omni3_shared.errors import ArtifactExistsError, LockedError, ToolFailure, UsageError
from omni3_shared.manifest import MANIFEST_FILE, ArtifactKind, read_manifest, tool_info
from omni3_shared.publish import ensure_free_space, lock_path, publish_artifact, staging_path

MakeArtifact = Callable[..., Path]
TOOL = tool_info("omni3-test", "0.0")


def publish(output: Path, **options: object):  # type: ignore[no-untyped-def]
    return publish_artifact(output, kind=ArtifactKind.DATASET, tool=TOOL, config={}, inputs=[], **options)


def siblings(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


def test_output_appears_only_after_the_block(tmp_path: Path) -> None:
    output = tmp_path / "out" / "ds"  # the parent is created too
    with publish(output) as staging:
        assert staging.path == staging_path(output) == output.parent / ".ds.partial"
        assert staging.path.is_dir()
        assert not staging.resumed
        (staging.path / "data.bin").write_bytes(b"1234")
        assert not output.exists()
        assert lock_path(output).exists()
    assert output.is_dir()
    assert siblings(output.parent) == {"ds"}  # no staging, no lock, nothing else left beside it


def test_manifest_is_written_last_and_lists_exactly_the_files(tmp_path: Path) -> None:
    output = tmp_path / "ds"
    with publish(output) as staging:
        (staging.path / "a").mkdir()
        (staging.path / "a" / "one.bin").write_bytes(b"1")
        (staging.path / "two.txt").write_text("22")
    on_disk = {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()}
    assert on_disk == {"a/one.bin", "two.txt", MANIFEST_FILE}  # no temporary manifest left over
    listed = {entry.path for entry in read_manifest(output).files}
    assert listed == on_disk - {MANIFEST_FILE}
    raw = json.loads((output / MANIFEST_FILE).read_text())
    assert raw["finished_at"] >= raw["started_at"]


def test_exception_leaves_neither_output_nor_staging(tmp_path: Path) -> None:
    output = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"), publish(output) as staging:
        (staging.path / "data.bin").write_bytes(b"partial")
        raise RuntimeError("boom")
    assert not output.exists()
    assert siblings(tmp_path) == set()


def test_resume_keeps_staging_after_a_failure_and_reports_it_next_time(tmp_path: Path) -> None:
    output = tmp_path / "ds"
    with pytest.raises(RuntimeError), publish(output, resume=True) as staging:
        assert not staging.resumed
        (staging.path / "done-shard.bin").write_bytes(b"finished work")
        raise RuntimeError("killed half-way")
    assert not output.exists()
    assert (staging_path(output) / "done-shard.bin").is_file()

    with publish(output, resume=True) as staging:
        assert staging.resumed
        assert (staging.path / "done-shard.bin").read_bytes() == b"finished work"
        (staging.path / "last-shard.bin").write_bytes(b"more")
    assert {entry.path for entry in read_manifest(output).files} == {"done-shard.bin", "last-shard.bin"}
    assert not staging_path(output).exists()


def test_without_resume_a_leftover_staging_dir_is_discarded(tmp_path: Path) -> None:
    output = tmp_path / "ds"
    leftover = staging_path(output)
    leftover.mkdir()
    (leftover / "stale.bin").write_bytes(b"old")
    (leftover / MANIFEST_FILE).write_text("{}")
    with publish(output) as staging:
        assert not staging.resumed
        assert list(staging.path.iterdir()) == []
        (staging.path / "fresh.bin").write_bytes(b"new")
    assert [entry.path for entry in read_manifest(output).files] == ["fresh.bin"]


def test_resumed_staging_never_keeps_a_stale_manifest(tmp_path: Path) -> None:
    output = tmp_path / "ds"
    leftover = staging_path(output)
    leftover.mkdir()
    (leftover / MANIFEST_FILE).write_text("{}")  # a manifest in staging must not make it look complete
    with publish(output, resume=True) as staging:
        assert staging.resumed
        assert not (staging.path / MANIFEST_FILE).exists()


def test_complete_artifact_is_not_overwritten_without_force(tmp_path: Path, make_artifact: MakeArtifact) -> None:
    output = make_artifact(tmp_path / "ds", ArtifactKind.DATASET, {"old.bin": b"old"})
    before = (output / MANIFEST_FILE).read_bytes()
    with pytest.raises(ArtifactExistsError) as caught, publish(output):
        pytest.fail("the block must not run")
    assert caught.value.exit_code == 2
    assert "--force" in caught.value.one_line()
    assert (output / MANIFEST_FILE).read_bytes() == before
    assert siblings(tmp_path) == {"ds"}


def test_force_replaces_a_complete_artifact(tmp_path: Path, make_artifact: MakeArtifact) -> None:
    output = make_artifact(tmp_path / "ds", ArtifactKind.DATASET, {"old.bin": b"old"})
    with publish(output, force=True) as staging:
        (staging.path / "new.bin").write_bytes(b"new")
        assert (output / "old.bin").exists()  # the old artifact stays until the new one is complete
    assert {p.name for p in output.iterdir()} == {MANIFEST_FILE, "new.bin"}
    assert siblings(tmp_path) == {"ds"}


def test_failed_forced_run_keeps_the_old_artifact(tmp_path: Path, make_artifact: MakeArtifact) -> None:
    output = make_artifact(tmp_path / "ds", ArtifactKind.DATASET, {"old.bin": b"old"})
    with pytest.raises(RuntimeError), publish(output, force=True):
        raise RuntimeError("boom")
    assert [entry.path for entry in read_manifest(output).files] == ["old.bin"]


def test_non_empty_directory_that_is_no_artifact_is_refused(tmp_path: Path) -> None:
    output = tmp_path / "ds"
    output.mkdir()
    (output / "precious.txt").write_text("someone's data")
    with pytest.raises(UsageError, match="not an omni3 artifact") as caught, publish(output):
        pytest.fail("the block must not run")
    assert caught.value.exit_code == 2
    assert (output / "precious.txt").read_text() == "someone's data"
    with publish(output, force=True) as staging:
        (staging.path / "data.bin").write_bytes(b"1")
    assert not (output / "precious.txt").exists()
    assert read_manifest(output).files[0].path == "data.bin"


def test_empty_directory_is_a_fine_output(tmp_path: Path) -> None:
    output = tmp_path / "ds"
    output.mkdir()
    with publish(output) as staging:
        (staging.path / "data.bin").write_bytes(b"1")
    assert read_manifest(output).files[0].path == "data.bin"


def test_output_that_is_a_file_is_refused_even_with_force(tmp_path: Path) -> None:
    output = tmp_path / "ds"
    output.write_text("a file")
    with pytest.raises(UsageError, match="not a directory"), publish(output, force=True):
        pytest.fail("the block must not run")


def test_second_writer_in_the_same_process_is_locked_out(tmp_path: Path) -> None:
    output = tmp_path / "ds"
    with publish(output) as staging:
        (staging.path / "data.bin").write_bytes(b"1")
        with pytest.raises(LockedError, match="omni3-test") as caught, publish(output):
            pytest.fail("the second writer must not run")
        assert caught.value.exit_code == 1
        assert staging.path.is_dir()  # the refused writer did not touch the first one's staging
    assert read_manifest(output).files[0].path == "data.bin"


def test_lock_held_through_another_open_file_refuses(tmp_path: Path) -> None:
    output = tmp_path / "ds"
    with lock_path(output).open("a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LockedError, match="unknown writer"), publish(output):
            pytest.fail("must not run while the lock is held")
    assert not staging_path(output).exists()
    assert not output.exists()


HOLDER = """
import sys, time
from pathlib import Path
from omni3_shared.publish import output_lock
with output_lock(Path(sys.argv[1]), holder="holder-process"):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """Another process holding the lock of tmp_path/ds."""
    output = tmp_path / "ds"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(output)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "locked"
        yield output, process
    finally:
        process.kill()
        process.wait(timeout=30)


def test_lock_held_by_another_process_refuses(lock_holder: tuple[Path, subprocess.Popen[str]]) -> None:
    output, process = lock_holder
    with pytest.raises(LockedError, match="holder-process") as caught, publish(output):
        pytest.fail("must not run while another process holds the lock")
    assert f"'pid': {process.pid}" in caught.value.one_line() or f'"pid": {process.pid}' in caught.value.one_line()
    assert not output.exists()


def test_lock_of_a_killed_holder_is_released(lock_holder: tuple[Path, subprocess.Popen[str]]) -> None:
    output, process = lock_holder
    process.kill()  # SIGKILL: no finally block runs, the lock file stays behind
    process.wait(timeout=30)
    assert process.returncode == -9
    assert lock_path(output).exists()
    with publish(output) as staging:
        (staging.path / "data.bin").write_bytes(b"1")
    assert read_manifest(output).files[0].path == "data.bin"
    assert not lock_path(output).exists()


def test_ensure_free_space(tmp_path: Path) -> None:
    ensure_free_space(tmp_path / "not" / "yet" / "there", 1)  # probes the nearest existing parent
    with pytest.raises(ToolFailure, match="not enough disk") as caught:
        ensure_free_space(tmp_path / "new", 10**18)
    assert caught.value.exit_code == 1
    assert str(tmp_path) in str(caught.value)
