"""CPU tests of the prep benchmark's baselines (tests/bench/prep.py), on a tiny job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from omni3_prep import pipeline, source_synth
from omni3_prep.readback import BuildFacts, read_back
from omni3_prep.shards import SIDECAR_DIR
from omni3_shared.pytest_plugin import load_script

BENCH_DIR = Path(__file__).resolve().parent


bench = load_script(BENCH_DIR / "prep.py", "bench_prep")


@pytest.mark.parametrize(("kind", "samples"), [("receipts", 6), ("avqa", 3)])
def test_same_work_baseline_reads_back_and_publishes_every_sample(tmp_path: Path, kind: str, samples: int) -> None:
    root = tmp_path / "same"
    verified = bench.same_work(kind, samples, root)
    assert verified == samples  # every sample went through Energon's loader and was compared with its facts
    manifest = json.loads((root / "omni3-manifest.json").read_text())
    assert manifest["extra"]["readback"]["samples"] == samples
    assert manifest["extra"]["counts"]["total"]["samples"] == samples
    tars = [entry for entry in manifest["files"] if entry["path"].endswith(".tar")]
    assert tars and all(entry["sha256"] for entry in tars)  # the manifest hashed the shards
    assert not (root / ".cache").exists()


def test_same_work_baseline_writes_what_the_pipeline_writes(tmp_path: Path) -> None:
    bench.same_work("receipts", 6, tmp_path / "same")
    options = pipeline.BuildOptions(output=tmp_path / "pipe", workers=1, shard_size=bench.SHARD_SIZE)
    pipeline.build(source_synth.plan("receipts", 6, 0, 0.1, 0.1), options, inputs=[])
    same = json.loads((tmp_path / "same" / "omni3-manifest.json").read_text())
    piped = json.loads((tmp_path / "pipe" / "omni3-manifest.json").read_text())
    # Same shards and sidecars, byte for byte: the same work.
    assert {
        e["path"]: e["sha256"] for e in same["files"] if e["path"].endswith(".tar") or "prep/shards/" in e["path"]
    } == {e["path"]: e["sha256"] for e in piped["files"] if e["path"].endswith(".tar") or "prep/shards/" in e["path"]}


def test_same_work_read_back_catches_a_changed_sample(tmp_path: Path) -> None:
    root = tmp_path / "same"
    bench.same_work("receipts", 6, root)
    sidecar = next((root / SIDECAR_DIR).glob("train-*.json"))
    data = json.loads(sidecar.read_text())
    data["samples"][0]["image"]["pixels"] = "0" * 64
    sidecar.write_text(json.dumps(data))
    report = read_back(root, expected=BuildFacts(root / SIDECAR_DIR), workers=0)
    assert not report.ok and "pixels differ" in report.first_problem()


def test_plain_loop_builds_every_sample(tmp_path: Path) -> None:
    assert bench.plain_loop("receipts", 6, tmp_path / "plain") == 6


def test_report_judges_the_target_on_the_same_work_ratio() -> None:
    text = bench.render([("receipts", 100, {"pipeline": 1.0, "same": 2.0, "plain": 1.5})], 2, 1, 0.0)
    assert "target: receipts speed ratio (same work) >= 1.8x: met (2.00x)" in text
    assert "| 1.50x |" in text  # the bare loop's ratio is shown as context
