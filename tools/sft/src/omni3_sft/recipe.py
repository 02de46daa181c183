"""From a resolved stage config to Megatron-Bridge 0.6.2's ``ConfigContainer``.

Two halves:

- ``plan_recipe`` (pure, CPU): which recipe function to call, the local HF directory to patch in, and the flat
  list of field assignments (``"model.tensor_model_parallel_size" = 4``, ...) that turn the recipe's config
  into ours. Objects Megatron defines (LoRA, dataset configs, enums) appear as ``Construct`` and ``Attribute``
  specs, so the whole plan prints in a dry run and is tested without Megatron.
- ``build_config_container`` (GPU machine): imports ``megatron.bridge``, patches the recipe module's
  ``_DEFAULT_HF_PATH`` (the recipes take no arguments and would otherwise read the hub), calls the recipe and
  applies the assignments.

Facts about the machine and the inputs that the plan depends on (``RecipeFacts``) are gathered separately by
``gather_facts``: the dataset's form, where the pretrained Megatron checkpoint lies inside its artifact, the
resume point of the run directory, and whether APEX and flash-attn are installed.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni3_sft import checkpoints, model_shape, run_outputs
from omni3_sft.checkpoints import ResumePoint
from omni3_shared.errors import InvalidInputError, UsageError
from omni3_shared.manifest import MANIFEST_FILE

# Where the recipes live: the public names are aliases of the h100 module's functions, which read that
# module's _DEFAULT_HF_PATH when called.
RECIPE_MODULE = "megatron.bridge.recipes.nemotron_omni.h100.nemotron_omni"
RECIPE_FUNCTIONS = {
    "nemotron_omni_cord_v2_sft_config": "nemotron_omni_cord_v2_sft_4gpu_h100_bf16_config",
    "nemotron_omni_cord_v2_peft_config": "nemotron_omni_cord_v2_peft_4gpu_h100_bf16_config",
    "nemotron_omni_valor32k_sft_config": "nemotron_omni_valor32k_sft_4gpu_h100_bf16_config",
    "nemotron_omni_valor32k_peft_config": "nemotron_omni_valor32k_peft_4gpu_h100_bf16_config",
}
HF_PATH_ATTRIBUTE = "_DEFAULT_HF_PATH"
# The stage config's optimizer section -> the ConfigContainer fields it sets.
OPTIMIZER_FIELDS = {"lr": "optimizer.lr", "min_lr": "optimizer.min_lr", "lr_warmup_iters": "scheduler.lr_warmup_iters"}
FORWARD_STEP = "megatron.bridge.training.nemotron_omni_step:forward_step"
LORA = "megatron.bridge.peft.lora:LoRA"
HF_SOURCE = "megatron.bridge.data.builders:HFDatasetSourceConfig"
ENERGON_DATASET = "megatron.bridge.data.builders:EnergonDatasetConfig"
OMNI_TASK_ENCODER = "megatron.bridge.data.builders:NemotronOmniEnergonTaskEncoderConfig"
ATTENTION_BACKEND = "megatron.core.transformer.enums:AttnBackend"
HF_PARQUET_DIR = "hf"  # where omni3-prep hf puts the CORD-style parquet subset
DEFAULT_NUM_WORKERS = 2  # data loader workers per rank when dataset.num_workers is unset (Megatron-Bridge's)
FREEZE_FLAGS = (
    "freeze_language_model",
    "freeze_vision_model",
    "freeze_vision_projection",
    "freeze_sound_encoder",
    "freeze_sound_projection",
)

# What the recipes freeze when the stage config leaves a flag unset (_nemotron_omni_base; the PEFT recipes freeze
# every base module but the language model, which LoRA itself freezes under its adapters).
RECIPE_FREEZE_DEFAULTS = {
    "sft": {
        "freeze_language_model": False,
        "freeze_vision_model": True,
        "freeze_vision_projection": False,
        "freeze_sound_encoder": True,
        "freeze_sound_projection": False,
    },
    "peft": dict.fromkeys(FREEZE_FLAGS, True) | {"freeze_language_model": False},
}


def effective_freeze(resolved: Mapping[str, Any]) -> dict[str, bool]:
    """The freeze flags the run trains with: the stage config's where set, else the recipe's."""
    defaults = RECIPE_FREEZE_DEFAULTS["peft" if "peft" in resolved["recipe"] else "sft"]
    model = resolved["model"]
    return {flag: bool(model[flag]) if model.get(flag) is not None else defaults[flag] for flag in FREEZE_FLAGS}


@dataclass(frozen=True)
class Construct:
    """An object to build on the GPU machine: ``target`` is ``module:Class``."""

    target: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"build": self.target, **{key: describe_value(value) for key, value in self.kwargs.items()}}


@dataclass(frozen=True)
class Attribute:
    """A value importable on the GPU machine, ``module:name.member`` (an enum member, torch.bfloat16)."""

    target: str

    def describe(self) -> str:
        return self.target


def describe_value(value: Any) -> Any:
    if isinstance(value, (Construct, Attribute)):
        return value.describe()
    if isinstance(value, (list, tuple)):
        return [describe_value(item) for item in value]
    return value


@dataclass(frozen=True)
class DatasetInput:
    """How the run reads the dataset artifact."""

    form: str  # "energon" or "hf" (CORD-style parquet read through Megatron-Bridge's Direct-HF path)
    path: str  # the Energon dataset root, or the parquet dataset directory
    splits: tuple[str, ...] = ()  # splits the artifact has, when known


@dataclass(frozen=True)
class RecipeFacts:
    hf_path: str  # local HF directory (or hub id) the recipe builds the model and processor from
    trust_remote_code: bool
    run_dir: str  # where the run writes while it trains (the staging directory of the run artifact)
    save_dir: str  # where Megatron writes checkpoints while it trains
    dataset: DatasetInput
    pretrained_checkpoint: str  # the Megatron checkpoint folder inside the input artifact
    resume: ResumePoint | None = None
    apex: bool = False
    flash_attn: bool = False
    model_vocab_size: int | None = None  # the language model's, from the HF config


@dataclass(frozen=True)
class RecipePlan:
    recipe: str
    function: str
    hf_path: str
    assignments: tuple[tuple[str, Any], ...]
    runtime: Mapping[str, Any]  # what the omni3 training loop applies itself

    def as_dict(self) -> dict[str, Any]:
        return {
            "recipe": f"{RECIPE_MODULE}.{self.function} (alias {self.recipe})",
            "patch": f"{RECIPE_MODULE}.{HF_PATH_ATTRIBUTE} = {self.hf_path}",
            "set": {path: describe_value(value) for path, value in self.assignments},
            "runtime": dict(self.runtime),
        }


# ---------------------------------------------------------------------------------------------------------------
# The plan (pure)


def plan_recipe(resolved: Mapping[str, Any], facts: RecipeFacts) -> RecipePlan:
    """The recipe call and every field assignment for ``resolved``; raises UsageError for impossible combinations."""
    recipe = resolved["recipe"]
    function = RECIPE_FUNCTIONS[recipe]
    model, train, checkpoint = resolved["model"], resolved["train"], resolved["checkpoint"]
    peft = resolved.get("peft")
    tp, pp = model["tensor_model_parallel_size"], model["pipeline_model_parallel_size"]
    seq = model["seq_length"]
    out: list[tuple[str, Any]] = [
        ("model.tensor_model_parallel_size", tp),
        ("model.pipeline_model_parallel_size", pp),
        ("model.context_parallel_size", model["context_parallel_size"]),
        ("model.expert_model_parallel_size", model["expert_model_parallel_size"]),
        ("model.expert_tensor_parallel_size", model["expert_tensor_parallel_size"]),
        ("model.sequence_parallel", tp > 1),  # Megatron refuses sequence parallelism without TP
        ("model.seq_length", seq),
    ]
    if pp > 1:
        out.append(("model.pipeline_dtype", Attribute("torch:bfloat16")))
    for flag in FREEZE_FLAGS:
        if model.get(flag) is not None:
            out.append((f"model.{flag}", model[flag]))
    if not facts.apex:  # the fused wgrad accumulation kernel comes from APEX
        out.append(("model.gradient_accumulation_fusion", False))
    if not facts.flash_attn:  # the recipes ask for flash; cuDNN fused attention needs no extra package
        out.append(("model.attention_backend", Attribute(f"{ATTENTION_BACKEND}.fused")))
    if facts.model_vocab_size:
        # The VLM recipes give Megatron a NullTokenizer of 32,000 ids (the processor does the tokenizing), and
        # Megatron refuses a model vocabulary smaller than the tokenizer's: size it below the model's instead
        # (one less, since some Megatron versions count an extra end-of-document id).
        out.append(("tokenizer.vocab_size", facts.model_vocab_size - 1))
    out += [
        ("train.train_iters", train["train_iters"]),
        ("train.global_batch_size", train["global_batch_size"]),
        ("train.micro_batch_size", train["micro_batch_size"]),
        ("train.exit_signal_handler", True),  # SIGTERM: save a checkpoint, then exit
    ]
    if train.get("log_interval") is not None:
        out.append(("logger.log_interval", train["log_interval"]))
    optimizer = resolved.get("optimizer") or {}
    out += [(target, optimizer[name]) for name, target in OPTIMIZER_FIELDS.items() if optimizer.get(name) is not None]
    if peft:
        out.append(
            (
                "peft",
                Construct(
                    LORA,
                    {
                        "target_modules": list(peft["target_modules"]),
                        "dim": peft["dim"],
                        "alpha": peft["alpha"],
                        "dropout": peft["dropout"],
                    },
                ),
            )
        )
        # LoRA on the shared expert with its communication overlap is a known trouble spot; the overlap is
        # only an optimisation, so LoRA runs go without it.
        out.append(("model.moe_shared_expert_overlap", False))
    elif "peft" in recipe:
        out.append(("peft", None))
    out += _dataset_assignments(recipe, resolved, facts)
    save = facts.save_dir
    out += [
        ("checkpoint.pretrained_checkpoint", facts.pretrained_checkpoint),
        ("checkpoint.save", save),
        ("checkpoint.load", save),  # a restarted run resumes from its own checkpoints
        ("checkpoint.hf_trust_remote_code", facts.trust_remote_code),
    ]
    if checkpoint.get("save_interval") is not None:
        out.append(("checkpoint.save_interval", checkpoint["save_interval"]))
    if facts.resume is not None and facts.resume.needs_explicit_step:
        out.append(("checkpoint.ckpt_step", facts.resume.iteration))
    out.append(("logger.tensorboard_dir", str(Path(facts.run_dir) / run_outputs.TENSORBOARD_DIR)))
    runtime: dict[str, Any] = {"forward_step": FORWARD_STEP, "dataset_form": facts.dataset.form}
    if resolved["dataset"].get("modality_filter"):
        runtime["modality_filter"] = resolved["dataset"]["modality_filter"]
    if facts.resume is not None:
        runtime["resume_iteration"] = facts.resume.iteration
    return RecipePlan(recipe, function, facts.hf_path, tuple(out), runtime)


def _dataset_assignments(recipe: str, resolved: Mapping[str, Any], facts: RecipeFacts) -> list[tuple[str, Any]]:
    """The recipe's dataset pointed at ours, with the stage config's worker count where it sets one."""
    workers = resolved["dataset"].get("num_workers")
    assignments = _dataset_source(recipe, resolved, facts)
    if workers is not None:
        assignments.append(("dataset.num_workers", workers))
    return assignments


def _dataset_source(recipe: str, resolved: Mapping[str, Any], facts: RecipeFacts) -> list[tuple[str, Any]]:
    dataset = facts.dataset
    seq = resolved["model"]["seq_length"]
    micro_batch = resolved["train"]["micro_batch_size"]
    trust = facts.trust_remote_code
    if resolved["dataset"].get("modality_filter") and dataset.form != "energon":
        raise UsageError(
            "dataset.modality_filter needs an Energon dataset",
            fix="set dataset.format=energon (omni3-prep writes Energon datasets) or drop the filter",
        )
    if dataset.form == "hf":
        if "cord_v2" not in recipe:
            raise UsageError(
                f"{recipe} reads Energon datasets, not CORD-style parquet",
                fix="set dataset.format=energon or use a CORD recipe",
            )
        return [
            (
                "dataset.source",
                Construct(HF_SOURCE, {"path_or_dataset": dataset.path, "schema_adapter": "cord_v2", "split": "train"}),
            ),
            ("dataset.do_validation", "validation" in dataset.splits),
            ("dataset.do_test", False),
            ("dataset.hf_processor_path", facts.hf_path),
            ("dataset.seq_length", seq),
            ("dataset.trust_remote_code", trust),
        ]
    if "valor32k" in recipe:  # the recipe's Energon config: point it at our dataset and processor
        return [
            ("dataset.path", dataset.path),
            ("dataset.seq_length", seq),
            ("dataset.micro_batch_size", micro_batch),
            ("dataset.trust_remote_code", trust),
            ("dataset.task_encoder.hf_processor_path", facts.hf_path),
            ("dataset.task_encoder.trust_remote_code", trust),
        ]
    # A CORD recipe on an Energon dataset: the recipe's image-only model (temporal_patch_dim 1) with the Omni
    # task encoder, temporal video embedding off.
    task_encoder = Construct(
        OMNI_TASK_ENCODER,
        {
            "hf_processor_path": facts.hf_path,
            "max_audio_duration": 10.0,
            "num_mel_bins": 128,
            "visual_keys": ("pixel_values",),
            "temporal_patch_size": 1,
            "video_fps": 1.0,
            "video_nframes": 8,
            "use_temporal_video_embedder": False,
            "patch_dim": 16,
            "trust_remote_code": trust,
        },
    )
    return [
        (
            "dataset",
            Construct(
                ENERGON_DATASET,
                {
                    "path": dataset.path,
                    "seq_length": seq,
                    "micro_batch_size": micro_batch,
                    "num_workers": DEFAULT_NUM_WORKERS,
                    "task_encoder": task_encoder,
                    "trust_remote_code": trust,
                    "enable_in_batch_packing": False,
                },
            ),
        )
    ]


# ---------------------------------------------------------------------------------------------------------------
# Facts about inputs and the machine


def detect_capabilities() -> dict[str, bool]:
    """Whether the optional fused kernels the recipes assume are installed (no import, just a lookup)."""
    return {
        name: importlib.util.find_spec(module) is not None
        for name, module in (("apex", "apex"), ("flash_attn", "flash_attn"))
    }


def dataset_input(dataset_dir: Path, recipe: str, fmt: str, extra: Mapping[str, Any] | None) -> DatasetInput:
    """Choose how to read a dataset artifact (``fmt`` auto, energon or hf).

    Raises:
        InvalidInputError: the requested form is not in the artifact.
    """
    dataset_dir = Path(dataset_dir)
    parquet_dir = dataset_dir / HF_PARQUET_DIR
    subset = (extra or {}).get("subset")
    if isinstance(subset, Mapping) and isinstance(subset.get("hf_parquet"), str):
        parquet_dir = dataset_dir / subset["hf_parquet"]
    has_parquet = any((parquet_dir / "data").glob("*.parquet"))
    has_energon = (dataset_dir / ".nv-meta").is_dir()
    if fmt == "auto":
        fmt = "hf" if "cord_v2" in recipe and has_parquet else "energon"
    if fmt == "hf":
        if not has_parquet:
            raise InvalidInputError(
                f"dataset {dataset_dir} has no CORD-style parquet under {HF_PARQUET_DIR}/data",
                fix="build it with omni3-prep hf --sample N, or set dataset.format=energon",
            )
        splits = tuple(sorted({p.name.split("-")[0] for p in (parquet_dir / "data").glob("*.parquet")}))
        return DatasetInput("hf", str(parquet_dir), splits)
    if not has_energon:
        raise InvalidInputError(
            f"dataset {dataset_dir} is not an Energon dataset (no .nv-meta)",
            fix="build it with omni3-prep (synth, jsonl, hf --sample or valor32k)",
        )
    counts = (extra or {}).get("counts")
    splits = tuple(sorted(k for k in counts if k != "total")) if isinstance(counts, Mapping) else ()
    return DatasetInput("energon", str(dataset_dir), splits)


# What each recipe family trains on: a dataset with none of these modalities cannot feed it.
RECIPE_MODALITIES = {"cord_v2": ("image",), "valor32k": ("video", "audio")}


def modality_problem(resolved: Mapping[str, Any], extra: Mapping[str, Any] | None) -> InvalidInputError | None:
    """A dataset the variant cannot train on, judged from the dataset manifest's counts: none of the recipe's
    modalities, or a modality filter that would leave nothing."""
    counts = (extra or {}).get("counts")
    if not isinstance(counts, Mapping) or not isinstance(counts.get("total"), Mapping):
        return None
    total, path = counts["total"], resolved["dataset"]["path"]
    wanted = resolved["dataset"].get("modality_filter")
    if wanted and total.get(wanted, 0) == 0:
        return InvalidInputError(
            f"dataset {path} has no {wanted} samples, so modality_filter {wanted} leaves nothing to train on",
            fix=f"use a dataset with {wanted} samples or drop dataset.modality_filter",
        )
    family = next((name for name in RECIPE_MODALITIES if name in resolved["recipe"]), None)
    if family is not None and not any(total.get(modality, 0) for modality in RECIPE_MODALITIES[family]):
        needed = " or ".join(RECIPE_MODALITIES[family])
        return InvalidInputError(
            f"dataset {path} has no {needed} samples, which recipe {resolved['recipe']} trains on",
            fix="point the variant at a matching dataset (image-text variants: omni3-prep synth --kind receipts, "
            "omni3-prep hf or jsonl with images; Valor32k variants: omni3-prep valor32k or synth --kind avqa)",
        )
    return None


def read_extra(artifact_dir: Path) -> dict[str, Any]:
    """The ``extra`` of an artifact's manifest ({} when there is none or it is unreadable)."""
    import json

    try:
        document = json.loads((Path(artifact_dir) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return {}
    extra = document.get("extra") if isinstance(document, dict) else None
    return extra if isinstance(extra, dict) else {}


def gather_facts(
    resolved: Mapping[str, Any], hf_path: str, trust_remote_code: bool, run_dir: Path, staging_dir: Path
) -> RecipeFacts:
    """Everything ``plan_recipe`` needs from the disk and the machine, for ``resolved``.

    The run writes into ``staging_dir`` until it publishes ``run_dir``: a checkpoint folder inside the run
    directory is written (and resumed) there.
    """
    save_dir = staged(Path(resolved["checkpoint"]["save"]), Path(run_dir), Path(staging_dir))
    dataset_dir = Path(resolved["dataset"]["path"])
    extra = read_extra(dataset_dir)
    dataset = dataset_input(dataset_dir, resolved["recipe"], resolved["dataset"].get("format", "auto"), extra)
    pretrained = Path(resolved["checkpoint"]["pretrained_checkpoint"])
    capabilities = detect_capabilities()
    has_config = (Path(hf_path) / "config.json").is_file()  # a hub id has none here
    vocab = model_shape.read_model_shape(Path(hf_path)).llm.vocab_size if has_config else None
    return RecipeFacts(
        hf_path=hf_path,
        trust_remote_code=trust_remote_code,
        run_dir=str(staging_dir),
        save_dir=str(save_dir),
        dataset=dataset,
        pretrained_checkpoint=str(checkpoints.checkpoint_dir_of(pretrained, read_extra(pretrained))),
        resume=checkpoints.resume_point(save_dir),
        apex=capabilities["apex"],
        flash_attn=capabilities["flash_attn"],
        model_vocab_size=vocab,
    )


def staged(path: Path, run_dir: Path, staging_dir: Path) -> Path:
    """``path`` as the run sees it while it trains: inside the staging directory when it is inside ``run_dir``."""
    try:
        return Path(staging_dir) / Path(path).relative_to(run_dir)
    except ValueError:
        return Path(path)


# ---------------------------------------------------------------------------------------------------------------
# The ConfigContainer (GPU machine)


@contextlib.contextmanager
def patched_hf_path(module: Any, hf_path: str) -> Iterator[None]:
    """Point the recipe module at ``hf_path`` for the duration of the recipe call."""
    original = getattr(module, HF_PATH_ATTRIBUTE)
    setattr(module, HF_PATH_ATTRIBUTE, hf_path)
    try:
        yield
    finally:
        setattr(module, HF_PATH_ATTRIBUTE, original)


def materialize(value: Any) -> Any:
    """Turn ``Construct`` and ``Attribute`` specs into objects (imports Megatron; GPU machine only)."""
    if isinstance(value, Attribute):
        module_name, _, dotted = value.target.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj
    if isinstance(value, Construct):
        module_name, _, name = value.target.partition(":")
        cls = getattr(importlib.import_module(module_name), name)
        return cls(**{key: materialize(item) for key, item in value.kwargs.items()})
    if isinstance(value, list):
        return [materialize(item) for item in value]
    if isinstance(value, tuple):
        return tuple(materialize(item) for item in value)
    return value


def assign(root: Any, path: str, value: Any) -> None:
    """``root.a.b.c = value``; an unknown field is an error, never a silently added attribute."""
    *parents, name = path.split(".")
    target = root
    for part in parents:
        target = getattr(target, part)
    if not hasattr(target, name):
        raise UsageError(f"Megatron-Bridge has no field {path} on {type(target).__name__}", fix="report this")
    setattr(target, name, value)


def apply_plan(plan: RecipePlan) -> Any:
    module = importlib.import_module(RECIPE_MODULE)
    recipe_function = getattr(module, plan.function)
    with patched_hf_path(module, plan.hf_path):
        config = recipe_function()
    for path, value in plan.assignments:
        assign(config, path, materialize(value))
    return config


def build_config_container(resolved: Mapping[str, Any], settings: Any) -> Any:
    """The Megatron-Bridge ConfigContainer of ``resolved`` (imports megatron.bridge: a GPU machine only).

    ``settings`` is the run's ``SftSettings``; its ``hf_model`` must be a local directory here (the GPU
    machines have no network).
    """
    from omni3_shared.publish import staging_path

    hf_path = str(settings.resolve_path(settings.hf_model))
    run_dir = settings.resolve_path(settings.run_dir)
    facts = gather_facts(resolved, hf_path, settings.trust_remote_code, run_dir, staging_path(run_dir))
    return apply_plan(plan_recipe(resolved, facts))
