"""Error types of every omni3 tool and the exit codes they map to.

Callers' mistakes (bad flags, settings, inputs) are split from failures of the work itself, so that a
pipeline can tell "fix your command" (2), "fix your data" (3) and "retry or report" (1) apart.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    INVALID_INPUT = 3


class Omni3Error(Exception):
    """Base of every error a tool reports on one line, with the fix when one is known."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def one_line(self) -> str:
        text = self.message.rstrip(".") + "."
        if self.fix:
            text += f" Fix: {self.fix.rstrip('.')}."
        return " ".join(text.split())


class ToolFailure(Omni3Error):
    """The work itself failed (exit 1): a conversion, a check, a disk, a subprocess."""

    exit_code = ExitCode.FAILURE


class UsageError(Omni3Error):
    """A flag, setting or configuration is wrong (exit 2)."""

    exit_code = ExitCode.USAGE


class NotAvailableYet(UsageError):
    """A capability that exists in the CLI but is not delivered yet (exit 2); it never pretends to work."""

    def __init__(self, capability: str, delivered_by: str) -> None:
        super().__init__(
            f"{capability} is not available in this version of omni3",
            fix=f"it arrives with {delivered_by}; use --dry-run to check your inputs meanwhile",
        )


class InvalidInputError(Omni3Error):
    """An input artifact or file is missing, incomplete, of the wrong kind or malformed (exit 3)."""

    exit_code = ExitCode.INVALID_INPUT


class ArtifactExistsError(UsageError):
    """A complete artifact is already at the output path and --force was not given."""

    def __init__(self, path: str) -> None:
        super().__init__(f"a complete artifact already exists at {path}", fix="pass --force to replace it")


class LockedError(ToolFailure):
    """Another writer holds the output's lock."""
