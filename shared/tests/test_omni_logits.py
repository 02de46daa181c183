"""How two sets of logits are compared by every omni3 check (CPU: the comparison is plain torch)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omni3_shared.omni_logits import logit_stats, within_limits


def logits(seed: int) -> torch.Tensor:
    return torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(seed))


def test_the_same_logits_pass_with_zero_error() -> None:
    stats = logit_stats(logits(0), logits(0).clone())
    assert stats["max_abs_err"] == 0.0 and stats["argmax_agreement"] == 1.0 and stats["finite"]
    assert within_limits(stats)


def test_bf16_rounding_passes_and_other_weights_fail() -> None:
    reference = logits(0)
    assert within_limits(logit_stats(reference, reference.to(torch.bfloat16)))
    assert not within_limits(logit_stats(reference, logits(1)))  # a lost or mis-mapped tensor looks like this


def test_the_bar_scales_with_the_logits() -> None:
    """bf16 noise grows with the logits (0.0268 on the Nano-shaped proxy, 4x H200): the same relative error passes
    or fails alike at any size, and so does the mean error a forward of other weights leaves."""
    reference = logits(0)
    noise = 0.05 * torch.randn(reference.shape, generator=torch.Generator().manual_seed(2))
    relative = logit_stats(reference, reference + noise)["relative_mean_err"]
    for size in (0.25, 1.0, 8.0):
        stats = logit_stats(size * reference, size * (reference + noise))
        assert stats["relative_mean_err"] == pytest.approx(relative)
        assert within_limits(stats)
        assert not within_limits(logit_stats(size * reference, size * logits(1)))
    assert logit_stats(reference, reference + noise)["mean_abs_logit"] == pytest.approx(reference.abs().mean().item())


def test_all_zero_reference_logits_fail() -> None:
    zeros = torch.zeros(1, 4, 8)
    assert not within_limits(logit_stats(zeros, zeros + 0.01))


def test_non_finite_logits_fail() -> None:
    broken = logits(0)
    broken[0, 3, 5] = float("nan")
    stats = logit_stats(logits(0), broken)
    assert stats["finite"] is False and not within_limits(stats)


def test_the_mismatch_fix_names_a_missing_vision_tower(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from omni3_shared.omni_logits import logit_mismatch_fix

    with_tower, without = tmp_path / "with", tmp_path / "without"
    for folder, names in ((with_tower, ["vision_model.a.weight", "language_model.b.weight"]), (without, ["x.weight"])):
        folder.mkdir()
        save_file({name: torch.zeros(2) for name in names}, str(folder / "model.safetensors"))
    assert logit_mismatch_fix(with_tower, "rerun") == "rerun"
    message = logit_mismatch_fix(without, "rerun")
    assert "has no vision tensors" in message and "--noverify" in message
