"""The direct side of the SFT benchmark: Megatron-Bridge's own recipe and ``finetune``, without omni3's tool.

    torchrun --nproc-per-node N tests/bench/sft_direct.py --config YAML --hf-model DIR --megatron-checkpoint DIR
        --run-dir DIR --metrics FILE [section.field=value ...]

Same workload as ``omni3_sft`` with the same YAML and overrides: the stage config is resolved and planned with
omni3's pure helpers (``stage_config``, ``recipe.plan_recipe``: the list of field assignments), the upstream
recipe function is called and each field assigned (``recipe.apply_plan``, with the local HF path patched in, as
the recipes read the hub otherwise), and this driver runs upstream ``finetune`` with upstream's Omni forward step
itself, without omni3's run directory, progress lines, metrics files or publishing. What it adds:
a token counter on the batches the forward step draws (``BatchStats``, the shapes omni3 counts) and a callback
timing each step (CUDA synchronised at step end); with ``--profile-steps N``, torch.profiler over the last N
iterations (``step_profile``). Rank 0 writes one JSON line per iteration to --metrics with
the keys omni3's metrics records have (iteration, tokens, positions, seconds, gpus, flops, data_wait_seconds,
sequences).

GPU machine only (imports megatron.bridge).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from omni3_sft import model_shape, preflight, recipe, stage_config
from omni3_sft.batches import BatchStats, CountingIterator
from omni3_sft.settings import SftSettings
from omni3_shared.rendezvous import global_rank

sys.path.insert(0, str(Path(__file__).resolve().parent))  # step_profile beside this file (run as a script)
from step_profile import StepProfiler

RANK = global_rank()
WORLD = int(os.environ.get("WORLD_SIZE", "1"))


def log(message: str) -> None:
    print(f"[bench-direct rank {RANK} {datetime.now(timezone.utc).strftime('%H:%M:%S')}] {message}", flush=True)


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The resolved stage config, exactly as omni3-sft resolves the same YAML and overrides."""
    settings = SftSettings(
        config=args.config,
        hf_model=args.hf_model,
        megatron_checkpoint=Path(args.megatron_checkpoint),
        run_dir=Path(args.run_dir),
        trust_remote_code=True,
    )
    document = stage_config.read_variant(Path(args.config))
    parsed = stage_config.validate(stage_config.apply_overrides(document, tuple(args.overrides)), args.config)
    return stage_config.interpolate(parsed, settings)


def build_config(resolved: dict[str, Any], hf_path: str, run_dir: Path) -> Any:
    """Upstream recipe function, then every field assignment of omni3's plan (``recipe.apply_plan``)."""
    # No staging folder here: the run writes straight into run_dir (omni3 writes into .RUN.partial).
    facts = recipe.gather_facts(resolved, hf_path, True, run_dir, run_dir)
    plan = recipe.plan_recipe(resolved, facts)
    log(f"recipe {recipe.RECIPE_MODULE}.{plan.function}, {len(plan.assignments)} field assignments")
    return recipe.apply_plan(plan)


def data_parallel(resolved: dict[str, Any]) -> int:
    model = resolved["model"]
    split = model["tensor_model_parallel_size"] * model["pipeline_model_parallel_size"] * model["context_parallel_size"]
    return max(WORLD // split, 1)


def counted(forward_step: Any, stats: BatchStats) -> Any:
    """Upstream's forward step; the batches it draws pass through a counter (shapes only, no copy)."""

    def forward(state: Any, data_iterator: Any, model: Any, return_schedule_plan: bool = False) -> Any:
        iterator = CountingIterator(data_iterator, stats) if data_iterator is not None else None
        return forward_step(state, iterator, model, return_schedule_plan)

    return forward


def timing_callback(
    stats: BatchStats, flops: model_shape.FlopCounter, dp: int, metrics: Path, profiler: StepProfiler | None = None
) -> Any:
    import torch
    from megatron.bridge.training.callbacks import Callback

    class StepTimer(Callback):
        """Per-step wall time; rank 0 writes one record per iteration."""

        def __init__(self) -> None:
            self.last = time.monotonic()
            self.out = metrics.open("w") if RANK == 0 else None

        def on_train_start(self, context: Any) -> None:
            torch.cuda.synchronize()
            stats.take()
            self.last = time.monotonic()
            log(f"training starts at iteration {int(context.state.train_state.step) + 1}")

        def on_train_step_start(self, context: Any) -> None:
            if profiler is not None:
                profiler.step_start(int(context.state.train_state.step) + 1)

        def on_train_step_end(self, context: Any) -> None:
            torch.cuda.synchronize()  # the step's kernels are done: the wall time is the step's own
            now = time.monotonic()
            if profiler is not None:
                profiler.step_end()
            taken = stats.take()
            if self.out is not None:
                # Every data-parallel rank draws micro batches of the same shapes: scale rank 0's counts.
                # train_state.step counts completed steps before this one: +1 numbers from 1, as omni3's metrics do,
                # so the bench's warm-up cut leaves out the same steps on both sides.
                record = {
                    "iteration": int(context.state.train_state.step) + 1,
                    "tokens": taken.tokens * dp,
                    "positions": taken.positions * dp,
                    "sequences": len(taken.sequence_lengths) * dp,
                    "seconds": now - self.last,
                    "gpus": WORLD,
                    "flops": float(flops.step(taken.sequence_lengths, taken.image_patches) * dp),
                    "data_wait_seconds": round(taken.data_wait_seconds, 4),
                }
                self.out.write(json.dumps(record) + "\n")
                self.out.flush()
            self.last = now

        def on_train_end(self, context: Any) -> None:
            if profiler is not None and (summary := profiler.finish()) is not None:
                log(f"profile of {summary['steps']} steps: {profiler.out / 'profile.md'}")
            if self.out is not None:
                self.out.close()

    return StepTimer()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Megatron-Bridge's finetune on the bench's proxy stage config")
    parser.add_argument("--config", required=True)
    parser.add_argument("--hf-model", required=True)
    parser.add_argument("--megatron-checkpoint", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--profile-steps", type=int, default=0, help="profile the last N iterations (rank 0)")
    parser.add_argument("--profile-out", default=None, help="folder for profile.json and profile.md")
    parser.add_argument("overrides", nargs="*")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    resolved = resolve(args)
    hf_path = str(Path(args.hf_model).absolute())
    run_dir = Path(args.run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    flops = preflight.flop_counter(model_shape.read_model_shape(Path(hf_path)), resolved)
    log(f"world {WORLD}, data parallel {data_parallel(resolved)}, overrides {args.overrides}")
    config = build_config(resolved, hf_path, run_dir)

    from megatron.bridge.training.finetune import finetune

    module_name, _, name = recipe.FORWARD_STEP.partition(":")
    forward_step = getattr(importlib.import_module(module_name), name)
    stats = BatchStats()
    metrics = Path(args.metrics)
    profiler = None
    if args.profile_steps > 0 and RANK == 0:
        first = resolved["train"]["train_iters"] - args.profile_steps + 1
        profiler = StepProfiler(first, args.profile_steps, Path(args.profile_out or Path(args.metrics).parent))
    callback = timing_callback(stats, flops, data_parallel(resolved), metrics, profiler)
    log("finetune starts")
    finetune(config, counted(forward_step, stats), callbacks=[callback])
    log("finetune returned")
    if RANK == 0:
        iterations = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
        wanted = resolved["train"]["train_iters"]
        if iterations < wanted:
            log(f"only {iterations} of {wanted} iterations recorded")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
