"""Settings precedence (flag > OMNI3_* env > settings file > variant defaults > default) and path resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from omni3_shared.errors import ExitCode, UsageError
from omni3_shared.settings import (
    SETTINGS_FILE_ENV,
    ToolSettings,
    load_settings,
    render_settings_markdown,
    render_settings_text,
    settings_rows,
)


class DemoSettings(ToolSettings):
    name: str = "default"
    """The demo's name."""

    count: int = 1
    """How many of them."""

    data_path: Path = Path("data/demo")
    """Where the data lies."""

    optional: str | None = None
    """Unset unless given."""


def write_settings_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def settings_file(tmp_path: Path) -> Path:
    return write_settings_file(tmp_path / "settings.yaml", "name: file\ncount: 3\n")


def test_default_when_nothing_is_given() -> None:
    settings = load_settings(DemoSettings, {})
    assert (settings.name, settings.count, settings.optional) == ("default", 1, None)


def test_variant_defaults_beat_the_default() -> None:
    settings = load_settings(DemoSettings, {}, variant_defaults={"name": "variant"})
    assert settings.name == "variant"
    assert settings.count == 1


def test_settings_file_beats_variant_defaults(settings_file: Path) -> None:
    settings = load_settings(DemoSettings, {}, settings_file, variant_defaults={"name": "variant", "optional": "v"})
    assert (settings.name, settings.count) == ("file", 3)
    assert settings.optional == "v"  # a variant default the file does not name still applies


def test_environment_beats_settings_file(monkeypatch: pytest.MonkeyPatch, settings_file: Path) -> None:
    monkeypatch.setenv("OMNI3_NAME", "env")
    settings = load_settings(DemoSettings, {}, settings_file, variant_defaults={"name": "variant"})
    assert settings.name == "env"
    assert settings.count == 3


def test_flag_beats_environment(monkeypatch: pytest.MonkeyPatch, settings_file: Path) -> None:
    monkeypatch.setenv("OMNI3_NAME", "env")
    monkeypatch.setenv("OMNI3_COUNT", "7")
    settings = load_settings(DemoSettings, {"name": "flag"}, settings_file, variant_defaults={"name": "variant"})
    assert settings.name == "flag"
    assert settings.count == 7


def test_none_flags_do_not_mask_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI3_NAME", "env")
    settings = load_settings(DemoSettings, {"name": None, "count": None})
    assert settings.name == "env"
    assert settings.count == 1


def test_settings_file_from_environment_variable(monkeypatch: pytest.MonkeyPatch, settings_file: Path) -> None:
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(settings_file))
    assert load_settings(DemoSettings, {}).name == "file"


def test_settings_file_argument_beats_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(write_settings_file(tmp_path / "env.yaml", "name: from-env-file\n")))
    chosen = write_settings_file(tmp_path / "flag.yaml", "name: from-flag-file\n")
    assert load_settings(DemoSettings, {}, chosen).name == "from-flag-file"


def test_unknown_key_in_settings_file_is_a_usage_error(tmp_path: Path) -> None:
    path = write_settings_file(tmp_path / "typo.yaml", "nmae: oops\n")
    with pytest.raises(UsageError) as caught:
        load_settings(DemoSettings, {}, path)
    assert caught.value.exit_code == ExitCode.USAGE == 2
    assert "unknown setting 'nmae'" in caught.value.one_line()
    assert "name" in (caught.value.fix or "")


def test_missing_settings_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_settings(DemoSettings, {}, tmp_path / "absent.yaml")


@pytest.mark.parametrize("text", ["name: [unclosed\n", "- just\n- a list\n"])
def test_malformed_settings_file_is_a_usage_error(tmp_path: Path, text: str) -> None:
    path = write_settings_file(tmp_path / "bad.yaml", text)
    with pytest.raises(UsageError):
        load_settings(DemoSettings, {}, path)


def test_empty_settings_file_is_accepted(tmp_path: Path) -> None:
    path = write_settings_file(tmp_path / "empty.yaml", "")
    assert load_settings(DemoSettings, {}, path).name == "default"


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI3_COUNT", "many")
    with pytest.raises(UsageError) as caught:
        load_settings(DemoSettings, {})
    line = caught.value.one_line()
    assert caught.value.exit_code == 2
    assert "OMNI3_COUNT" in line
    assert "--count" in line
    assert "\n" not in line


def test_bad_flag_value_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="count"):
        load_settings(DemoSettings, {"count": "many"})


def test_relative_path_resolves_under_storage_root(tmp_path: Path) -> None:
    settings = load_settings(DemoSettings, {"storage_root": str(tmp_path / "store")})
    assert settings.resolve_path(settings.data_path) == tmp_path / "store" / "data" / "demo"


def test_relative_storage_root_resolves_against_the_working_directory(tmp_path: Path) -> None:
    settings = load_settings(DemoSettings, {})  # storage_root "." and the fixture's cwd is tmp_path
    assert settings.resolve_path("x/y") == tmp_path / "x" / "y"
    assert settings.resolve_path("x/y").is_absolute()


def test_absolute_path_is_kept(tmp_path: Path) -> None:
    settings = load_settings(DemoSettings, {"storage_root": str(tmp_path / "store")})
    assert settings.resolve_path("/elsewhere/data") == Path("/elsewhere/data")


def test_home_and_variables_are_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DEMO_DIR", str(tmp_path / "var"))
    settings = load_settings(DemoSettings, {"storage_root": "$DEMO_DIR/store"})
    assert settings.resolve_path("~/data") == tmp_path / "home" / "data"
    assert settings.resolve_path("$DEMO_DIR/data") == tmp_path / "var" / "data"
    assert settings.resolve_path("relative") == tmp_path / "var" / "store" / "relative"


def test_storage_root_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OMNI3_STORAGE_ROOT", str(tmp_path / "shared"))
    settings = load_settings(DemoSettings, {})
    assert settings.resolve_path(settings.data_path) == tmp_path / "shared" / "data" / "demo"


def test_settings_rows_name_every_field_with_its_variable() -> None:
    rows = {name: (env, default, description) for name, env, default, description in settings_rows(DemoSettings)}
    assert list(rows) == ["storage_root", "name", "count", "data_path", "optional"]
    assert rows["count"] == ("OMNI3_COUNT", "1", "How many of them.")
    assert rows["optional"][1] == "(unset)"
    markdown = render_settings_markdown(DemoSettings)
    assert "| `data_path` | `OMNI3_DATA_PATH` | `data/demo` | Where the data lies. |" in markdown
    text = render_settings_text(DemoSettings)
    assert all(env in text for env, _, _ in rows.values())
