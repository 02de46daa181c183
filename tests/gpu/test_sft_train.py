"""omni3-sft trains for real on the GPU: every variant at tiny size, resume after SIGTERM and SIGKILL, TP2 and EP4.

Runs on a lent GPU machine through ``bash ci/gpu/run-sft.sh`` (the kit's Megatron stack on PYTHONPATH). Every run
is the tool's own command line (``python -m omni3_sft`` or ``torchrun ... -m omni3_sft``) on a storage root
holding the built-in tiny Omni (generated here), its Megatron checkpoint (``python -m omni3_import``) and the
built-in synthetic datasets. The datasets are built on the CPU machine by ``omni3-prep synth`` (the GPU machine
has no ffmpeg) and passed in ``OMNI3_GPU_DATA``: ``datasets/synth_receipts`` and ``datasets/synth_avqa``.

The storage root is ``OMNI3_GPU_STORE`` (default: a pytest temporary folder); ``ci/gpu/run-adapters.sh`` reads the
LoRA run from ``$OMNI3_GPU_STORE/runs/image_text_peft``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from omni3_shared import processes
from omni3_shared.pytest_plugin import load_script

pytestmark = pytest.mark.gpu
# The GPU tests' one way to launch a tool (python -m, or torchrun on a free port).
TOOL_RUNS = load_script(Path(__file__).with_name("tool_runs.py"), "omni3_gpu_tool_runs")

REPO = Path(__file__).resolve().parents[2]
TINY = ("model.tensor_model_parallel_size=1", "model.expert_model_parallel_size=1")
SHORT = ("train.global_batch_size=2", "train.train_iters=5", "train.log_interval=1")
IMAGE_TEXT = (*TINY, "model.seq_length=2048", *SHORT)
VALOR = (*TINY, "model.seq_length=4096", *SHORT)
LOSS_TOLERANCE = 0.05  # relative, across layouts: the same samples reach the ranks in another order
# relative, a resumed run against the uninterrupted one: the same samples in the same order give the same loss up
# to the kernels' noise (~1e-4); a stream restarted from its first sample is off by 3e-3 or more
RESUME_TOLERANCE = 1e-3


def log(message: str) -> None:
    print(f"[sft-gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The storage root: tiny HF model, its Megatron checkpoint, the synthetic datasets."""
    root = Path(os.environ.get("OMNI3_GPU_STORE") or tmp_path_factory.mktemp("sft-train-store"))
    data = os.environ.get("OMNI3_GPU_DATA")
    if not data:
        pytest.skip("OMNI3_GPU_DATA is unset: build the datasets with omni3-prep synth and pass their root")
    for name in ("synth_receipts", "synth_avqa"):
        target = root / "datasets" / name
        if not target.exists():
            shutil.copytree(Path(data) / "datasets" / name, target)
    if not (root / "models" / "tiny_omni_hf" / "omni3-manifest.json").exists():
        # The full vision tower, as by default: without it each model built from this checkpoint draws its own
        # random tower, and the lifecycle tools' logit checks (the adapters step) could not match.
        log("writing the tiny Omni with omni3-import tiny (full vision tower)")
        result = tool(root, "omni3_import", "tiny", "--output", "models/tiny_omni_hf")
        assert result.returncode == 0, result.stderr[-3000:]
    if not (root / "checkpoints" / "tiny_omni" / "omni3-manifest.json").exists():
        log("importing it with omni3-import (the tiny model's own code needs no --trust-remote-code)")
        args = ("--hf-model", "models/tiny_omni_hf", "--megatron-path", "checkpoints/tiny_omni")
        result = tool(root, "omni3_import", *args)
        assert result.returncode == 0, result.stderr[-3000:]
    return root


def environment(store: Path, run: str) -> dict[str, str]:
    return {
        **os.environ,
        "OMNI3_STORAGE_ROOT": str(store),
        "OMNI3_HF_MODEL": "models/tiny_omni_hf",
        "OMNI3_MEGATRON_CHECKPOINT": "checkpoints/tiny_omni",
        "OMNI3_CORD_V2_PATH": "datasets/synth_receipts",
        "OMNI3_VALOR32K_ENERGON_PATH": "datasets/synth_avqa",
        "OMNI3_TRUST_REMOTE_CODE": "true",
        "OMNI3_RUN_DIR": f"runs/{run}",
        "PYTHONUNBUFFERED": "1",
    }


def tool(store: Path, module: str, *args: str, run: str = "tool", nproc: int = 1) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = processes.run_to_end(  # a timeout ends torchrun's workers too
        [*TOOL_RUNS.tool_command(module, nproc), *args],
        1200,
        env=environment(store, run),
        capture_output=True,
        text=True,
    )
    log(f"{module} {' '.join(args)} (run {run}, {nproc} GPU): exit {result.returncode} in "
        f"{time.monotonic() - started:.0f} s")  # fmt: skip
    out = Path(os.environ.get("OUT", store)) / "runs"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{run}.log").write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    return result


def fresh(store: Path, run: str) -> None:
    """No earlier run ``run`` (published or staged) on a storage root that outlives one pytest session."""
    for folder in (store / "runs" / run, store / "runs" / f".{run}.partial"):
        shutil.rmtree(folder, ignore_errors=True)


def sft(
    store: Path, variant: str, *overrides: str, run: str | None = None, nproc: int = 1, resume: bool = False
) -> dict[str, Any]:
    """Train ``variant`` (``resume``: finish the interrupted run ``run``); returns the published run's manifest."""
    run = run or variant
    if not resume:
        fresh(store, run)
    result = tool(store, "omni3_sft", "--config", variant, *overrides, run=run, nproc=nproc)
    assert result.returncode == 0, f"omni3-sft {variant} failed:\n{result.stderr[-4000:]}"
    manifest = json.loads((store / "runs" / run / "omni3-manifest.json").read_text())
    assert manifest["kind"] == "training-run"
    return manifest


def losses(store: Path, run: str) -> dict[int, float]:
    lines = (store / "runs" / run / "metrics.jsonl").read_text().splitlines()
    return {record["iteration"]: record["loss"] for record in map(json.loads, lines)}


def check_run_dir(store: Path, run: str, manifest: dict[str, Any], train_iters: int) -> None:
    folder = store / "runs" / run
    extra = manifest["extra"]
    assert (folder / extra["checkpoint"]["path"] / "run_config.yaml").is_file()
    assert extra["checkpoint"]["iteration"] == train_iters
    for name in ("metrics.jsonl", "run_config.yaml", "loss_throughput.png", "report.md"):
        assert (folder / name).is_file(), name
    assert any((folder / "tensorboard").iterdir())
    curve = losses(store, run)
    assert max(curve) == train_iters
    assert all(value == value and value < 100 for value in curve.values()), curve  # finite, sane
    log(f"{run}: loss {curve} | {extra['metrics']} | batches {extra['batches_with_modality']}")


def test_tiny_projector_only(store: Path) -> None:
    manifest = sft(store, "tiny")
    check_run_dir(store, "tiny", manifest, 10)
    assert manifest["extra"]["batches_with_modality"]["image"] > 0
    assert manifest["extra"]["peft"] is None
    records = [json.loads(line) for line in (store / "runs" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["data_wait_seconds"] <= r["seconds"] for r in records), records
    assert "data_wait_share" in manifest["extra"]["metrics"]


def test_full_sft_on_receipts(store: Path) -> None:
    manifest = sft(store, "default", *IMAGE_TEXT, run="full")
    check_run_dir(store, "full", manifest, 5)


def test_image_text_lora(store: Path) -> None:
    # The adapters step's input: at the recipe's warm-up learning rate 5 steps leave lora_B near 2e-4, below the
    # bf16 step of the weights it is merged into; 1e-3 without warm-up gives adapters the merge checks can see.
    manifest = sft(store, "image_text_peft", *IMAGE_TEXT, "optimizer.lr=1e-3", "optimizer.lr_warmup_iters=0")
    check_run_dir(store, "image_text_peft", manifest, 5)
    assert manifest["extra"]["peft"]["type"] == "lora"


def test_valor32k_audio_video(store: Path) -> None:
    manifest = sft(store, "valor32k", *VALOR)
    check_run_dir(store, "valor32k", manifest, 5)
    seen = manifest["extra"]["batches_with_modality"]
    assert seen["audio"] > 0 and seen["video"] > 0, seen


def test_peft_valor32k(store: Path) -> None:
    manifest = sft(store, "peft_valor32k", *VALOR)
    check_run_dir(store, "peft_valor32k", manifest, 5)


def test_audio_text_is_really_filtered(store: Path) -> None:
    manifest = sft(store, "audio_text", *VALOR)
    check_run_dir(store, "audio_text", manifest, 5)
    seen = manifest["extra"]["batches_with_modality"]
    assert seen["audio"] > 0 and seen["video"] == 0 and seen["image"] == 0, seen


# ---------------------------------------------------------------------------------------------------------------
# Resume

RESUME = ("train.train_iters=12", "checkpoint.save_interval=4", "train.log_interval=1")


def _staged_iteration(store: Path, run: str) -> int:
    path = store / "runs" / f".{run}.partial" / "metrics.jsonl"
    try:
        return max((json.loads(line)["iteration"] for line in path.read_text().splitlines() if line.strip()), default=0)
    except (OSError, ValueError):
        return 0


def _interrupt(store: Path, run: str, at_iteration: int, sig: int) -> subprocess.CompletedProcess:
    """Run tiny and signal it at ``at_iteration``: SIGTERM to the trainer (it saves and stops), SIGKILL to every
    process of the run, as a scheduler or a lost node ends it (data-loader workers would otherwise live on and
    hold the output pipes open)."""
    fresh(store, run)
    process = subprocess.Popen(
        [sys.executable, "-m", "omni3_sft", "--config", "tiny", *RESUME],
        env=environment(store, run),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 900
    while _staged_iteration(store, run) < at_iteration and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    log(f"{run}: sending signal {sig} at iteration {_staged_iteration(store, run)}")
    if sig == signal.SIGKILL:
        processes.end_process_tree(process, processes.AT_ONCE)
    else:
        process.send_signal(sig)
    try:
        stdout, stderr = process.communicate(timeout=600)
    finally:
        processes.end_process_tree(process, processes.AT_ONCE)  # nothing of it outlives the test
    (Path(os.environ.get("OUT", store)) / "runs" / f"{run}-interrupted.log").write_text(stdout + "\n" + stderr)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def reference_curve(store: Path) -> dict[int, float]:
    sft(store, "tiny", *RESUME, run="resume-reference")
    return losses(store, "resume-reference")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_resume_after_kill(store: Path, reference_curve: dict[int, float], sig: int) -> None:
    run = f"resume-{signal.Signals(sig).name.lower()}"
    interrupted = _interrupt(store, run, 6, sig)
    assert interrupted.returncode != 0
    assert not (store / "runs" / run / "omni3-manifest.json").exists()  # nothing published
    if sig == signal.SIGTERM:
        assert "rerun the same command" in interrupted.stderr, interrupted.stderr[-2000:]
    manifest = sft(store, "tiny", *RESUME, run=run, resume=True)
    resumed_from = manifest["extra"]["resumed_from"]
    assert resumed_from is not None and resumed_from >= 4, manifest["extra"]
    curve = losses(store, run)
    assert sorted(curve) == list(range(1, 13))  # one curve, no repeated iterations
    for iteration in range(resumed_from + 1, 13):
        expected = reference_curve[iteration]
        assert abs(curve[iteration] - expected) <= RESUME_TOLERANCE * abs(expected), (iteration, curve, expected)
    log(f"{run}: resumed from {resumed_from}; losses after it match the uninterrupted run")


# ---------------------------------------------------------------------------------------------------------------
# Parallel layouts against one GPU

PARITY = ("train.train_iters=20", "train.log_interval=1", "model.freeze_language_model=false")


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.fixture(scope="module")
def one_gpu_curve(store: Path) -> dict[int, float]:
    sft(store, "tiny", *PARITY, run="parity-1gpu")
    return losses(store, "parity-1gpu")


@pytest.mark.parametrize(
    ("label", "nproc", "layout"),
    [
        ("tp2", 2, ("model.tensor_model_parallel_size=2",)),
        ("ep4", 4, ("model.expert_model_parallel_size=4", "train.global_batch_size=4")),
    ],
)
def test_parallel_loss_matches_one_gpu(
    store: Path, request: pytest.FixtureRequest, label: str, nproc: int, layout: tuple[str, ...]
) -> None:
    if _gpus() < nproc:
        pytest.skip(f"{label} needs {nproc} GPUs, this machine has {_gpus()}")
    if label == "ep4":  # EP4 x DP4 draws 4 samples per step: compare with one GPU drawing the same 4 per step
        sft(store, "tiny", *PARITY, "train.global_batch_size=4", run="parity-1gpu-gbs4")
        reference = losses(store, "parity-1gpu-gbs4")
    else:
        reference = request.getfixturevalue("one_gpu_curve")
    manifest = sft(store, "tiny", *PARITY, *layout, run=f"parity-{label}", nproc=nproc)
    assert manifest["extra"]["world_size"] == nproc
    curve = losses(store, f"parity-{label}")
    # The last five iterations' mean: with data parallelism (EP4 runs DP4) the samples of a step are the same
    # but reach the ranks in another order, so single steps differ by more than the kernels' noise.
    ours, theirs = (sum(c[i] for i in range(16, 21)) / 5 for c in (curve, reference))
    assert abs(ours - theirs) <= LOSS_TOLERANCE * abs(theirs), (curve, reference)
    log(f"{label}: mean loss over iterations 16-20 {ours:.4f} vs 1 GPU {theirs:.4f}")
