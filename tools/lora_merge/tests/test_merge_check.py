"""The weight-level merge check on real tensors: a right merge fits alpha / dim, wrong ones are named."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from omni3_lora_merge.merge_check import merge_residuals

torch = pytest.importorskip("torch")
SCALE = 2.0  # alpha 32 / dim 16, as the tiny LoRA runs


def adapter(out_features: int = 24, in_features: int = 16, rank: int = 4, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "A": torch.randn(rank, in_features, generator=generator),
        "B": torch.randn(out_features, rank, generator=generator) * 0.01,
    }


def merged_with(base: torch.Tensor, factors: dict, scale: float) -> torch.Tensor:
    return (base.float() + scale * factors["B"] @ factors["A"]).bfloat16()


def test_a_right_merge_fits_the_scale_and_leaves_only_rounding() -> None:
    factors = {f"layer{i}.weight": adapter(seed=i) for i in range(3)}
    base = {name: torch.randn(24, 16, generator=torch.Generator().manual_seed(9)).bfloat16() for name in factors}
    merged = {name: merged_with(base[name], pair, SCALE) for name, pair in factors.items()}
    report = merge_residuals(base, merged, factors, SCALE)
    assert report["tensors"] == 3 and report["mis_merged"] == 0, report
    assert report["fitted_scale_min"] == pytest.approx(SCALE, rel=0.05)
    assert report["fitted_scale_max"] == pytest.approx(SCALE, rel=0.05)


@pytest.mark.parametrize(
    ("label", "wrong"),
    [
        ("lost", lambda base, pair: base),
        ("doubled", lambda base, pair: merged_with(base, pair, 2 * SCALE)),
        ("other adapter", lambda base, pair: merged_with(base, adapter(seed=99), SCALE)),
    ],
)
def test_a_wrong_merge_is_named(label: str, wrong: Callable) -> None:
    factors = {"good.weight": adapter(seed=1), "bad.weight": adapter(seed=2)}
    base = {name: torch.zeros(24, 16).bfloat16() for name in factors}
    merged = {
        "good.weight": merged_with(base["good.weight"], factors["good.weight"], SCALE),
        "bad.weight": wrong(base["bad.weight"], factors["bad.weight"]),
    }
    report = merge_residuals(base, merged, factors, SCALE)
    assert report["mis_merged"] == 1 and report["mis_merged_sample"] == ["bad.weight"], (label, report)
    assert report["worst"][0]["name"] == "bad.weight"


def test_a_zero_lora_b_and_a_shape_mismatch() -> None:
    zero = adapter()
    zero["B"] = torch.zeros_like(zero["B"])
    factors = {"zero.weight": zero, "transposed.weight": adapter()}
    base = {"zero.weight": torch.ones(24, 16), "transposed.weight": torch.ones(16, 24)}
    report = merge_residuals(base, dict(base), factors, SCALE)
    assert report["tensors"] == 1 and report["mis_merged_sample"] == ["transposed.weight"], report
