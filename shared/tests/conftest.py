"""Every test here runs without the machine's OMNI3_* settings, in its own scratch directory."""

import pytest


@pytest.fixture(autouse=True)
def _isolated(omni3_isolated: object) -> None:
    """See omni3_shared.pytest_plugin: omni3_isolated and make_artifact come from there."""
