"""Development aid (ci/dev/bridge-on-cpu.sh): lets Megatron-Bridge's data and config code import on a CPU machine.

Transformer Engine, mamba-ssm, causal-conv1d, flash-attn, APEX and nvidia-resiliency-ext are CUDA packages that
Megatron-Bridge imports at module level. Here they are import-only stand-ins (MagicMock modules): anything that
really calls them fails or returns nonsense, so only code paths that never touch them (Energon data, the Omni task
encoder and collate, ConfigContainer building) are meaningful. Nothing run this way stands for a GPU result.
"""

import importlib.abc
import importlib.machinery
import sys
import typing
from unittest import mock

import typing_extensions

if not hasattr(typing, "override"):  # Megatron-Core uses Python 3.12's typing.override; this machine has 3.11
    typing.override = typing_extensions.override

STUBBED = ("transformer_engine", "transformer_engine_torch", "mamba_ssm", "causal_conv1d", "flash_attn", "apex",
           "nvidia_resiliency_ext", "flashinfer")  # fmt: skip


class _Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> mock.MagicMock:
        module = mock.MagicMock(name=spec.name)
        module.__path__, module.__spec__, module.__name__ = [], spec, spec.name
        module.__version__ = "2.20.2"  # the kit's Transformer Engine; version checks compare against it
        return module

    def exec_module(self, module: object) -> None:
        pass


sys.meta_path.insert(0, _Stubs())
