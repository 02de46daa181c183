"""One build: plan records, write shards in parallel, index with Energon, read every sample back, publish.

Nothing is published unless every step passed: the shards are written into the publish protocol's staging
directory, and only a successful read-back lets the manifest be written and the directory renamed into place.
A killed build leaves its finished shards in staging; the next run with the same inputs reuses them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni3_prep import __version__, energon_meta
from omni3_prep.readback import BuildFacts, read_back
from omni3_prep.records import BadRecord, BadRecordError, PlannedSource, Record, check_structure
from omni3_prep.shards import CACHE_DIR, SIDECAR_DIR, ShardResult, cut_into_shards, run_tasks
from omni3_shared.errors import InvalidInputError, ToolFailure
from omni3_shared.manifest import ArtifactKind, InputRef, tool_info
from omni3_shared.progress import Progress
from omni3_shared.publish import publish_artifact

TOOL = "omni3-prep"
log = logging.getLogger(__name__)
REPORT_IN_DATASET = "prep/bad-records.json"
MANIFEST_SKIPPED_LIMIT = 1000
PACKAGES = ("omni3-shared", "megatron-energon", "pillow", "numpy", "pyarrow")


@dataclass
class BuildOptions:
    output: Path
    workers: int
    shard_size: int
    skip_bad: bool = False
    force: bool = False
    per_split_limit: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    # Writes more files beside the shards (e.g. hf's parquet subset): gets the staging dir and the published keys.
    finish: Callable[[Path, set[str]], dict[str, Any]] | None = None


def failed_report_path(output: Path) -> Path:
    """Where a stopped build lists its bad records: beside the output, which stays unpublished."""
    return output.parent / f"{output.name}.bad-records.json"


class Planner:
    """Filters the source's stream: structural checks, unique keys, one modality set, per-split limits."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.bad: list[BadRecord] = []
        self.keys: dict[str, str] = {}
        self.taken: dict[str, int] = {}
        self.modalities: frozenset[str] | None = None

    def __call__(self, items: Iterable[Record | BadRecord]) -> Iterator[Record]:
        for item in items:
            if isinstance(item, BadRecord):
                self.bad.append(item)
                continue
            if self.limit is not None and self.taken.get(item.split, 0) >= self.limit:
                continue
            try:
                self._check(item)
            except BadRecordError as exc:
                self.bad.append(BadRecord(item.key, item.origin, exc.reason))
                continue
            self.keys[item.key] = item.origin
            self.taken[item.split] = self.taken.get(item.split, 0) + 1
            yield item

    def _check(self, record: Record) -> None:
        if record.key in self.keys:
            raise BadRecordError(f"duplicate key {record.key} (first used by {self.keys[record.key]})")
        check_structure(record)
        if self.modalities is None:
            self.modalities = record.modalities()
        elif record.modalities() != self.modalities:
            have = "+".join(sorted(record.modalities())) or "text only"
            want = "+".join(sorted(self.modalities)) or "text only"
            raise BadRecordError(
                f"media {have} differ from the dataset's {want} (set by its first record): an Energon dataset has "
                "one field map and the Omni collator cannot batch samples with and without audio"
            )


def _clean_stale(staging: Path, keep: set[str]) -> None:
    """Remove shards and sidecars of an earlier run's layout that this run did not produce."""
    for path in [*staging.glob("*.tar"), *staging.glob("*.tar.tmp")]:
        if path.name not in keep:
            path.unlink()
    for sidecar in (staging / SIDECAR_DIR).glob("*.json*"):
        if sidecar.name.removesuffix(".json") not in keep or sidecar.name.endswith(".tmp"):
            sidecar.unlink()


def energon_layout(results: list[ShardResult]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The shards Energon indexes, per split (shards whose records were all bad are left out), and the field map
    of the modalities and image formats they hold."""
    shard_names: dict[str, list[str]] = {}
    for result in results:
        if result.samples:
            shard_names.setdefault(result.split, []).append(result.name)
    modalities = {kind for result in results for kind, number in result.modalities.items() if number}
    image_exts = sorted({ext for result in results for ext in result.image_exts})
    return shard_names, energon_meta.field_map(modalities, image_exts)


def _counts(results: list[ShardResult]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for result in results:
        if not result.samples:
            continue
        split = counts.setdefault(result.split, {"samples": 0, "shards": 0, "image": 0, "audio": 0, "video": 0})
        split["samples"] += result.samples
        split["shards"] += 1
        for kind, number in result.modalities.items():
            split[kind] += number
    total = {
        name: sum(split[name] for split in counts.values()) for name in ("samples", "shards", "image", "audio", "video")
    }
    return {**dict(sorted(counts.items())), "total": total}


def build(source: PlannedSource, options: BuildOptions, inputs: list[InputRef]) -> dict[str, Any]:
    """Build and publish an Energon dataset from ``source``; returns the manifest's ``extra`` facts."""
    started = time.monotonic()
    output = options.output
    report_path = failed_report_path(output)
    info = tool_info(TOOL, __version__, PACKAGES)
    with publish_artifact(
        output,
        kind=ArtifactKind.DATASET,
        tool=info,
        config=options.config,
        inputs=inputs,
        force=options.force,
        resume=True,
    ) as staging:
        root = staging.path
        planner = Planner(options.per_split_limit)
        results: list[ShardResult] = []
        progress = Progress(TOOL, source.total_hint, unit="samples")

        def on_result(result: ShardResult) -> None:
            results.append(result)
            progress.advance(
                result.samples + len(result.bad), shards=len(results), bad=sum(len(r.bad) for r in results)
            )

        tasks = cut_into_shards(planner(source.items), root, options.shard_size)
        run_tasks(tasks, options.workers, on_result)
        progress.finish()
        log.info("shards written in %.1f s", time.monotonic() - started)
        _clean_stale(root, {result.name for result in results})
        bad = planner.bad + [record for result in results for record in result.bad]
        if bad and not options.skip_bad:
            report_path.write_text(json.dumps({"bad_records": [b.as_dict() for b in bad]}, indent=1) + "\n")
            first = bad[0]
            raise InvalidInputError(
                f"{len(bad)} bad record(s), e.g. {first.key} ({first.origin}): {first.reason}; "
                f"every one is listed in {report_path}",
                fix="fix or remove them, or pass --skip-bad to build without them",
            )
        if bad:
            (root / REPORT_IN_DATASET).write_text(
                json.dumps({"bad_records": [b.as_dict() for b in bad]}, indent=1) + "\n"
            )
        else:
            (root / REPORT_IN_DATASET).unlink(missing_ok=True)
        shard_names, mapping = energon_layout(results)
        facts = BuildFacts(root / SIDECAR_DIR)
        if options.finish is not None:
            published = {key for split, names in shard_names.items() for key in facts.keys(split, names)}
            staging.extra["subset"] = options.finish(root, published)
        indexing = time.monotonic()
        energon_meta.write_metadata(root, shard_names, mapping, options.workers)
        reading = time.monotonic()
        report = read_back(root, expected=facts, workers=options.workers if options.workers > 1 else 0)
        log.info("indexed in %.1f s, every sample read back in %.1f s", reading - indexing, time.monotonic() - reading)
        if not report.ok:
            raise ToolFailure(
                f"the dataset did not read back intact: {report.first_problem()}", fix="rerun with --force"
            )
        shutil.rmtree(root / CACHE_DIR, ignore_errors=True)
        staging.extra.update(
            format="energon",
            source=source.description,
            counts=_counts(results),
            shards=[
                {"path": r.name, "split": r.split, "samples": r.samples, "bytes": r.size, "sha256": r.sha256}
                for r in sorted(results, key=lambda r: r.name)
                if r.samples
            ],
            skipped={
                "count": len(bad),
                "report": REPORT_IN_DATASET if bad else None,
                "records": [b.as_dict() for b in bad[:MANIFEST_SKIPPED_LIMIT]],
            },
            energon={
                "version": energon_meta.energon_version(),
                "sample_loader": report.sample_class,
                "field_map": mapping,
            },
            readback={
                "loader": report.loader,
                "samples": sum(split.read for split in report.splits.values()),
                "decoded": {
                    kind: sum(split.decoded[kind] for split in report.splits.values())
                    for kind in ("image", "audio", "video")
                },
            },
            reused_shards=sum(result.reused for result in results),
            workers=options.workers,
        )
        staging.extra["elapsed_s"] = round(time.monotonic() - started, 3)
    report_path.unlink(missing_ok=True)
    return staging.extra


def publish_files(
    output: Path, config: dict[str, Any], inputs: list[InputRef], force: bool, fill: Callable[[Path], dict[str, Any]]
) -> dict[str, Any]:
    """Publish a directory that ``fill`` writes (a manifest-only dataset, raw synthetic sources)."""
    started = time.monotonic()
    info = tool_info(TOOL, __version__, PACKAGES)
    with publish_artifact(
        output, kind=ArtifactKind.DATASET, tool=info, config=config, inputs=inputs, force=force
    ) as staging:
        staging.extra.update(fill(staging.path))
        staging.extra["elapsed_s"] = round(time.monotonic() - started, 3)
    return staging.extra
