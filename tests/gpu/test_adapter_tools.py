"""omni3-adapter-export, omni3-lora-merge and omni3-export on a GPU machine, from a LoRA run omni3-sft made there
(issue 4); omni3-export converts the Megatron checkpoint that run started from.

Needs CUDA, the pinned Megatron stack and peft, and ``OMNI3_GPU_LORA_RUN``: the run directory (a training-run
artifact with extra.peft) of a LoRA omni3-sft run on the same machine; its manifest names the base HF checkpoint.
``ci/gpu/run-adapters.sh`` runs this file with the checkout on PYTHONPATH and the logs in $OUT. Each CLI runs as
``python -m <tool>`` in a subprocess (one process, TP 1); its full output is written to
``$OMNI3_GPU_LOG_DIR/<label>.log`` (else the test's tmp dir) and its last lines go into the assertion message.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from omni3_shared.manifest import ArtifactKind, read_manifest

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

RUN_ENV = "OMNI3_GPU_LORA_RUN"
MEGATRON_EXPERT_TARGETS = ("linear_fc1", "linear_fc2")


@pytest.fixture(scope="module")
def lora_run() -> Path:
    pytest.importorskip("megatron.bridge")
    pytest.importorskip("peft")
    value = os.environ.get(RUN_ENV)
    if not value:
        pytest.skip(f"set {RUN_ENV} to a LoRA run directory made by omni3-sft on this machine")
    path = Path(value)
    assert (path / "omni3-manifest.json").is_file(), f"{RUN_ENV}={path} is not a complete omni3 artifact"
    return path


@pytest.fixture(scope="module")
def run_extra(lora_run: Path) -> dict:
    extra = read_manifest(lora_run, ArtifactKind.TRAINING_RUN).extra
    assert extra.get("peft"), f"{lora_run} is not a LoRA run: extra.peft is {extra.get('peft')!r}"
    return extra


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def adapter(lora_run: Path, work: Path, run_tool) -> Path:
    output = work / "adapter"
    completed = run_tool(work, "adapter-export", "omni3_adapter_export", "--lora-checkpoint", str(lora_run),
                         "--output", str(output), "--verify")  # fmt: skip
    assert completed.returncode == 0, f"omni3-adapter-export failed:\n{completed.tail()}"
    return output


def test_adapter_export_publishes_a_verified_peft_adapter(adapter: Path, run_extra: dict) -> None:
    manifest = read_manifest(adapter, ArtifactKind.ADAPTER, verify="sha256")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {entry.path for entry in manifest.files}
    check = manifest.extra["verification"]
    print(json.dumps(check, indent=1))
    assert check["passed"] and check["problems"] == [], check["problems"]
    peft_cfg = run_extra["peft"]
    assert check["adapter_modules"] == check["matched_base_modules"] > 0
    assert check["rank"] == peft_cfg["dim"] and float(check["alpha"]) == float(peft_cfg["alpha"])
    assert check["lora_b"]["nonzero_modules"] > 0
    assert check["peft_load"]["loaded_tensors"] == check["peft_load"]["adapter_tensors"] == check["adapter_tensors"]
    assert check["peft_load"]["modules_output_changed"] > 0
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == peft_cfg["dim"]


def test_every_routed_expert_has_its_adapter_tensors(adapter: Path, run_extra: dict) -> None:
    coverage = read_manifest(adapter, ArtifactKind.ADAPTER).extra["verification"]["expert_modules"]
    targets_experts = any(t.rpartition(".")[2] in MEGATRON_EXPERT_TARGETS for t in run_extra["peft"]["target_modules"])
    if not targets_experts:
        pytest.skip(f"the run did not train LoRA on {MEGATRON_EXPERT_TARGETS}")
    adapted = {name: entry for name, entry in coverage.items() if entry["with_adapter"]}
    assert adapted, f"no routed expert linear has an adapter: {coverage}"
    for name, entry in adapted.items():
        assert entry["with_adapter"] == entry["base"], f"expert '{name}': {entry}"


def test_peft_loads_the_adapter_in_this_process(adapter: Path, run_extra: dict) -> None:
    from omni3_adapter_export.adapter_checks import verify_adapter

    base = Path(run_extra["hf_model"])
    report = verify_adapter(adapter, base, run_extra["peft"]["target_modules"])
    assert not report.problems, report.problems
    assert report.peft and report.peft["lora_layers"] == len(report.modules)


def test_a_broken_adapter_is_refused(adapter: Path, run_extra: dict, work: Path, run_tool) -> None:
    from safetensors.torch import load_file, save_file

    broken = work / "adapter-broken"
    shutil.copytree(adapter, broken)
    (broken / "omni3-manifest.json").unlink()  # a plain PEFT directory now; its files no longer match a manifest
    weights = broken / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    key = sorted(k for k in tensors if ".lora_A." in k)[0]
    tensors[key.replace(".lora_A.", "_renamed.lora_A.")] = tensors.pop(key)
    save_file(tensors, str(weights))
    completed = run_tool(work, "adapter-check-broken", "omni3_adapter_export", "check", "--adapter", str(broken),
                         "--hf-model-path", run_extra["hf_model"])  # fmt: skip
    assert completed.returncode == 1, f"the broken adapter was not refused:\n{completed.tail()}"
    assert "adapter verification failed" in completed.stderr and "match no tensor" in completed.stderr


@pytest.mark.parametrize("output_format", ["hf", "megatron"])
def test_lora_merge_publishes_a_verified_merged_checkpoint(
    lora_run: Path, run_extra: dict, work: Path, output_format: str, run_tool
) -> None:
    output = work / f"merged-{output_format}"
    completed = run_tool(work, f"lora-merge-{output_format}", "omni3_lora_merge", "--lora-checkpoint", str(lora_run),
                         "--output", str(output), "--output-format", output_format, "--verify")  # fmt: skip
    assert completed.returncode == 0, f"omni3-lora-merge ({output_format}) failed:\n{completed.tail()}"
    kind = ArtifactKind.HF_CHECKPOINT if output_format == "hf" else ArtifactKind.MEGATRON_CHECKPOINT
    manifest = read_manifest(output, kind)
    check = manifest.extra["verification"]
    print(json.dumps(check, indent=1))
    assert check["passed"] and check["problems"] == [], check["problems"]
    merged, effect, weights = check["merged_vs_adapted"], check["adapter_effect"], check["weights"]
    # the tool's bar (omni3_lora_merge.merge_check.judge): the shared logit bar, or every tensor merged right and the
    # merged logits at most half as far from base+adapter as the base's
    assert merged["finite"] and merged["mean_abs_err"] <= max(0.02, 0.5 * effect["mean_abs_err"]), (merged, effect)
    assert effect["max_abs_err"] > 0, f"base+adapter logits equal the base logits: {effect}"
    assert check["image_tokens"] > 0 and check["sound_tokens"] > 0, check
    assert weights["changed"] > 0 and weights["expected_but_unchanged_count"] == 0, weights
    assert weights["merge_residuals"]["mis_merged"] == 0, weights["merge_residuals"]
    if any(t.rpartition(".")[2] in MEGATRON_EXPERT_TARGETS for t in run_extra["peft"]["target_modules"]):
        assert weights["expert_targets"] > 0 and weights["expert_targets_changed"] > 0, weights
    names = {entry.path for entry in manifest.files}
    if output_format == "hf":
        assert "config.json" in names and any(name.endswith(".safetensors") for name in names)
    else:
        assert any(name.startswith("iter_") for name in names) and not any(".merged_hf" in name for name in names)


def test_export_of_the_base_checkpoint_is_verified(run_extra: dict, work: Path, run_tool) -> None:
    """omni3-export of the Megatron checkpoint the LoRA run started from (written by omni3-import with --verify):
    every reference tensor accounted for, and the exported model's image + audio + text logits equal the source's."""
    source = Path(run_extra["pretrained_checkpoint"])
    output = work / "export-hf"
    completed = run_tool(work, "export", "omni3_export", "--megatron-path", str(source), "--hf-path", str(output),
                         "--verify")  # fmt: skip
    assert completed.returncode == 0, f"omni3-export failed:\n{completed.tail()}"
    manifest = read_manifest(output, ArtifactKind.HF_CHECKPOINT)
    check, tensors = manifest.extra["verification"], manifest.extra["tensors"]
    print(json.dumps({"verification": check, "tensors": {k: v for k, v in tensors.items() if "tensors" in k}}))
    assert check["passed"] and check["finite"] and check["mean_abs_err"] < 0.02, check
    assert check["image_tokens"] > 0 and check["sound_tokens"] > 0, check
    assert tensors["exported_tensors"] > 0 and tensors["not_in_reference"] == [], tensors
    imported = read_manifest(source, ArtifactKind.MEGATRON_CHECKPOINT).extra["verification"]
    assert imported["text"]["passed"] and imported["written"]["passed"], imported
