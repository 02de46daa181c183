"""The runner every omni3 CLI shares: Fire for parsing, one line and an exit code for every error.

Each tool defines one class whose public methods are its subcommands (flags default to ``None`` so that
the environment is not masked) and a ``main()`` that calls ``run_cli``. Errors derived from ``Omni3Error``
become ``<tool>: error: <cause>. Fix: <fix>.`` on stderr and their exit code; anything else is exit 1
with the same one line. ``--debug`` anywhere on the command line prints the traceback before that line.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import sys
import traceback
import typing
from collections.abc import Sequence
from typing import Any

import fire

from omni3_shared.errors import ExitCode, Omni3Error, UsageError
from omni3_shared.settings import ToolSettings, render_settings_markdown, render_settings_text

HELP_FLAGS = ("--help", "-h")


def run_cli(component: Any, name: str, argv: Sequence[str] | None = None, default_command: str | None = None) -> int:
    """Run ``component`` as the CLI ``name`` and return the exit code.

    ``default_command`` is the subcommand used when the command line starts with a flag, so that
    ``omni3-sft --config tiny`` means ``omni3-sft run --config tiny``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [arg for arg in args if arg != "--debug"]
    if default_command and (not args or (args[0].startswith("-") and args[0] not in HELP_FLAGS)):
        args.insert(0, default_command)
    setup_logging(name, debug)
    os.environ.setdefault("PAGER", "cat")  # Fire pages long help on a terminal; a pipeline must never block
    try:
        args = normalize_flags(component, args, name)
        fire.Fire(component, command=args, name=name)
    except fire.core.FireExit as exc:
        return int(exc.code or 0)
    except Omni3Error as exc:
        if debug:  # the traceback, then the same line and exit code: --debug never changes the outcome
            traceback.print_exc()
        print(f"{name}: error: {exc.one_line()}", file=sys.stderr)
        return int(exc.exit_code)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"{name}: interrupted; nothing was published", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, never a traceback unless asked
        if debug:
            traceback.print_exc()
        detail = " ".join(str(exc).split()) or "no detail"
        print(
            f"{name}: error: unexpected {exc.__class__.__name__}: {detail}. "
            "Fix: rerun with --debug for the traceback and report it if it persists.",
            file=sys.stderr,
        )
        return int(ExitCode.FAILURE)
    return int(ExitCode.OK)


def normalize_flags(component: Any, args: Sequence[str], name: str) -> list[str]:
    """Refuse flags the subcommand does not take, and pin bare boolean flags to True.

    Fire calls the command first and complains about leftover arguments afterwards, so a mistyped flag
    would otherwise run the command with its defaults, and so would ``--help`` after other flags; a bare
    ``--dry-run`` followed by a positional argument would take that argument as its value.
    """
    args = list(args)
    if not args or args[0].startswith("-"):
        return args
    command = getattr(component, args[0], None)
    if command is None or not callable(command) or args[0].startswith("_"):
        return args
    parameters = inspect.signature(command).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return args
    known = {parameter.replace("_", "-"): p for parameter, p in parameters.items()}
    normalized = args[:1]
    index = 1
    while index < len(args):
        arg = args[index]
        index += 1
        if arg == "--":
            normalized.extend(args[index - 1 :])
            break
        if arg in HELP_FLAGS:  # Fire would run the command with the flags before --help, then show help
            return [args[0], "--help"]
        if not arg.startswith("--"):
            normalized.append(arg)
            continue
        flag, has_value, value = arg[2:].partition("=")
        flag = flag.replace("_", "-")
        parameter = known.get(flag)
        if parameter is None and flag.startswith("no") and flag[2:] in known:
            normalized.append(arg)
            continue
        if parameter is None:
            close = difflib.get_close_matches(flag, sorted(known), n=1)
            hint = f"did you mean --{close[0]}? " if close else ""
            raise UsageError(
                f"unknown flag --{flag} for '{name} {args[0]}'", fix=f"{hint}see '{name} {args[0]} --help'"
            )
        if not is_switch(parameter):
            normalized.append(arg)
            continue
        # Fire would keep "--force=false" as the (truthy) string 'false', and let a bare switch take the next
        # argument as its value: spell every switch out as True or False.
        if not has_value and index < len(args) and args[index].lower() in ("true", "false"):
            value, has_value = args[index], "="
            index += 1
        normalized.append(f"--{flag}={switch_value(flag, value) if has_value else True}")
    return normalized


TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})


def is_switch(parameter: inspect.Parameter) -> bool:
    """A flag typed ``bool`` or ``bool | None`` (a string annotation too, under postponed evaluation)."""
    if isinstance(parameter.default, bool):
        return True
    annotation = parameter.annotation
    if isinstance(annotation, str):
        return annotation.replace(" ", "") in ("bool", "bool|None", "None|bool", "Optional[bool]")
    return annotation is bool or set(typing.get_args(annotation)) == {bool, type(None)}


def switch_value(flag: str, value: str) -> bool:
    if value.lower() in TRUE_WORDS:
        return True
    if value.lower() in FALSE_WORDS:
        return False
    raise UsageError(f"--{flag} takes true or false, not '{value}'", fix=f"write --{flag} or --{flag}=false")


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time, so a caller that swaps it (pytest) is followed."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(name: str, debug: bool) -> None:
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter(f"{name} %(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True)


class ToolCommands:
    """Subcommands every tool has. A tool's Fire class derives from this and sets ``_settings_cls``."""

    _settings_cls: type[ToolSettings] = ToolSettings

    def settings(self, markdown: bool = False) -> None:
        """Print every setting: name, environment variable, default and description.

        Args:
            markdown: print a Markdown table (the README's table is generated this way).
        """
        table = render_settings_markdown if markdown else render_settings_text
        print(table(self._settings_cls), end="" if markdown else "\n")
