"""Shard assembly: workers write tar fragments, the main process concatenates them into the shard."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from omni3_prep import source_synth
from omni3_prep.records import MediaRef, Record
from omni3_prep.samples import materialize
from omni3_prep.shards import FRAGMENT_DIR, SIDECAR_DIR, ShardResult, cut_into_shards, run_tasks


def _records() -> list[Record]:
    good = list(source_synth.plan("receipts", 7, 3, 0.0, 0.0).items)
    broken = Record(
        key="broken",
        split="train",
        conversation=good[0].conversation,
        media=(MediaRef("image", "inline", data=b"\x89PNG broken"),),
        origin="a broken image",
    )
    return [*good[:3], broken, *good[3:]]


def _tarfile_bytes(records: list[Record]) -> bytes:
    """The shard as tarfile itself writes it: what the fragments must add up to, byte for byte."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for record in records:
            for member, data in materialize(record).members:
                info = tarfile.TarInfo(f"{record.key}.{member}")
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("workers", [1, 2])
def test_fragments_add_up_to_the_tar_tarfile_writes(tmp_path: Path, workers: int) -> None:
    records = _records()
    results: list[ShardResult] = []
    run_tasks(cut_into_shards(records, tmp_path, shard_size=len(records)), workers, results.append)
    (result,) = results
    shard = (tmp_path / result.name).read_bytes()
    assert shard == _tarfile_bytes([record for record in records if record.key != "broken"])
    assert (result.size, result.sha256) == (len(shard), hashlib.sha256(shard).hexdigest())
    assert result.samples == 7 and [bad.key for bad in result.bad] == ["broken"]
    assert not list((tmp_path / FRAGMENT_DIR).iterdir()), "a fragment outlived its shard"
    assert (tmp_path / SIDECAR_DIR / f"{result.name}.json").is_file()


def test_a_shard_whose_records_are_all_bad_is_not_written(tmp_path: Path) -> None:
    broken = _records()[3]
    results: list[ShardResult] = []
    run_tasks(cut_into_shards([broken], tmp_path, shard_size=4), 2, results.append)
    (result,) = results
    assert result.samples == 0 and result.sha256 is None and len(result.bad) == 1
    assert not list(tmp_path.glob("*.tar*")) and not list((tmp_path / FRAGMENT_DIR).iterdir())
