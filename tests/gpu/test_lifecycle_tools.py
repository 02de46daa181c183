"""omni3-import and omni3-export themselves across layouts on a 2-GPU machine (issue 4, items 2, 3, 6 and 7).

omni3-import writes the tiny Omni at TP2 and at EP2 (``torchrun --nproc-per-node 2``, --verify: HF vs Megatron
text logits, then the written checkpoint against the converted model on the image + audio + text batch); one
omni3-export process then reads each checkpoint at TP1/EP1 (--verify: exported vs source logits on the same batch).
Every tensor of the source comes back bit-identical. The tiny model has its full vision tower here: without it
each model built from the checkpoint draws its own random tower and no logit check through the image can match.

Needs 2 GPUs and the pinned Megatron stack: ``bash ci/gpu/run-tools.sh`` (the kit's env, the checkout's packages).
The tiny HF model is ``$OMNI3_GPU_STORE/models/tiny_omni_hf`` when the SFT tests left it there (with its vision
tower), else written here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omni3_shared.manifest import ArtifactKind, read_manifest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

LAYOUTS = [("tp2", ("--tensor-parallel-size", "2")), ("ep2", ("--expert-parallel-size", "2"))]


def gpus() -> int:
    torch = pytest.importorskip("torch")
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("megatron.bridge")
    if gpus() < 2:
        pytest.skip("needs 2 GPUs")
    return tmp_path_factory.mktemp("lifecycle-tools")


@pytest.fixture(scope="module")
def hf_model(work: Path, run_tool) -> Path:
    stored = Path(os.environ.get("OMNI3_GPU_STORE", "/nonexistent")) / "models" / "tiny_omni_hf"
    manifest = stored / "omni3-manifest.json"
    if manifest.is_file() and read_manifest(stored, ArtifactKind.HF_CHECKPOINT).config.get("vision") == "full":
        return stored
    written = work / "tiny_omni_hf"
    completed = run_tool(work, "tiny", "omni3_import", "tiny", "--output", str(written))
    assert completed.returncode == 0, completed.tail()
    return written


def tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    found: dict = {}
    for shard in sorted(directory.glob("*.safetensors")):
        found.update(load_file(str(shard)))
    return found


@pytest.mark.parametrize(("label", "layout"), LAYOUTS, ids=[label for label, _ in LAYOUTS])
def test_import_at_a_parallel_layout_and_export_at_one_gpu(
    work: Path, hf_model: Path, label: str, layout: tuple[str, ...], run_tool
) -> None:
    megatron = work / f"{label}-megatron"
    completed = run_tool(work, f"import-{label}", "omni3_import", "--hf-model", str(hf_model), "--megatron-path",
                         str(megatron), "--verify", "true", *layout, nproc=2)  # fmt: skip
    assert completed.returncode == 0, f"omni3-import at {label} failed:\n{completed.tail()}"
    imported = read_manifest(megatron, ArtifactKind.MEGATRON_CHECKPOINT).extra
    print(f"[tools-gpu] import {label}: {imported}", flush=True)
    assert imported["world_size"] == 2
    assert imported["verification"]["text"]["passed"] and imported["verification"]["written"]["passed"], imported
    assert imported["verification"]["written"]["image_tokens"] > 0, imported

    exported = work / f"{label}-hf"
    completed = run_tool(work, f"export-{label}", "omni3_export", "--megatron-path", str(megatron), "--hf-path",
                         str(exported), "--verify", "true")  # fmt: skip
    assert completed.returncode == 0, f"omni3-export of the {label} checkpoint failed:\n{completed.tail()}"
    extra = read_manifest(exported, ArtifactKind.HF_CHECKPOINT).extra
    print(f"[tools-gpu] export {label}: {extra['verification']} {extra['world_size']}", flush=True)
    check = extra["verification"]
    assert check["passed"] and check["finite"] and check["sound_tokens"] > 0 and check["image_tokens"] > 0, check
    accounting = extra["tensors"]
    assert accounting["copied_from_reference"] == [], accounting["copied_from_reference"]  # the import built it all
    assert accounting["not_in_reference"] == [], accounting["not_in_reference"][:10]

    source, result = tensors(hf_model), tensors(exported)
    differing = [name for name, value in source.items() if not value.equal(result[name])]
    print(f"[tools-gpu] {label}: {len(source) - len(differing)}/{len(source)} source tensors bit-identical", flush=True)
    assert not differing, differing[:20]
