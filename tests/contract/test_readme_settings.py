"""README drift: each tool's settings table in README.md is exactly what `omni3-<tool> settings --markdown` prints.

Regenerate a table with `omni3-<tool> settings --markdown` and paste it between the tool's markers:
``<!-- settings:omni3-<tool> -->`` and ``<!-- /settings:omni3-<tool> -->``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

import pytest

from omni3_shared.cli import ToolCommands
from omni3_shared.settings import ToolSettings, render_settings_markdown

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def settings_class(script: str) -> type[ToolSettings]:
    """The settings class the tool's own `settings` command prints, found through its commands class."""
    module = importlib.import_module(SCRIPTS[script].partition(":")[0])
    commands = [
        member
        for _, member in inspect.getmembers(module, inspect.isclass)
        if issubclass(member, ToolCommands) and member is not ToolCommands and member.__module__ == module.__name__
    ]
    assert len(commands) == 1, f"{module.__name__} must define exactly one ToolCommands class, found {commands}"
    settings_cls = commands[0]._settings_cls
    assert settings_cls is not ToolSettings, f"{commands[0].__name__} does not set _settings_cls"
    return settings_cls


def readme_section(text: str, script: str) -> str:
    start, end = f"<!-- settings:{script} -->", f"<!-- /settings:{script} -->"
    assert text.count(start) == 1, f"README.md needs exactly one {start} marker"
    assert text.count(end) == 1, f"README.md needs exactly one {end} marker"
    before, _, rest = text.partition(start)
    section, _, _ = rest.partition(end)
    assert end not in before, f"{end} comes before {start}"
    return section.strip("\n")


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_readme_settings_table_matches_the_settings_class(script: str) -> None:
    assert README.is_file(), "README.md is missing"
    expected = render_settings_markdown(settings_class(script)).strip("\n")
    actual = readme_section(README.read_text(), script)
    assert actual == expected, (
        f"README.md's table for {script} is stale: regenerate it with `{script} settings --markdown`"
    )


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_settings_markdown_command_prints_the_same_table(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(SCRIPTS[script].partition(":")[0])
    assert module.cli(["settings", "--markdown"]) == 0
    assert capsys.readouterr().out == render_settings_markdown(settings_class(script))
