"""omni3-import: Hugging Face checkpoint -> Megatron distributed checkpoint.

Usage:
  omni3-import --hf-model PATH --megatron-path DIR [--tensor-parallel-size N] [--expert-parallel-size N]
  omni3-import settings
"""

import sys
from collections.abc import Sequence

from omni3_import.settings import ImportSettings
from omni3_shared.cli import ToolCommands, run_cli
from omni3_shared.errors import NotAvailableYet
from omni3_shared.manifest import ArtifactKind
from omni3_shared.plan import OutputSpec, hf_checkpoint_input, preflight
from omni3_shared.settings import load_settings

TOOL = "omni3-import"


class ImportCommands(ToolCommands):
    """Convert a Hugging Face Nemotron 3 Omni checkpoint into a Megatron checkpoint with Megatron-Bridge.

    Checks before any work: the HF directory exists (an omni3 hf-checkpoint artifact or a plain HF
    directory), the output is new (or --force); with --verify, the logits of source and result are compared
    on a fixed image + audio + text batch and the errors recorded in the manifest.
    Code inside the checkpoint runs only with --trust-remote-code.
    """

    _settings_cls = ImportSettings

    def run(
        self,
        hf_model: str | None = None,
        megatron_path: str | None = None,
        tensor_parallel_size: int | None = None,
        expert_parallel_size: int | None = None,
        dtype: str | None = None,
        trust_remote_code: bool | None = None,
        verify: bool | None = None,
        settings_file: str | None = None,
        force: bool = False,
        dry_run: bool = False,
    ) -> None:
        """Import an HF checkpoint into the Megatron format (the default command).

        Args:
            hf_model: HF checkpoint directory (OMNI3_HF_MODEL).
            megatron_path: output directory of the Megatron checkpoint (OMNI3_MEGATRON_PATH).
            tensor_parallel_size: tensor-parallel size (OMNI3_TENSOR_PARALLEL_SIZE).
            expert_parallel_size: expert-parallel size (OMNI3_EXPERT_PARALLEL_SIZE).
            dtype: bfloat16, float16 or float32 (OMNI3_DTYPE).
            trust_remote_code: allow code shipped in the checkpoint to run (OMNI3_TRUST_REMOTE_CODE).
            verify: compare logits of source and result (OMNI3_VERIFY, default true).
            settings_file: YAML file of settings, below flags and environment (OMNI3_SETTINGS_FILE).
            force: replace a complete artifact at --megatron-path.
            dry_run: print the resolved plan and the checks' results; write nothing.
        """
        flags = dict(
            hf_model=hf_model,
            megatron_path=megatron_path,
            tensor_parallel_size=tensor_parallel_size,
            expert_parallel_size=expert_parallel_size,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            verify=verify,
        )
        settings = load_settings(ImportSettings, flags, settings_file)
        plan = preflight(
            TOOL,
            "run",
            settings,
            inputs=[hf_checkpoint_input(settings.resolve_path(settings.hf_model))],
            outputs=[
                OutputSpec(
                    "megatron_checkpoint",
                    settings.resolve_path(settings.megatron_path),
                    ArtifactKind.MEGATRON_CHECKPOINT,
                )
            ],
            force=force,
            not_checked=["Megatron-Bridge conversion and logit verification run only on a GPU machine"],
        )
        if dry_run:
            print(plan.render(), end="")
            return
        plan.raise_first_problem()
        raise NotAvailableYet("HF -> Megatron import", "the model lifecycle issue (#4)")


def cli(argv: Sequence[str] | None = None) -> int:
    return run_cli(ImportCommands(), TOOL, argv, default_command="run")


def main() -> None:
    sys.exit(cli())
