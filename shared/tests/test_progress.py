"""Progress lines: ``label: done/total unit (pct), rate unit/s, ETA h:mm:ss``, rate-limited, on a stream."""

from __future__ import annotations

import io

import pytest

from omni3_shared import progress as progress_module
from omni3_shared.progress import Progress, format_duration


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module, "time", fake)
    return fake


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00:00"), (59.9, "0:00:59"), (61, "0:01:01"), (3 * 3600 + 5, "3:00:05"), (-4, "0:00:00")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_line_with_total_has_percentage_rate_and_eta(clock: Clock) -> None:
    stream = io.StringIO()
    progress = Progress("shards", total=100, unit="samples", interval_s=5, stream=stream)
    clock.now += 10
    progress.advance(25)
    assert stream.getvalue() == "shards: 25/100 samples (25%), 2.5 samples/s, ETA 0:00:30\n"


def test_reports_at_most_once_per_interval(clock: Clock) -> None:
    stream = io.StringIO()
    progress = Progress("convert", total=10, interval_s=5, stream=stream)
    clock.now += 1
    progress.advance()  # the first advance always reports
    clock.now += 2
    progress.advance()  # 2 s later: quiet
    clock.now += 3
    progress.advance(2, shard=3)  # 5 s after the last report: reports, with the detail
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0] == "convert: 1/10 items (10%), 1.0 items/s, ETA 0:00:09"
    assert lines[1] == "convert: 4/10 items (40%), 0.7 items/s, shard 3, ETA 0:00:09"


def test_unknown_total_shows_elapsed_instead_of_eta(clock: Clock) -> None:
    stream = io.StringIO()
    progress = Progress("records", total=None, interval_s=0, stream=stream)
    clock.now += 125
    progress.advance(250)
    assert stream.getvalue() == "records: 250 items, 2.0 items/s, elapsed 0:02:05\n"


def test_finish_always_reports(clock: Clock) -> None:
    stream = io.StringIO()
    progress = Progress("write", total=4, interval_s=3600, stream=stream)
    clock.now += 1
    progress.advance(1)
    progress.advance(3)  # inside the interval: quiet
    clock.now += 1
    progress.finish()
    assert stream.getvalue().splitlines()[-1] == "write: 4/4 items (100%), 2.0 items/s, ETA 0:00:00 done"


def test_writes_to_stderr_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    Progress("x", total=2).advance()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("x: 1/2 items (50%)")
