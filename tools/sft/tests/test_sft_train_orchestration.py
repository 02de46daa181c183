"""omni3-sft's own logic around Megatron-Bridge's ``finetune`` (CPU): what it publishes, when it refuses to, resume.

Megatron-Bridge cannot run here, so ``finetune``, its callback base and the Omni forward step are stand-ins that
do what the real ones do to the run: call the callbacks per step, draw a batch per step through the forward step,
write complete ``iter_NNNNNNN`` folders and the tracker the way Megatron-Bridge does (see checkpoints.py), and end
with ``SystemExit(0)`` after a SIGTERM save. Training itself is proven on the GPU (tests/gpu/test_sft_train.py);
these tests pin the run directory, the manifest and the resume bookkeeping that the lifecycle tools rely on.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from omni3_sft import checkpoints, model_shape, recipe, run_outputs, stage_config, train
from omni3_sft.settings import SftSettings
from omni3_shared.errors import ToolFailure
from omni3_shared.manifest import ArtifactKind
from omni3_shared.settings import load_settings

TRAIN_ITERS = 6


def write_iteration(save: Path, iteration: int) -> None:
    """A complete torch_dist iteration folder and the tracker, in Megatron-Bridge's order."""
    folder = save / checkpoints.iteration_dir_name(iteration)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / checkpoints.DCP_METADATA_FILE).write_bytes(b"dcp")
    (folder / checkpoints.DIST_METADATA_FILE).write_text(json.dumps({"sharded_backend": "torch_dist"}))
    (folder / checkpoints.TRAIN_STATE_FILE).write_bytes(b"state")
    (save / checkpoints.TRACKER_FILE).write_text(str(iteration))
    (folder / checkpoints.RUN_CONFIG_FILE).write_text("model: {}\n")


@pytest.fixture
def bridge(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Stand-ins of the three Megatron-Bridge names train.py imports; ``control`` steers the next finetune."""
    control: dict[str, Any] = {"sigterm_after": None, "save_on_sigterm": True, "calls": []}

    class Callback:
        pass

    class EnergonDataloader:
        """As Megatron-Bridge 0.6.2's: ``iter()`` of it gives the inner generator, which has no save_state."""

        def __iter__(self) -> Any:
            return iter(())

        def __next__(self) -> Any:
            raise StopIteration

    def forward_step(state: Any, data_iterator: Any, model: Any, return_schedule_plan: bool = False) -> None:
        next(data_iterator)

    def finetune(config: Any, forward_step_func: Callable[..., Any], callbacks: list[Any]) -> None:
        save = Path(config.checkpoint.save)
        point = checkpoints.resume_point(save)
        state = SimpleNamespace(train_state=SimpleNamespace(step=point.iteration if point else 0))
        loader = EnergonDataloader()
        control["calls"].append(
            {"start": state.train_state.step, "load": config.checkpoint.load, "stream_saved": iter(loader) is loader}
        )
        optimizer = SimpleNamespace(param_groups=[{"lr": 1e-4}])
        batches = iter([{"input_ids": torch.zeros(1, 64, dtype=torch.long), "pixel_values": torch.ones(1, 3)}] * 100)
        for callback in callbacks:
            callback.on_train_start(SimpleNamespace(state=state))
        for step in range(state.train_state.step, config.train.train_iters):
            forward_step_func(state, batches, None)
            loss = torch.tensor(3.0 - 0.1 * step)
            for callback in callbacks:
                context = SimpleNamespace(state=state, loss_dict={"lm loss": loss}, grad_norm=0.5, optimizer=optimizer)
                callback.on_train_step_end(context)
            state.train_state.step = step + 1
            if control["sigterm_after"] == step + 1:
                if control["save_on_sigterm"]:
                    write_iteration(save, step + 1)
                raise SystemExit(0)
        write_iteration(save, config.train.train_iters)

    modules = {
        "megatron.bridge": types.ModuleType("megatron.bridge"),
        "megatron.bridge.training": types.ModuleType("megatron.bridge.training"),
        "megatron.bridge.training.finetune": types.ModuleType("megatron.bridge.training.finetune"),
        "megatron.bridge.training.callbacks": types.ModuleType("megatron.bridge.training.callbacks"),
        "megatron.bridge.training.nemotron_omni_step": types.ModuleType("megatron.bridge.training.nemotron_omni_step"),
        "megatron.bridge.data": types.ModuleType("megatron.bridge.data"),
        "megatron.bridge.data.energon": types.ModuleType("megatron.bridge.data.energon"),
        train.ENERGON_DATAMODULE_MODULE: types.ModuleType(train.ENERGON_DATAMODULE_MODULE),
    }
    modules["megatron.bridge.training.finetune"].finetune = finetune
    modules["megatron.bridge.training.callbacks"].Callback = Callback
    modules["megatron.bridge.training.nemotron_omni_step"].forward_step = forward_step
    modules[train.ENERGON_DATAMODULE_MODULE].EnergonDataloader = EnergonDataloader
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)

    def config_of(plan: recipe.RecipePlan) -> Any:
        """The ConfigContainer stand-in: the plan's assignments as nested attributes."""
        config = SimpleNamespace(
            checkpoint=SimpleNamespace(), train=SimpleNamespace(), logger=SimpleNamespace(log_interval=10)
        )
        for path, value in plan.assignments:
            section, _, name = path.partition(".")
            if hasattr(config, section) and "." not in name:
                setattr(getattr(config, section), name, value)
        return config

    monkeypatch.setattr(recipe, "apply_plan", config_of)
    return control


@pytest.fixture
def run_inputs(tmp_path: Path, make_dataset: Callable[..., Path], make_artifact: Callable[..., Path], write_hf_config):
    make_dataset(tmp_path / "datasets" / "synth_receipts")
    make_artifact(tmp_path / "checkpoints" / "tiny_omni", ArtifactKind.MEGATRON_CHECKPOINT)
    hf = write_hf_config(tmp_path / "models" / "tiny_omni_hf")
    settings = load_settings(
        SftSettings,
        {
            "storage_root": str(tmp_path),
            "hf_model": "models/tiny_omni_hf",
            "megatron_checkpoint": "checkpoints/tiny_omni",
            "cord_v2_path": "datasets/synth_receipts",
            "run_dir": "runs/tiny",
        },
    )
    path = stage_config.variant_path("tiny", None)
    config = stage_config.apply_overrides(stage_config.read_variant(path), [f"train.train_iters={TRAIN_ITERS}"])
    resolved = stage_config.interpolate(stage_config.validate(config, "tiny"), settings)
    return settings, resolved, model_shape.read_model_shape(hf)


def run(run_inputs: tuple[Any, ...], force: bool = False) -> Path | None:
    settings, resolved, shape = run_inputs
    origin = {"variant": "tiny", "overrides": [f"train.train_iters={TRAIN_ITERS}"]}
    return train.run(settings, resolved, origin, shape, [], world=1, force=force)


def iterations(run_dir: Path) -> list[int]:
    return [record["iteration"] for record in run_outputs.read_metrics(run_dir / run_outputs.METRICS_FILE)]


def test_a_complete_run_is_published_with_what_the_lifecycle_tools_read(
    tmp_path: Path, bridge: dict[str, Any], run_inputs: tuple[Any, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    published = run(run_inputs)
    assert published == tmp_path / "runs" / "tiny"
    manifest = json.loads((published / "omni3-manifest.json").read_text())
    assert manifest["kind"] == "training-run"
    extra = manifest["extra"]
    assert extra["checkpoint"] == {
        "dir": "checkpoints",
        "format": "torch_dist",
        "iteration": TRAIN_ITERS,
        "path": f"checkpoints/iter_{TRAIN_ITERS:07d}",
    }
    assert (published / extra["checkpoint"]["path"] / "run_config.yaml").is_file()
    assert extra["hf_model"] == str(tmp_path / "models" / "tiny_omni_hf")
    assert extra["peft"] is None and extra["resumed_from"] is None
    assert extra["batches_with_modality"] == {"image": TRAIN_ITERS, "audio": 0, "video": 0}
    assert extra["parallel"]["tensor_model_parallel_size"] == 1
    assert iterations(published) == list(range(1, TRAIN_ITERS + 1))  # the tiny variant logs every iteration
    assert extra["metrics"]["first_loss"] == pytest.approx(3.0) and extra["metrics"]["last_iteration"] == TRAIN_ITERS
    for name in (run_outputs.PLOT_FILE, run_outputs.REPORT_FILE, run_outputs.RUN_CONFIG_FILE):
        assert (published / name).is_file(), name
    assert not (tmp_path / "runs" / ".tiny.partial").exists()
    # Megatron-Bridge saved and resumes inside the staging directory, never in the published one.
    assert bridge["calls"][0]["load"] == str(tmp_path / "runs" / ".tiny.partial" / "checkpoints")
    assert bridge["calls"][0]["stream_saved"]  # the Energon loader is its own iterator while finetune runs
    out = capsys.readouterr().out
    assert f"iter {TRAIN_ITERS}/{TRAIN_ITERS} | loss " in out and "tok/s/GPU" in out


def test_sigterm_publishes_nothing_and_the_same_command_resumes(
    tmp_path: Path, bridge: dict[str, Any], run_inputs: tuple[Any, ...]
) -> None:
    bridge["sigterm_after"] = 4
    with pytest.raises(ToolFailure, match=f"stopped at iteration 4 of {TRAIN_ITERS} \\(SIGTERM\\)") as stopped:
        run(run_inputs)
    assert "rerun the same command" in stopped.value.one_line()
    staging = tmp_path / "runs" / ".tiny.partial"
    assert not (tmp_path / "runs" / "tiny").exists()
    assert iterations(staging) == [1, 2, 3, 4]

    bridge["sigterm_after"] = None
    published = run(run_inputs)
    extra = json.loads((published / "omni3-manifest.json").read_text())["extra"]
    assert extra["resumed_from"] == 4 and bridge["calls"][-1]["start"] == 4
    assert iterations(published) == list(range(1, TRAIN_ITERS + 1))  # one curve, nothing repeated


def test_a_kill_between_checkpoints_drops_the_metrics_after_the_last_one(
    tmp_path: Path, bridge: dict[str, Any], run_inputs: tuple[Any, ...]
) -> None:
    bridge.update(sigterm_after=3, save_on_sigterm=True)
    with pytest.raises(ToolFailure):
        run(run_inputs)
    staging = tmp_path / "runs" / ".tiny.partial"
    # As after a SIGKILL at iteration 5: two more metric lines, no checkpoint for them.
    with run_outputs.MetricsWriter(staging / run_outputs.METRICS_FILE, resume_iteration=5) as writer:
        for iteration in (4, 5):
            writer.write(run_outputs.StepMetrics(iteration, 2.0, 1e-4, 64, 1.0, 1, 1e9))
    bridge["sigterm_after"] = None
    published = run(run_inputs)
    assert json.loads((published / "omni3-manifest.json").read_text())["extra"]["resumed_from"] == 3
    assert iterations(published) == list(range(1, TRAIN_ITERS + 1))


def test_a_stop_before_any_checkpoint_says_so(bridge: dict[str, Any], run_inputs: tuple[Any, ...]) -> None:
    bridge.update(sigterm_after=1, save_on_sigterm=False)
    with pytest.raises(ToolFailure, match="stopped at no complete checkpoint yet"):
        run(run_inputs)


def test_a_complete_run_is_not_replaced_without_force(
    tmp_path: Path, bridge: dict[str, Any], run_inputs: tuple[Any, ...]
) -> None:
    run(run_inputs)
    from omni3_shared.errors import ArtifactExistsError

    with pytest.raises(ArtifactExistsError):
        run(run_inputs)
    assert run(run_inputs, force=True) == tmp_path / "runs" / "tiny"
