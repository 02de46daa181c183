"""The production-layout chain of issue 6 (tests/gpu/test_production_layout.py), checked on the CPU: which layouts
a machine runs, and that omni3-sft's own preflight accepts each run of the chain on the proxy model."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni3_sft import preflight, stage_config
from omni3_sft.settings import SftSettings
from omni3_shared.pytest_plugin import load_script
from omni3_shared.settings import load_settings

TESTS = Path(__file__).resolve().parents[1]
chain = load_script(TESTS / "gpu" / "test_production_layout.py", "omni3_production_layout")
bench = load_script(TESTS / "bench" / "sft.py", "omni3_bench_sft")


def test_layouts_by_gpu_count() -> None:
    assert chain.layouts_for(8) == (chain.Layout(4, 8, 8), chain.Layout(4, 4, 4))  # the stage configs' own layout
    assert chain.layouts_for(4) == (chain.Layout(2, 4, 4), chain.Layout(2, 2, 2))
    assert chain.layouts_for(2) is None


@pytest.mark.parametrize("gpus", [8, 4])
@pytest.mark.parametrize("config", ["default", "image_text_peft"])
def test_preflight_accepts_every_run_of_the_chain_on_the_proxy(config: str, gpus: int) -> None:
    shape = bench.proxy_shape(chain.PROXY_LAYERS, chain.PROXY_SEQ)
    assert shape.llm.n_routed_experts == 128 and shape.llm.hidden_size == 2688
    for layout in chain.layouts_for(gpus):
        overrides = (*layout.overrides(), f"train.train_iters={chain.ITERATIONS}", "train.log_interval=1")
        document = stage_config.read_variant(stage_config.variant_path(config, None))
        parsed = stage_config.validate(stage_config.apply_overrides(document, overrides), config)
        resolved = stage_config.interpolate(parsed, load_settings(SftSettings, {"trust_remote_code": True}))
        report = preflight.check(resolved, shape, preflight.WorldSize(layout.gpus, "test"), 80.0)
        assert report.problems == [], (layout, [problem.message for problem in report.problems])
        assert "warning" not in report.section["memory"], report.warnings  # fits the 80 GB card
        # The only warning: at EP above 1 Megatron-Bridge pads every sequence to model.seq_length.
        seq_length = resolved["model"]["seq_length"]
        assert report.warnings == [preflight.padding_warning(preflight.Layout.from_resolved(resolved), seq_length)]


def test_loss_window_and_scaling_arithmetic() -> None:
    losses = {i: float(i) for i in range(1, 51)}
    assert chain.mean_tail(losses) == 48.0  # iterations 46-50
    assert chain.scaling({"tokens_per_s_per_gpu": 900.0}, {"tokens_per_s_per_gpu": 1000.0}) == 0.9
    assert chain.scaling({}, {"tokens_per_s_per_gpu": 1000.0}) is None
