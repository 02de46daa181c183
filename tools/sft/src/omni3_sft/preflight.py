"""Checks of a resolved SFT config against the model and the GPUs, made before any GPU work.

- The parallel layout: the world size is a multiple of PP·TP·CP (the dense layout) and of PP·EP·ETP (the
  expert layout), so at least PP·max(TP·CP, EP·ETP); experts divide by EP; attention heads, Mamba heads and
  groups and the vision tower's heads divide by TP, and KV heads divide TP or divide by it (Megatron
  replicates KV heads when there are fewer than TP ranks); the global batch divides by micro batch x
  data-parallel size.
- A per-GPU memory estimate (weights, gradients and Adam states of what trains, activations, a fixed
  workspace), with a warning when it exceeds the card.

Every failed check is a one-line ``UsageError`` (exit 2) that names the fix.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omni3_sft import model_shape, recipe
from omni3_sft.model_shape import OmniShape
from omni3_shared.errors import Omni3Error, UsageError

GB = 1e9
WEIGHT_BYTES = 2  # bf16 parameters
GRAD_BYTES = 4  # fp32 gradient buffer (grad_reduce_in_fp32)
ADAM_BYTES = 12  # fp32 main parameters, first and second moments; split across data-parallel ranks
ACTIVATION_BYTES = 2  # bf16 activations
LOGIT_BYTES = 6  # bf16 logits and their fp32 copy for the loss
WORKSPACE_GB = 3.0  # CUDA context, NCCL buffers, allocator slack
VISION_HEADS = model_shape.VISION_HEADS


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    cp: int = 1
    ep: int = 1
    etp: int = 1

    @classmethod
    def from_resolved(cls, resolved: Mapping[str, Any]) -> Layout:
        model = resolved["model"]
        return cls(
            tp=model["tensor_model_parallel_size"],
            pp=model["pipeline_model_parallel_size"],
            cp=model["context_parallel_size"],
            ep=model["expert_model_parallel_size"],
            etp=model["expert_tensor_parallel_size"],
        )

    @property
    def dense(self) -> int:
        """GPUs one copy of the dense layers spans."""
        return self.pp * self.tp * self.cp

    @property
    def expert(self) -> int:
        """GPUs one copy of the experts spans."""
        return self.pp * self.ep * self.etp

    @property
    def min_world(self) -> int:
        return self.pp * math.lcm(self.tp * self.cp, self.ep * self.etp)

    def describe(self) -> str:
        return f"TP {self.tp} x PP {self.pp} x CP {self.cp}, EP {self.ep} x ETP {self.etp}"


@dataclass(frozen=True)
class WorldSize:
    size: int | None
    source: str


def world_size(nproc: int | None, environ: Mapping[str, str] | None = None) -> WorldSize:
    """How many GPUs the run has: torchrun's WORLD_SIZE, else --nproc, else the Slurm allocation.

    Raises:
        UsageError: WORLD_SIZE is not a number, or disagrees with --nproc.
    """
    env = os.environ if environ is None else environ
    raw = env.get("WORLD_SIZE")
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise UsageError(f"WORLD_SIZE={raw!r} is not a positive number", fix="launch through torchrun")
        if nproc is not None and nproc != int(raw):
            raise UsageError(
                f"--nproc {nproc} but torchrun started {raw} processes (WORLD_SIZE)",
                fix="drop --nproc under torchrun, or make it match --nproc-per-node x --nnodes",
            )
        return WorldSize(int(raw), "WORLD_SIZE (torchrun)")
    if nproc is not None:
        return WorldSize(nproc, "--nproc")
    nodes = _slurm_int(env, "SLURM_JOB_NUM_NODES") or _slurm_int(env, "SLURM_NNODES")
    gpus = _slurm_int(env, "SLURM_GPUS_ON_NODE") or _slurm_int(env, "SLURM_GPUS_PER_NODE")
    if nodes and gpus:
        return WorldSize(nodes * gpus, f"Slurm allocation ({nodes} node(s) x {gpus} GPU(s))")
    return WorldSize(None, "unknown on this machine (no WORLD_SIZE, --nproc or Slurm allocation)")


def _slurm_int(env: Mapping[str, str], name: str) -> int | None:
    """Slurm writes counts as '8', 'h100:8' or '8(x2)'; take the count."""
    match = re.search(r"(?:^|:)(\d+)", env.get(name, ""))
    return int(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------------------------------
# The parallel layout


def size_problems(resolved: Mapping[str, Any]) -> list[UsageError]:
    """Parallel sizes, iterations and batch sizes below 1: nothing else can be checked with them."""
    layout = Layout.from_resolved(resolved)
    problems: list[UsageError] = []
    sizes = {
        "tensor_model_parallel_size": layout.tp,
        "pipeline_model_parallel_size": layout.pp,
        "context_parallel_size": layout.cp,
        "expert_model_parallel_size": layout.ep,
        "expert_tensor_parallel_size": layout.etp,
    }
    for name, value in sizes.items():
        if value < 1:
            problems.append(UsageError(f"model.{name} is {value}", fix=f"set model.{name} to 1 or more"))
    if resolved["model"]["seq_length"] < 1:
        problems.append(
            UsageError(
                f"model.seq_length is {resolved['model']['seq_length']}", fix="set model.seq_length to 1 or more"
            )
        )
    train = resolved["train"]
    for name in ("train_iters", "global_batch_size", "micro_batch_size"):
        if train[name] < 1:
            problems.append(UsageError(f"train.{name} is {train[name]}", fix=f"set train.{name} to 1 or more"))
    return problems


def layout_problems(resolved: Mapping[str, Any], shape: OmniShape) -> list[UsageError]:
    """Every way the layout and batch sizes cannot run this model, whatever the number of GPUs."""
    problems = size_problems(resolved)
    if problems:
        return problems
    layout = Layout.from_resolved(resolved)
    llm = shape.llm
    train = resolved["train"]
    if llm.n_routed_experts and llm.n_routed_experts % layout.ep:
        problems.append(
            UsageError(
                f"{llm.n_routed_experts} experts do not divide by EP {layout.ep}",
                fix=f"set model.expert_model_parallel_size to a divisor of {llm.n_routed_experts}",
            )
        )
    if not llm.n_routed_experts and layout.ep > 1:
        problems.append(UsageError("EP > 1 on a model without experts", fix="set model.expert_model_parallel_size=1"))
    divisible_by_tp = {
        "attention heads": llm.num_attention_heads,
        "Mamba heads": llm.mamba_num_heads,
        "Mamba groups": llm.n_groups,
        "vision attention heads": VISION_HEADS,
    }
    for what, count in divisible_by_tp.items():
        if count % layout.tp:
            divisors = ", ".join(str(d) for d in _common_divisors(divisible_by_tp.values()))
            problems.append(
                UsageError(
                    f"{count} {what} do not divide by TP {layout.tp}",
                    fix=f"set model.tensor_model_parallel_size to one of {divisors}",
                )
            )
            break
    kv = llm.num_key_value_heads
    if kv % layout.tp and layout.tp % kv:  # fewer KV heads than TP ranks: Megatron replicates them
        problems.append(
            UsageError(
                f"{kv} KV heads are neither a multiple nor a divisor of TP {layout.tp}",
                fix="set model.tensor_model_parallel_size to a divisor or a multiple of the KV heads",
            )
        )
    if layout.pp > llm.num_layers:
        problems.append(
            UsageError(
                f"PP {layout.pp} exceeds the model's {llm.num_layers} layers",
                fix="lower model.pipeline_model_parallel_size",
            )
        )
    seq = resolved["model"]["seq_length"]
    if layout.cp > 1 and seq % (2 * layout.cp):
        problems.append(
            UsageError(
                f"seq_length {seq} does not divide by 2 x CP ({2 * layout.cp})",
                fix=f"use a seq_length that is a multiple of {2 * layout.cp}",
            )
        )
    if train["global_batch_size"] % train["micro_batch_size"]:
        problems.append(_batch_problem(train, 1))
    return problems


def world_problems(resolved: Mapping[str, Any], world: int) -> list[UsageError]:
    """Whether ``world`` GPUs fit the layout, and the global batch splits over its data-parallel ranks."""
    layout = Layout.from_resolved(resolved)
    if world % layout.dense or world % layout.expert:
        return [
            UsageError(
                f"{world} GPU(s) do not fit {layout.describe()}: the world size must be a multiple of "
                f"PP x TP x CP = {layout.dense} and of PP x EP x ETP = {layout.expert}",
                fix=f"run on a multiple of {layout.min_world} GPUs or change the parallel sizes",
            )
        ]
    train = resolved["train"]
    data_parallel = world // layout.dense
    if train["global_batch_size"] % (train["micro_batch_size"] * data_parallel):
        return [_batch_problem(train, data_parallel)]
    return []


def _batch_problem(train: Mapping[str, Any], data_parallel: int) -> UsageError:
    step = train["micro_batch_size"] * data_parallel
    return UsageError(
        f"global batch {train['global_batch_size']} does not divide by micro batch {train['micro_batch_size']} x "
        f"data-parallel size {data_parallel}",
        fix=f"set train.global_batch_size to a multiple of {step}",
    )


def _common_divisors(counts: Any) -> list[int]:
    values = list(counts)
    return [d for d in range(1, min(values) + 1) if all(v % d == 0 for v in values)]


# ---------------------------------------------------------------------------------------------------------------
# Memory


@dataclass
class MemoryEstimate:
    world: int
    world_note: str
    weights_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float
    workspace_gb: float
    card_gb: float
    trainable_params: int
    trainable_note: str
    warning: str | None = None

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.gradients_gb + self.optimizer_gb + self.activations_gb + self.workspace_gb

    def as_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "per_gpu_gb": round(self.total_gb, 1),
            "card_gb": self.card_gb,
            "weights_gb": round(self.weights_gb, 2),
            "gradients_gb": round(self.gradients_gb, 2),
            "optimizer_gb": round(self.optimizer_gb, 2),
            "activations_gb": round(self.activations_gb, 2),
            "workspace_gb": self.workspace_gb,
            "trains": self.trainable_note,
            "assumes": self.world_note,
        }
        if self.warning:
            document["warning"] = self.warning
        return document


def trainable_groups(resolved: Mapping[str, Any]) -> set[str]:
    """The freeze groups that train: the stage config's freeze flags where set, else the recipe's."""
    frozen = recipe.effective_freeze(resolved)
    return {group for group in model_shape.GROUPS if not frozen[f"freeze_{group}"]}


def flop_counter(shape: model_shape.OmniShape, resolved: Mapping[str, Any]) -> model_shape.FlopCounter:
    """How the run's step FLOPs count the vision parts: 3 x forward where a backward runs through them."""
    peft = resolved.get("peft")
    if peft:  # LoRA: the adapted parts train, the base weights stay frozen
        groups = {target.group for target in model_shape.lora_targets(shape, peft["target_modules"])}
    else:
        groups = trainable_groups(resolved)
    vision = "vision_model" in groups
    return model_shape.FlopCounter(shape, vision, vision or "vision_projection" in groups)


def _per_gpu(part: model_shape.Component, layout: Layout) -> float:
    count = float(part.params)
    if part.sharding == "tp":
        count /= layout.tp
    elif part.sharding == "expert":
        count /= layout.ep * layout.etp
    if part.llm:
        count /= layout.pp
    return count


def estimate_memory(resolved: Mapping[str, Any], shape: OmniShape, world: int | None, card_gb: float) -> MemoryEstimate:
    """A rough per-GPU memory estimate of the run (see the module constants for the assumptions).

    With the world size unknown it assumes the smallest world the layout fits, which is the worst case for
    the optimizer states (they split across data-parallel ranks).
    """
    layout = Layout.from_resolved(resolved)
    if world is None or world % layout.dense or world % layout.expert:
        used = layout.min_world
        world_note = f"{used} GPU(s), the fewest {layout.describe()} runs on"
    else:
        used = world
        world_note = f"{used} GPU(s), {layout.describe()}"
    dense_dp = max(used // layout.dense, 1)
    expert_dp = max(used // layout.expert, 1)
    parts = model_shape.components(shape)
    weights = sum(_per_gpu(part, layout) for part in parts)
    peft = resolved.get("peft")
    grads = optimizer = 0.0
    trainable_total = 0
    if peft:
        for target in model_shape.lora_targets(shape, peft["target_modules"]):
            total = model_shape.lora_params(target, peft["dim"])
            trainable_total += total
            per_gpu = total / (layout.pp if target.group == "language_model" else 1)
            if target.sharding == "tp":
                per_gpu /= layout.tp
            weights += per_gpu
            grads += per_gpu * GRAD_BYTES
            optimizer += per_gpu * ADAM_BYTES / (expert_dp if target.sharding == "expert" else dense_dp)
        trains = f"LoRA dim {peft['dim']} on {', '.join(peft['target_modules'])}"
    else:
        groups = trainable_groups(resolved)
        for part in parts:
            if part.group not in groups:
                continue
            trainable_total += part.params
            per_gpu = _per_gpu(part, layout)
            grads += per_gpu * GRAD_BYTES
            optimizer += per_gpu * ADAM_BYTES / (expert_dp if part.sharding == "expert" else dense_dp)
        trains = ", ".join(group for group in model_shape.GROUPS if group in groups) or "nothing"
    activations = activation_bytes(resolved, shape, layout)
    estimate = MemoryEstimate(
        world=used,
        world_note=world_note,
        weights_gb=weights * WEIGHT_BYTES / GB,
        gradients_gb=grads / GB,
        optimizer_gb=optimizer / GB,
        activations_gb=activations / GB,
        workspace_gb=WORKSPACE_GB,
        card_gb=card_gb,
        trainable_params=trainable_total,
        trainable_note=f"{trains} ({model_shape.human_count(trainable_total)} parameters)",
    )
    if estimate.total_gb > card_gb:
        estimate.warning = (
            f"estimated {estimate.total_gb:.0f} GB per GPU exceeds the {card_gb:g} GB card "
            f"({world_note}); use more GPUs (larger data-parallel size), more EP/TP, LoRA or a shorter seq_length"
        )
    return estimate


def activation_bytes(resolved: Mapping[str, Any], shape: OmniShape, layout: Layout) -> float:
    """Activations kept for backward for one micro batch, per GPU (sequence parallel splits them by TP).

    Per token and layer: the tensors each layer type saves (inputs of its linears and of the scan or
    attention kernel), in bf16; the logits in bf16 plus fp32 for the loss. Pipeline stages hold PP micro
    batches of L/PP layers, so PP does not change the total. The frozen vision tower keeps nothing.
    """
    llm = shape.llm
    h = llm.hidden_size
    tokens = resolved["model"]["seq_length"] * resolved["train"]["micro_batch_size"] / layout.cp
    widths = {
        "mamba": 2 * h + llm.mamba_in_proj_width + llm.mamba_conv_channels + 2 * llm.mamba_d_inner,
        "attention": 2 * h + llm.q_width + 2 * llm.kv_width + llm.q_width,
        "moe": 2 * h
        + llm.num_experts_per_tok * (h + 2 * llm.moe_intermediate_size)
        + 2 * llm.moe_shared_expert_intermediate_size,
        "mlp": 2 * h + 2 * llm.intermediate_size,
    }
    per_token = sum(llm.count(kind) * width for kind, width in widths.items()) * ACTIVATION_BYTES
    per_token += llm.vocab_size * LOGIT_BYTES
    return tokens * per_token / layout.tp


# ---------------------------------------------------------------------------------------------------------------
# All of it


@dataclass
class PreflightReport:
    """What the checks found: problems stop a run; the section is what the dry run prints."""

    problems: list[Omni3Error] = field(default_factory=list)
    section: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def check(resolved: Mapping[str, Any], shape: OmniShape, world: WorldSize, card_gb: float) -> PreflightReport:
    """Layout, world size and memory; problems in that order."""
    report = PreflightReport()
    layout = Layout.from_resolved(resolved)
    problems = layout_problems(resolved, shape)
    report.problems.extend(problems)
    sizes_valid = not size_problems(resolved)
    world_entry: dict[str, Any] = {"source": world.source}
    if sizes_valid:
        world_entry.update(layout=layout.describe(), min_gpus=layout.min_world)
    if world.size is None:
        world_entry["status"] = "world size unknown on this machine" + (
            f"; the layout needs a multiple of {layout.min_world} GPUs" if sizes_valid else ""
        )
    elif sizes_valid:
        world_entry["gpus"] = world.size
        mismatch = world_problems(resolved, world.size)
        report.problems.extend(mismatch)
        world_entry["status"] = f"not ok: {mismatch[0].one_line()}" if mismatch else "ok"
    report.section["world_size"] = world_entry
    report.section["layout"] = [p.one_line() for p in problems] or "ok"
    report.section["model"] = model_shape.summary(shape, max(resolved["model"]["seq_length"], 1))
    if sizes_valid:
        memory = estimate_memory(resolved, shape, world.size, card_gb)
        report.section["memory"] = memory.as_dict()
        if memory.warning:
            report.warnings.append(memory.warning)
        if padding := padding_warning(layout, resolved["model"]["seq_length"]):
            report.warnings.append(padding)
    return report


def padding_warning(layout: Layout, seq_length: int) -> str | None:
    """Expert or pipeline parallelism makes Megatron-Bridge pad every sequence to ``model.seq_length``
    (``ConfigContainer.validate`` turns ``dataset.pad_to_max_length`` on), so a generous sequence length costs
    compute on every sample there, not only on the longest."""
    if layout.ep == 1 and layout.pp == 1:
        return None
    reason = " and ".join(name for name, size in (("EP", layout.ep), ("PP", layout.pp)) if size > 1)
    return (
        f"with {reason} above 1, Megatron-Bridge pads every sequence to model.seq_length ({seq_length}): set it "
        "near your longest sample (metrics.jsonl's padding_share shows the positions spent on padding)"
    )
