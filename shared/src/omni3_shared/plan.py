"""Checking a command's inputs and outputs before any heavy work, and the plan ``--dry-run`` prints.

A tool lists what it reads (``InputSpec``) and writes (``OutputSpec``). ``preflight`` checks them all and
returns a ``Plan``: a dry run prints it, whatever it found; a real run stops on the first problem, with exit
3 for an input and exit 2 for an output, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omni3_shared.errors import InvalidInputError, Omni3Error, UsageError
from omni3_shared.manifest import ArtifactKind, InputRef, Manifest, describe_input
from omni3_shared.publish import check_output
from omni3_shared.settings import ToolSettings


@dataclass
class InputSpec:
    role: str
    path: Path
    kinds: tuple[ArtifactKind, ...] = ()
    allow_external: bool = False  # accept a plain directory without an omni3 manifest (e.g. an HF checkpoint)


def require_megatron_bridge(capability: str, tool: str) -> None:
    """Stop with exit 2 where Megatron-Bridge (and so CUDA and Transformer Engine) cannot be imported."""
    try:
        import megatron.bridge  # noqa: F401 (present in the NeMo-based GPU images)
    except ImportError:
        raise UsageError(
            f"{capability} needs Megatron-Bridge, which this environment lacks",
            fix=f"run it in the {tool} GPU image (NeMo base) or install the tool's [gpu] extra on a CUDA machine",
        ) from None


def hf_checkpoint_input(path: Path, role: str = "hf_model") -> InputSpec:
    """A Hugging Face checkpoint: an omni3 hf-checkpoint artifact or a plain HF directory."""
    return InputSpec(role, path, (ArtifactKind.HF_CHECKPOINT,), allow_external=True)


@dataclass
class OutputSpec:
    role: str
    path: Path
    kind: ArtifactKind


@dataclass
class Plan:
    """What a command would do; ``render()`` is what ``--dry-run`` prints."""

    tool: str
    action: str
    settings: dict[str, Any]
    config: dict[str, Any] | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    sections: dict[str, Any] = field(default_factory=dict)  # a tool's own findings, printed after the outputs
    problems: list[Omni3Error] = field(default_factory=list)
    input_refs: list[InputRef] = field(default_factory=list)
    input_manifests: dict[str, Manifest | None] = field(default_factory=dict)

    def raise_first_problem(self) -> None:
        if self.problems:
            raise self.problems[0]

    def stop_here(self, dry_run: bool) -> bool:
        """A dry run prints the plan and stops; a real run stops only by raising its first problem."""
        if dry_run:
            print(self.render(), end="")
            return True
        self.raise_first_problem()
        return False

    def render(self) -> str:
        document: dict[str, Any] = {"dry_run": f"{self.tool} {self.action}", "settings": self.settings}
        if self.config is not None:
            document["config"] = self.config
        document["inputs"] = self.inputs
        document["outputs"] = self.outputs
        for name, section in self.sections.items():
            document.setdefault(name, section)
        if self.not_checked:
            document["not_checked"] = self.not_checked
        if self.problems:
            document["verdict"] = f"{len(self.problems)} problem(s): the run would stop before any work"
        else:
            document["verdict"] = "ready: every check passed"
        return yaml.safe_dump(plain(document), sort_keys=False, width=120)


def plain(value: Any) -> Any:
    """Paths, enums and other values made YAML- and JSON-safe."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "value"):
        return value.value
    return str(value)


def preflight(
    tool: str,
    action: str,
    settings: ToolSettings,
    inputs: list[InputSpec],
    outputs: list[OutputSpec],
    force: bool = False,
    config: dict[str, Any] | None = None,
    not_checked: list[str] | None = None,
) -> Plan:
    """Check every input and output; collect problems instead of stopping at the first."""
    plan = Plan(tool=tool, action=action, settings=plain(settings.model_dump()), config=config)
    plan.not_checked = list(not_checked or [])
    for spec in inputs:
        entry: dict[str, Any] = {"role": spec.role, "path": str(spec.path)}
        try:
            ref, manifest = describe_input(spec.role, spec.path, spec.kinds or None, spec.allow_external)
        except InvalidInputError as exc:
            entry["status"] = f"not ready: {exc.one_line()}"
            plan.problems.append(exc)
        else:
            entry["status"] = "external directory (no omni3 manifest)" if ref.external else f"ok ({ref.kind.value})"
            plan.input_refs.append(ref)
            plan.input_manifests[spec.role] = manifest
        plan.inputs.append(entry)
    for spec in outputs:
        entry = {"role": spec.role, "path": str(spec.path), "kind": spec.kind.value}
        try:
            check_output(spec.path, force)
        except Omni3Error as exc:
            entry["status"] = f"not writable: {exc.one_line()}"
            plan.problems.append(exc)
        else:
            entry["status"] = "will be replaced (--force)" if spec.path.exists() and force else "ok"
        plan.outputs.append(entry)
    return plan
