"""Checks of an HF PEFT LoRA adapter against its base HF checkpoint; they run on the CPU, without Megatron.

1. names: every adapter module (``base_model.model.<module>.lora_{A,B}.weight``) has a ``<module>.weight`` in the
   base checkpoint (read from the safetensors headers, no tensors), with lora_A/lora_B shapes that fit it, and
   every ``target_modules`` entry of adapter_config.json names some adapter module and no container module of
   the base (peft matches an entry against the end of every module name: "1" from ``sound_projection.1`` would
   also name ``layers.1``, and peft refuses to wrap it; ``pin_target_modules`` rewrites such entries);
2. experts: where the adapter touches one routed expert linear (``...experts.<e>.<name>``), it touches that
   linear of every expert of every MoE layer, and a run that targeted linear_fc1/linear_fc2 has expert adapters;
3. training: at least one lora_B is non-zero (B starts at zero, so an all-zero B means nothing was learned
   or loaded);
4. peft: ``peft.PeftModel.from_pretrained`` loads the adapter onto the base model's module tree as its
   checkpoint names it (every adapted linear built from the base weights), every saved adapter tensor lands in
   the model unchanged, and the output of every adapted linear with a non-zero lora_B differs from its base
   output on a fixed input.

The base model is built as a module tree from its checkpoint names on purpose: the tiny Omni has no HF modeling
class, and transformers >= 5.8 fuses NemotronH's experts into one tensor per layer, so per-expert adapters
(what Megatron-Bridge writes for the Omni checkpoint layout) have no module to attach to there.
"""

from __future__ import annotations

import json
import re
import struct
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni3_shared.errors import InvalidInputError
from omni3_shared.lora_run import base_weight_files

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
LORA_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}
EXPERT_MODULE = re.compile(r"^(?P<layer>.+\.experts)\.(?P<expert>\d+)\.(?P<name>[^.]+)$")
# Megatron names of the MoE expert linears a LoRA run can target (the bridge exports them per expert).
MEGATRON_EXPERT_TARGETS = ("linear_fc1", "linear_fc2")
SAMPLE = 10  # names listed in a report, at most
HEADER_LENGTH_BYTES = 8


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header, after checking the file holds all its data."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw = handle.read(HEADER_LENGTH_BYTES)
        if len(raw) < HEADER_LENGTH_BYTES:
            raise InvalidInputError(f"{path} is not a safetensors file (too short)", fix="re-create it")
        (length,) = struct.unpack("<Q", raw)
        header_bytes = handle.read(length) if length < 100 * 1024 * 1024 else b""
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidInputError(f"{path} has a corrupt safetensors header", fix="re-create it") from None
    entries = {key: value for key, value in header.items() if key != "__metadata__"}
    end = max((value["data_offsets"][1] for value in entries.values()), default=0)
    if size < HEADER_LENGTH_BYTES + length + end:
        raise InvalidInputError(f"{path} is truncated ({size} bytes)", fix="re-create or re-download it")
    return {key: list(value["shape"]) for key, value in entries.items()}


def base_shapes(hf_model: Path) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for shard in base_weight_files(hf_model):
        shapes.update(safetensors_shapes(shard))
    return shapes


@dataclass
class AdapterReport:
    """What the checks found; ``record()`` goes into the manifest, ``problems`` decide pass or fail."""

    adapter_tensors: int = 0
    modules: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # module -> {"A": shape, "B": shape}
    matched_modules: list[str] = field(default_factory=list)
    target_modules: list[str] = field(default_factory=list)
    target_parameters: list[str] = field(default_factory=list)
    rank: Any = None
    alpha: Any = None
    ranks_seen: list[int] = field(default_factory=list)
    expert_modules: dict[str, Any] = field(default_factory=dict)
    lora_b: dict[str, Any] = field(default_factory=dict)
    peft: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    zero_b_modules: set[str] = field(default_factory=set)  # not recorded: only the count and a sample are

    def record(self) -> dict[str, Any]:
        return {
            "passed": not self.problems,
            "problems": self.problems,
            "adapter_tensors": self.adapter_tensors,
            "adapter_modules": len(self.modules),
            "matched_base_modules": len(self.matched_modules),
            "target_modules": self.target_modules,
            "target_parameters": self.target_parameters,
            "rank": self.rank,
            "alpha": self.alpha,
            "ranks_seen": self.ranks_seen,
            "expert_modules": self.expert_modules,
            "lora_b": self.lora_b,
            "peft_load": self.peft,
        }


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"{adapter_dir} has no {ADAPTER_CONFIG}", fix="point at a PEFT adapter") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"{path} is unreadable ({exc.__class__.__name__})") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise InvalidInputError(f"{path} is not a LoRA adapter config (peft_type LORA)", fix="point at a LoRA adapter")
    return config


def split_key(key: str) -> tuple[str, str] | None:
    """``base_model.model.<module>.lora_A.weight`` -> (module, "A"); None for any other key."""
    if not key.startswith(KEY_PREFIX):
        return None
    for suffix, which in LORA_SUFFIXES.items():
        if key.endswith(suffix):
            module = key[len(KEY_PREFIX) : -len(suffix)]
            while module.endswith(".base_layer"):  # PEFT's ParamWrapper nesting of target_parameters
                module = module.removesuffix(".base_layer")
            return module, which
    return None


def check_names(adapter_dir: Path, hf_model: Path, run_targets: Iterable[str] = ()) -> AdapterReport:
    """Checks 1 and 2 (names, shapes, expert coverage); headers only."""
    config = read_adapter_config(adapter_dir)
    weights = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise InvalidInputError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}", fix="point at a PEFT adapter directory")
    shapes = safetensors_shapes(weights)
    base = base_shapes(hf_model)
    report = AdapterReport(adapter_tensors=len(shapes))
    targets = config.get("target_modules") or []
    report.target_modules = [targets] if isinstance(targets, str) else sorted(targets)  # a str is one regex
    report.target_parameters = list(config.get("target_parameters") or [])
    report.rank, report.alpha = config.get("r"), config.get("lora_alpha")
    unknown = []
    for key, shape in shapes.items():
        parsed = split_key(key)
        if parsed is None:
            unknown.append(key)
            continue
        module, which = parsed
        report.modules.setdefault(module, {})[which] = shape
    if unknown:
        report.problems.append(f"{len(unknown)} adapter tensor(s) are not LoRA A/B weights: {unknown[:SAMPLE]}")
    parameter_parents = {name.rpartition(".")[0] for name in report.target_parameters}
    unmatched, unpaired, misfit, ranks = [], [], [], set()
    for module, pair in sorted(report.modules.items()):
        weight = base.get(f"{module}.weight")
        if weight is None and module not in parameter_parents:  # fused (3D) parameter targets: checked below
            unmatched.append(module)
            continue
        report.matched_modules.append(module)
        if set(pair) != {"A", "B"}:
            unpaired.append(module)
            continue
        ranks.add(pair["A"][-2] if len(pair["A"]) == 3 else pair["A"][0])
        if weight is None:
            continue
        a, b = pair["A"], pair["B"]
        if len(weight) != 2 or len(a) != 2 or len(b) != 2 or a[1] != weight[1] or b[0] != weight[0] or a[0] != b[1]:
            misfit.append(f"{module}: A{a} B{b} on base {weight}")
    report.ranks_seen = sorted(ranks)
    missing_parameters = [name for name in report.target_parameters if name not in base]
    if unmatched:
        report.problems.append(
            f"{len(unmatched)} of {len(report.modules)} adapter module(s) match no tensor of the base checkpoint "
            f"{hf_model}: {unmatched[:SAMPLE]}"
        )
    if missing_parameters:
        report.problems.append(f"target_parameters not in the base checkpoint: {missing_parameters[:SAMPLE]}")
    if unpaired:
        report.problems.append(f"{len(unpaired)} adapter module(s) lack lora_A or lora_B: {unpaired[:SAMPLE]}")
    if misfit:
        report.problems.append(f"{len(misfit)} adapter module(s) do not fit their base weight: {misfit[:SAMPLE]}")
    if not report.modules:
        report.problems.append(f"{weights} holds no LoRA weights")
    idle_targets = [
        t for t in report.target_modules if not _is_pattern(t) and not any(_names(t, m) for m in report.modules)
    ]
    if idle_targets:
        report.problems.append(f"target_modules {idle_targets} name no adapter module (adapter_config.json)")
    wrapped = {target: paths for target, paths in stray_matches(report.target_modules, report.modules, base).items()
               if any(f"{path}.weight" not in base for path in paths)}  # fmt: skip
    if wrapped:
        sample = {target: paths[:3] for target, paths in list(wrapped.items())[:SAMPLE]}
        report.problems.append(
            f"target_modules {sorted(wrapped)} also name base module(s) that are not linears, which peft cannot "
            f"wrap: {sample} (adapter_config.json)"
        )
    report.expert_modules = _expert_coverage(base, set(report.modules), list(run_targets), report.problems)
    return report


def _module_paths(tensor_names: Iterable[str]) -> set[str]:
    """Every module path of a checkpoint: each dotted prefix of its tensor names."""
    paths: set[str] = set()
    for name in tensor_names:
        parts = name.split(".")[:-1]
        paths.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return paths


def _names(target: str, path: str) -> bool:
    """Whether peft's target_modules entry ``target`` (a plain name) selects the module at ``path``."""
    return path == target or path.endswith("." + target)


def stray_matches(targets: Iterable[str], adapter_modules: Iterable[str], base: dict[str, list[int]]):
    """target -> the base module paths it names that have no adapter (plain names only; patterns are skipped)."""
    adapted = set(adapter_modules)
    paths = _module_paths(base)
    found: dict[str, list[str]] = {}
    for target in targets:
        if _is_pattern(target):
            continue
        strays = sorted(path for path in paths if _names(target, path) and path not in adapted)
        if strays:
            found[target] = strays
    return found


def pin_target_modules(adapter_dir: Path, hf_model: Path) -> dict[str, list[str]]:
    """Rewrite adapter_config.json so that each plain ``target_modules`` entry that also names base modules
    without an adapter is replaced by the full names of the adapter modules it stood for; returns the rewrites.

    Megatron-Bridge 0.6.2 derives the entries from the last part of each adapter module's name, so the sound
    projection's ``sound_projection.1`` becomes "1", which peft also matches on ``layers.1`` (a decoder layer).
    """
    config = read_adapter_config(adapter_dir)
    targets = config.get("target_modules")
    if not isinstance(targets, list):
        return {}
    weights = safetensors_shapes(Path(adapter_dir) / ADAPTER_WEIGHTS)
    modules = {parsed[0] for key in weights if (parsed := split_key(key))}
    rewrites = {
        target: sorted(module for module in modules if _names(target, module))
        for target in stray_matches(targets, modules, base_shapes(hf_model))
    }
    if rewrites:
        pinned = {module for names in rewrites.values() for module in names}
        config["target_modules"] = sorted({t for t in targets if t not in rewrites} | pinned)
        path = Path(adapter_dir) / ADAPTER_CONFIG
        path.write_text(json.dumps(config, indent=2) + "\n")
    return rewrites


def _is_pattern(target: str) -> bool:
    return any(char in target for char in "*?[]().^$\\")


def _expert_coverage(base: dict[str, list[int]], modules: set[str], run_targets: list[str], problems: list[str]):
    """Every routed expert's linear of a name the adapter uses has an adapter, in every MoE layer."""
    base_experts: dict[str, set[str]] = defaultdict(set)  # linear name -> modules
    for key in base:
        match = EXPERT_MODULE.match(key.removesuffix(".weight")) if key.endswith(".weight") else None
        if match:
            base_experts[match["name"]].add(key.removesuffix(".weight"))
    adapted: dict[str, set[str]] = defaultdict(set)
    for module in modules:
        match = EXPERT_MODULE.match(module)
        if match:
            adapted[match["name"]].add(module)
    coverage = {
        name: {"base": len(base_experts[name]), "with_adapter": len(adapted.get(name, set()) & base_experts[name])}
        for name in sorted(base_experts)
    }
    for name, linears in sorted(adapted.items()):
        missing = sorted(base_experts.get(name, set()) - linears)
        if missing:
            problems.append(f"{len(missing)} routed expert '{name}' linear(s) have no adapter: {missing[:SAMPLE]}")
    targets_experts = any(target.rpartition(".")[2] in MEGATRON_EXPERT_TARGETS for target in run_targets)
    if targets_experts and base_experts and not adapted:
        problems.append(
            f"the run trained LoRA on {', '.join(MEGATRON_EXPERT_TARGETS)} but the adapter has no routed expert "
            "adapters"
        )
    return coverage


def check_lora_b(adapter_dir: Path, report: AdapterReport) -> None:
    """Check 3: at least one lora_B is non-zero; modules whose B is all zero are counted (nothing learned)."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    zero, nonzero, largest = [], 0, 0.0
    for key, tensor in tensors.items():
        parsed = split_key(key)
        if parsed is None or parsed[1] != "B":
            continue
        peak = tensor.float().abs().max().item() if tensor.numel() else 0.0
        largest = max(largest, peak)
        if peak > 0:
            nonzero += 1
        else:
            zero.append(parsed[0])
    report.zero_b_modules = set(zero)
    report.lora_b = {
        "nonzero_modules": nonzero,
        "zero_modules": len(zero),
        "zero_sample": sorted(zero)[:SAMPLE],
        "max_abs": largest,
    }
    if nonzero == 0:
        report.problems.append(
            "every lora_B weight is zero: the adapter changes nothing (no training step reached it, or it was "
            "not loaded from the checkpoint)"
        )


def module_tree(hf_model: Path, modules: Iterable[str]):
    """A torch module tree named as the base checkpoint names its tensors: one nn.Linear (float32, base weights)
    per adapted module, under plain container modules."""
    import torch
    from safetensors import safe_open

    wanted = {f"{module}.{part}": module for module in modules for part in ("weight", "bias")}
    tensors: dict[str, Any] = {}
    for shard in base_weight_files(hf_model):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if key in wanted:
                    tensors[key] = handle.get_tensor(key)
    root = torch.nn.Module()
    for module in sorted(set(wanted.values())):
        weight = tensors.get(f"{module}.weight")
        if weight is None or weight.dim() != 2:
            continue
        parent = root
        *path, leaf = module.split(".")
        for part in path:
            child = parent._modules.get(part)
            if child is None:
                child = torch.nn.Module()
                parent.add_module(part, child)
            parent = child
        bias = tensors.get(f"{module}.bias")
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight.float())
            if bias is not None:
                linear.bias.copy_(bias.float())
        parent.add_module(leaf, linear)
    return root.eval()


def check_peft_load(adapter_dir: Path, hf_model: Path, report: AdapterReport) -> None:
    """Check 4: peft loads the adapter onto the base module tree, every tensor applied, outputs changed."""
    import torch
    from peft import LoraConfig, PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    if report.target_parameters:
        report.peft = {"skipped": "target_parameters (fused expert tensors) are not loaded onto a module tree"}
        report.problems.append("the peft load check does not cover target_parameters adapters; use --noverify")
        return
    modules = [module for module in report.matched_modules if set(report.modules[module]) == {"A", "B"}]
    tree = module_tree(hf_model, modules)
    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.task_type = None  # the tree is no CausalLM: plain PeftModel loads onto any module
    try:
        model = PeftModel.from_pretrained(tree, str(adapter_dir), config=config)
    except ValueError as exc:  # peft refuses e.g. a target that names a container module
        report.peft = {"loaded_tensors": 0, "error": str(exc).splitlines()[0][:300]}
        report.problems.append(f"peft could not load the adapter: {report.peft['error']}")
        return
    saved = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    loaded = {key: value.detach() for key, value in get_peft_model_state_dict(model).items()}
    missing = sorted(set(saved) - set(loaded))
    different = sorted(
        key for key in set(saved) & set(loaded) if not torch.equal(saved[key].float(), loaded[key].float().cpu())
    )
    layers = {
        name.removeprefix(KEY_PREFIX): layer for name, layer in model.named_modules() if isinstance(layer, LoraLayer)
    }
    generator = torch.Generator().manual_seed(0)
    changed, unchanged, not_injected, worst = 0, [], [], 0.0
    for module in modules:
        layer = layers.get(module)
        if layer is None:
            not_injected.append(module)
            continue
        x = torch.randn(2, layer.in_features, generator=generator)
        with torch.no_grad():
            delta = (layer(x) - layer.get_base_layer()(x)).abs().max().item()
        worst = max(worst, delta)
        if delta > 0:
            changed += 1
        elif module not in report.zero_b_modules:
            unchanged.append(module)
    report.peft = {
        "loaded_tensors": len(set(saved) & set(loaded)) - len(different),
        "adapter_tensors": len(saved),
        "lora_layers": len(layers),
        "modules_output_changed": changed,
        "max_output_delta": worst,
    }
    if missing:
        report.problems.append(f"peft did not load {len(missing)} adapter tensor(s): {missing[:SAMPLE]}")
    if different:
        report.problems.append(f"{len(different)} adapter tensor(s) changed on loading: {different[:SAMPLE]}")
    if not_injected:
        report.problems.append(f"peft attached no LoRA layer to {len(not_injected)} module(s): {not_injected[:SAMPLE]}")
    if unchanged:
        report.problems.append(
            f"{len(unchanged)} adapted linear(s) give the base output although lora_B is non-zero: {unchanged[:SAMPLE]}"
        )
    if changed == 0:
        report.problems.append("the peft model's outputs equal the base model's: the adapter is not applied")


def verify_adapter(
    adapter_dir: Path, hf_model: Path, run_targets: Iterable[str] = (), load_with_peft: bool = True
) -> AdapterReport:
    """Run every check; the caller fails on ``report.problems``."""
    report = check_names(adapter_dir, hf_model, run_targets)
    check_lora_b(adapter_dir, report)
    if load_with_peft and report.matched_modules:
        check_peft_load(adapter_dir, hf_model, report)
    return report
