"""The settings base every tool's settings model derives from.

Precedence, highest first: CLI flag > ``OMNI3_*`` environment > settings file (YAML) > a stage variant's
``settings:`` block (sft) > default.
Fire hands flags over as init keyword arguments; flags the user did not pass arrive as ``None`` and are
dropped so they never mask the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from omni3_shared.errors import UsageError

ENV_PREFIX = "OMNI3_"
SETTINGS_FILE_ENV = "OMNI3_SETTINGS_FILE"

# The settings file and a variant's defaults are chosen per invocation, but pydantic-settings asks for
# sources on the class: a context variable carries them into settings_customise_sources without a global.
_file_layers: ContextVar[tuple[Path | None, Mapping[str, Any]]] = ContextVar(
    "omni3_settings_layers", default=(None, {})
)

SettingsT = TypeVar("SettingsT", bound="ToolSettings")


class ToolSettings(BaseSettings):
    """Settings every tool has. Subclasses add their own fields, each with a description."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True, use_attribute_docstrings=True
    )

    storage_root: Path = Path(".")
    """Root of the shared storage. Relative artifact paths resolve under it; the images set /data."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        settings_file, variant_defaults = _file_layers.get()
        if settings_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=settings_file))
        if variant_defaults:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=dict(variant_defaults)))
        return tuple(sources)

    def resolve_path(self, value: str | os.PathLike[str]) -> Path:
        """Expand ``~`` and ``$VARS``; a relative path lands under ``storage_root``."""
        path = Path(os.path.expandvars(os.path.expanduser(os.fspath(value))))
        if path.is_absolute():
            return path
        root = Path(os.path.expandvars(os.path.expanduser(os.fspath(self.storage_root))))
        return (root / path).absolute()


def field_description(field: FieldInfo) -> str:
    return " ".join((field.description or "").split())


def load_settings(
    settings_cls: type[SettingsT],
    flags: Mapping[str, Any],
    settings_file: str | os.PathLike[str] | None = None,
    variant_defaults: Mapping[str, Any] | None = None,
) -> SettingsT:
    """Build settings from CLI flags, the environment, an optional YAML settings file and variant defaults.

    Raises:
        UsageError: a value does not validate, the settings file is unreadable or names an unknown setting.
    """
    chosen_file = settings_file or os.environ.get(SETTINGS_FILE_ENV) or None
    path = Path(chosen_file) if chosen_file else None
    if path is not None:
        _check_settings_file(path)
    given = {name: value for name, value in flags.items() if value is not None}
    token = _file_layers.set((path, variant_defaults or {}))
    try:
        return settings_cls(**given)
    except ValidationError as exc:
        raise _usage_error_from(exc, settings_cls) from None
    finally:
        _file_layers.reset(token)


def _check_settings_file(path: Path) -> None:
    if not path.is_file():
        raise UsageError(f"settings file {path} does not exist", fix=f"create it or unset {SETTINGS_FILE_ENV}")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"settings file {path} is not valid YAML ({exc.__class__.__name__})") from None
    if content is not None and not isinstance(content, dict):
        raise UsageError(f"settings file {path} must be a mapping of setting names to values")


def _usage_error_from(exc: ValidationError, settings_cls: type[BaseSettings]) -> UsageError:
    problems = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        env = f"{ENV_PREFIX}{name.upper()}"
        if error["type"] == "extra_forbidden":
            problems.append(f"unknown setting '{name}'")
        else:
            problems.append(f"{name} (flag --{name.replace('_', '-')} or {env}): {error['msg']}")
    known = ", ".join(settings_cls.model_fields)
    return UsageError("invalid settings: " + "; ".join(problems), fix=f"known settings are: {known}")


def settings_rows(settings_cls: type[BaseSettings]) -> list[tuple[str, str, str, str]]:
    """(name, environment variable, default, description) for every setting, in declaration order."""
    rows = []
    for name, field in settings_cls.model_fields.items():
        default = "" if field.is_required() else _render_default(field.get_default(call_default_factory=True))
        rows.append((name, f"{ENV_PREFIX}{name.upper()}", default, field_description(field)))
    return rows


def _render_default(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    if hasattr(value, "value"):  # enums
        return str(value.value)
    return str(value)


def render_settings_markdown(settings_cls: type[BaseSettings]) -> str:
    lines = ["| setting | environment | default | description |", "|---|---|---|---|"]
    for name, env, default, description in settings_rows(settings_cls):
        lines.append(f"| `{name}` | `{env}` | `{default}` | {description} |")
    return "\n".join(lines) + "\n"


def render_settings_text(settings_cls: type[BaseSettings]) -> str:
    rows = [("SETTING", "ENVIRONMENT", "DEFAULT", "DESCRIPTION"), *settings_rows(settings_cls)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3] for row in rows)
