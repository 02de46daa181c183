"""The stall report in a real process: stacks on stderr when no step ends in time, silence while steps keep ending."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from omni3_sft import stage_config
from omni3_shared.errors import UsageError


def run_python(body: str) -> subprocess.CompletedProcess[str]:
    script = "import threading, time\nfrom omni3_sft.stall_report import StallReport\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)


def test_a_step_that_does_not_end_prints_where_it_is_stuck_and_repeats() -> None:
    done = run_python(
        """
        def first_iteration_stuck_in_autotuning():
            time.sleep(2.6)

        report = StallReport(1)
        report.step()
        first_iteration_stuck_in_autotuning()
        report.stop()
        """
    )
    assert done.stderr.count("no training step has ended for") == 2, done.stderr  # at 1 s and again at 2 s
    assert "rank 0: no training step has ended for 1 s" in done.stderr
    assert "-- thread MainThread" in done.stderr
    assert "in first_iteration_stuck_in_autotuning" in done.stderr


def test_steps_that_keep_ending_print_nothing_and_stop_silences_it() -> None:
    done = run_python(
        """
        report = StallReport(1)
        report.step()
        for _ in range(6):  # 3 s of steps of 0.5 s, each re-arming the 1 s timer
            time.sleep(0.5)
            report.step()
        report.stop()
        time.sleep(1.5)  # after stop: nothing more either
        """
    )
    assert "no training step" not in done.stderr, done.stderr


def test_zero_is_off() -> None:
    done = run_python(
        """
        report = StallReport(0)
        report.step()
        time.sleep(0.3)
        report.stop()
        assert not report.enabled and threading.active_count() == 1
        """
    )
    assert done.stderr == ""


def test_stage_config_defaults_to_off_and_rejects_negative_seconds() -> None:
    document = {
        "recipe": "nemotron_omni_cord_v2_sft_config",
        "dataset": {"path": "d"},
        "train": {"train_iters": 2, "global_batch_size": 1},
    }
    assert stage_config.validate(document, "t").train.stall_report_seconds == 0
    with_override = stage_config.apply_overrides(document, ("train.stall_report_seconds=30",))
    assert stage_config.validate(with_override, "t").train.stall_report_seconds == 30
    with pytest.raises(UsageError, match="stall_report_seconds"):
        stage_config.validate(stage_config.apply_overrides(document, ("train.stall_report_seconds=-1",)), "t")
