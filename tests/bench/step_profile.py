"""Where a training step's GPU time goes: torch.profiler over a few steps, summed by kernel and by kind of kernel.

The benchmark's ``profile`` phase (``tests/bench/sft.py --profile N``) runs the direct driver on one GPU with
``--profile-steps N``: the last N iterations run under the profiler and rank 0 writes ``profile.json`` and
``profile.md`` into the output folder. Kernel time over wall time tells a step that waits on the host (launches,
Python, synchronisation) from one whose kernels are slow; the kinds say which kernels.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Kinds by substrings of the kernel name (lower case), first match wins. "other" takes the rest.
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("communication", ("nccl",)),
    ("attention", ("flash", "fmha", "attn", "cudnn")),
    ("Mamba (SSD scan, conv1d)", ("chunk", "ssd", "state_passing", "causal_conv1d", "selective_scan")),
    ("MoE routing and permutation", ("permut", "topk", "router", "moe", "sort", "scatter", "gather")),
    ("optimizer", ("adam", "multi_tensor", "l2norm")),
    ("matrix multiply", ("gemm", "cutlass", "cublas", "xmma", "nvjet", "matmul", "wgmma")),
    ("copies and fills", ("memcpy", "memset", "fill", "copy")),
)


@dataclass(frozen=True)
class Kernel:
    name: str
    seconds: float  # summed over its calls
    calls: int


def kind_of(name: str) -> str:
    lower = name.lower()
    for kind, needles in KINDS:
        if any(needle in lower for needle in needles):
            return kind
    return "other"


def summarize(kernels: Iterable[Kernel], wall_seconds: float, steps: int, top: int = 25) -> dict[str, Any]:
    """Totals per kind and the ``top`` kernels by time, per step; kernel time over wall time."""
    ordered = sorted(kernels, key=lambda kernel: kernel.seconds, reverse=True)
    total = sum(kernel.seconds for kernel in ordered)
    kinds: dict[str, float] = {}
    for kernel in ordered:
        kind = kind_of(kernel.name)
        kinds[kind] = kinds.get(kind, 0.0) + kernel.seconds
    per_step = max(steps, 1)
    return {
        "steps": steps,
        "wall_seconds_per_step": round(wall_seconds / per_step, 4),
        "kernel_seconds_per_step": round(total / per_step, 4),
        # Kernels of several streams can overlap, so this can pass 1; far below 1, the GPU waits on the host.
        "kernel_time_over_wall_time": round(total / wall_seconds, 4) if wall_seconds > 0 else None,
        "kinds": {
            kind: {"seconds_per_step": round(seconds / per_step, 4), "share": round(seconds / total, 4) if total else 0}
            for kind, seconds in sorted(kinds.items(), key=lambda item: -item[1])
        },
        "top_kernels": [
            {
                "name": kernel.name[:160],
                "kind": kind_of(kernel.name),
                "ms_per_step": round(kernel.seconds * 1000 / per_step, 3),
                "calls_per_step": round(kernel.calls / per_step, 1),
            }
            for kernel in ordered[:top]
        ],
    }


def render(summary: dict[str, Any]) -> str:
    lines = [
        f"# Profile of {summary['steps']} training steps",
        "",
        f"- wall time per step: {summary['wall_seconds_per_step']} s",
        f"- GPU kernel time per step: {summary['kernel_seconds_per_step']} s "
        f"({summary['kernel_time_over_wall_time']} of the wall time)",
        "",
        "| kind | s/step | share of kernel time |",
        "|---|---|---|",
    ]
    lines += [f"| {kind} | {v['seconds_per_step']} | {v['share']:.1%} |" for kind, v in summary["kinds"].items()]
    lines += ["", "| kernel | kind | ms/step | calls/step |", "|---|---|---|---|"]
    lines += [
        f"| `{k['name'].replace('|', '/')}` | {k['kind']} | {k['ms_per_step']} | {k['calls_per_step']} |"
        for k in summary["top_kernels"]
    ]
    return "\n".join(lines) + "\n"


def kernels_of(profile: Any) -> list[Kernel]:
    """GPU kernels of a finished ``torch.profiler.profile``, summed by name (device self time, seconds)."""
    from torch.autograd import DeviceType

    found = []
    for event in profile.key_averages():
        if getattr(event, "device_type", None) != DeviceType.CUDA:
            continue
        micros = getattr(event, "self_device_time_total", None)
        if micros is None:  # older torch
            micros = getattr(event, "self_cuda_time_total", 0.0)
        if micros > 0:
            found.append(Kernel(event.key, micros / 1e6, int(event.count)))
    return found


class StepProfiler:
    """Profiles the steps from ``first`` on (1-based iteration numbers) until ``finish``."""

    def __init__(self, first: int, out: Path) -> None:
        self.first, self.out = first, out
        self._profile: Any = None
        self._started = 0.0
        self.steps = 0

    def step_start(self, iteration: int) -> None:
        if iteration != self.first or self._profile is not None:
            return
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profile = torch.profiler.profile(activities=activities)
        self._profile.__enter__()
        self._started = time.monotonic()

    def step_end(self) -> None:
        if self._profile is not None:
            self.steps += 1

    def finish(self) -> dict[str, Any] | None:
        """Stop, write profile.json and profile.md into ``out``; None when no step was profiled."""
        if self._profile is None:
            return None
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.monotonic() - self._started
        self._profile.__exit__(None, None, None)
        summary = summarize(kernels_of(self._profile), wall, self.steps)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "profile.json").write_text(json.dumps(summary, indent=2) + "\n")
        (self.out / "profile.md").write_text(render(summary))
        self._profile = None
        return summary
