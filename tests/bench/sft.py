"""Benchmark of omni3-sft against Megatron-Bridge's own entry point, on a Nemotron 3 Nano layer-shape proxy.

    python tests/bench/sft.py --gpus 1|4 --dataset DIR --work DIR [--iters 30] [--warmup 5] [--layers M*E]
                              [--seq 4096] [--micro-batch 4] [--micro-batches 8] [--workers 8]
                              [--rounds N] [--profile N] [--record ci/records] [--out DIR]

What it measures, each phase in its own subprocess with its own log file in --out and its own time budget; no
process of a phase (torchrun's workers included) outlives it into the next one:

- ``peak``: the card's bf16 matrix peak, a torch 8192^3 matmul loop timed with CUDA events (GPU 0).
- ``build``: the proxy HF checkpoint, written by the project's own builder (``build_tiny_omni``) with the real
  Nemotron 3 Nano layer shapes (hidden 2688, 128 experts top-6, Mamba 64x64, vocab 131072, ...) and only the
  layers of ``--layers``. Vision tensors are omitted (the bridge keeps its own random RADIO init).
- ``import``: ``python -m omni3_import`` at TP1/EP1 without the logit check (nothing is measured there); the
  distributed checkpoint is resharded to EP4 when the 4-GPU runs load it.
- ``omni3``: ``torchrun -m omni3_sft --config <proxy stage YAML> overrides`` (the tool itself); throughput is read
  from the run's ``metrics.jsonl`` (one record per iteration, log_interval 1), warm-up iterations skipped.
- ``direct``: ``tests/bench/sft_direct.py``: the upstream recipe function, the same field assignments, upstream's
  ``finetune`` with upstream's Omni forward step and a minimal per-step timer (same workload, same data).
- ``omni3-rK``, ``direct-rK`` (only with --rounds N, K = 2..N): the same two runs again, direct first in even
  rounds (omni3, direct, direct, omni3, ...), so that the overhead's margin includes how much a run's speed
  changes from one launch to the next (the same code ran 8% faster than direct in one session and 6% slower in
  the next, 1 GPU, 2026-11-27) and a drift over the session cancels.
- ``omni3-1gpu`` (only with --gpus 4): the same proxy on one GPU with the same micro batch, sequence length
  and micro batches per GPU per step, for the scaling efficiency.
- ``profile`` (only with --profile N): the direct driver on one GPU, its last N steps under torch.profiler
  (``step_profile.py``): GPU kernel time per step against wall time and against the unprofiled runs' median step,
  by kind of kernel and the top kernels, and the Python lines where the host waited for the GPU.

Numbers: tokens/s/GPU (the samples' tokens in the batches the forward step draws, padding left out, counted the
way omni3's metrics count them; ``padding_share`` says how much padding the model ran besides), TFLOP/s/GPU
(``omni3_sft.model_shape.FlopCounter`` over those tokens: language model, vision tower and projector),
MFU = TFLOP/s/GPU / measured peak, omni3's overhead = 1 - omni3 tokens/s / direct tokens/s
(``overhead_median_step``: the same from the median step times, which leave a late batch out) with its margin
(``overhead_margin``: two standard errors, from the per-step ratios when both runs drew the same batches, else from
both runs' step-to-step spread; with --rounds the mean over the rounds, its margin the larger of the rounds'
combined margins and two standard errors of the rounds' overheads; the overhead target counts as met or missed only
outside it, else "not shown"),
scaling efficiency = 4-GPU tokens/s/GPU / 1-GPU tokens/s/GPU, data wait = the share of the time rank 0's forward
step waited for the data loader (``--workers`` processes per rank). Writes ``summary.json`` and ``summary.md`` into
--out and, with --record, a Markdown + JSON record into that folder (ci/records/).

The pure pieces (proxy spec, stage YAML, arithmetic, rendering) are tested on the CPU in test_sft_bench.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from omni3_sft import model_shape, preflight, run_outputs, stage_config
from omni3_sft.settings import SftSettings
from omni3_shared import processes
from omni3_shared.publish import staging_path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DIRECT_DRIVER = HERE / "sft_direct.py"

RECIPE = "nemotron_omni_cord_v2_sft_config"  # the CORD recipe, fed the receipts dataset through Energon
PUBLISHED_LLM = model_shape.PUBLISHED_CONFIG["llm_config"]  # the published Nemotron 3 Nano shape (one source)
PUBLISHED_PROJECTOR = model_shape.PUBLISHED_CONFIG["projector_hidden_size"]
NANO_LAYER_TYPES = "ME*"  # Nemotron 3 Nano has Mamba, MoE and attention layers, no dense MLP
DEFAULT_LAYERS = "M*E"  # every Nano layer type once (a piece of the real pattern); see the note on disk below
# Why not more on one GPU: "MEM*E" trains 3.6B parameters (~73 GB estimated at micro batch 1) and its checkpoint
# with Adam states is ~50 GB, which with the proxy HF and Megatron copies overflows the 64 GB disk of one H100.
CARD_GB = 80.0
# Two loader workers per rank (the recipe's) kept the GPU waiting for receipts on the first H200 run (steps of
# 1.3-2.0 s); the bench wants the GPU's speed, so it gives the loader more processes and reports what wait is left.
DEFAULT_WORKERS = 8
# CORD's receipt scans are about 1,000-1,500 pixels a side, and Nemotron Omni's processor tiles them into 512x512 tiles
# of 256 tokens (up to 12 plus a thumbnail): about 1,500-3,000 image tokens a receipt. The proxy's processor keeps
# images up to this side whole (one token per 32x32 pixels), so CORD-sized synthetic receipts (omni3-prep synth
# --receipt-width 1536) give each sample about 1,500 image tokens, as real ones do. 512 was the first bench's size.
DEFAULT_IMAGE_SIDE = 1536
# The proxy's router starts random, and at the recipe's learning rate training drifts it toward uneven expert loads:
# step times rose by 10-30% within a 20-iteration run (1 and 4 GPUs, 2026-11-27), a drift the real checkpoint's
# trained router does not have and that made the two runs' steps too noisy to compare. At this learning rate every
# step still runs the full forward, backward and Adam update, but the weights stay where they were built, so the
# step time depends on the batch alone and omni3's and the direct run's steps pair by batch (overhead_margin).
DEFAULT_LR = 1e-9

TARGET_MFU = 0.35  # 1-GPU proxy
TARGET_OVERHEAD = 0.02
TARGET_SCALING = 0.85

PROFILE_SITES_SHOWN = 8  # of the sync sites, in summary.md (profile/profile.md has them all)

MATMUL_N = 8192
MATMUL_WARMUP = 20
MATMUL_ITERS = 100
MATMUL_REPEATS = 5

ROUND_SUFFIX = re.compile(r"-r\d+$")  # "omni3-r2": the second round's omni3 run (--rounds)
GOOD_STATUSES = ("ok", "stopped", "reused")  # a phase that did its work ("stopped": once it had, see run_phase)
PHASE_POLL_SECONDS = 2.0  # how often a running phase is checked for its end, its budget and its last record

# Wall-clock budget of each phase in seconds (a phase over budget is killed and reported as failed). On 4 H100s
# (2026-11-27) a cold Triton cache made omni3's first EP4 iteration take 235 s and the phase ran past 480 s.
BUDGETS = {"peak": 120, "build": 300, "import": 360, "omni3": 600, "direct": 600, "omni3-1gpu": 600, "profile": 480}


def log(message: str) -> None:
    print(f"[bench-sft {datetime.now(timezone.utc).strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The proxy model (pure)


def check_layers(layers: str) -> str:
    """``layers`` if it is a usable proxy pattern: Nemotron 3 Nano layer types only, at least one MoE layer."""
    if not layers or set(layers) - set(NANO_LAYER_TYPES):
        raise ValueError(f"--layers {layers!r}: use M (Mamba), E (MoE) and * (attention), e.g. {DEFAULT_LAYERS}")
    if "E" not in layers:
        raise ValueError(f"--layers {layers!r}: the proxy needs at least one MoE layer (E)")
    return layers


def proxy_spec_fields(layers: str, seq_length: int, image_side: int = DEFAULT_IMAGE_SIDE) -> dict[str, Any]:
    """TinyOmniSpec fields of the proxy: the published Nemotron 3 Nano LLM shape with the layers of ``layers``.

    The sound encoder keeps the tiny spec's size: the receipts data has no audio, so it never runs.
    """
    return {
        "hybrid_override_pattern": check_layers(layers),
        "hidden_size": PUBLISHED_LLM["hidden_size"],
        "vocab_size": PUBLISHED_LLM["vocab_size"],
        "num_attention_heads": PUBLISHED_LLM["num_attention_heads"],
        "num_key_value_heads": PUBLISHED_LLM["num_key_value_heads"],
        "head_dim": PUBLISHED_LLM["head_dim"],
        "mamba_num_heads": PUBLISHED_LLM["mamba_num_heads"],
        "mamba_head_dim": PUBLISHED_LLM["mamba_head_dim"],
        "n_groups": PUBLISHED_LLM["n_groups"],
        "ssm_state_size": PUBLISHED_LLM["ssm_state_size"],
        "n_routed_experts": PUBLISHED_LLM["n_routed_experts"],
        "num_experts_per_tok": PUBLISHED_LLM["num_experts_per_tok"],
        "moe_intermediate_size": PUBLISHED_LLM["moe_intermediate_size"],
        "moe_shared_expert_intermediate_size": PUBLISHED_LLM["moe_shared_expert_intermediate_size"],
        "max_position_embeddings": seq_length,
        "projector_hidden_size": PUBLISHED_PROJECTOR,
        "image_max_side": image_side,
    }


def proxy_spec(layers: str, seq_length: int, image_side: int = DEFAULT_IMAGE_SIDE) -> Any:
    """The builder's TinyOmniSpec of the proxy (imports omni3_import, hence torch and transformers)."""
    from omni3_import.tiny_model.spec import TinyOmniSpec

    return TinyOmniSpec(**proxy_spec_fields(layers, seq_length, image_side))


def proxy_shape(layers: str, seq_length: int) -> model_shape.OmniShape:
    """The shape omni3-sft will read from the proxy's config.json."""
    spec = proxy_spec(layers, seq_length)
    return model_shape.parse_config(spec.config("configuration.Proxy"), f"proxy {layers}")


def layers_slug(layers: str) -> str:
    """A folder-name-safe form of the pattern ('*' is awkward in paths)."""
    return layers.replace("*", "A")


# ---------------------------------------------------------------------------------------------------------------
# The workload (pure)


@dataclass(frozen=True)
class Workload:
    layers: str
    gpus: int
    seq_length: int
    micro_batch: int
    micro_batches: int  # micro batches per GPU per step (gradient accumulation)
    iters: int
    warmup: int
    workers: int = DEFAULT_WORKERS  # data loader processes per rank
    image_side: int = DEFAULT_IMAGE_SIDE  # the proxy processor's longest image side (the data's images up to it)
    lr: float = DEFAULT_LR  # optimizer.lr (min_lr 0)

    @property
    def expert_parallel(self) -> int:
        return self.gpus  # EP over every GPU, TP1: each GPU holds 1/gpus of the experts

    @property
    def global_batch(self) -> int:
        # Data-parallel size = gpus at TP1/PP1/CP1: the per-GPU work is the same whatever the GPU count.
        return self.micro_batch * self.micro_batches * self.gpus

    def on(self, gpus: int) -> Workload:
        return replace(self, gpus=gpus)


def stage_document(dataset: Path, megatron_checkpoint: Path) -> dict[str, Any]:
    """The proxy stage config: full language-model SFT (Adam) of the CORD recipe on the Energon receipts.

    Vision stays frozen (the recipe's default; the tower is the bridge's fixed RADIO, not part of the proxy);
    the projectors train. Run-specific fields come as overrides (``overrides``), the same for both sides.
    """
    return {
        "recipe": RECIPE,
        "settings": {"trust_remote_code": True},
        "dataset": {"path": str(dataset), "format": "energon"},
        "model": {
            "tensor_model_parallel_size": 1,
            "expert_model_parallel_size": 1,
            "expert_tensor_parallel_size": 1,
            "freeze_language_model": False,
            "freeze_vision_model": True,
            "freeze_vision_projection": False,
            "freeze_sound_encoder": True,
            "freeze_sound_projection": False,
        },
        "train": {"train_iters": 10, "global_batch_size": 1, "micro_batch_size": 1, "log_interval": 1},
        "checkpoint": {"pretrained_checkpoint": str(megatron_checkpoint)},
    }


def stage_yaml(dataset: Path, megatron_checkpoint: Path) -> str:
    header = "# bench_proxy: full LLM SFT of the Nemotron 3 Nano layer-shape proxy (written by tests/bench/sft.py)\n"
    return header + yaml.safe_dump(stage_document(dataset, megatron_checkpoint), sort_keys=False)


def overrides(workload: Workload) -> list[str]:
    """``section.field=value`` overrides of one run; omni3 and the direct driver get the same list."""
    return [
        f"model.expert_model_parallel_size={workload.expert_parallel}",
        f"model.seq_length={workload.seq_length}",
        f"train.train_iters={workload.iters}",
        f"train.global_batch_size={workload.global_batch}",
        f"train.micro_batch_size={workload.micro_batch}",
        "train.log_interval=1",  # one metrics record per iteration, so warm-up iterations can be left out
        f"dataset.num_workers={workload.workers}",
        f"optimizer.lr={workload.lr}",
        "optimizer.min_lr=0",
    ]


def resolve(document: dict[str, Any], run_overrides: Sequence[str], settings: SftSettings) -> dict[str, Any]:
    """The resolved stage config exactly as omni3-sft resolves it (validation included)."""
    parsed = stage_config.validate(stage_config.apply_overrides(document, tuple(run_overrides)), "bench proxy")
    return stage_config.interpolate(parsed, settings)


def memory_estimate(workload: Workload, shape: model_shape.OmniShape, document: dict[str, Any]) -> dict[str, Any]:
    """omni3-sft's own per-GPU memory estimate of the run (rough; the preflight's assumptions)."""
    settings = SftSettings(run_dir=Path("/tmp/bench-estimate"), trust_remote_code=True)
    resolved = resolve(document, overrides(workload), settings)
    return preflight.estimate_memory(resolved, shape, workload.gpus, CARD_GB).as_dict()


# ---------------------------------------------------------------------------------------------------------------
# Arithmetic (pure)


@dataclass(frozen=True)
class Throughput:
    steps: int
    tokens: int
    seconds: float
    flops: float
    gpus: int
    sequences: int = 0
    positions: int | None = None  # tokens and the padding around them (None: not recorded)
    data_wait_seconds: float | None = None  # rank 0's forward step waiting for the loader (None: not recorded)
    step_seconds: tuple[float, ...] = ()  # each measured step's wall time, in order
    step_tokens: tuple[int, ...] = ()  # each measured step's tokens, in order (which batches it drew)

    @property
    def median_step_seconds(self) -> float:
        return statistics.median(self.step_seconds) if self.step_seconds else math.nan

    @property
    def step_relative_error(self) -> float:
        """Standard error of the mean step time, relative to it (steps taken as independent samples)."""
        if len(self.step_seconds) < 2:
            return math.nan
        mean = statistics.fmean(self.step_seconds)
        return statistics.stdev(self.step_seconds) / math.sqrt(len(self.step_seconds)) / mean if mean > 0 else math.nan

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens / self.seconds / self.gpus if self.seconds > 0 and self.gpus > 0 else math.nan

    @property
    def tflops_per_gpu(self) -> float:
        return model_shape.tflops_per_gpu(self.flops, self.seconds, self.gpus)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 4),
            "gpus": self.gpus,
            "seconds_per_step": _round(self.seconds_per_step, 4),
            "median_seconds_per_step": _round(self.median_step_seconds, 4),
            "tokens_per_s_per_gpu": _round(self.tokens_per_s_per_gpu, 1),
            "tflops_per_gpu": _round(self.tflops_per_gpu, 2),
            "tokens_per_sequence": _round(self.tokens / self.sequences, 1) if self.sequences else None,
            "padding_share": _round(self.padding_share, 4),
            "data_wait_share": _round(self.data_wait_share, 4),
        }

    @property
    def padding_share(self) -> float:
        """Of the positions the model ran, the padding (Megatron-Bridge pads to model.seq_length at EP > 1)."""
        share = run_outputs.padding_share(self.tokens, self.positions)
        return math.nan if share is None else share

    @property
    def data_wait_share(self) -> float:
        if self.data_wait_seconds is None or self.seconds <= 0:
            return math.nan
        return self.data_wait_seconds / self.seconds


def _round(value: float, digits: int) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def throughput(records: Sequence[Mapping[str, Any]], warmup: int) -> Throughput:
    """Totals over the per-iteration records after the first ``warmup`` iterations.

    Records are omni3's StepMetrics lines or the direct driver's (same keys). Raises ValueError when nothing
    is left to measure, so a run too short for its warm-up is never reported as a number.
    """
    measured = [r for r in records if int(r["iteration"]) > warmup]
    if not measured:
        raise ValueError(f"no iterations after the {warmup} warm-up iterations ({len(records)} records)")
    gpus = {int(r["gpus"]) for r in measured}
    if len(gpus) != 1:
        raise ValueError(f"records disagree on the GPU count: {sorted(gpus)}")
    return Throughput(
        steps=len(measured),
        tokens=sum(int(r["tokens"]) for r in measured),
        seconds=sum(float(r["seconds"]) for r in measured),
        flops=sum(float(r["flops"]) for r in measured),
        gpus=gpus.pop(),
        sequences=sum(int(r.get("sequences", 0)) for r in measured),
        positions=sum(int(r["positions"]) for r in measured) if all(r.get("positions") for r in measured) else None,
        step_seconds=tuple(float(r["seconds"]) for r in measured),
        step_tokens=tuple(int(r["tokens"]) for r in measured),
        data_wait_seconds=(
            sum(float(r["data_wait_seconds"]) for r in measured)
            if all(r.get("data_wait_seconds") is not None for r in measured)
            else None
        ),
    )


def matmul_tflops(n: int, seconds_per_matmul: float) -> float:
    """TFLOP/s of an n x n x n matrix product (2 n^3 FLOPs)."""
    return 2 * n**3 / seconds_per_matmul / 1e12


def mfu(tflops_per_gpu: float, peak_tflops: float) -> float:
    return tflops_per_gpu / peak_tflops if peak_tflops > 0 else math.nan


def overhead(omni3_tokens_per_s: float, direct_tokens_per_s: float) -> float:
    """omni3's cost over the direct entry point: 1 - omni3 / direct (negative: omni3 was faster)."""
    return 1 - omni3_tokens_per_s / direct_tokens_per_s if direct_tokens_per_s > 0 else math.nan


def paired(omni3: Throughput, direct: Throughput) -> bool:
    """Whether the two runs' measured steps drew the same batches: the same tokens at every step, in order."""
    return bool(omni3.step_tokens) and omni3.step_tokens == direct.step_tokens


def overhead_margin(omni3: Throughput, direct: Throughput) -> float:
    """Two standard errors of ``overhead`` (about 95%).

    overhead = 1 - r with r the ratio of the two throughputs. When the runs drew the same batches (``paired``), r's
    error is that of the mean of the per-step ratios direct / omni3 step time, from their spread: the batches' own
    spread cancels. Else the two runs' relative errors of their mean step time add in quadrature.
    Pairing only helps where a step's time follows its batch: at the recipe's learning rate the proxy's random
    router drifted during the run and the pairs spread by 6% (4 GPUs, 2026-11-27), hence ``DEFAULT_LR``.
    """
    if paired(omni3, direct) and len(omni3.step_seconds) >= 2:
        ratios = [d / o for o, d in zip(omni3.step_seconds, direct.step_seconds, strict=True)]
        return 2 * statistics.stdev(ratios) / math.sqrt(len(ratios))
    ratio = 1 - overhead(omni3.tokens_per_s_per_gpu, direct.tokens_per_s_per_gpu)
    return 2 * ratio * math.hypot(omni3.step_relative_error, direct.step_relative_error)


def steps_to_decide(value: float, margin: float, steps: int, goal: float) -> int | None:
    """Measured steps per run (or rounds, given a margin from rounds) that would shrink ``margin``, which falls as
    1/sqrt(their number), to the distance between ``value`` and ``goal``; None when the value sits on the goal."""
    distance = abs(goal - value)
    if distance <= 0 or not math.isfinite(margin) or steps <= 0:
        return None
    return max(steps, math.ceil(steps * (margin / distance) ** 2))


def round_runs(rounds: int) -> list[str]:
    """The omni3 and direct runs of ``rounds`` rounds in the order they run: direct first in even rounds."""
    order: list[str] = []
    for number in range(1, rounds + 1):
        suffix = "" if number == 1 else f"-r{number}"
        pair = [f"omni3{suffix}", f"direct{suffix}"]
        order += pair if number % 2 else pair[::-1]
    return order


def budget_name(run: str) -> str:
    """The BUDGETS entry of a phase: a later round's run has its first round's budget."""
    return ROUND_SUFFIX.sub("", run)


def round_pairs(runs: Mapping[str, Throughput | None]) -> list[tuple[Throughput, Throughput]]:
    """(omni3, direct) of every round in which both runs produced numbers."""
    pairs = []
    for name, omni3 in runs.items():
        if budget_name(name) == "omni3" and omni3 is not None:
            direct = runs.get("direct" + name.removeprefix("omni3"))
            if direct is not None:
                pairs.append((omni3, direct))
    return pairs


def overhead_of_one_round(omni3: Throughput, direct: Throughput) -> dict[str, Any]:
    """The overhead of one omni3 run against one direct run, its margin from their steps, and the steps per run
    that would decide the target when that margin straddles it."""
    found: dict[str, Any] = {
        "overhead": _round(overhead(omni3.tokens_per_s_per_gpu, direct.tokens_per_s_per_gpu), 4),
        "overhead_margin": _round(overhead_margin(omni3, direct), 4),
    }
    if found["overhead"] is not None and found["overhead_margin"] is not None:
        needed = steps_to_decide(found["overhead"], found["overhead_margin"], omni3.steps, TARGET_OVERHEAD)
        if needed is not None:
            found["overhead_steps_to_decide"] = needed
    return found


def overhead_over_rounds(pairs: Sequence[tuple[Throughput, Throughput]]) -> dict[str, Any]:
    """The overhead as the mean of the rounds' overheads, with a margin that covers both kinds of noise.

    Within a round: each pair's ``overhead_margin``, combined (they fall as 1/sqrt(rounds)). Between rounds: two
    standard errors of the rounds' overheads, which carry what pairing by batch cannot see, that one launch of a
    process runs a few percent faster or slower than the next. The margin is the larger of the two.
    """
    values = [overhead(o.tokens_per_s_per_gpu, d.tokens_per_s_per_gpu) for o, d in pairs]
    within = math.sqrt(sum(overhead_margin(o, d) ** 2 for o, d in pairs)) / len(pairs)
    between = 2 * statistics.stdev(values) / math.sqrt(len(values))
    value = statistics.fmean(values)
    found: dict[str, Any] = {
        "overhead": _round(value, 4),
        "overhead_margin": _round(max(within, between), 4),
        "overhead_rounds": [_round(v, 4) for v in values],
        "overhead_margin_within_rounds": _round(within, 4),
        "overhead_margin_between_rounds": _round(between, 4),
    }
    if between > within:
        needed = steps_to_decide(value, between, len(values), TARGET_OVERHEAD)
        if needed is not None:
            found["overhead_rounds_to_decide"] = needed
    return found


def launch_spread(runs: Sequence[Throughput]) -> float:
    """How far the fastest of several launches of the same run is ahead of the slowest (0.05: 5% faster)."""
    speeds = [run.tokens_per_s_per_gpu for run in runs]
    return max(speeds) / min(speeds) - 1 if len(speeds) > 1 and min(speeds) > 0 else math.nan


def scaling_efficiency(multi_tokens_per_s_per_gpu: float, single_tokens_per_s_per_gpu: float) -> float:
    if single_tokens_per_s_per_gpu <= 0:
        return math.nan
    return multi_tokens_per_s_per_gpu / single_tokens_per_s_per_gpu


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    goal: str  # ">= 0.35", "< 0.02"
    margin: float | None = None  # the value's uncertainty (two standard errors), where it has one

    @property
    def met(self) -> bool | None:
        """True or False when the value is on one side of the goal by more than its margin; None: not measured,
        or the margin straddles the goal (the run was too short to tell)."""
        if self.value is None or not math.isfinite(self.value):
            return None
        op, _, number = self.goal.partition(" ")
        limit = float(number)
        margin = self.margin if self.margin is not None and math.isfinite(self.margin) else 0.0
        low, high = self.value - margin, self.value + margin
        if op == ">=":
            return True if low >= limit else False if high < limit else None
        return True if high < limit else False if low >= limit else None


def targets(results: Mapping[str, Any], gpus: int) -> list[Target]:
    """The issue's targets against what was measured (None: not measured)."""
    found = [
        Target(
            "omni3 overhead vs direct", results.get("overhead"), f"< {TARGET_OVERHEAD}", results.get("overhead_margin")
        )
    ]
    if gpus == 1:
        found.append(Target("MFU (1-GPU proxy, omni3)", results.get("mfu"), f">= {TARGET_MFU}"))
    else:
        found.append(Target("scaling efficiency (4 GPU EP4 vs 1 GPU)", results.get("scaling"), f">= {TARGET_SCALING}"))
        found.append(Target("MFU (1-GPU proxy, omni3)", results.get("mfu_1gpu"), f">= {TARGET_MFU}"))
    return found


def derive(runs: Mapping[str, Throughput | None], peak_tflops: float | None) -> dict[str, Any]:
    """MFU, overhead and scaling from whichever runs produced numbers."""
    omni3, direct, single = runs.get("omni3"), runs.get("direct"), runs.get("omni3-1gpu")
    results: dict[str, Any] = {}
    if omni3 and peak_tflops:
        results["mfu"] = _round(mfu(omni3.tflops_per_gpu, peak_tflops), 4)
    if direct and peak_tflops:
        results["mfu_direct"] = _round(mfu(direct.tflops_per_gpu, peak_tflops), 4)
    pairs = round_pairs(runs)
    if pairs:
        results.update(overhead_over_rounds(pairs) if len(pairs) > 1 else overhead_of_one_round(*pairs[0]))
        results["overhead_paired"] = all(paired(o, d) for o, d in pairs)
        # Both runs draw the same batches in the same order: the median step time is the same comparison with
        # the slow outliers (a late batch, a hiccup) left out.
        results["overhead_median_step"] = _round(
            statistics.fmean(overhead(1 / o.median_step_seconds, 1 / d.median_step_seconds) for o, d in pairs), 4
        )
    if len(pairs) > 1:
        results["launch_spread_omni3"] = _round(launch_spread([o for o, _ in pairs]), 4)
        results["launch_spread_direct"] = _round(launch_spread([d for _, d in pairs]), 4)
    if single and peak_tflops:
        results["mfu_1gpu"] = _round(mfu(single.tflops_per_gpu, peak_tflops), 4)
    if omni3 and single:
        results["scaling"] = _round(scaling_efficiency(omni3.tokens_per_s_per_gpu, single.tokens_per_s_per_gpu), 4)
    return results


def busy_share(profile: Mapping[str, Any], runs: Mapping[str, Throughput | None], gpus: int) -> float | None:
    """GPU kernel time of a profiled step over the median step of the same 1-GPU workload run unprofiled (the
    profiler's Python-frame recording slows the host, so its own wall time overstates the idle GPU)."""
    reference = runs.get("omni3-1gpu") if gpus > 1 else runs.get("direct")
    kernel_seconds = profile.get("kernel_seconds_per_step")
    if reference is None or not kernel_seconds or not reference.median_step_seconds > 0:
        return None
    return _round(kernel_seconds / reference.median_step_seconds, 4)


# ---------------------------------------------------------------------------------------------------------------
# Phases


@dataclass
class Phase:
    name: str
    command: list[str]
    log: str
    budget_s: int
    status: str = "not run"  # ok, stopped, failed, timeout, skipped, reused
    returncode: int | None = None
    seconds: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in GOOD_STATUSES


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_phase(phase: Phase, env: Mapping[str, str], cwd: Path, finished: Callable[[], bool] | None = None) -> Phase:
    """Run ``phase.command`` with its output in ``phase.log``; past its budget it ends, with every process it started.

    ``finished``: polled while it runs; once true the work that is measured is done, and the phase's processes are
    killed at once (status "stopped") rather than left to save its final checkpoint (two minutes of a 2.88B-parameter
    full-SFT proxy with its Adam states, on 4 H100s, 2026-11-27).
    """
    log_path = Path(phase.log)
    log(f"phase {phase.name}: start (budget {phase.budget_s} s, log {log_path})")
    started = time.monotonic()
    with log_path.open("w") as out:
        out.write(f"# {datetime.now(timezone.utc).isoformat()} {shlex.join(phase.command)}\n")
        out.flush()
        # Own session: its SIGTERM goes to torchrun, which passes it on (omni3_shared.processes).
        process = subprocess.Popen(
            phase.command, stdout=out, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True
        )
        while True:
            try:
                phase.returncode = process.wait(timeout=PHASE_POLL_SECONDS)
                phase.status = "ok" if phase.returncode == 0 else "failed"
                break
            except subprocess.TimeoutExpired:
                if finished is not None and finished():
                    phase.status = "stopped"
                    _end_phase(process, processes.AT_ONCE)  # SIGTERM would make omni3-sft save first
                elif time.monotonic() - started >= phase.budget_s:
                    phase.status = "timeout"
                    _end_phase(process, processes.GENTLE)
                else:
                    continue
                phase.returncode = process.returncode
                break
        out.write(f"\n# {datetime.now(timezone.utc).isoformat()} exit {phase.returncode} ({phase.status})\n")
    phase.seconds = round(time.monotonic() - started, 1)
    if phase.status == "stopped":
        phase.detail = (
            "stopped once its last measured iteration was recorded (its final checkpoint save is not measured)"
        )
    elif not phase.ok:
        phase.detail = f"exit {phase.returncode}; last lines:\n{tail(log_path)}"
    log(f"phase {phase.name}: {phase.status} in {phase.seconds} s (exit {phase.returncode})")
    if not phase.ok:
        print(tail(log_path), flush=True)
    return phase


def _end_phase(process: subprocess.Popen, steps: Sequence[tuple[int, int]]) -> None:
    """The phase and every process it started (torchrun's workers too) end before the next phase starts."""
    if survivors := processes.end_process_tree(process, steps):
        log(f"processes {survivors} outlived SIGKILL; the next phase may share the GPUs with them")


def recorded_through(metrics: Path, iteration: int) -> Callable[[], bool]:
    """True once ``metrics`` holds a record of ``iteration`` or later."""
    return lambda: any(record["iteration"] >= iteration for record in read_records(metrics))


def skip(phase: Phase, reason: str) -> Phase:
    phase.status, phase.detail, phase.log = "skipped", reason, ""
    log(f"phase {phase.name}: skipped ({reason})")
    return phase


def torchrun(nproc: int, *args: str) -> list[str]:
    port = str(29500 + os.getpid() % 400)
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", port, *args]


# ---------------------------------------------------------------------------------------------------------------
# In-process work of the build and peak phases (run as ``sft.py _build`` / ``sft.py _peak`` subprocesses)


def build_main(hf_dir: Path, layers: str, seq_length: int, image_side: int) -> None:
    from omni3_import.tiny_model import build_tiny_omni

    log(f"building the proxy {layers} into {hf_dir} (images up to {image_side} pixels a side)")
    record = build_tiny_omni(hf_dir, spec=proxy_spec(layers, seq_length, image_side), vision="omit")
    log(f"built: {record['num_tensors']} tensors in {len(record['shards'])} shard(s)")


def peak_main(out: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    a = torch.randn(MATMUL_N, MATMUL_N, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(MATMUL_N, MATMUL_N, dtype=torch.bfloat16, device="cuda")
    c = torch.empty_like(a)
    for _ in range(MATMUL_WARMUP):
        torch.matmul(a, b, out=c)
    torch.cuda.synchronize()
    rates = []
    for _ in range(MATMUL_REPEATS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(MATMUL_ITERS):
            torch.matmul(a, b, out=c)
        end.record()
        end.synchronize()
        rates.append(matmul_tflops(MATMUL_N, start.elapsed_time(end) / 1e3 / MATMUL_ITERS))
    result = {
        "device": torch.cuda.get_device_name(0),
        "n": MATMUL_N,
        "iters": MATMUL_ITERS,
        "tflops_runs": [round(r, 1) for r in rates],
        "peak_tflops": round(max(rates), 1),
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"bf16 matmul peak {result['peak_tflops']} TFLOP/s on {result['device']} (runs {result['tflops_runs']})")


# ---------------------------------------------------------------------------------------------------------------
# Summary and rendering (pure)


def card_list(cards: Sequence[str]) -> str:
    """nvidia-smi's lines, one per GPU, as "4 x NVIDIA H200, ..." (a mixed machine lists each kind)."""
    return "; ".join(card if n == 1 else f"{n} x {card}" for card, n in Counter(cards).items())


def machine() -> dict[str, Any]:
    """The card(s) as nvidia-smi names them, and the host."""
    info: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count()}
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["gpus"] = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["gpus"] = [f"nvidia-smi unavailable ({exc.__class__.__name__})"]
    return info


def notes(workload: Workload, rounds: int = 1) -> list[str]:
    notes = [
        "tokens/s counts the samples' tokens in the batches the forward step draws (the collate's attention mask), "
        "as omni3's metrics do; padding is left out of tokens and FLOPs and shown as its share of the positions the "
        "model ran: Megatron-Bridge pads a micro batch to its longest sample rounded up to 128, and every sequence "
        f"to model.seq_length ({workload.seq_length}) when EP or PP is above 1 (ConfigContainer.validate sets "
        "dataset.pad_to_max_length)",
        "each image occupies one input_ids position but expands to its image tokens inside the model (one per 32x32 "
        f"pixels; the proxy's processor keeps images up to {workload.image_side} pixels a side whole); tokens "
        "count the expanded sequence",
        "TFLOP/s counts model FLOPs (omni3_sft.model_shape.FlopCounter): the language model at 3 x forward, the "
        "frozen RADIO tower at 1 x forward over each image's patches, the trained projector at 3 x forward",
        f"data wait: the share of the measured time rank 0's forward step waited for the data loader "
        f"({workload.workers} workers per rank, dataset.num_workers)",
        "proxy: the published Nemotron 3 Nano layer shapes with only the --layers layers; vision tensors omitted "
        "(the bridge's random RADIO ViT-H init); vision frozen, language model and projectors trained with Adam",
        "omni3 and direct run the same stage YAML and overrides, so the same ConfigContainer fields, data and "
        "iterations; the direct driver adds one token counter per micro batch and a per-step timer",
        f"learning rate {workload.lr:g} (min 0) in every run: each step runs the full forward, backward and Adam "
        "update, but the weights, and with them the random router's expert loads, stay as built, so a step's time "
        "follows its batch and the overhead's margin comes from the two runs' step pairs (same batches, same order)",
        "a training phase is stopped (SIGKILL) once its last iteration is recorded: its final checkpoint save "
        "(about 2 minutes for this proxy with its Adam states) is not measured; --keep-runs lets it finish",
    ]
    if rounds > 1:
        notes.append(
            f"rounds: omni3 and direct ran {rounds} times each, alternating (omni3, direct, direct, omni3, ...); the "
            "overhead is the mean of the rounds' overheads, its margin the larger of their combined step-pair margins "
            "and two standard errors of the rounds' overheads (what one launch's speed differs from the next); "
            "launch_spread: the fastest launch of a run over its slowest, less 1"
        )
    if workload.gpus > 1:
        notes.append(
            f"scaling: the 1-GPU baseline runs the same proxy with the same micro batch ({workload.micro_batch}), "
            f"sequence length and {workload.micro_batches} micro batches per GPU per step; the {workload.gpus}-GPU "
            f"run has EP{workload.gpus} x DP{workload.gpus} and a {workload.gpus}x global batch"
        )
    return notes


def build_summary(
    workload: Workload,
    command: str,
    machine_info: Mapping[str, Any],
    phases: Sequence[Phase],
    runs: Mapping[str, Throughput | None],
    peak: Mapping[str, Any] | None,
    proxy: Mapping[str, Any],
) -> dict[str, Any]:
    peak_tflops = float(peak["peak_tflops"]) if peak else None
    results = derive(runs, peak_tflops)
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": dict(machine_info),
        "command": command,
        "workload": asdict(workload) | {"global_batch": workload.global_batch, "ep": workload.expert_parallel},
        "proxy": dict(proxy),
        "peak": dict(peak) if peak else None,
        "phases": [asdict(phase) for phase in phases],
        "runs": {name: run.as_dict() if run else None for name, run in runs.items()},
        "results": results,
        "targets": [
            {"name": t.name, "value": t.value, "margin": t.margin, "goal": t.goal, "met": t.met}
            for t in targets(results, workload.gpus)
        ],
        "notes": notes(workload, len([name for name in runs if budget_name(name) == "omni3"])),
    }


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if percent:
        return f"{100 * float(value):.1f}%"
    return f"{value:,.1f}" if isinstance(value, float) else str(value)


def _derived(value: Any) -> str:
    """A derived number: a share as a percentage, a count as it is, a list of shares each as a percentage."""
    if isinstance(value, list):
        return "[" + ", ".join(_derived(item) for item in value) + "]"
    return _fmt(value, percent=isinstance(value, float))


def _log_name(path: str) -> str:
    return f"`{Path(path).name}`" if path else "-"


def overhead_basis(results: Mapping[str, Any]) -> str:
    """What the overhead's value and margin rest on, for its row of the targets table."""
    rounds = results.get("overhead_rounds")
    paired_steps = "steps paired by batch" if results.get("overhead_paired") else ""
    if rounds:
        each = ", ".join(_fmt(value, percent=True) for value in rounds)
        return f" ({len(rounds)} rounds: {each}{'; ' + paired_steps if paired_steps else ''})"
    return f" ({paired_steps})" if paired_steps else ""


def what_would_decide(results: Mapping[str, Any]) -> str:
    """The rounds, or else the measured steps per run, that would shrink the overhead's margin off its target."""
    if rounds := results.get("overhead_rounds_to_decide"):
        return f"about {rounds} rounds"
    if steps := results.get("overhead_steps_to_decide"):
        return f"about {steps} measured steps per run"
    return "more measured steps"


def render_markdown(summary: Mapping[str, Any]) -> str:
    w, results = summary["workload"], summary["results"]
    gpus = card_list(summary["machine"].get("gpus") or []) or "unknown"
    peak = summary.get("peak") or {}
    lines = [
        f"# omni3-sft benchmark, {w['gpus']} GPU(s): {summary['date']}",
        "",
        f"- Machine: {gpus} (host {summary['machine'].get('host')}, {summary['machine'].get('cpus')} CPUs)",
        f"- Command: `{summary['command']}`",
        f"- Proxy: layers `{w['layers']}` ({summary['proxy'].get('params', 'n/a')} parameters), "
        f"seq_length {w['seq_length']}, micro batch {w['micro_batch']}, {w['micro_batches']} micro batches per "
        f"GPU per step (global batch {w['global_batch']}), EP{w['ep']} TP1, {w['iters']} iterations, "
        f"first {w['warmup']} not measured",
        f"- bf16 matmul peak ({peak.get('n', MATMUL_N)}^3, CUDA events): {_fmt(peak.get('peak_tflops'))} TFLOP/s",
        "",
        "| run | GPUs | s/step (mean, median) | tokens/s/GPU | TFLOP/s/GPU | tokens/sequence | padding | data wait |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, run in summary["runs"].items():
        if run is None:
            lines.append(f"| {name} | | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        lines.append(
            f"| {name} | {run['gpus']} | {_fmt(run['seconds_per_step'])}, {_fmt(run.get('median_seconds_per_step'))} | "
            f"{_fmt(run['tokens_per_s_per_gpu'])} | "
            f"{_fmt(run['tflops_per_gpu'])} | {_fmt(run.get('tokens_per_sequence'))} | "
            f"{_fmt(run.get('padding_share'), percent=True)} | {_fmt(run.get('data_wait_share'), percent=True)} |"
        )
    lines += ["", "| measure | value | target | met |", "|---|---|---|---|"]
    for target in summary["targets"]:
        value, margin = _fmt(target["value"], percent=True), target.get("margin")
        if margin is not None and target["value"] is not None:
            value += f" ± {_fmt(margin, percent=True)}"
            if target["name"].startswith("omni3 overhead"):
                value += overhead_basis(results)
        met = {True: "yes", False: "**no**", None: "not measured"}[target["met"]]
        if target["met"] is None and margin is not None and target["value"] is not None:
            met = f"**not shown** (the margin straddles the target: {what_would_decide(results)} would decide it)"
        lines.append(f"| {target['name']} | {value} | {target['goal']} | {met} |")
    extra = {k: v for k, v in results.items() if k not in {t["name"] for t in summary["targets"]}}
    if extra:
        lines += [
            "",
            "All derived numbers: " + ", ".join(f"{k} {_derived(v)}" for k, v in extra.items()),
        ]
    profile = summary.get("profile")
    if profile:
        lines += [
            "",
            f"Profile, 1 GPU, {profile['steps']} steps of the direct driver (`profile/profile.md`): "
            f"{profile['kernel_seconds_per_step']} s of GPU kernels per {profile['wall_seconds_per_step']} s step "
            f"({_fmt(profile['kernel_time_over_wall_time'], percent=True)}; "
            f"{_fmt(profile.get('kernel_time_over_unprofiled_step'), percent=True)} of the unprofiled 1-GPU run's "
            f"median step). The host waited for the GPU {_fmt(profile.get('sync_calls_per_step'))} times a step.",
            "",
            "| kernel kind | s/step | share |",
            "|---|---|---|",
        ]
        lines += [
            f"| {kind} | {v['seconds_per_step']} | {_fmt(v['share'], percent=True)} |"
            for kind, v in profile["kinds"].items()
        ]
        sites = profile.get("sync_sites") or []
        if sites:
            lines += ["", "| host waits at | operation | calls/step | host ms/step |", "|---|---|---|---|"]
            lines += [
                f"| `{site['where']}` | `{site['op']}` | {site['calls_per_step']} | {site['host_ms_per_step']} |"
                for site in sites[:PROFILE_SITES_SHOWN]
            ]
    lines += ["", "| phase | status | seconds | log |", "|---|---|---|---|"]
    for phase in summary["phases"]:
        lines.append(f"| {phase['name']} | {phase['status']} | {_fmt(phase['seconds'])} | {_log_name(phase['log'])} |")
    failed = [phase for phase in summary["phases"] if phase["status"] not in GOOD_STATUSES]
    for phase in failed:
        lines += ["", f"**{phase['name']}: {phase['status']}**", "", "```", phase["detail"] or "(no detail)", "```"]
    lines += ["", "Notes:", *[f"- {note}" for note in summary["notes"]], ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class Context:
    args: argparse.Namespace
    workload: Workload
    out: Path
    work: Path
    env: dict[str, str]
    phases: list[Phase] = field(default_factory=list)

    def phase(self, name: str, command: list[str]) -> Phase:
        budget = int(BUDGETS[budget_name(name)] * self.args.budget_scale)
        phase = Phase(name, command, str(self.out / f"{name}.log"), budget)
        self.phases.append(phase)
        return phase

    def stop_after_last_step(self, metrics: Path, iterations: int | None = None) -> Callable[[], bool] | None:
        """The stop condition of a training phase: its last iteration recorded in ``metrics`` (default: the
        workload's); none with --keep-runs, whose checkpoints are wanted."""
        if self.args.keep_runs:
            return None
        return recorded_through(metrics, iterations or self.workload.iters)


def bench_env(args: argparse.Namespace) -> dict[str, str]:
    paths = [REPO / "shared" / "src", *(REPO / "tools" / tool / "src" for tool in ("sft", "import", "prep"))]
    current = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*map(str, paths), *([current] if current else [])]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMNI3_VERIFY": "false",  # omni3-import: no logit check on the proxy (nothing is measured there)
        # omni3-sft keeps Triton's autotuning results; the direct driver must run the same kernels, so both
        # read one cache: the first run tunes, the later ones reuse its choices instead of tuning again.
        # TRITON_CACHE_DIR set here wins over omni3-sft's own default (under its storage root); one given to the
        # bench (ci/gpu/run-all.sh gives every step one) is kept.
        "TRITON_CACHE_AUTOTUNING": "1",
        "TRITON_CACHE_DIR": os.environ.get("TRITON_CACHE_DIR") or str(Path(args.work).absolute() / "triton-cache"),
    }


def read_records(path: Path) -> list[dict[str, Any]]:
    return run_outputs.read_metrics(path) if path.is_file() else []


def measure(name: str, metrics: Path, warmup: int) -> Throughput | None:
    records = read_records(metrics)
    try:
        result = throughput(records, warmup)
    except ValueError as exc:
        log(f"{name}: no throughput ({exc}; {metrics})")
        return None
    log(f"{name}: {result.tokens_per_s_per_gpu:,.0f} tokens/s/GPU, {result.tflops_per_gpu:.1f} TFLOP/s/GPU "
        f"over {result.steps} steps")  # fmt: skip
    return result


def log_disk(folder: Path) -> None:
    # A full-SFT checkpoint with Adam states is ~14 bytes per trained parameter; say early when the disk is short.
    usage = shutil.disk_usage(folder)
    log(f"disk at {folder}: {usage.free / 1e9:.0f} GB free of {usage.total / 1e9:.0f} GB")


def omni3_run(
    ctx: Context, name: str, workload: Workload, hf: Path, megatron: Path, yaml_path: Path
) -> Throughput | None:
    run_dir = ctx.work / "runs" / name
    log_disk(ctx.work)
    command = [
        *torchrun(workload.gpus, "-m", "omni3_sft"),
        "--config", str(yaml_path),
        "--hf-model", str(hf),
        "--megatron-checkpoint", str(megatron),
        "--run-dir", str(run_dir),
        "--trust-remote-code",
        "--force",
        *overrides(workload),
    ]  # fmt: skip
    # omni3-sft writes its metrics into the run's staging folder until it publishes the run.
    staging = staging_path(run_dir)
    phase = run_phase(
        ctx.phase(name, command), ctx.env, REPO, ctx.stop_after_last_step(staging / run_outputs.METRICS_FILE)
    )
    # The metrics are read from the published run, or from its staging folder when it was stopped or failed late.
    for folder in (run_dir, staging):
        if (folder / run_outputs.METRICS_FILE).is_file():
            shutil.copyfile(folder / run_outputs.METRICS_FILE, ctx.out / f"{name}-metrics.jsonl")
            for extra in (run_outputs.RUN_CONFIG_FILE, run_outputs.REPORT_FILE):
                if (folder / extra).is_file():
                    shutil.copyfile(folder / extra, ctx.out / f"{name}-{extra}")
            break
    if not ctx.args.keep_runs:  # a full-SFT checkpoint with Adam states is tens of GB
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    result = measure(name, ctx.out / f"{name}-metrics.jsonl", workload.warmup)
    if phase.ok and result is None:
        phase.status, phase.detail = "failed", "the run ended without measurable iterations (see its log)"
    return result


def direct_command(
    workload: Workload, hf: Path, megatron: Path, yaml_path: Path, run_dir: Path, metrics: Path, *extra: str
) -> list[str]:
    """torchrun of the direct driver on ``workload`` (its GPUs and overrides), ``extra`` arguments before those."""
    return [
        *torchrun(workload.gpus, str(DIRECT_DRIVER)),
        "--config", str(yaml_path),
        "--hf-model", str(hf),
        "--megatron-checkpoint", str(megatron),
        "--run-dir", str(run_dir),
        "--metrics", str(metrics),
        *extra,
        *overrides(workload),
    ]  # fmt: skip


def direct_run(
    ctx: Context, name: str, workload: Workload, hf: Path, megatron: Path, yaml_path: Path
) -> Throughput | None:
    run_dir = ctx.work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # no resume from an earlier bench: every step is measured fresh
    metrics = ctx.out / f"{name}-metrics.jsonl"
    metrics.unlink(missing_ok=True)
    log_disk(ctx.work)
    command = direct_command(workload, hf, megatron, yaml_path, run_dir, metrics)
    phase = run_phase(ctx.phase(name, command), ctx.env, REPO, ctx.stop_after_last_step(metrics))
    if not ctx.args.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    result = measure(name, metrics, workload.warmup)
    if phase.ok and result is None:
        phase.status, phase.detail = "failed", "the run ended without measurable iterations (see its log)"
    return result


def profile_run(ctx: Context, workload: Workload, hf: Path, megatron: Path, yaml_path: Path) -> dict[str, Any] | None:
    """The direct driver on one GPU, the last ``--profile`` of warm-up + that many iterations under torch.profiler."""
    steps = ctx.args.profile
    profiled = replace(workload.on(1), iters=workload.warmup + steps)
    run_dir, folder = ctx.work / "runs" / "profile", ctx.out / "profile"
    shutil.rmtree(run_dir, ignore_errors=True)
    metrics = ctx.out / "profile-metrics.jsonl"
    command = direct_command(
        profiled, hf, megatron, yaml_path, run_dir, metrics, "--profile-steps", str(steps), "--profile-out", str(folder)
    )
    # The driver writes the profile as its last profiled step ends, before that step's metrics record.
    phase = run_phase(ctx.phase("profile", command), ctx.env, REPO, ctx.stop_after_last_step(metrics, profiled.iters))
    shutil.rmtree(run_dir, ignore_errors=True)
    summary_file = folder / "profile.json"
    if not summary_file.is_file():
        if phase.ok:
            phase.status, phase.detail = "failed", "the run wrote no profile.json (see its log)"
        return None
    return json.loads(summary_file.read_text())


def prepare_model(ctx: Context, hf: Path, megatron: Path) -> bool:
    """Build and import the proxy, or reuse both from an earlier bench in the same --work."""
    w = ctx.workload
    if (hf / "omni3-tiny.json").is_file():
        phase = ctx.phase("build", [])
        phase.status, phase.detail = "reused", f"{hf} exists (delete it to rebuild)"
        log(f"phase build: reused {hf}")
    else:
        shutil.rmtree(hf, ignore_errors=True)  # a half-written build from a killed bench
        command = [
            sys.executable, str(Path(__file__).resolve()), "_build", str(hf), w.layers, str(w.seq_length),
            str(w.image_side),
        ]  # fmt: skip
        if not run_phase(ctx.phase("build", command), ctx.env, REPO).ok:
            skip(ctx.phase("import", []), "the proxy build failed")
            return False
    if (megatron / "omni3-manifest.json").is_file():
        phase = ctx.phase("import", [])
        phase.status, phase.detail = "reused", f"{megatron} exists (delete it to import again)"
        log(f"phase import: reused {megatron}")
        return True
    command = [
        sys.executable, "-m", "omni3_import",
        "--hf-model", str(hf),
        "--megatron-path", str(megatron),
        "--trust-remote-code",
        "--force",
    ]  # fmt: skip
    return run_phase(ctx.phase("import", command), ctx.env, REPO).ok


def run_bench(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    workload = Workload(
        check_layers(args.layers),
        args.gpus,
        args.seq,
        args.micro_batch,
        args.micro_batches,
        args.iters,
        args.warmup,
        args.workers,
        args.image_side,
        args.lr,
    )
    work = Path(args.work).absolute()
    out = Path(args.out).absolute() if args.out else work / "out"
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(args, workload, out, work, bench_env(args))
    dataset = Path(args.dataset).absolute()
    model_dir = work / f"proxy-{layers_slug(workload.layers)}-seq{workload.seq_length}-img{workload.image_side}"
    hf, megatron = model_dir / "hf", model_dir / "megatron"
    command = shlex.join(["python", "tests/bench/sft.py", *argv])
    log(f"bench: {command}")

    shape = proxy_shape(workload.layers, workload.seq_length)
    document = stage_document(dataset, megatron)
    proxy = {
        "layers": workload.layers,
        "image_side": workload.image_side,
        "params": model_shape.human_count(model_shape.total_params(shape)),
        "llm_params": model_shape.human_count(model_shape.llm_params(shape.llm)),
        "llm_training_gflop_per_token": round(model_shape.training_flops_per_token(shape.llm, 1024) / 1e9, 2),
        "memory_estimate": memory_estimate(workload, shape, document),
    }
    yaml_path = work / "bench_proxy.yaml"
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    yaml_path.write_text(stage_yaml(dataset, megatron))
    shutil.copyfile(yaml_path, out / "bench_proxy.yaml")

    peak_file = out / "peak.json"
    peak_file.unlink(missing_ok=True)
    run_phase(
        ctx.phase("peak", [sys.executable, str(Path(__file__).resolve()), "_peak", str(peak_file)]), ctx.env, REPO
    )
    peak = json.loads(peak_file.read_text()) if peak_file.is_file() else None

    runs: dict[str, Throughput | None] = dict.fromkeys(round_runs(args.rounds))
    profile: dict[str, Any] | None = None
    if workload.gpus > 1 and not args.no_scaling:
        runs["omni3-1gpu"] = None
    if not (dataset / ".nv-meta").is_dir():
        reason = f"--dataset {dataset} is not an Energon dataset (omni3-prep synth --kind receipts)"
        for name in runs:
            skip(ctx.phase(name, []), reason)
    elif not prepare_model(ctx, hf, megatron):
        for name in runs:
            skip(ctx.phase(name, []), "no proxy checkpoint (build or import failed)")
    else:
        for name in round_runs(args.rounds):
            run = omni3_run if budget_name(name) == "omni3" else direct_run
            runs[name] = run(ctx, name, workload, hf, megatron, yaml_path)
        if "omni3-1gpu" in runs:
            runs["omni3-1gpu"] = omni3_run(ctx, "omni3-1gpu", workload.on(1), hf, megatron, yaml_path)
        if args.profile:
            profile = profile_run(ctx, workload, hf, megatron, yaml_path)

    summary = build_summary(workload, command, machine(), ctx.phases, runs, peak, proxy)
    if profile is not None:
        profile["kernel_time_over_unprofiled_step"] = busy_share(profile, runs, workload.gpus)
        summary["profile"] = profile
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    markdown = render_markdown(summary)
    (out / "summary.md").write_text(markdown)
    if args.record:
        record_dir = Path(args.record)
        record_dir.mkdir(parents=True, exist_ok=True)
        # Date and time: a second run on the same day must not overwrite the first one's record.
        stem = f"sft-bench-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M')}-{workload.gpus}gpu"
        (record_dir / f"{stem}.md").write_text(markdown)
        (record_dir / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
        log(f"recorded {record_dir / stem}.md")
    print(markdown, flush=True)
    return summary


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--gpus", type=int, choices=(1, 4), default=1)
    parser.add_argument("--dataset", required=True, help="Energon receipts dataset (omni3-prep synth --kind receipts)")
    parser.add_argument("--work", required=True, help="work folder: proxy checkpoints (reused), runs, stage YAML")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="first iterations left out of the numbers")
    parser.add_argument("--layers", default=DEFAULT_LAYERS, help="proxy layer pattern (M Mamba, E MoE, * attention)")
    parser.add_argument("--seq", type=int, default=4096, help="model.seq_length")
    parser.add_argument("--micro-batch", type=int, default=4, help="train.micro_batch_size")
    parser.add_argument("--micro-batches", type=int, default=8, help="micro batches per GPU per step")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="data loader processes per rank")
    parser.add_argument(
        "--image-side", type=int, default=DEFAULT_IMAGE_SIDE,
        help="the proxy processor's longest image side; pair it with the dataset's receipt width",
    )  # fmt: skip
    parser.add_argument(
        "--lr", type=float, default=DEFAULT_LR,
        help="optimizer.lr of every run (min_lr 0); the default keeps the weights, and so the step costs, in place",
    )  # fmt: skip
    parser.add_argument("--record", default=None, help="folder for the Markdown + JSON record (ci/records)")
    parser.add_argument("--out", default=None, help="logs and summary (default WORK/out)")
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run omni3 and direct this many times each, alternating (omni3, direct, direct, omni3, ...): the\n"
        "overhead's margin then includes how much a run's speed changes from one launch to the next",
    )  # fmt: skip
    parser.add_argument("--no-scaling", action="store_true", help="--gpus 4: skip the 1-GPU baseline run")
    parser.add_argument(
        "--keep-runs", action="store_true",
        help="let each run save its final checkpoint and keep it (tens of GB); else a run stops at its last step",
    )  # fmt: skip
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="afterwards, profile N steps of the direct driver on 1 GPU (profile/profile.md: kernel time by kind, "
        "where the host waits for the GPU)",
    )  # fmt: skip
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every phase's time budget")
    args = parser.parse_args(argv)
    if args.warmup >= args.iters:
        parser.error("--warmup must be below --iters")
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_build":
        build_main(Path(argv[1]), argv[2], int(argv[3]), int(argv[4]))
        return 0
    if argv and argv[0] == "_peak":
        peak_main(Path(argv[1]))
        return 0
    args = parse_args(argv)
    try:
        check_layers(args.layers)
    except ValueError as exc:
        print(f"sft.py: {exc}", file=sys.stderr)
        return 2
    summary = run_bench(args, argv)
    failed = [p["name"] for p in summary["phases"] if p["status"] not in GOOD_STATUSES]
    if failed:
        log(f"bench finished with failed phases: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
