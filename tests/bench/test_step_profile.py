"""The benchmark's step profile: kernel kinds, the per-step summary, and a real torch.profiler run on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from omni3_shared.pytest_plugin import load_script

BENCH_DIR = Path(__file__).resolve().parent
profile = load_script(BENCH_DIR / "step_profile.py", "bench_step_profile")

# Kernel names as Hopper traces of Megatron MoE + Mamba training print them.
GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off"
SCAN = "_chunk_scan_fwd_kernel"
PERMUTE = "_unpermute_kernel"
ADAM = "void multi_tensor_apply_kernel<TensorListMetadata<4>, AdamFunctor<float>, float>"


def test_kernel_names_fall_into_their_kinds() -> None:
    assert profile.kind_of(GEMM) == "matrix multiply"
    assert profile.kind_of(SCAN) == "Mamba (SSD scan, conv1d)"
    assert profile.kind_of(PERMUTE) == "MoE routing and permutation"
    assert profile.kind_of(ADAM) == "optimizer"
    assert profile.kind_of("ncclDevKernel_AllReduce_Sum_f32_RING_LL") == "communication"
    assert profile.kind_of("cudnn_generated_fort_native_sdpa_sm90_flash_fprop") == "attention"
    assert profile.kind_of("vectorized_elementwise_kernel<4, silu>") == "other"


def test_summary_is_per_step_and_sorted() -> None:
    kernels = [
        profile.Kernel(SCAN, 0.9, 24),
        profile.Kernel(GEMM, 1.2, 300),
        profile.Kernel(ADAM, 0.3, 3),
        profile.Kernel("vectorized_elementwise_kernel", 0.6, 900),
    ]
    summary = profile.summarize(kernels, wall_seconds=6.0, steps=3)
    assert summary["kernel_seconds_per_step"] == 1.0 and summary["wall_seconds_per_step"] == 2.0
    assert summary["kernel_time_over_wall_time"] == 0.5  # half the step the GPU ran nothing
    assert list(summary["kinds"]) == ["matrix multiply", "Mamba (SSD scan, conv1d)", "other", "optimizer"]
    assert summary["kinds"]["matrix multiply"] == {"seconds_per_step": 0.4, "share": 0.4}
    assert summary["top_kernels"][0] == {
        "name": GEMM,
        "kind": "matrix multiply",
        "ms_per_step": 400.0,
        "calls_per_step": 100.0,
    }
    text = profile.render(summary)
    assert "| matrix multiply | 0.4 | 40.0% |" in text and "0.5 of the wall time" in text


def read_loss(weights: torch.Tensor) -> float:
    return (weights @ weights).sum().item()  # the host waits for the value: a sync site


def test_the_profiler_runs_the_steps_it_is_given_and_stops_after_them(tmp_path: Path) -> None:
    profiler = profile.StepProfiler(first=3, wanted=2, out=tmp_path / "profile")
    weights = torch.randn(64, 64)
    for iteration in range(1, 6):
        profiler.step_start(iteration)
        read_loss(weights)
        torch.nonzero(weights > 0)
        profiler.step_end()
    summary = profiler.summary
    # Iterations 3 and 4; it stopped as 4 ended, so what came after (5, a checkpoint save) is not in it.
    assert summary is not None and summary["steps"] == 2
    assert json.loads((tmp_path / "profile" / "profile.json").read_text()) == summary
    text = (tmp_path / "profile" / "profile.md").read_text()
    assert "Profile of 2 training steps" in text
    if not torch.cuda.is_available():
        assert summary["kernel_seconds_per_step"] == 0.0 and summary["top_kernels"] == []
    # Each step read one scalar in read_loss and ran one nonzero here: both found, with the line that asked.
    sites = {site["op"]: site for site in summary["sync_sites"]}
    assert summary["sync_calls_per_step"] == 2.0
    assert sites["aten::_local_scalar_dense"]["calls_per_step"] == 1.0
    innermost, caller = sites["aten::_local_scalar_dense"]["where"].split(" < ")
    assert "test_step_profile.py:" in innermost and innermost.endswith(" read_loss")
    assert caller.endswith(" test_the_profiler_runs_the_steps_it_is_given_and_stops_after_them")
    assert "test_the_profiler_runs_the_steps_it_is_given_and_stops_after_them" in sites["aten::nonzero"]["where"]
    assert "| `aten::nonzero` |" in text
    assert profiler.finish() is summary  # finishing again changes nothing


def test_sync_sites_sum_by_operation_and_frames_and_skip_plumbing() -> None:
    class Event:
        def __init__(self, name: str, parent: Event | None = None, micros: float = 0.0) -> None:
            self.name, self.cpu_parent, self.cpu_time_total = name, parent, micros

    caller = Event("/opt/venv/lib/python3.12/site-packages/megatron/core/models/radio.py(383): forward")
    call = Event("torch/nn/modules/module.py(1775): _call_impl", caller)
    item = Event("<built-in method tolist of Tensor object at 0x7f>", call)
    events = [
        Event("aten::_local_scalar_dense", item, 500.0),
        Event("aten::_local_scalar_dense", item, 1500.0),
        Event("cudaStreamSynchronize", None, 100.0),
        Event("aten::mm", item, 9000.0),  # no wait
    ]
    sites = sorted(profile.sync_sites(events), key=lambda site: site.op)
    assert [(site.op, site.where, site.calls) for site in sites] == [
        ("aten::_local_scalar_dense", "megatron/core/models/radio.py:383 forward", 2),
        ("cudaStreamSynchronize", "(no Python frame)", 1),
    ]
    assert sites[0].seconds == pytest.approx(0.002)
    summary = profile.summarize([], wall_seconds=1.0, steps=2, syncs=sites)
    assert summary["sync_calls_per_step"] == 1.5
    assert summary["sync_sites"][0]["host_ms_per_step"] == 1.0


def test_a_profiler_whose_first_step_never_comes_writes_nothing(tmp_path: Path) -> None:
    profiler = profile.StepProfiler(first=10, wanted=3, out=tmp_path / "profile")
    profiler.step_start(1)
    profiler.step_end()
    assert profiler.finish() is None and not (tmp_path / "profile").exists()
