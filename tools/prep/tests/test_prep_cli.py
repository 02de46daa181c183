"""omni3-prep's command line: subcommands, settings precedence, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prep_testkit import manifest


def test_settings_lists_every_setting_with_its_variable(run) -> None:
    code, out, _ = run("settings")
    assert code == 0
    for name in ("OMNI3_OUTPUT", "OMNI3_WORKERS", "OMNI3_SKIP_BAD", "OMNI3_SHARD_SIZE", "OMNI3_SAMPLE"):
        assert name in out


def test_help_lists_the_sources() -> None:
    # Fire shows help through a pager process, so only a real process's output shows it.
    result = subprocess.run([sys.executable, "-m", "omni3_prep", "--help"], capture_output=True, text=True, check=False)
    code, out = result.returncode, result.stdout + result.stderr  # Fire writes help to stderr when piped
    assert code == 0
    for command in ("synth", "jsonl", "valor32k", "hf", "energon"):
        assert command in out


@pytest.mark.parametrize(
    ("argv", "code", "text"),
    [
        (["synth"], 2, "--output is required"),
        (["jsonl", "--output", "out"], 2, "--input is required"),
        (["jsonl", "--input", "missing.jsonl", "--output", "out"], 3, "does not exist"),
        (["valor32k", "--videos", ".", "--output", "out"], 2, "--qa is required"),
        (["synth", "--output", "out", "--workers", "0"], 2, "workers"),
        (["synth", "--output", "out", "--kind", "movies"], 2, "kind"),
        (["energon", "--input", "nowhere"], 3, "does not exist"),
    ],
)
def test_mistakes_get_one_line_and_their_exit_code(run, argv: list[str], code: int, text: str) -> None:
    got, out, err = run(*argv)
    assert got == code and out == ""
    assert err.startswith("omni3-prep: error: ") and err.count("\n") == 1 and text in err


def test_environment_and_settings_file_fill_unset_flags(run, monkeypatch: pytest.MonkeyPatch) -> None:
    Path("prep.yaml").write_text(yaml.safe_dump({"kind": "receipts", "sample": 3}))
    monkeypatch.setenv("OMNI3_SEED", "11")
    code, _, err = run("synth", "--output", "out", "--settings-file", "prep.yaml")
    assert code == 0, err
    extra = manifest(Path("out"))["extra"]
    assert extra["source"] == {**extra["source"], "kind": "receipts", "seed": 11, "samples": 3}
    code, _, err = run("synth", "--output", "out2", "--settings-file", "prep.yaml", "--seed", "4")
    assert code == 0 and manifest(Path("out2"))["extra"]["source"]["seed"] == 4


def test_dry_run_checks_the_output_without_writing(run) -> None:
    assert run("synth", "--kind", "receipts", "--sample", "2", "--output", "out")[0] == 0
    code, out, _ = run("synth", "--kind", "receipts", "--sample", "2", "--output", "out", "--dry-run")
    assert code == 0 and "already exists" in out and "problem" in out
