"""Where a training step's GPU time goes: torch.profiler over a few steps, summed by kernel and by kind of kernel.

The benchmark's ``profile`` phase (``tests/bench/sft.py --profile N``) runs the direct driver on one GPU with
``--profile-steps N``: the last N iterations run under the profiler, which stops as the last of them ends (the
final checkpoint save stays out), and rank 0 writes ``profile.json`` and ``profile.md`` into the output folder.
Kernel time over wall time tells a step that waits on the host (launches, Python, synchronisation) from one whose
kernels are slow; the kinds say which kernels; the sync sites say which Python lines made the host wait for the GPU
(``.item()``, ``.tolist()``, ``nonzero``, explicit synchronisation), found by walking up from each such operation to
its nearest Python frames (``with_stack``). Python-frame recording slows the host, so the wall time under the
profiler is longer than an unprofiled step; the benchmark compares kernel time with its unprofiled runs as well.
"""

from __future__ import annotations

import json
import re
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


# Host operations that wait for the GPU: a scalar read (.item(), int(t), .tolist() of a CUDA tensor), a data-dependent
# shape (nonzero, boolean indexing) and the CUDA runtime's explicit synchronisations.
SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")
SYNC_RUNTIME = "Synchronize"  # cudaStreamSynchronize, cudaDeviceSynchronize, cudaEventSynchronize
PYTHON_FRAME = re.compile(r"^(?P<file>.+)\((?P<line>\d+)\): (?P<function>.+)$")
# Frames inside these are plumbing (module __call__, the profiler itself), not the line that asked for the value.
PLUMBING = ("torch/nn/modules/module.py", "torch/profiler/", "torch/autograd/", "torch/_tensor.py", "<built-in")
SITE_FRAMES = 2


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


@dataclass(frozen=True)
class SyncSite:
    op: str  # the waiting operation (aten::_local_scalar_dense, ...)
    where: str  # its nearest Python frames, innermost first
    seconds: float  # host time in the operation, summed over its calls
    calls: int


def is_sync(name: str) -> bool:
    return name in SYNC_OPS or (name.startswith("cuda") and SYNC_RUNTIME in name)


def python_frames(event: Any) -> list[str]:
    """The Python frames above a profiler event, innermost first, plumbing left out, paths from site-packages."""
    frames, parent = [], getattr(event, "cpu_parent", None)
    while parent is not None:
        match = PYTHON_FRAME.match(parent.name)
        if match and not any(part in match["file"] for part in PLUMBING):
            path = match["file"].split("site-packages/")[-1]
            frames.append(f"{path}:{match['line']} {match['function']}")
        parent = getattr(parent, "cpu_parent", None)
    return frames


def sync_sites(events: Iterable[Any]) -> list[SyncSite]:
    """Operations that made the host wait for the GPU, summed by operation and nearest Python frames."""
    totals: dict[tuple[str, str], list[float]] = {}
    for event in events:
        if not is_sync(event.name):
            continue
        where = " < ".join(python_frames(event)[:SITE_FRAMES]) or "(no Python frame)"
        total = totals.setdefault((event.name, where), [0.0, 0])
        total[0] += event.cpu_time_total / 1e6
        total[1] += 1
    return [SyncSite(op, where, seconds, int(calls)) for (op, where), (seconds, calls) in totals.items()]


def summarize(
    kernels: Iterable[Kernel], wall_seconds: float, steps: int, syncs: Iterable[SyncSite] = (), top: int = 25
) -> dict[str, Any]:
    """Totals per kind, the ``top`` kernels by time and the sync sites, per step; kernel time over wall time."""
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
        "sync_calls_per_step": round(sum(site.calls for site in syncs) / per_step, 1),
        "sync_sites": [
            {
                "op": site.op,
                "where": site.where,
                "host_ms_per_step": round(site.seconds * 1000 / per_step, 3),
                "calls_per_step": round(site.calls / per_step, 1),
            }
            for site in sorted(syncs, key=lambda site: (-site.calls, -site.seconds))[:top]
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
    sites = summary.get("sync_sites") or []
    lines += ["", f"Host waits for the GPU: {summary.get('sync_calls_per_step', 0)} calls per step.", ""]
    if sites:
        lines += ["| operation | where (innermost first) | calls/step | host ms/step |", "|---|---|---|---|"]
        lines += [
            f"| `{site['op']}` | `{site['where'].replace('|', '/')}` | {site['calls_per_step']} | "
            f"{site['host_ms_per_step']} |"
            for site in sites
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
    """Profiles ``wanted`` steps from iteration ``first`` on (1-based), then stops and writes its summary."""

    def __init__(self, first: int, wanted: int, out: Path) -> None:
        self.first, self.wanted, self.out = first, wanted, out
        self._profile: Any = None
        self._started = self._ended = 0.0
        self.steps = 0
        self.summary: dict[str, Any] | None = None

    def step_start(self, iteration: int) -> None:
        if iteration != self.first or self._profile is not None:
            return
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._profile = torch.profiler.profile(activities=activities, with_stack=True)
        self._profile.__enter__()
        self._started = self._ended = time.monotonic()

    def step_end(self) -> None:
        """Call once the step's kernels are done (after a synchronize): the wall time is the steps' own."""
        if self._profile is None:
            return
        self.steps += 1
        self._ended = time.monotonic()
        if self.steps >= self.wanted:
            self.finish()

    def finish(self) -> dict[str, Any] | None:
        """Stop (if still running), write profile.json and profile.md into ``out``; None when no step was profiled."""
        if self._profile is None:
            return self.summary
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        profile, self._profile = self._profile, None
        profile.__exit__(None, None, None)
        self.summary = summarize(
            kernels_of(profile), self._ended - self._started, self.steps, sync_sites(profile.events())
        )
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "profile.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        (self.out / "profile.md").write_text(render(self.summary))
        return self.summary
