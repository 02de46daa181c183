"""The training run: Megatron-Bridge's ``finetune`` on the ConfigContainer, recorded and published as a run directory.

Every rank trains; global rank 0 also owns the run directory. It holds the output lock, trains inside the
staging directory ``.RUN.partial`` (checkpoints included, so a killed run resumes from it), writes the
metrics, the plot and the report, and publishes with the manifest once the last iteration is saved.

Imports Megatron-Bridge: GPU machines only. The CPU-testable pieces live in ``batches``, ``run_outputs``,
``checkpoints`` and ``recipe``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni3_sft import __version__, batches, checkpoints, model_shape, preflight, recipe, run_outputs
from omni3_sft.batches import BatchStats, CountingIterator
from omni3_sft.cli import TOOL
from omni3_sft.stall_report import StallReport
from omni3_shared.errors import ToolFailure
from omni3_shared.manifest import ArtifactKind, Hashing, InputRef, tool_info
from omni3_shared.publish import publish_artifact, staging_path
from omni3_shared.rendezvous import global_rank, single_process_rendezvous

PACKAGES = ("megatron-bridge", "megatron-core", "megatron-energon", "transformer-engine", "transformers", "torch")
# Checkpoints are large: their files carry sizes in the manifest, the small files a sha256 too.
HASHING = Hashing(mode="lazy", lazy_threshold_bytes=64 * 1024 * 1024)
ENERGON_BUILDER_MODULE = "megatron.bridge.data.builders.energon"
ENERGON_DATAMODULE_MODULE = "megatron.bridge.data.energon.base_energon_datamodule"
log = logging.getLogger(TOOL)


def cache_triton_kernels(environ: MutableMapping[str, str], folder: Path) -> str:
    """Point Triton's cache at ``folder`` and keep autotuning results in it, unless the user chose otherwise.

    Megatron's Mamba and MoE kernels are autotuned: each new process compiles and times every candidate
    configuration, about 2 minutes of the first iteration (record 2026-11-27). With the results on disk
    (TRITON_CACHE_AUTOTUNING=1; 0 opts out) in a folder that outlives the container, a later run of the same model
    skips that. TRITON_CACHE_DIR, when set, wins over ``folder``. Returns the cache folder in use.
    """
    environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    environ.setdefault("TRITON_CACHE_DIR", str(folder))
    cache = Path(environ["TRITON_CACHE_DIR"])
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only storage root: Triton falls back to its own default
        log.warning("Triton cache %s cannot be created (%s); using Triton's default", cache, exc)
        del environ["TRITON_CACHE_DIR"]
        return "Triton's default (~/.triton/cache)"
    return str(cache)


@dataclass
class Recorder:
    """Per-interval metrics on rank 0: the JSON lines, the progress line and the modality counts."""

    writer: run_outputs.MetricsWriter | None
    flops: model_shape.FlopCounter
    train_iters: int
    interval: int
    gpus: int
    data_parallel: int
    stats: BatchStats = field(default_factory=BatchStats)
    stall: StallReport = field(default_factory=StallReport)
    eta: run_outputs.EtaClock = field(default_factory=run_outputs.EtaClock)
    modality_totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(batches.MODALITIES, 0))
    last_iteration: int | None = None
    _losses: list[float] = field(default_factory=list)
    _grad_norms: list[float] = field(default_factory=list)
    _interval_start: float = field(default_factory=time.monotonic)
    _interval_first: int | None = None

    def start(self, iteration: int) -> None:
        self.stall.step()
        self._interval_start = time.monotonic()
        self._interval_first = iteration
        self.stats.take()  # batches drawn before the first step (warm-up, none so far) do not count

    def step_end(self, iteration: int, loss: float | None, grad_norm: float | None, lr: float) -> None:
        self.stall.step()
        self.last_iteration = iteration
        if loss is not None:
            self._losses.append(loss)
        if grad_norm is not None:
            self._grad_norms.append(grad_norm)
        if iteration % self.interval and iteration < self.train_iters:
            return
        now = time.monotonic()
        seconds, taken = now - self._interval_start, self.stats.take()
        for modality, count in taken.with_modality.items():
            self.modality_totals[modality] += count
        # Every data-parallel rank draws its own micro-batches of the same shapes: scale rank 0's counts.
        tokens = taken.tokens * self.data_parallel
        flops = self.flops.step(taken.sequence_lengths, taken.image_patches) * self.data_parallel
        iterations = iteration - (self._interval_first or iteration) + 1
        metrics = run_outputs.StepMetrics(
            iteration=iteration,
            loss=sum(self._losses) / len(self._losses) if self._losses else float("nan"),
            lr=lr,
            tokens=tokens,
            seconds=seconds,
            gpus=self.gpus,
            flops=float(flops),
            grad_norm=sum(self._grad_norms) / len(self._grad_norms) if self._grad_norms else None,
            data_wait_seconds=round(taken.data_wait_seconds, 4),
            positions=taken.positions * self.data_parallel,
            sequences=len(taken.sequence_lengths) * self.data_parallel,
        )
        seconds_per_iteration = self.eta.add(iterations, seconds)
        if self.writer is not None:
            self.writer.write(metrics)
            print(f"[{TOOL}] {run_outputs.progress_line(metrics, self.train_iters, seconds_per_iteration)}", flush=True)
        self._losses, self._grad_norms = [], []
        self._interval_start, self._interval_first = now, iteration + 1


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value.detach().float().mean().item()) if hasattr(value, "detach") else float(value)
    except (TypeError, ValueError):
        return None


def _learning_rate(optimizer: Any) -> float:
    groups = getattr(optimizer, "param_groups", None) or []
    return float(groups[0].get("lr", float("nan"))) if groups else float("nan")


def make_callback(recorder: Recorder) -> Any:
    """A Megatron-Bridge callback feeding ``recorder`` at each training step."""
    from megatron.bridge.training.callbacks import Callback

    class RecordingCallback(Callback):
        def on_train_start(self, context: Any) -> None:
            recorder.start(int(context.state.train_state.step) + 1)

        def on_train_step_end(self, context: Any) -> None:
            losses = context.loss_dict or {}
            loss = _scalar(losses.get("lm loss", next(iter(losses.values()), None)))
            recorder.step_end(
                int(context.state.train_state.step) + 1,  # the counter moves on after this callback
                loss,
                _scalar(context.grad_norm),
                _learning_rate(context.optimizer),
            )

    return RecordingCallback()


def make_forward_step(stats: BatchStats) -> Any:
    """Megatron-Bridge's Omni forward step, with the batches it draws counted into ``stats``.

    Megatron-Bridge passes its GlobalState to a forward step whose first parameter is named ``state``.
    """
    module_name, _, name = recipe.FORWARD_STEP.partition(":")
    omni_forward_step = getattr(importlib.import_module(module_name), name)

    def forward_step(state: Any, data_iterator: Any, model: Any, return_schedule_plan: bool = False) -> Any:
        counted = CountingIterator(data_iterator, stats) if data_iterator is not None else None
        return omni_forward_step(state, counted, model, return_schedule_plan)

    return forward_step


@contextlib.contextmanager
def modality_filter(modality: str | None) -> Iterator[None]:
    """While training, the Energon task encoder Megatron-Bridge builds keeps only ``modality`` (see batches)."""
    if not modality:
        yield
        return
    from megatron.energon import SkipSample, stateless

    builders = importlib.import_module(ENERGON_BUILDER_MODULE)
    original = builders.build_energon_task_encoder

    def build_filtered(config: Any) -> Any:
        encoder = original(config)
        base = type(encoder)

        class ModalityFilteredTaskEncoder(base):  # type: ignore[misc, valid-type]
            @stateless
            def encode_sample(self, sample: Any) -> Any:
                try:
                    batches.keep_only(sample, modality)
                except batches.NoSuchModality:
                    raise SkipSample() from None
                return base.encode_sample(self, sample)

        encoder.__class__ = ModalityFilteredTaskEncoder
        return encoder

    builders.build_energon_task_encoder = build_filtered
    try:
        yield
    finally:
        builders.build_energon_task_encoder = original


@contextlib.contextmanager
def resumable_energon_stream() -> Iterator[None]:
    """Energon checkpoints that hold the data position, so a resumed run continues over the same samples.

    Megatron-Bridge saves and restores the stream position only when the training iterator is its
    ``EnergonDataloader`` (which has ``save_state``/``restore_state``). Its Energon builder hands over
    ``iter(EnergonDataloader)`` instead, and that ``__iter__`` returns the inner generator, so checkpoints held
    no position and every resumed run restarted the data. While this is active the loader is its own iterator.
    """
    datamodule = importlib.import_module(ENERGON_DATAMODULE_MODULE)
    loader_class = datamodule.EnergonDataloader
    original = loader_class.__iter__
    loader_class.__iter__ = lambda self: self
    try:
        yield
    finally:
        loader_class.__iter__ = original


@dataclass(frozen=True)
class Outcome:
    iteration: int | None  # the last iteration trained in this process (None: none ran)
    saved: int | None  # the newest complete checkpoint afterwards
    signal_exit: bool  # Megatron-Bridge stopped on SIGTERM after saving


def train(config: Any, recorder: Recorder, modality: str | None, save_dir: Path) -> Outcome:
    """Run ``finetune``; Megatron-Bridge saves and calls sys.exit(0) on SIGTERM, which ends here as an Outcome."""
    from megatron.bridge.training.finetune import finetune

    signal_exit = False
    with modality_filter(modality), resumable_energon_stream():
        try:
            finetune(config, make_forward_step(recorder.stats), callbacks=[make_callback(recorder)])
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
            signal_exit = True
        finally:
            recorder.stall.stop()
    point = checkpoints.resume_point(save_dir)
    return Outcome(recorder.last_iteration, point.iteration if point else None, signal_exit)


def data_parallel_size(world: int, resolved: Mapping[str, Any]) -> int:
    model = resolved["model"]
    model_parallel = (
        model["tensor_model_parallel_size"] * model["pipeline_model_parallel_size"] * model["context_parallel_size"]
    )
    return max(world // model_parallel, 1)


def run(
    settings: Any,
    resolved: Mapping[str, Any],
    origin: Mapping[str, Any],
    shape: model_shape.OmniShape,
    inputs: list[InputRef],
    world: int,
    force: bool,
) -> Path | None:
    """Train and publish the run directory (rank 0); returns it, or None on the other ranks."""
    single_process_rendezvous()
    # Before Megatron imports Triton, which reads its cache settings once.
    triton_cache = cache_triton_kernels(os.environ, settings.resolve_path(settings.triton_cache_dir))
    run_dir = settings.resolve_path(settings.run_dir).absolute()
    hf_path = str(settings.resolve_path(settings.hf_model).absolute())
    staging = staging_path(run_dir)
    train_iters = resolved["train"]["train_iters"]
    modality = resolved["dataset"].get("modality_filter")
    flops = preflight.flop_counter(shape, resolved)
    stall = StallReport(resolved["train"].get("stall_report_seconds") or 0)
    if global_rank() == 0:
        print(
            f"[{TOOL}] Triton kernel cache: {triton_cache} (a model's first run there autotunes its kernels in the "
            "first iteration, about 2 minutes; later runs reuse the results)",
            flush=True,
        )
        if stall.enabled:
            print(
                f"[{TOOL}] stall report: every rank prints its stacks if no step ends for {stall.seconds} s", flush=True
            )

    def prepare() -> tuple[Any, recipe.RecipeFacts, recipe.RecipePlan]:
        facts = recipe.gather_facts(resolved, hf_path, settings.trust_remote_code, run_dir, staging)
        plan = recipe.plan_recipe(resolved, facts)
        return recipe.apply_plan(plan), facts, plan

    if global_rank() != 0:
        staging.mkdir(parents=True, exist_ok=True)
        config, facts, _ = prepare()
        recorder = Recorder(None, flops, train_iters, config.logger.log_interval, world, 1, stall=stall)
        train(config, recorder, modality, Path(facts.save_dir))
        return None

    started = time.monotonic()
    with publish_artifact(
        run_dir,
        kind=ArtifactKind.TRAINING_RUN,
        tool=tool_info(TOOL, __version__, PACKAGES),
        config={**origin, **resolved},
        inputs=inputs,
        force=force,
        resume=True,
        hashing=HASHING,
    ) as stage:
        config, facts, plan = prepare()
        resumed_from = facts.resume.iteration if facts.resume else None
        if resumed_from is not None:
            log.warning("resuming from iteration %d in %s", resumed_from, facts.save_dir)
        run_outputs.write_run_config(
            stage.path / run_outputs.RUN_CONFIG_FILE,
            {
                "omni3": {**origin, **resolved},
                "settings": settings.model_dump(mode="json"),
                "world_size": world,
                "megatron_bridge": plan.as_dict(),
            },
        )
        metrics_path = stage.path / run_outputs.METRICS_FILE
        with run_outputs.MetricsWriter(metrics_path, resume_iteration=resumed_from) as writer:
            recorder = Recorder(
                writer,
                flops,
                train_iters,
                max(int(config.logger.log_interval), 1),
                world,
                data_parallel_size(world, resolved),
                stall=stall,
            )
            outcome = train(config, recorder, modality, Path(facts.save_dir))
        if outcome.saved is None or outcome.saved < train_iters:
            reason = "SIGTERM" if outcome.signal_exit else "the training loop ended early"
            where = f"iteration {outcome.saved}" if outcome.saved is not None else "no complete checkpoint yet"
            raise ToolFailure(
                f"training stopped at {where} of {train_iters} ({reason}); the run directory was not published",
                fix="rerun the same command: it resumes from the last complete checkpoint in " + str(staging),
            )
        records = run_outputs.read_metrics(metrics_path)
        run_outputs.plot(records, stage.path / run_outputs.PLOT_FILE, title=f"{TOOL} {origin.get('variant', '')}")
        entry = run_outputs.checkpoint_entry(Path(facts.save_dir), stage.path, outcome.saved)
        summary = run_outputs.RunSummary(
            variant=str(origin.get("variant", "")),
            recipe=resolved["recipe"],
            layout=layout_name(resolved),
            gpus=world,
            train_iters=train_iters,
            seq_length=resolved["model"]["seq_length"],
            global_batch_size=resolved["train"]["global_batch_size"],
            wall_seconds=time.monotonic() - started,
            checkpoint=entry,
            resumed_from=resumed_from,
        )
        (stage.path / run_outputs.REPORT_FILE).write_text(run_outputs.render_report(summary, records))
        stage.extra.update(
            {
                "checkpoint": entry,
                "variant": summary.variant,
                "recipe": resolved["recipe"],
                "hf_model": hf_path,
                "pretrained_checkpoint": facts.pretrained_checkpoint,
                "peft": peft_entry(resolved),
                "parallel": {key: value for key, value in resolved["model"].items() if key.endswith("_size")},
                "world_size": world,
                "train_iters": train_iters,
                "resumed_from": resumed_from,
                "modality_filter": modality,
                "batches_with_modality": recorder.modality_totals,
                "metrics": run_outputs.summarize_metrics(records),
            }
        )
    print(f"[{TOOL}] published {run_dir} (checkpoint {entry.get('path', entry['dir'])})", flush=True)
    return run_dir


def peft_entry(resolved: Mapping[str, Any]) -> dict[str, Any] | None:
    peft = resolved.get("peft")
    if not peft:
        return None
    return {
        "type": peft.get("scheme", "lora"),
        "target_modules": list(peft["target_modules"]),
        "dim": peft["dim"],
        "alpha": peft["alpha"],
        "dropout": peft["dropout"],
    }


def layout_name(resolved: Mapping[str, Any]) -> str:
    model = resolved["model"]
    parts = [
        f"TP{model['tensor_model_parallel_size']}",
        f"EP{model['expert_model_parallel_size']}",
        f"PP{model['pipeline_model_parallel_size']}",
    ]
    if model["context_parallel_size"] > 1:
        parts.append(f"CP{model['context_parallel_size']}")
    return " x ".join(parts)
