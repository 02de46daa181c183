"""run_cli: one stderr line and the right exit code for every error, flags checked before the command runs."""

from __future__ import annotations

import pytest

from omni3_shared.cli import ToolCommands, run_cli
from omni3_shared.errors import InvalidInputError, NotAvailableYet, Omni3Error, ToolFailure, UsageError
from omni3_shared.settings import ToolSettings

NAME = "omni3-demo"


class DemoSettings(ToolSettings):
    level: int = 3
    """How hard to try."""


class DemoCommands(ToolCommands):
    """A demo tool. Checks before any work: the demo input exists."""

    _settings_cls = DemoSettings

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def run(
        self,
        *overrides: str,
        level: int | None = None,
        strict: bool | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """Run the demo (the default command).

        Args:
            overrides: section.field=value pairs.
            level: how hard to try.
            strict: be strict.
            force: replace the output.
            dry_run: only print the plan.
        """
        self.calls.append(dict(overrides=overrides, level=level, strict=strict, force=force, dry_run=dry_run))

    def fail(self, kind: str = "usage") -> None:
        """Raise one of omni3's errors."""
        errors: dict[str, Omni3Error] = {
            "usage": UsageError("the flag is wrong", fix="use another"),
            "input": InvalidInputError("the input is broken.", fix="rebuild it."),
            "failure": ToolFailure("the conversion failed"),
            "later": NotAvailableYet("flying", "issue #99"),
        }
        raise errors[kind]

    def crash(self) -> None:
        """Fail in a way nobody planned."""
        raise ValueError("something\nunexpected")

    def interrupt(self) -> None:
        raise KeyboardInterrupt


def run(argv: list[str]) -> tuple[int, DemoCommands]:
    commands = DemoCommands()
    return run_cli(commands, NAME, argv, default_command="run"), commands


@pytest.mark.parametrize(
    ("kind", "code", "line"),
    [
        ("usage", 2, "omni3-demo: error: the flag is wrong. Fix: use another."),
        ("input", 3, "omni3-demo: error: the input is broken. Fix: rebuild it."),
        ("failure", 1, "omni3-demo: error: the conversion failed."),
        ("later", 2, "omni3-demo: error: flying is not available in this version of omni3. Fix: it arrives with"),
    ],
)
def test_omni3_error_is_one_stderr_line_and_its_code(
    capsys: pytest.CaptureFixture[str], kind: str, code: int, line: str
) -> None:
    rc, _ = run(["fail", f"--kind={kind}"])
    captured = capsys.readouterr()
    assert rc == code
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(line)
    assert "Traceback" not in captured.err


def test_unexpected_exception_is_exit_1_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = run(["crash"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err == (
        "omni3-demo: error: unexpected ValueError: something unexpected. "
        "Fix: rerun with --debug for the traceback and report it if it persists.\n"
    )


def test_debug_shows_the_traceback_of_an_unexpected_exception(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = run(["crash", "--debug"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback (most recent call last)" in err
    assert 'raise ValueError("something\\nunexpected")' in err
    assert err.splitlines()[-1].startswith("omni3-demo: error: unexpected ValueError")


def test_debug_keeps_the_exit_code_of_an_omni3_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = run(["--debug", "fail", "--kind=input"])
    err = capsys.readouterr().err
    assert rc == 3  # --debug adds the traceback; a pipeline still sees "invalid input"
    assert "Traceback (most recent call last)" in err
    assert "InvalidInputError" in err


def test_keyboard_interrupt_publishes_nothing_and_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = run(["interrupt"])
    assert rc == 130
    assert "nothing was published" in capsys.readouterr().err


def test_unknown_flag_is_refused_before_the_command_runs(capsys: pytest.CaptureFixture[str]) -> None:
    rc, commands = run(["--levle", "5"])
    err = capsys.readouterr().err
    assert rc == 2
    assert commands.calls == []
    assert err.count("\n") == 1
    assert "unknown flag --levle for 'omni3-demo run'" in err
    assert "did you mean --level?" in err


def test_unknown_flag_without_a_close_match_has_no_hint(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = run(["run", "--zzzz"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown flag --zzzz" in err
    assert "did you mean" not in err


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, commands = run(["frobnicate"])
    assert rc == 2
    assert commands.calls == []


def test_default_command_runs_without_arguments() -> None:
    rc, commands = run([])
    assert rc == 0
    assert commands.calls == [dict(overrides=(), level=None, strict=None, force=False, dry_run=False)]


def test_flags_and_underscore_spelling() -> None:
    rc, commands = run(["--level", "5", "--dry_run"])
    assert rc == 0
    assert commands.calls[0]["level"] == 5
    assert commands.calls[0]["dry_run"] is True


def test_bare_dry_run_does_not_swallow_a_positional() -> None:
    rc, commands = run(["--dry-run", "train.train_iters=20", "model.seq_length=64"])
    assert rc == 0
    assert commands.calls[0]["dry_run"] is True
    assert commands.calls[0]["overrides"] == ("train.train_iters=20", "model.seq_length=64")


def test_bare_optional_switch_does_not_swallow_a_positional() -> None:
    rc, commands = run(["--strict", "train.train_iters=20"])
    assert rc == 0
    assert commands.calls[0]["strict"] is True
    assert commands.calls[0]["overrides"] == ("train.train_iters=20",)


@pytest.mark.parametrize(
    ("argv", "force", "strict"),
    [
        (["--force=false", "--strict=false"], False, False),
        (["--force=False", "--strict=no"], False, False),
        (["--force=true", "--strict=1"], True, True),
        (["--force", "false", "--strict", "true"], False, True),
        (["--noforce"], False, None),
    ],
)
def test_switch_values_are_booleans(argv: list[str], force: bool, strict: bool | None) -> None:
    rc, commands = run(argv)
    assert rc == 0
    assert commands.calls[0]["force"] is force  # the string 'false' would be truthy: a forced overwrite
    assert commands.calls[0]["strict"] is strict


def test_switch_with_a_non_boolean_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    rc, commands = run(["--force=maybe"])
    assert rc == 2
    assert commands.calls == []
    assert "--force takes true or false" in capsys.readouterr().err


def help_text(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err  # Fire writes help to stderr


def test_top_level_help_shows_the_docstring_and_commands(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["-h"]):
        rc, commands = run(argv)
        assert rc == 0
        assert commands.calls == []
        text = help_text(capsys)
        assert "Checks before any work" in text
        assert "settings" in text
        assert "crash" in text


@pytest.mark.parametrize(
    "argv",
    [["run", "--help"], ["run", "-h"], ["--level", "1", "--help"], ["--dry-run", "a.b=1", "--force", "--help"]],
)
def test_help_of_the_command_never_runs_it(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    rc, commands = run(argv)
    assert rc == 0
    assert commands.calls == []  # Fire alone would run the command with the earlier flags, then show help
    text = help_text(capsys)
    assert "Run the demo" in text
    assert "--level" in text


def test_settings_lists_every_setting_with_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = run(["settings"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "OMNI3_STORAGE_ROOT" in out
    assert "OMNI3_LEVEL" in out
    assert "How hard to try." in out
    rc, _ = run(["settings", "--markdown"])
    assert rc == 0
    assert "| `level` | `OMNI3_LEVEL` | `3` | How hard to try. |" in capsys.readouterr().out
