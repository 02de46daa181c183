"""The adapter checks on real safetensors files: a good adapter passes, each kind of broken adapter is named.

``omni3-adapter-export check`` runs the same checks the export runs before publishing; the peft load check runs
where the peft package is installed (the GPU images; ``pip install peft`` elsewhere) and is skipped otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from omni3_adapter_export.adapter_checks import verify_adapter
from omni3_adapter_export.cli import cli

Make = Callable[..., Path]
LAYER = "language_model.backbone.layers."
REPO = Path(__file__).resolve().parents[3]
# Megatron-Bridge 0.6.2 derives these target_modules when sound_projection.1 is adapted
BRIDGE_TARGETS = ["1", "down_proj", "in_proj", "up_proj"]


def rename_key(adapter: Path, old_fragment: str, new_fragment: str) -> None:
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in sorted(tensors) if old_fragment in k)
    tensors[key.replace(old_fragment, new_fragment)] = tensors.pop(key)
    save_file(tensors, str(path))


def drop_module(adapter: Path, module: str) -> None:
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    tensors = {k: v for k, v in load_file(str(path)).items() if f".{module}.lora_" not in k}
    save_file(tensors, str(path))


def test_a_good_adapter_passes_the_name_checks(tmp_path: Path, make_lora_base: Make, make_adapter: Make) -> None:
    base = make_lora_base(tmp_path / "base")
    adapter = make_adapter(tmp_path / "adapter", base)
    record = verify_adapter(adapter, base, ["in_proj", "linear_fc1"], load_with_peft=False).record()
    assert record["passed"], record["problems"]
    assert record["adapter_tensors"] == 12
    assert record["adapter_modules"] == record["matched_base_modules"] == 6
    assert record["rank"] == 4 and record["alpha"] == 8 and record["ranks_seen"] == [4]
    assert record["expert_modules"] == {
        "down_proj": {"base": 2, "with_adapter": 2},
        "up_proj": {"base": 2, "with_adapter": 2},
    }
    assert record["lora_b"]["nonzero_modules"] == 6 and record["lora_b"]["zero_modules"] == 0


def test_a_good_adapter_loads_with_peft(tmp_path: Path, make_lora_base: Make, make_adapter: Make) -> None:
    pytest.importorskip("peft")
    base = make_lora_base(tmp_path / "base")
    adapter = make_adapter(tmp_path / "adapter", base)
    record = verify_adapter(adapter, base, ["in_proj", "linear_fc1"]).record()
    assert record["passed"], record["problems"]
    assert record["peft_load"]["loaded_tensors"] == record["peft_load"]["adapter_tensors"] == 12
    assert record["peft_load"]["lora_layers"] == 6
    assert record["peft_load"]["modules_output_changed"] == 6
    assert record["peft_load"]["max_output_delta"] > 0


def test_a_key_that_matches_nothing_is_refused(tmp_path: Path, make_lora_base: Make, make_adapter: Make) -> None:
    base = make_lora_base(tmp_path / "base")
    adapter = make_adapter(tmp_path / "adapter", base)
    rename_key(adapter, "mixer.in_proj.lora_A", "mixer.in_proj_renamed.lora_A")
    problems = verify_adapter(adapter, base, load_with_peft=False).problems
    assert any("match no tensor of the base checkpoint" in p and "in_proj_renamed" in p for p in problems), problems
    assert any("lack lora_A or lora_B" in p for p in problems), problems


def test_check_command_exits_1_on_a_broken_adapter(
    tmp_path: Path, make_lora_base: Make, make_adapter: Make, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_lora_base(tmp_path / "base")
    adapter = make_adapter(tmp_path / "adapter", base)
    rename_key(adapter, "experts.1.up_proj.lora_A", "experts.7.up_proj.lora_A")
    assert cli(["check", "--adapter", "adapter", "--hf-model-path", "base", "--peft=false"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("omni3-adapter-export: error: adapter verification failed: ")
    report = yaml.safe_load(captured.out)
    assert report["passed"] is False
    assert report["adapter_modules"] == 7 and report["matched_base_modules"] == 6  # experts.7 matches nothing


def test_check_command_passes_a_good_adapter_and_finds_its_base(
    tmp_path: Path, make_lora_base: Make, make_adapter: Make, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_lora_base(tmp_path / "base")
    make_adapter(tmp_path / "adapter", base)  # adapter_config.json names the base
    assert cli(["check", "--adapter", "adapter", "--peft=false"]) == 0
    report = yaml.safe_load(capsys.readouterr().out)
    assert report["passed"] and report["hf_model"] == str(base)


def test_check_command_refuses_a_base_that_is_not_omni(
    tmp_path: Path, make_lora_base: Make, make_adapter: Make, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_lora_base(tmp_path / "base", architecture="MistralForCausalLM")
    make_adapter(tmp_path / "adapter", base)
    assert cli(["check", "--adapter", "adapter", "--peft=false"]) == 3
    assert "not Nemotron 3 Nano Omni" in capsys.readouterr().err


def test_an_all_zero_lora_b_is_refused(tmp_path: Path, make_lora_base: Make, make_adapter: Make) -> None:
    base = make_lora_base(tmp_path / "base")
    adapter = make_adapter(tmp_path / "adapter", base, zero_b=True)
    problems = verify_adapter(adapter, base, load_with_peft=False).problems
    assert any("every lora_B weight is zero" in p for p in problems), problems


def test_an_expert_without_its_adapter_is_refused(tmp_path: Path, make_lora_base: Make, make_adapter: Make) -> None:
    base = make_lora_base(tmp_path / "base")
    adapter = make_adapter(tmp_path / "adapter", base)
    drop_module(adapter, "experts.1.down_proj")
    report = verify_adapter(adapter, base, load_with_peft=False)
    assert report.expert_modules["down_proj"] == {"base": 2, "with_adapter": 1}
    assert any("routed expert 'down_proj' linear(s) have no adapter" in p for p in report.problems), report.problems


def test_a_run_that_targeted_experts_needs_expert_adapters(
    tmp_path: Path, make_lora_base: Make, make_adapter: Make
) -> None:
    base = make_lora_base(tmp_path / "base")
    modules = {f"{LAYER}0.mixer.in_proj": (16, 8)}
    adapter = make_adapter(tmp_path / "adapter", base, modules=modules, targets=["in_proj"])
    assert verify_adapter(adapter, base, ["in_proj"], load_with_peft=False).problems == []
    problems = verify_adapter(adapter, base, ["in_proj", "linear_fc1"], load_with_peft=False).problems
    assert any("has no routed expert adapters" in p for p in problems), problems


def test_a_shape_that_does_not_fit_the_base_is_refused(
    tmp_path: Path, make_lora_base: Make, make_adapter: Make
) -> None:
    base = make_lora_base(tmp_path / "base")
    modules = {f"{LAYER}0.mixer.in_proj": (16, 9)}  # the base in_proj takes 8 inputs
    adapter = make_adapter(tmp_path / "adapter", base, modules=modules, targets=["in_proj"])
    problems = verify_adapter(adapter, base, load_with_peft=False).problems
    assert any("do not fit their base weight" in p for p in problems), problems


def test_a_target_module_that_names_no_adapter_module_is_refused(
    tmp_path: Path, make_lora_base: Make, make_adapter: Make
) -> None:
    base = make_lora_base(tmp_path / "base")
    adapter = make_adapter(tmp_path / "adapter", base, targets=["in_proj", "up_proj", "down_proj", "q_proj"])
    problems = verify_adapter(adapter, base, load_with_peft=False).problems
    assert any("target_modules ['q_proj'] name no adapter module" in p for p in problems), problems


def test_a_truncated_adapter_file_is_invalid_input(
    tmp_path: Path, make_lora_base: Make, make_adapter: Make, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_lora_base(tmp_path / "base")
    adapter = make_adapter(tmp_path / "adapter", base)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-16])
    assert cli(["check", "--adapter", "adapter", "--peft=false"]) == 3
    assert "is truncated" in capsys.readouterr().err
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"


def test_a_target_that_also_names_a_decoder_layer_is_refused_then_pinned(
    tmp_path: Path, make_lora_base: Make, make_adapter: Make
) -> None:
    """Megatron-Bridge 0.6.2 writes "1" for the sound projection's ``sound_projection.1``; peft would also match
    ``layers.1`` (a decoder layer) and refuse to load. The export pins such entries to full module names."""
    from omni3_adapter_export.adapter_checks import pin_target_modules
    from omni3_shared.pytest_plugin import LORA_BASE_MODULES

    modules = {**LORA_BASE_MODULES, "sound_projection.1": (8, 16)}
    base = make_lora_base(tmp_path / "base", modules=modules)
    adapter = make_adapter(tmp_path / "adapter", base, modules=modules, targets=BRIDGE_TARGETS)
    refused = verify_adapter(adapter, base, ["in_proj"], load_with_peft=False).record()
    assert any("['1'] also name base module(s) that are not linears" in p for p in refused["problems"]), refused

    assert pin_target_modules(adapter, base) == {"1": ["sound_projection.1"]}
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["target_modules"] == ["down_proj", "in_proj", "sound_projection.1", "up_proj"]
    assert pin_target_modules(adapter, base) == {}  # nothing left to pin
    pytest.importorskip("peft")
    record = verify_adapter(adapter, base, ["in_proj"]).record()
    assert record["passed"], record["problems"]
    assert record["peft_load"]["lora_layers"] == len(modules)


def test_peft_refusing_an_adapter_is_a_problem_not_a_crash(
    tmp_path: Path, make_lora_base: Make, make_adapter: Make
) -> None:
    pytest.importorskip("peft")
    from omni3_shared.pytest_plugin import LORA_BASE_MODULES

    modules = {**LORA_BASE_MODULES, "sound_projection.1": (8, 16)}
    base = make_lora_base(tmp_path / "base", modules=modules)
    adapter = make_adapter(tmp_path / "adapter", base, modules=modules, targets=BRIDGE_TARGETS)
    record = verify_adapter(adapter, base, ["in_proj"]).record()
    assert not record["passed"]
    assert any(p.startswith("peft could not load the adapter: Target module") for p in record["problems"]), record
