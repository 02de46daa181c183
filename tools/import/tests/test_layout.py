"""The model-parallel sizes omni3-import builds, initialises and reloads with (one place: core.layout)."""

import pytest

from omni3_import.core import layout
from omni3_import.settings import ImportSettings


@pytest.mark.parametrize(
    ("tp", "ep", "expert_tp"),
    [(1, 1, 1), (2, 1, 2), (1, 2, 1), (4, 8, 1)],  # experts are not split by TP once EP > 1
)
def test_layout_of_a_run(tp: int, ep: int, expert_tp: int) -> None:
    settings = ImportSettings(hf_model="m", megatron_path="c", tensor_parallel_size=tp, expert_parallel_size=ep)
    assert layout(settings) == {
        "tensor_model_parallel_size": tp,
        "expert_model_parallel_size": ep,
        "expert_tensor_parallel_size": expert_tp,
        "pipeline_model_parallel_size": 1,
    }
