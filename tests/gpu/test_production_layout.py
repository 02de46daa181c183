"""Issue 6: the production layout on one node at proxy scale, the whole chain, against a run on half the GPUs.

On 8 GPUs: TP4 x EP8, the ``default`` and ``image_text_peft`` stage configs' own layout, against TP4 x EP4 on 4.
On a 4-GPU machine: the same chain at TP2 x EP4, against TP2 x EP2 on 2.

The model is the SFT benchmark's proxy (``tests/bench/sft.py``). It has the published Nemotron 3 Nano layer shapes,
one layer of each kind (``M*E``), and all 128 experts, so every EP rank up to EP8 holds 16 of them. It is written
with its full RADIO tower, so the tools' logit checks compare like with like.

Each step is the tool's own command line, on a storage root under ``$OMNI3_GPU_STORE``:
1. ``omni3-import --verify`` at the main layout (torchrun over every GPU);
2. ``omni3-sft`` with ``default`` (projector only) at the main layout, 50 iterations, then ``omni3-export --verify``
   of it. The language model trained frozen, so every expert tensor of the proxy must come back in the HF output,
   bit-identical;
3. ``omni3-sft`` with ``image_text_peft`` (LoRA) at the main layout, then ``omni3-adapter-export --verify``: every
   routed expert linear carries its adapter;
4. both stage configs at the reference layout; the mean loss of iterations 46-50 agrees with the main layout's
   within ``LOSS_TOLERANCE``;
5. ``layout-summary.json`` in the log directory: losses, tokens/s/GPU, TFLOP/s/GPU and data wait of every run, and
   the scaling efficiency of each stage config (for ``ci/records/``).

Run it with ``bash ci/gpu/run-layout.sh`` (the kit's env; the receipts from ``$OMNI3_GPU_DATA``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from omni3_sft import run_outputs
from omni3_shared.hf_checkpoint import tensor_names
from omni3_shared.manifest import ArtifactKind, read_manifest
from omni3_shared.publish import staging_path
from omni3_shared.pytest_plugin import load_script

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROXY_LAYERS = "M*E"
VIDEO_EMBEDDER = "vision_model.radio_model.model.patch_generator.video_embedder.weight"
PROXY_SEQ = 4096
ITERATIONS = 50
MEASURED = 5  # the last iterations whose mean loss is compared
LOSS_TOLERANCE = 0.01  # relative: the same samples, another split over the ranks (bf16 reductions reorder)
STAGE_CONFIGS = ("default", "image_text_peft")


@dataclass(frozen=True)
class Layout:
    tp: int
    ep: int
    gpus: int

    @property
    def name(self) -> str:
        return f"tp{self.tp}-ep{self.ep}"

    def overrides(self) -> tuple[str, ...]:
        return (
            f"model.tensor_model_parallel_size={self.tp}",
            f"model.expert_model_parallel_size={self.ep}",
            "model.expert_tensor_parallel_size=1",
        )


def layouts_for(gpus: int) -> tuple[Layout, Layout] | None:
    """The main layout on every GPU of the machine and the reference on half of them (None: too few GPUs)."""
    if gpus >= 8:
        return Layout(4, 8, 8), Layout(4, 4, 4)
    if gpus >= 4:
        return Layout(2, 4, 4), Layout(2, 2, 2)
    return None


def mean_tail(losses: dict[int, float], count: int = MEASURED) -> float:
    last = sorted(losses)[-count:]
    return sum(losses[i] for i in last) / len(last)


def scaling(main: dict[str, Any], reference: dict[str, Any]) -> float | None:
    """tokens/s/GPU of the main run over the reference's (1.0: the extra GPUs cost nothing per GPU)."""
    ours, theirs = main.get("tokens_per_s_per_gpu"), reference.get("tokens_per_s_per_gpu")
    return round(ours / theirs, 4) if ours and theirs else None


# ---------------------------------------------------------------------------------------------------------------
# The chain (GPU machine)


def gpu_count() -> int:
    torch = pytest.importorskip("torch")
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(scope="module")
def layouts() -> tuple[Layout, Layout]:
    pytest.importorskip("megatron.bridge")
    chosen = layouts_for(gpu_count())
    if chosen is None:
        pytest.skip(f"needs 4 or 8 GPUs, this machine has {gpu_count()}")
    return chosen


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage root with the proxy HF checkpoint and the receipts."""
    store = os.environ.get("OMNI3_GPU_STORE")
    folder = Path(store) / "production-layout" if store else tmp_path_factory.mktemp("production-layout")
    data = os.environ.get("OMNI3_GPU_DATA")
    if not data:
        pytest.skip("OMNI3_GPU_DATA is unset: build the receipts with omni3-prep synth and pass their root")
    receipts = folder / "datasets" / "synth_receipts"
    if not receipts.exists():
        shutil.copytree(Path(data) / "datasets" / "synth_receipts", receipts)
    hf = folder / "models" / "proxy_hf"
    if not (hf / "omni3-tiny.json").is_file():
        from omni3_import.tiny_model import build_tiny_omni

        shutil.rmtree(hf, ignore_errors=True)  # a half-written build of a killed session
        bench = load_script(REPO / "tests" / "bench" / "sft.py", "omni3_bench_sft")
        build_tiny_omni(hf, spec=bench.proxy_spec(PROXY_LAYERS, PROXY_SEQ), vision="full")
    return folder


def settings_env(run: str) -> dict[str, str]:
    return {
        "OMNI3_HF_MODEL": "models/proxy_hf",
        "OMNI3_MEGATRON_CHECKPOINT": "checkpoints/proxy",
        "OMNI3_CORD_V2_PATH": "datasets/synth_receipts",
        "OMNI3_RUN_DIR": f"runs/{run}",
        "OMNI3_TRUST_REMOTE_CODE": "true",
    }


@pytest.fixture(scope="module")
def imported(root: Path, layouts: tuple[Layout, Layout], run_tool) -> dict[str, Any]:
    main, _ = layouts
    target = root / "checkpoints" / "proxy"
    if not (target / "omni3-manifest.json").is_file():
        completed = run_tool(root, f"import-{main.name}", "omni3_import", "--hf-model", "models/proxy_hf",
                             "--megatron-path", "checkpoints/proxy", "--tensor-parallel-size", str(main.tp),
                             "--expert-parallel-size", str(main.ep), "--verify", "true", "--force",
                             nproc=main.gpus, env=settings_env("import"))  # fmt: skip
        assert completed.returncode == 0, f"omni3-import at {main.name} failed:\n{completed.tail()}"
    return read_manifest(target, ArtifactKind.MEGATRON_CHECKPOINT).extra


@pytest.fixture(scope="module")
def train(root: Path, imported: dict[str, Any], run_tool) -> Callable[[str, Layout], dict[str, Any]]:
    """Trains a stage config at a layout on first use: its manifest extra and its losses.

    On demand, so the chain at the main layout (train, export) comes before the reference runs: a device session
    that ends early has then proven the parts that only the main layout can.
    """
    done: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}  # a run that failed once fails every test that needs it, without running again

    def run(config: str, layout: Layout) -> dict[str, Any]:
        name = f"{config}-{layout.name}"
        if name in failed:
            pytest.fail(failed[name])
        if name not in done:
            for folder in (root / "runs" / name, staging_path(root / "runs" / name)):
                shutil.rmtree(folder, ignore_errors=True)  # every run starts from the proxy, not from an old run
            completed = run_tool(root, f"sft-{name}", "omni3_sft", "--config", config, *layout.overrides(),
                                 f"train.train_iters={ITERATIONS}", "train.log_interval=1",
                                 nproc=layout.gpus, env=settings_env(name))  # fmt: skip
            if completed.returncode != 0:
                failed[name] = f"omni3-sft {config} at {layout.name} failed:\n{completed.tail()}"
                pytest.fail(failed[name])
            records = run_outputs.read_metrics(root / "runs" / name / run_outputs.METRICS_FILE)
            done[name] = {
                "extra": read_manifest(root / "runs" / name, ArtifactKind.TRAINING_RUN).extra,
                "losses": {record["iteration"]: record["loss"] for record in records},
            }
        return done[name]

    return run


def test_import_at_the_main_layout_is_verified(imported: dict[str, Any], layouts: tuple[Layout, Layout]) -> None:
    main, _ = layouts
    assert (imported["tensor_parallel_size"], imported["expert_parallel_size"]) == (main.tp, main.ep)
    check = imported["verification"]
    assert check["text"]["passed"] and check["written"]["passed"], check
    assert check["written"]["image_tokens"] > 0, check


def expert_tensors(directory: Path) -> dict[str, Any]:
    from safetensors import safe_open

    found: dict[str, Any] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            found.update({name: handle.get_tensor(name) for name in handle.keys() if ".experts." in name})  # noqa: SIM118 (no __iter__)
    return found


def test_export_of_the_main_default_run_has_every_expert(
    root: Path, train: Callable[[str, Layout], dict[str, Any]], layouts: tuple[Layout, Layout], run_tool
) -> None:
    main, _ = layouts
    train("default", main)
    output = root / "exports" / f"default-{main.name}"
    completed = run_tool(root, f"export-default-{main.name}", "omni3_export", "--megatron-path",
                         f"runs/default-{main.name}", "--hf-path", str(output), "--verify", "true", "--force",
                         env=settings_env("export"))  # fmt: skip
    assert completed.returncode == 0, f"omni3-export failed:\n{completed.tail()}"
    extra = read_manifest(output, ArtifactKind.HF_CHECKPOINT).extra
    check, accounting = extra["verification"], extra["tensors"]
    assert check["passed"] and check["finite"] and check["image_tokens"] > 0, check
    assert accounting["not_in_reference"] == [], accounting["not_in_reference"][:10]
    # The CORD recipe trains at temporal_patch_dim 1: the run's model has no temporal video embedder, whose tensor
    # the export copies from the reference; everything else comes from the model.
    assert set(accounting["copied_from_reference"]) <= {VIDEO_EMBEDDER}, accounting["copied_from_reference"]
    assert tensor_names(output) >= tensor_names(root / "models" / "proxy_hf")
    source, exported = expert_tensors(root / "models" / "proxy_hf"), expert_tensors(output)
    assert len(source) == 128 * 2 * PROXY_LAYERS.count("E"), len(source)  # up and down of every routed expert
    assert sorted(exported) == sorted(source)
    differing = [name for name, value in source.items() if not value.equal(exported[name])]
    assert not differing, f"{len(differing)} frozen expert tensors changed: {differing[:5]}"


def test_adapter_export_of_the_main_lora_run_covers_every_expert(
    root: Path, train: Callable[[str, Layout], dict[str, Any]], layouts: tuple[Layout, Layout], run_tool
) -> None:
    main, _ = layouts
    train("image_text_peft", main)
    output = root / "adapters" / f"image_text_peft-{main.name}"
    completed = run_tool(root, f"adapter-export-{main.name}", "omni3_adapter_export", "--lora-checkpoint",
                         f"runs/image_text_peft-{main.name}", "--output", str(output), "--verify", "--force",
                         env=settings_env("adapter-export"))  # fmt: skip
    assert completed.returncode == 0, f"omni3-adapter-export failed:\n{completed.tail()}"
    check = read_manifest(output, ArtifactKind.ADAPTER).extra["verification"]
    assert check["passed"] and check["problems"] == [], check["problems"]
    assert check["peft_load"]["loaded_tensors"] == check["adapter_tensors"] > 0, check["peft_load"]
    adapted = {name: entry for name, entry in check["expert_modules"].items() if entry["with_adapter"]}
    assert adapted, check["expert_modules"]
    for name, entry in adapted.items():
        assert entry["with_adapter"] == entry["base"], f"expert '{name}': {entry}"


@pytest.mark.parametrize("config", STAGE_CONFIGS)
def test_the_main_layout_trains_like_half_the_gpus(
    config: str, train: Callable[[str, Layout], dict[str, Any]], layouts: tuple[Layout, Layout]
) -> None:
    main, reference = (train(config, layout) for layout in layouts)
    for run, layout in zip((main, reference), layouts, strict=True):
        assert run["extra"]["world_size"] == layout.gpus
        assert sorted(run["losses"]) == list(range(1, ITERATIONS + 1))
        assert all(value == value and value < 100 for value in run["losses"].values())  # finite, sane
    ours, theirs = mean_tail(main["losses"]), mean_tail(reference["losses"])
    assert abs(ours - theirs) <= LOSS_TOLERANCE * abs(theirs), (config, ours, theirs)
    if config == "image_text_peft":
        assert main["extra"]["peft"]["type"] == "lora"


def test_summary_for_the_record(train: Callable[[str, Layout], dict[str, Any]], layouts: tuple[Layout, Layout]) -> None:
    """Writes layout-summary.json next to the tool logs; the numbers go to ci/records/ with the machine."""
    main, reference = layouts
    summary: dict[str, Any] = {"layouts": {"main": main.__dict__, "reference": reference.__dict__}, "runs": {}}
    runs = {f"{config}-{layout.name}": train(config, layout) for config in STAGE_CONFIGS for layout in layouts}
    for name, run in runs.items():
        metrics = run["extra"]["metrics"]
        summary["runs"][name] = {"mean_loss_last_5": round(mean_tail(run["losses"]), 5), **metrics}
    for config in STAGE_CONFIGS:
        pair = [runs[f"{config}-{layout.name}"]["extra"]["metrics"] for layout in layouts]
        summary[f"scaling_{config}"] = scaling(*pair)
    folder = Path(os.environ.get("OMNI3_GPU_LOG_DIR") or ".")
    (folder / "layout-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=1), flush=True)
    assert all(run.get("tokens_per_s_per_gpu") for run in summary["runs"].values()), summary
