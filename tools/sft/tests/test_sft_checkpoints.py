"""Checkpoint completeness and the resume point, on synthetic directories written in Megatron-Bridge's order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from omni3_sft import checkpoints
from omni3_shared.errors import InvalidInputError

# Megatron-Bridge 0.6.2's save, step by step (see the checkpoints module docstring).
STEPS = ("shards", "dcp_metadata", "dist_metadata", "train_state", "tracker", "run_config")


def save(save_dir: Path, iteration: int, until: str = "run_config", model: dict | None = None) -> Path:
    """Write iteration ``iteration`` the way Megatron does, stopping after step ``until`` (a kill)."""
    path = save_dir / checkpoints.iteration_dir_name(iteration)
    path.mkdir(parents=True, exist_ok=True)
    for step in STEPS[: STEPS.index(until) + 1]:
        if step == "shards":
            (path / "__0_0.distcp").write_bytes(b"\x00" * 128)
            (path / "common.pt").write_bytes(b"\x00" * 16)
        elif step == "dcp_metadata":
            (path / ".metadata").write_bytes(b"\x00" * 32)
        elif step == "dist_metadata":
            (path / "metadata.json").write_text(
                json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1})
            )
        elif step == "train_state":
            (path / "train_state.pt").write_bytes(b"\x01" * 16)
            (save_dir / "latest_train_state.pt").write_bytes(b"\x01" * 16)
        elif step == "tracker":
            (save_dir / "latest_checkpointed_iteration.txt").write_text(str(iteration))
        else:
            document = {"model": model or {"hidden_size": 256, "num_moe_experts": 4}, "train": {"train_iters": 20}}
            (path / "run_config.yaml").write_text(yaml.safe_dump(document))
    return path


def test_complete_checkpoint_is_the_resume_point(tmp_path: Path) -> None:
    save(tmp_path, 5)
    save(tmp_path, 10)
    point = checkpoints.resume_point(tmp_path)
    assert point is not None
    assert (point.iteration, point.path.name, point.tracker_iteration) == (10, "iter_0000010", 10)
    assert not point.needs_explicit_step
    assert [c.iteration for c in checkpoints.iterations(tmp_path)] == [5, 10]


@pytest.mark.parametrize("killed_after", STEPS[:-1])
def test_a_save_killed_midway_is_never_taken(tmp_path: Path, killed_after: str) -> None:
    save(tmp_path, 5)
    save(tmp_path, 10, until=killed_after)
    point = checkpoints.resume_point(tmp_path)
    assert point is not None and point.iteration == 5
    assert [c.path.name for c in point.skipped] == ["iter_0000010"]
    assert not checkpoints.inspect_iteration(tmp_path / "iter_0000010").complete
    # once the tracker names 10, Megatron would load it: the run must name 5 explicitly
    assert point.needs_explicit_step == (killed_after == "tracker")


@pytest.mark.parametrize("killed_after", STEPS[:-1])
def test_first_save_killed_means_start_fresh(tmp_path: Path, killed_after: str) -> None:
    save(tmp_path, 10, until=killed_after)
    assert checkpoints.resume_point(tmp_path) is None


def test_nothing_to_resume(tmp_path: Path) -> None:
    assert checkpoints.resume_point(tmp_path / "absent") is None
    assert checkpoints.resume_point(tmp_path) is None
    assert checkpoints.describe(tmp_path)["status"].startswith("no complete checkpoint")


@pytest.mark.parametrize("tracker", ["", "1", "10x", "release"])
def test_torn_tracker_falls_back_to_the_newest_complete_iteration(tmp_path: Path, tracker: str) -> None:
    save(tmp_path, 5)
    save(tmp_path, 10)
    (tmp_path / checkpoints.TRACKER_FILE).write_text(tracker)
    point = checkpoints.resume_point(tmp_path)
    if tracker == "1":  # a readable tracker bounds the choice: nothing at or below 1 is complete
        assert point is None
    else:
        assert point is not None and point.iteration == 10
        assert point.needs_explicit_step


def test_tracker_behind_a_complete_iteration_bounds_the_choice(tmp_path: Path) -> None:
    save(tmp_path, 5)
    save(tmp_path, 10)
    (tmp_path / checkpoints.TRACKER_FILE).write_text("5")
    point = checkpoints.resume_point(tmp_path)
    assert point is not None and point.iteration == 5 and not point.needs_explicit_step


@pytest.mark.parametrize(
    ("damage", "missing"),
    [
        (lambda p: (p / "metadata.json").write_text("{not json"), "metadata.json (unreadable)"),
        (lambda p: (p / "metadata.json").write_text("{}"), "metadata.json (unreadable)"),
        (lambda p: (p / "train_state.pt").write_bytes(b""), "train_state.pt (empty)"),
        (lambda p: (p / "run_config.yaml").write_text(""), "run_config.yaml (empty)"),
        (lambda p: (p / ".metadata").unlink(), ".metadata"),
    ],
)
def test_damaged_iteration_is_incomplete(tmp_path: Path, damage, missing: str) -> None:
    path = save(tmp_path, 10)
    damage(path)
    checkpoint = checkpoints.inspect_iteration(path)
    assert missing in checkpoint.missing
    assert checkpoints.resume_point(tmp_path) is None
    described = checkpoints.describe(tmp_path)
    assert described["incomplete_never_loaded"] == [f"iter_0000010 (missing {', '.join(checkpoint.missing)})"]


def test_other_directories_are_ignored(tmp_path: Path) -> None:
    save(tmp_path, 3)
    (tmp_path / "iter_12").mkdir()  # not 7 digits
    (tmp_path / "tensorboard").mkdir()
    assert [c.iteration for c in checkpoints.iterations(tmp_path)] == [3]
    with pytest.raises(ValueError):
        checkpoints.inspect_iteration(tmp_path / "tensorboard")


def test_describe_says_when_the_step_must_be_named(tmp_path: Path) -> None:
    save(tmp_path, 5)
    save(tmp_path, 10, until="tracker")
    status = checkpoints.describe(tmp_path)["status"]
    assert status == "resumes from iteration 5 (the tracker says 10; the run loads 5 explicitly)"


# ---------------------------------------------------------------------------------------------------------------
# What other stages hand over


def test_checkpoint_dir_of_an_artifact(tmp_path: Path) -> None:
    assert checkpoints.checkpoint_dir_of(tmp_path, {"checkpoint": {"dir": "checkpoints"}}) == tmp_path / "checkpoints"
    assert checkpoints.checkpoint_dir_of(tmp_path, {}) == tmp_path
    assert checkpoints.checkpoint_dir_of(tmp_path, None) == tmp_path
    assert checkpoints.checkpoint_dir_of(tmp_path, {"checkpoint": "odd"}) == tmp_path


SHAPE = {"hidden_size": 256, "n_routed_experts": 4, "hybrid_override_pattern": "M*EM-E", "vocab_size": 1024}


def test_compatible_checkpoint(tmp_path: Path) -> None:
    save(tmp_path, 1, model={"hidden_size": 256, "num_moe_experts": 4, "hybrid_override_pattern": "M*EM-E"})
    assert checkpoints.check_compatible(tmp_path, SHAPE).startswith("shape matches")
    # an iteration directory given directly is read too
    assert checkpoints.check_compatible(tmp_path / "iter_0000001", SHAPE).startswith("shape matches")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"hidden_size": 2688}, "hidden_size 2688"),
        ({"num_moe_experts": 128}, "num_moe_experts 128"),
        ({"hybrid_layer_pattern": "M*"}, r"hybrid_layer_pattern 'M\*'"),
    ],
)
def test_checkpoint_of_another_model_is_invalid_input(tmp_path: Path, model: dict, message: str) -> None:
    save(tmp_path, 1, model=model)
    with pytest.raises(InvalidInputError, match=message) as caught:
        checkpoints.check_compatible(tmp_path, SHAPE)
    assert caught.value.exit_code == 3
    assert "omni3-import" in (caught.value.fix or "")


def test_unreadable_or_absent_run_config_is_not_compared(tmp_path: Path) -> None:
    assert checkpoints.check_compatible(tmp_path, SHAPE).startswith("no run_config.yaml")
    path = save(tmp_path, 1)
    (path / "run_config.yaml").write_text("model: !!python/object:torch.dtype {}\n")
    assert "unreadable as plain YAML" in checkpoints.check_compatible(tmp_path, SHAPE)
