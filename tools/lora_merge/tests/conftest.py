"""Every test here runs without the machine's OMNI3_* settings, in its own scratch directory.

``make_lora_run`` and ``make_lora_base`` (a LoRA training run and its base checkpoint) come from the omni3 pytest
plugin, omni3_shared.pytest_plugin, with ``omni3_isolated`` and ``make_artifact``.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated(omni3_isolated: object) -> None:
    """See omni3_shared.pytest_plugin."""
