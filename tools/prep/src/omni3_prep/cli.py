"""omni3-prep: build and validate Energon datasets for Nemotron 3 Nano Omni SFT.

Usage:
  omni3-prep synth --output DIR [--kind receipts|avqa] [--sample N] [--seed S] [--raw]
  omni3-prep jsonl --input FILE --output DIR
  omni3-prep valor32k --videos DIR_OR_TAR --qa FILE_OR_DIR --output DIR
  omni3-prep hf --input PATH_OR_ID --output DIR [--sample N]
  omni3-prep energon --input DIR [--sample N]
  omni3-prep settings
Every build also takes --workers, --shard-size, --skip-bad, --force, --dry-run and --settings-file.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from omni3_prep import media, pipeline
from omni3_prep.records import BadRecord, PlannedSource
from omni3_prep.settings import PrepSettings
from omni3_shared.cli import ToolCommands, run_cli
from omni3_shared.errors import InvalidInputError, UsageError
from omni3_shared.manifest import ArtifactKind, InputRef, is_complete, read_manifest
from omni3_shared.plan import OutputSpec, Plan, plain, preflight
from omni3_shared.settings import load_settings

TOOL = "omni3-prep"
SYNTH_DEFAULT_SAMPLES = 64
COMMON_FLAGS = ("output", "sample", "seed", "workers", "shard_size", "skip_bad")


def _flags(values: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: values[name] for name in (*COMMON_FLAGS, *names) if name in values}


def _existing(settings: PrepSettings, value: str | Path | None, flag: str) -> Path:
    if value is None:
        raise UsageError(f"--{flag} is required", fix=f"pass --{flag} or set OMNI3_{flag.upper().replace('-', '_')}")
    path = settings.resolve_path(value)
    if not path.exists():
        raise InvalidInputError(f"--{flag} {path} does not exist", fix="check the path")
    return path


def _output(settings: PrepSettings) -> Path:
    if settings.output is None:
        raise UsageError("--output is required", fix="pass --output DIR or set OMNI3_OUTPUT")
    return settings.resolve_path(settings.output)


def _dry_run_counts(source: PlannedSource, limit: int | None) -> dict[str, Any]:
    """Plan every record without opening media: counts per split and the bad records found so far."""
    planner = pipeline.Planner(limit)
    counts: dict[str, int] = {}
    for record in planner(source.items):
        counts[record.split] = counts.get(record.split, 0) + 1
    return {
        "records": dict(sorted(counts.items())),
        "modalities": sorted(planner.modalities or []),
        "bad_so_far": [bad.as_dict() for bad in planner.bad[:20]],
        "bad_count_so_far": len(planner.bad),
    }


def _summary(output: Path, extra: dict[str, Any]) -> str:
    keys = ("format", "counts", "skipped", "energon", "readback", "subset", "files", "elapsed_s")
    document = {"published": str(output), **{key: extra[key] for key in keys if key in extra}}
    if isinstance(document.get("skipped"), dict):
        document["skipped"] = {k: v for k, v in document["skipped"].items() if k != "records"}
    return yaml.safe_dump(plain(document), sort_keys=False, width=120)


class PrepCommands(ToolCommands):
    """Build Energon datasets (image, audio, video SFT) that Megatron-Bridge's Omni training path reads.

    Every build writes WebDataset shards in parallel, indexes them with megatron-energon, reads every sample
    back, and only then publishes the directory with its omni3 manifest. Bad records stop the build with exit 3
    and a report (or are left out with --skip-bad). A killed build publishes nothing; rerunning it reuses the
    finished shards. Settings come from flags, then OMNI3_* variables, then --settings-file.
    """

    _settings_cls = PrepSettings

    def _run_build(
        self,
        action: str,
        settings: PrepSettings,
        inputs: list[Path],
        make_source: Callable[[], PlannedSource],
        force: bool,
        dry_run: bool,
        limit: int | None,
        finish: Callable[[Path, set[str]], dict[str, Any]] | None = None,
    ) -> None:
        output = _output(settings)
        plan = self._plan(action, settings, output, inputs, force)
        if dry_run:
            if not plan.problems:
                plan.config = {"source": (source := make_source()).description, "plan": _dry_run_counts(source, limit)}
            print(plan.render(), end="")
            return
        plan.raise_first_problem()
        media.require_ffmpeg()
        options = pipeline.BuildOptions(
            output=output,
            workers=settings.worker_count(),
            shard_size=settings.shard_size,
            skip_bad=settings.skip_bad,
            force=force,
            per_split_limit=limit,
            config=plain(settings.model_dump()),
            finish=finish,
        )
        refs = [InputRef(role=action, path=str(path), external=True) for path in inputs]
        print(_summary(output, pipeline.build(make_source(), options, refs)), end="")

    def _plan(self, action: str, settings: PrepSettings, output: Path, inputs: list[Path], force: bool) -> Plan:
        plan = preflight(TOOL, action, settings, [], [OutputSpec("dataset", output, ArtifactKind.DATASET)], force)
        plan.inputs = [{"role": action, "path": str(path), "status": "ok"} for path in inputs]
        return plan

    def synth(
        self,
        output: str | None = None,
        kind: str | None = None,
        sample: int | None = None,
        seed: int | None = None,
        raw: bool | None = None,
        receipt_width: int | None = None,
        workers: int | None = None,
        shard_size: int | None = None,
        skip_bad: bool | None = None,
        settings_file: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """Make the built-in synthetic data (offline, deterministic from --seed) and build an Energon dataset.

        Args:
            output: directory the dataset is published to (OMNI3_OUTPUT).
            kind: receipts (images + CORD-style JSON) or avqa (video+audio clips + multiple-choice QA).
            sample: number of samples to make (default 64), split train/val/test by the fractions.
            seed: seed of the synthetic content (OMNI3_SEED).
            raw: write the raw inputs of the other sources (CORD parquet, VALOR videos + QA, JSONL) instead.
            receipt_width: receipts: image width in pixels (default 256; CORD's scans are about 1,000), for
                throughput work with real-sized images (OMNI3_RECEIPT_WIDTH).
            workers: shard-writing worker processes (OMNI3_WORKERS, default: usable cores).
            shard_size: samples per shard (OMNI3_SHARD_SIZE).
            skip_bad: leave bad records out instead of stopping with exit 3.
            settings_file: YAML file of settings, below flags and environment (OMNI3_SETTINGS_FILE).
            force: replace a complete dataset at --output.
            dry_run: print the plan and the checks' results; write nothing.
        """
        settings = load_settings(PrepSettings, _flags(locals(), "kind", "raw", "receipt_width"), settings_file)
        count = settings.sample or SYNTH_DEFAULT_SAMPLES
        if settings.raw:
            self._synth_raw(settings, count, force, dry_run)
            return
        from omni3_prep import source_synth

        def make() -> PlannedSource:
            fractions = (settings.val_fraction, settings.test_fraction)
            return source_synth.plan(
                settings.kind,
                count,
                settings.seed,
                *fractions,
                prompt=settings.prompt,
                receipt_width=settings.receipt_width,
            )

        self._run_build("synth", settings, [], make, force, dry_run, None)

    def _synth_raw(self, settings: PrepSettings, count: int, force: bool, dry_run: bool) -> None:
        from omni3_prep import synth_raw

        output = _output(settings)
        plan = self._plan("synth --raw", settings, output, [], force)
        if dry_run:
            print(plan.render(), end="")
            return
        plan.raise_first_problem()
        media.require_ffmpeg()
        fractions = (settings.val_fraction, settings.test_fraction)

        def fill(root: Path) -> dict[str, Any]:
            if settings.kind == "receipts":
                layout = synth_raw.write_receipts(
                    root, count, settings.seed, *fractions, settings.worker_count(), settings.receipt_width
                )
            else:
                layout = synth_raw.write_avqa(root, count, settings.seed, *fractions, settings.worker_count())
            return {
                "format": "raw-sources",
                "source": {"type": "synth", "kind": settings.kind, "seed": settings.seed},
                "files": layout,
            }

        extra = pipeline.publish_files(output, plain(settings.model_dump()), [], force, fill)
        print(_summary(output, extra), end="")

    def jsonl(
        self,
        input: str | None = None,
        output: str | None = None,
        sample: int | None = None,
        seed: int | None = None,
        workers: int | None = None,
        shard_size: int | None = None,
        skip_bad: bool | None = None,
        settings_file: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """Build an Energon dataset from a JSONL file of {"messages", "images", "audios", "videos"} records.

        Args:
            input: the JSONL file; media paths in it are relative to it (OMNI3_INPUT).
            output: directory the dataset is published to (OMNI3_OUTPUT).
            sample: at most this many records per split.
            seed: seed of the split drawn for records without a "split" (OMNI3_SEED).
            workers: shard-writing worker processes (OMNI3_WORKERS).
            shard_size: samples per shard (OMNI3_SHARD_SIZE).
            skip_bad: leave bad records out instead of stopping with exit 3.
            settings_file: YAML file of settings, below flags and environment (OMNI3_SETTINGS_FILE).
            force: replace a complete dataset at --output.
            dry_run: print the plan, the records per split and the bad records found without opening media.
        """
        from omni3_prep import source_jsonl

        settings = load_settings(PrepSettings, _flags(locals(), "input"), settings_file)
        path = _existing(settings, settings.input, "input")
        if not path.is_file():
            raise UsageError(f"--input {path} is not a file", fix="pass the JSONL file itself")

        def make() -> PlannedSource:
            return source_jsonl.plan(path, settings.seed, settings.val_fraction, settings.test_fraction)

        self._run_build("jsonl", settings, [path], make, force, dry_run, settings.sample)

    def valor32k(
        self,
        videos: str | None = None,
        qa: str | None = None,
        output: str | None = None,
        sample: int | None = None,
        seed: int | None = None,
        workers: int | None = None,
        shard_size: int | None = None,
        skip_bad: bool | None = None,
        settings_file: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """Build the VALOR32K-AVQA Energon dataset: video, 16 kHz audio and the QA conversation per sample.

        Args:
            videos: directory of VALOR-32K videos, or an uncompressed tar of them (OMNI3_VIDEOS).
            qa: a VALOR32K-AVQA QA JSON file, or a directory of them (OMNI3_QA).
            output: directory the dataset is published to (OMNI3_OUTPUT).
            sample: at most this many QA records per split.
            seed: seed of the split drawn for QA files without a split in their name (OMNI3_SEED).
            workers: shard-writing worker processes (OMNI3_WORKERS).
            shard_size: samples per shard (OMNI3_SHARD_SIZE).
            skip_bad: leave bad records out instead of stopping with exit 3.
            settings_file: YAML file of settings, below flags and environment (OMNI3_SETTINGS_FILE).
            force: replace a complete dataset at --output.
            dry_run: print the plan, the records per split and the bad records found without opening media.
        """
        from omni3_prep import source_valor32k

        settings = load_settings(PrepSettings, _flags(locals(), "videos", "qa"), settings_file)
        video_path = _existing(settings, settings.videos, "videos")
        qa_path = _existing(settings, settings.qa, "qa")

        def make() -> PlannedSource:
            fractions = (settings.val_fraction, settings.test_fraction)
            return source_valor32k.plan(video_path, qa_path, settings.seed, *fractions)

        self._run_build("valor32k", settings, [video_path, qa_path], make, force, dry_run, settings.sample)

    def hf(
        self,
        input: str | None = None,
        output: str | None = None,
        sample: int | None = None,
        workers: int | None = None,
        shard_size: int | None = None,
        skip_bad: bool | None = None,
        settings_file: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """A CORD-v2-style dataset: write its manifest; with --sample, also a local subset training reads offline.

        The subset is an Energon dataset (image + conversation) plus the same rows as parquet under hf/ for
        Megatron-Bridge's Direct-HF CORD path.

        Args:
            input: local parquet/arrow file or directory, save_to_disk directory, or a Hub id (OMNI3_INPUT).
            output: directory the dataset is published to (OMNI3_OUTPUT).
            sample: rows per split in the local subset; unset: only the manifest is written.
            workers: shard-writing worker processes (OMNI3_WORKERS).
            shard_size: samples per shard (OMNI3_SHARD_SIZE).
            skip_bad: leave bad rows out of the subset instead of stopping with exit 3.
            settings_file: YAML file of settings, below flags and environment (OMNI3_SETTINGS_FILE).
            force: replace a complete dataset at --output.
            dry_run: print the plan; write nothing.
        """
        from omni3_prep import source_hf

        settings = load_settings(PrepSettings, _flags(locals(), "input"), settings_file)
        if settings.input is None:
            raise UsageError("--input is required", fix="pass a local parquet/arrow path or a Hub id")
        local = settings.resolve_path(settings.input)
        source = str(local) if local.exists() else settings.input
        if not local.exists() and (settings.input.startswith((".", "/", "~")) or settings.input.count("/") != 1):
            raise InvalidInputError(f"--input {local} does not exist and is not a Hub id (owner/name)")
        inputs = [local] if local.exists() else []
        if settings.sample is None:
            self._hf_manifest(settings, source, inputs, force, dry_run)
            return

        def finish(root: Path, keys: set[str]) -> dict[str, Any]:
            rows = source_hf.write_parquet_subset(source, root, keys, settings.sample, settings.prompt)
            return {"hf_parquet": "hf", "rows": rows}

        def make() -> PlannedSource:
            return source_hf.plan(source, settings.sample, settings.prompt)

        self._run_build("hf", settings, inputs, make, force, dry_run, settings.sample, finish)

    def _hf_manifest(self, settings: PrepSettings, source: str, inputs: list[Path], force: bool, dry_run: bool) -> None:
        from omni3_prep import source_hf

        output = _output(settings)
        plan = self._plan("hf", settings, output, inputs, force)
        planned = source_hf.plan(source, 1, settings.prompt)
        if dry_run:
            print(plan.render(), end="")
            return
        plan.raise_first_problem()
        if inputs:  # one row per split proves the schema; a manifest over an unreadable dataset helps nobody
            bad = [item for item in planned.items if isinstance(item, BadRecord)]
            if bad:
                raise InvalidInputError(
                    f"{bad[0].origin}: {bad[0].reason}", fix="point --input at a CORD-style dataset"
                )

        def fill(root: Path) -> dict[str, Any]:
            counts = planned.description.get("rows", {})
            return {"format": "hf-manifest", "source": planned.description, "counts": counts, "energon": None}

        refs = [InputRef(role="hf", path=str(path), external=True) for path in inputs]
        print(_summary(output, pipeline.publish_files(output, plain(settings.model_dump()), refs, force, fill)), end="")

    def energon(
        self,
        input: str | None = None,
        sample: int | None = None,
        workers: int | None = None,
        settings_file: str | None = None,
    ) -> None:
        """Validate an existing Energon dataset in place: splits, field map, and samples read and decoded.

        Prints a JSON report per split; exit 3 when the dataset is not one the Omni training path reads.

        Args:
            input: the dataset directory, holding .nv-meta (OMNI3_INPUT).
            sample: read and decode at most this many samples per split (default: all).
            workers: Energon loader processes that decode samples (OMNI3_WORKERS, default: usable cores).
            settings_file: YAML file of settings, below flags and environment (OMNI3_SETTINGS_FILE).
        """
        from omni3_prep.readback import read_back

        settings = load_settings(PrepSettings, {"input": input, "sample": sample, "workers": workers}, settings_file)
        root = _existing(settings, settings.input, "input")
        if is_complete(root):  # an omni3 artifact: its manifest must hold before Energon reads a byte
            read_manifest(root, expect_kind=ArtifactKind.DATASET, verify="size")
        workers = settings.worker_count()
        try:
            report = read_back(root, limit=settings.sample, decode_videos=1, workers=workers if workers > 1 else 0)
        except (OSError, tarfile.TarError, sqlite3.DatabaseError) as exc:
            # A damaged shard or index surfaces deep inside Energon: it is the input's fault, not the tool's.
            raise InvalidInputError(
                f"{root} cannot be read: {exc.__class__.__name__}: {' '.join(str(exc).split())}",
                fix="rebuild it with omni3-prep, or restore the damaged file",
            ) from None
        print(json.dumps(report.as_dict(), indent=1))
        if not report.ok:
            raise InvalidInputError(
                f"{root} is not a dataset the Omni training path reads: {report.first_problem()}",
                fix="rebuild it with omni3-prep (jsonl, valor32k, hf or synth)",
            )


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(PrepCommands(), TOOL, argv)


def main() -> None:
    sys.exit(cli())
