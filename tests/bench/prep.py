"""Benchmark of omni3-prep's shard pipeline against single-process loops, on the same synthetic job.

    python tests/bench/prep.py [--kind avqa|receipts|both] [--samples N] [--workers W] [--repeat R] [--record DIR]

Every side builds the same Energon dataset from the built-in synthetic data (same records, same shard bytes):

- pipeline: ``omni3_prep.pipeline.build``, the tool itself: parallel workers, Energon indexing, a read-back of
  every sample through Energon compared with its source, the publish protocol (manifest with every file hashed);
- same work, one process (``same_work``): the pipeline's work, record by record in one process: make each
  sample, write the shards and their sidecars, Energon indexing, read every sample back through Energon
  in-process (``omni3_prep.readback.read_back`` with no loader processes: the same checks and comparisons) and
  publish with the manifest hashing every file (``omni3_shared.publish``);
- bare plain loop (``plain_loop``): make each sample, append it to the shard, Energon indexing; no read-back,
  no manifest.

The target (issue 3: 1.8x on the 2-core machine) applies to the pipeline against "same work, one process":
it is the tool's parallel speed-up, both sides doing the same work. Against the bare loop the ratio also
pays for the proof (the read-back and the hashing the bare loop skips); it is printed as context, "cost of the
proof", not judged. Each side runs ``--repeat`` times, alternating, and the fastest run of each counts (the CI
machines are shared). Prints a table and the ratios; with --record writes it as Markdown into DIR (ci/records/).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import subprocess
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from omni3_prep import __version__, energon_meta, pipeline, source_synth
from omni3_prep.readback import BuildFacts, read_back
from omni3_prep.records import BadRecord, BadRecordError
from omni3_prep.samples import materialize
from omni3_prep.shards import (
    CACHE_DIR,
    SIDECAR_DIR,
    ShardResult,
    ShardWriter,
    cut_into_shards,
    encode_record,
    task_fingerprint,
)
from omni3_shared.manifest import ArtifactKind, tool_info
from omni3_shared.publish import publish_artifact

# Receipts cost a few milliseconds each: at 1,500 the pipeline's fixed start-up (worker and loader processes, about
# 2 s of CPU) is a third of its run and the ratio measures start-up; 6,000 is still a small real job.
DEFAULT_SAMPLES = {"avqa": 400, "receipts": 6000}
TARGET_RATIO = 1.8  # issue 3: on the 2-core machine, for both jobs, against the same work in one process
SHARD_SIZE = 50
SIDES = ("plain", "same", "pipeline")


def plain_loop(kind: str, samples: int, root: Path) -> int:
    """The bare way: one process, one record after another; no read-back, no manifest."""
    root.mkdir(parents=True)
    source = source_synth.plan(kind, samples, 0, 0.1, 0.1)
    shards: dict[str, list[str]] = {}
    modalities: set[str] = set()
    written = 0
    cache = root / ".cache"
    cache.mkdir()
    for task in cut_into_shards(source.items, root, SHARD_SIZE):
        with tarfile.open(root / task.name, "w", format=tarfile.PAX_FORMAT) as archive:
            for record in task.records:
                try:
                    out = materialize(record, cache)
                except BadRecordError:
                    continue
                for member, data in out.members:
                    info = tarfile.TarInfo(f"{record.key}.{member}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
                modalities |= record.modalities()
                written += 1
        shards.setdefault(task.split, []).append(task.name)
    shutil.rmtree(cache)
    energon_meta.write_metadata(root, shards, energon_meta.field_map(modalities), workers=1)
    return written


def same_work(kind: str, samples: int, root: Path) -> int:
    """The pipeline's work in one process; returns how many samples the read-back verified.

    The same steps as ``pipeline.build`` with omni3-prep's and omni3-shared's own functions, minus what only
    exists because of the worker processes (chunks, fragment files): the planner's checks, each sample made and
    written straight into its shard (hashed on the way, fsynced, sidecar with its facts), Energon indexing, every
    sample read back through Energon in this process and compared with its facts, the manifest hashing every file.
    """
    source = source_synth.plan(kind, samples, 0, 0.1, 0.1)
    info = tool_info(pipeline.TOOL, __version__, pipeline.PACKAGES)
    with publish_artifact(root, kind=ArtifactKind.DATASET, tool=info, config={}, inputs=[], resume=True) as staging:
        out_dir = staging.path
        cache = out_dir / CACHE_DIR
        cache.mkdir(exist_ok=True)  # media the samples share (e.g. a clip's audio) are cached here
        planner = pipeline.Planner(None)
        results: list[ShardResult] = []
        for task in cut_into_shards(planner(source.items), out_dir, SHARD_SIZE):
            writer = ShardWriter(task, task_fingerprint(task))
            for record in task.records:
                try:
                    writer.add_sample(*encode_record(record, cache))
                except BadRecordError as exc:
                    writer.bad.append(BadRecord(record.key, record.origin, exc.reason).as_dict())
            results.append(writer.close())
        shard_names, mapping = pipeline.energon_layout(results)
        energon_meta.write_metadata(out_dir, shard_names, mapping, workers=1)
        report = read_back(out_dir, expected=BuildFacts(out_dir / SIDECAR_DIR), workers=0)
        if not report.ok:
            raise RuntimeError(f"the same-work baseline did not read back intact: {report.first_problem()}")
        shutil.rmtree(cache, ignore_errors=True)
        verified = sum(split.read for split in report.splits.values())
        staging.extra.update(
            format="energon",
            counts=pipeline._counts(results),
            shards=[{"path": r.name, "sha256": r.sha256} for r in results if r.samples],
            readback={"loader": report.loader, "samples": verified},
        )
    return verified


def with_pipeline(kind: str, samples: int, root: Path, workers: int) -> int:
    options = pipeline.BuildOptions(output=root, workers=workers, shard_size=SHARD_SIZE)
    extra = pipeline.build(source_synth.plan(kind, samples, 0, 0.1, 0.1), options, inputs=[])
    return int(extra["counts"]["total"]["samples"])


def measure(kind: str, samples: int, workers: int, repeat: int, scratch: Path) -> dict[str, float]:
    best = dict.fromkeys(SIDES, float("inf"))
    for attempt in range(repeat):
        for side in SIDES:
            root = scratch / f"{kind}-{side}-{attempt}"
            started = time.perf_counter()
            if side == "plain":
                built = plain_loop(kind, samples, root)
            elif side == "same":
                built = same_work(kind, samples, root)
            else:
                built = with_pipeline(kind, samples, root, workers)
            elapsed = time.perf_counter() - started
            assert built == samples, f"{side} built {built} of {samples} samples"
            best[side] = min(best[side], elapsed)
            shutil.rmtree(root)
    return best


def machine(load: float) -> str:
    cpus = len(os.sched_getaffinity(0))
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    return f"{cpus} cores ({model}), load {load:.1f} at start, Python {platform.python_version()}, {ffmpeg}"


def render(rows: list[tuple[str, int, dict[str, float]]], workers: int, repeat: int, load: float) -> str:
    lines = [
        f"omni3-prep benchmark, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine(load)}",
        f"- pipeline: {workers} workers, shard size {SHARD_SIZE}; best of {repeat} alternating runs per side",
        "- same work, one process: the pipeline's steps in one process (read-back in-process, manifest hashing)",
        "- bare plain loop: make, append, index; no read-back, no manifest",
        "",
        "| job | samples | pipeline s | pipeline samples/s | same work, 1 process s | **speed ratio (target)** "
        "| bare plain loop s | ratio vs bare loop | cost of the proof |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, samples, best in rows:
        piped, same, plain = best["pipeline"], best["same"], best["plain"]
        proof = f"{(same - plain) / plain:+.0%} ({same - plain:+.1f} s)"
        lines.append(
            f"| {kind} | {samples} | {piped:.1f} | {samples / piped:.1f} | {same:.1f} | **{same / piped:.2f}x** "
            f"| {plain:.1f} | {plain / piped:.2f}x | {proof} |"
        )
    lines.append("")
    lines.append(
        "speed ratio = same work in one process / pipeline (the target's ratio); ratio vs bare loop = bare plain "
        "loop / pipeline (context); cost of the proof = what the read-back and hashing add to one process"
    )
    for kind, _, best in rows:
        ratio = best["same"] / best["pipeline"]
        verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
        lines.append(f"target: {kind} speed ratio (same work) >= {TARGET_RATIO}x: {verdict} ({ratio:.2f}x)")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--kind", choices=["avqa", "receipts", "both"], default="both")
    parser.add_argument("--samples", type=int, default=None, help="samples per kind (default: avqa 400, receipts 6000)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--record", type=Path, default=None, help="write the result as Markdown into this folder")
    args = parser.parse_args()
    kinds = ["avqa", "receipts"] if args.kind == "both" else [args.kind]
    energon_meta.energon_version()  # import Energon once, before any timing
    load = os.getloadavg()[0]  # before the runs: afterwards it mostly shows the benchmark's own load
    rows = []
    with tempfile.TemporaryDirectory(prefix="omni3-prep-bench-") as scratch:
        for kind in kinds:
            samples = args.samples or DEFAULT_SAMPLES[kind]
            rows.append((kind, samples, measure(kind, samples, args.workers, args.repeat, Path(scratch))))
    report = render(rows, args.workers, args.repeat, load)
    print(report, end="")
    if args.record is not None:
        args.record.mkdir(parents=True, exist_ok=True)
        target = args.record / f"prep-bench-{datetime.now(timezone.utc):%Y%m%d-%H%M}.md"
        target.write_text("# " + report)
        print(f"recorded in {target}")


if __name__ == "__main__":  # the pipeline's workers are spawned: they import this file and must not rerun it
    main()
