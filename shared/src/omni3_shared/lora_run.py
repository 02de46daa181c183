"""What a LoRA training run (an omni3-sft ``training-run`` artifact) hands to the lifecycle tools, checked on the CPU.

The run's manifest ``extra`` names everything: ``checkpoint.path`` (the iteration folder, torch_dist shards of the
adapter weights and Megatron-Bridge's ``run_config.yaml``), ``hf_model`` (the base HF checkpoint the run trained
from), ``peft`` (``{"type": "lora", "target_modules", "dim", "alpha", "dropout"}``, null for full fine-tuning) and
``parallel``. ``read_lora_run`` reads those fields in one place and turns every gap into a one-line error;
``check_lora_run`` adds the base checkpoint to a tool's plan. omni3-adapter-export and omni3-lora-merge both read
LoRA runs through this module (the training-run artifact's contract, like the manifest protocol beside it). The
iteration folder itself is found and checked by ``omni3_shared.training_run``, shared with omni3-export.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from omni3_shared.errors import InvalidInputError, Omni3Error, UsageError
from omni3_shared.hf_checkpoint import INDEX_FILE
from omni3_shared.manifest import ArtifactKind, describe_input
from omni3_shared.plan import Plan
from omni3_shared.training_run import RUN_CONFIG_FILE, saved_iteration

OMNI_ARCHITECTURE = "NemotronH_Nano_Omni_Reasoning_V3"


@dataclass(frozen=True)
class LoraRun:
    """The facts of a LoRA run that the adapter export and the merge need."""

    run_dir: Path
    iteration: int
    iteration_dir: Path  # the torch_dist folder holding the adapter shards and run_config.yaml
    hf_model: Path  # base HF checkpoint (from --hf-model-path or the run's manifest)
    target_modules: list[str]
    dim: int
    alpha: float
    dropout: float
    parallel: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "iteration_dir": str(self.iteration_dir),
            "hf_model": str(self.hf_model),
            "target_modules": self.target_modules,
            "dim": self.dim,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "parallel": self.parallel,
            "adapter_shard_bytes": self.adapter_bytes(),
        }

    def adapter_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.iteration_dir.rglob("*") if p.is_file())


def read_lora_run(run_dir: Path, extra: Mapping[str, Any], hf_model_override: Path | None = None) -> LoraRun:
    """Read and check the LoRA fields of a training run's manifest ``extra``.

    Raises:
        InvalidInputError: not a LoRA run, no checkpoint recorded, the iteration folder missing or incomplete.
        UsageError: the run names no base HF model and none was given.
    """
    run_dir = Path(run_dir)
    peft = extra.get("peft")
    if peft is None:
        raise InvalidInputError(
            f"{run_dir} is a full fine-tuning run (its manifest's extra.peft is null): it has no LoRA adapter",
            fix="use omni3-export for a full fine-tuning run, or train with a LoRA variant (peft: block)",
        )
    if not isinstance(peft, Mapping) or str(peft.get("type", "")).lower() != "lora":
        kind = peft.get("type") if isinstance(peft, Mapping) else type(peft).__name__
        raise InvalidInputError(
            f"{run_dir} was trained with PEFT type {kind!r}; only LoRA runs are supported",
            fix="train with peft.scheme lora",
        )
    for name in ("target_modules", "dim", "alpha"):
        if peft.get(name) in (None, [], ""):
            raise InvalidInputError(
                f"{run_dir}'s manifest has no extra.peft.{name}", fix="rerun omni3-sft; its manifest records it"
            )
    iteration, iteration_dir = saved_iteration(run_dir, extra)
    check_saved_lora(iteration_dir, peft)
    hf_model = hf_model_override
    if hf_model is None:
        recorded = extra.get("hf_model")
        if not recorded:
            raise UsageError(
                f"{run_dir} records no base HF model (extra.hf_model)",
                fix="pass --hf-model-path with the HF checkpoint the run trained from",
            )
        hf_model = Path(recorded)
    parallel = extra.get("parallel")
    return LoraRun(
        run_dir=run_dir,
        iteration=iteration,
        iteration_dir=iteration_dir,
        hf_model=Path(hf_model),
        target_modules=list(peft["target_modules"]),
        dim=int(peft["dim"]),
        alpha=float(peft["alpha"]),
        dropout=float(peft.get("dropout") or 0.0),
        parallel=dict(parallel) if isinstance(parallel, Mapping) else {},
    )


def check_saved_lora(path: Path, peft: Mapping[str, Any]) -> None:
    """The (complete) iteration folder's run_config.yaml holds the same LoRA as the manifest.

    Megatron-Bridge rebuilds the adapters from that ``peft:`` block and silently falls back to default LoRA
    settings without it, which would load the shards into adapters of the wrong rank.
    """
    try:
        document = yaml.safe_load((path / RUN_CONFIG_FILE).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"{path / RUN_CONFIG_FILE} is unreadable ({exc.__class__.__name__})") from None
    saved = document.get("peft") if isinstance(document, Mapping) else None
    if not isinstance(saved, Mapping):
        raise InvalidInputError(
            f"{path / RUN_CONFIG_FILE} has no peft: block, so this checkpoint holds no LoRA adapter",
            fix="point --lora-checkpoint at a LoRA run of omni3-sft",
        )
    for name in ("dim", "alpha"):
        if name in saved and saved[name] is not None and float(saved[name]) != float(peft[name]):
            raise InvalidInputError(
                f"{path / RUN_CONFIG_FILE} says LoRA {name}={saved[name]}, the run's manifest {peft[name]}",
                fix="the run directory mixes two runs; rerun omni3-sft into a new directory",
            )


def read_omni_config(hf_model: Path) -> dict[str, Any]:
    """config.json of the base HF checkpoint, which must be Nemotron 3 Nano Omni."""
    config_path = Path(hf_model) / "config.json"
    if not config_path.is_file():
        raise InvalidInputError(
            f"base HF checkpoint {hf_model} has no config.json",
            fix="pass --hf-model-path with the HF checkpoint the run trained from",
        )
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{config_path} is unreadable ({exc.__class__.__name__})") from None
    architectures = config.get("architectures") or [] if isinstance(config, dict) else []
    if OMNI_ARCHITECTURE not in architectures:
        raise InvalidInputError(
            f"base HF checkpoint {hf_model} is a {', '.join(architectures) or 'model without architectures'} "
            f"checkpoint, not Nemotron 3 Nano Omni ({OMNI_ARCHITECTURE})",
            fix="pass --hf-model-path with the Omni checkpoint the run trained from",
        )
    return config


def base_weight_files(hf_model: Path) -> list[Path]:
    """The base checkpoint's safetensors shards (from its index when it has one)."""
    hf_model = Path(hf_model)
    index = hf_model / INDEX_FILE
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise InvalidInputError(f"{index} is unreadable or has no weight_map", fix="re-download it") from None
        missing = [name for name in names if not (hf_model / name).is_file()]
        if missing:
            raise InvalidInputError(
                f"base HF checkpoint {hf_model} is missing {len(missing)} shard(s): {', '.join(missing[:3])}",
                fix="re-download or re-export the checkpoint",
            )
        return [hf_model / name for name in names]
    files = sorted(hf_model.glob("*.safetensors"))
    if not files:
        raise InvalidInputError(f"base HF checkpoint {hf_model} has no *.safetensors weights", fix="re-download it")
    return files


def check_lora_run(plan: Plan, lora_checkpoint: Path, hf_model_override: Path | None) -> LoraRun | None:
    """The LoRA run of a tool's plan and its base HF checkpoint, added to the plan as an input.

    Each problem is appended to ``plan.problems`` (the dry run lists them, the real run raises the first);
    returns None when there is one.
    """
    manifest = plan.input_manifests.get("lora_checkpoint")
    if manifest is None or plan.problems:
        return None  # an input itself is missing or damaged; preflight has said so
    try:
        run = read_lora_run(lora_checkpoint, manifest.extra, hf_model_override)
        if hf_model_override is None:  # the base the run names is an input too: check and record it
            if not run.hf_model.is_dir():
                raise InvalidInputError(
                    f"the base HF checkpoint {run.hf_model} that the LoRA run names does not exist",
                    fix="pass --hf-model-path with the HF checkpoint the run trained from",
                )
            ref, _ = describe_input("hf_model", run.hf_model, ArtifactKind.HF_CHECKPOINT, allow_external=True)
            plan.input_refs.append(ref)
            plan.inputs.append({"role": "hf_model", "path": str(run.hf_model), "status": "named by the LoRA run"})
        read_omni_config(run.hf_model)
        plan.sections["lora_run"] = run.summary()
    except Omni3Error as exc:
        plan.problems.append(exc)
        return None
    return run
