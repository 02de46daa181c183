"""omni3-sft's Megatron-Bridge ConfigContainer for every stage variant, built for real on the tiny Omni.

Needs CUDA, Transformer Engine and Megatron-Bridge 0.6.2 (importing megatron.bridge imports TE), so it runs on
a lent GPU machine: ``bash ci/gpu/run-sft.sh``. Building a config touches no GPU memory and no network: the
recipe reads the tiny checkpoint's config through the patched ``_DEFAULT_HF_PATH``. The production variants
keep their upstream layouts (TP 4, EP 4 or 8); the tiny model divides by them, so the same code path is
exercised at tiny size on one GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from omni3_sft import recipe, stage_config

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage root with the tiny HF checkpoint, dataset folders of both forms and a checkpoint folder."""
    from omni3_import.tiny_model import build_tiny_omni

    root = tmp_path_factory.mktemp("sft-store")
    build_tiny_omni(root / "models" / "tiny_omni_hf", vision="omit")
    for dataset in ("datasets/cord_v2", "datasets/valor32k/energon"):
        (root / dataset / ".nv-meta").mkdir(parents=True)
        (root / dataset / "hf" / "data").mkdir(parents=True)
        (root / dataset / "hf" / "data" / "train-00000-of-00001.parquet").write_bytes(b"PAR1")
    (root / "checkpoints" / "tiny_omni").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def settings_for(resolve_variant: Any) -> Any:
    def settings(store: Path, variant: str) -> tuple[dict[str, Any], Any]:
        return resolve_variant(store, variant, "datasets/cord_v2", "datasets/valor32k/energon")

    return settings


@pytest.mark.parametrize("variant", stage_config.VARIANTS)
def test_config_container_of_every_variant(store: Path, settings_for: Any, variant: str) -> None:
    from megatron.bridge.data.builders import DirectHFSFTDatasetConfig, EnergonDatasetConfig
    from megatron.bridge.peft.lora import LoRA
    from megatron.bridge.training.config import ConfigContainer
    from megatron.core.transformer.enums import AttnBackend

    resolved, settings = settings_for(store, variant)
    config = recipe.build_config_container(resolved, settings)
    assert isinstance(config, ConfigContainer)
    model = resolved["model"]
    assert config.model.tensor_model_parallel_size == model["tensor_model_parallel_size"]
    assert config.model.expert_model_parallel_size == model["expert_model_parallel_size"]
    assert config.model.expert_tensor_parallel_size == model["expert_tensor_parallel_size"]
    assert config.model.sequence_parallel is (model["tensor_model_parallel_size"] > 1)
    assert config.model.seq_length == config.dataset.seq_length == model["seq_length"]
    assert config.model.hidden_size == 256  # the tiny checkpoint's, not the hub model's
    assert config.train.train_iters == resolved["train"]["train_iters"]
    assert config.train.global_batch_size == resolved["train"]["global_batch_size"]
    assert config.train.exit_signal_handler is True
    hf_dir = str(store / "models" / "tiny_omni_hf")
    staging = store / "runs" / f".{variant}.partial"
    assert config.checkpoint.save == config.checkpoint.load == str(staging / "checkpoints")
    assert config.logger.tensorboard_dir == str(staging / "tensorboard")
    if not recipe.detect_capabilities()["flash_attn"]:
        assert config.model.attention_backend == AttnBackend.fused
    if not recipe.detect_capabilities()["apex"]:
        assert config.model.gradient_accumulation_fusion is False
    if resolved["peft"]:
        assert isinstance(config.peft, LoRA)
        assert (config.peft.dim, config.peft.alpha) == (resolved["peft"]["dim"], resolved["peft"]["alpha"])
    else:
        assert config.peft is None
    if "cord_v2" in resolved["recipe"]:
        assert isinstance(config.dataset, DirectHFSFTDatasetConfig)
        assert config.dataset.hf_processor_path == hf_dir
        assert config.dataset.source.path_or_dataset == str(store / "datasets" / "cord_v2" / "hf")
    else:
        assert isinstance(config.dataset, EnergonDatasetConfig)
        assert config.dataset.path == str(store / "datasets" / "valor32k" / "energon")
        assert config.dataset.task_encoder.hf_processor_path == hf_dir
    config.dataset.validate()
    module = __import__(recipe.RECIPE_MODULE, fromlist=["_"])
    assert module._DEFAULT_HF_PATH == "nvidia/Nemotron-3-Nano-Omni-30B-A3B-Reasoning-BF16"  # restored


def test_cord_recipe_on_an_energon_dataset(store: Path, settings_for: Any) -> None:
    from megatron.bridge.data.builders import EnergonDatasetConfig

    resolved, settings = settings_for(store, "tiny")
    resolved["dataset"]["format"] = "energon"
    config = recipe.build_config_container(resolved, settings)
    assert isinstance(config.dataset, EnergonDatasetConfig)
    assert config.dataset.task_encoder.use_temporal_video_embedder is False
    assert config.dataset.num_workers == recipe.DEFAULT_NUM_WORKERS
    config.dataset.validate()


@pytest.mark.parametrize(("variant", "form"), [("tiny", "energon"), ("tiny", "hf"), ("audio_text", "auto")])
def test_data_loader_workers_reach_the_dataset_config(store: Path, settings_for: Any, variant: str, form: str) -> None:
    resolved, settings = settings_for(store, variant)
    resolved["dataset"] |= {"format": form, "num_workers": 6}
    config = recipe.build_config_container(resolved, settings)
    assert config.dataset.num_workers == 6
    config.dataset.validate()


def test_the_optimizer_section_reaches_the_optimizer_and_scheduler(store: Path, settings_for: Any) -> None:
    resolved, settings = settings_for(store, "image_text_peft")
    untouched = recipe.build_config_container(resolved, settings)
    resolved["optimizer"] = {"lr": 1e-3, "min_lr": 1e-4, "lr_warmup_iters": 0}
    config = recipe.build_config_container(resolved, settings)
    assert (config.optimizer.lr, config.optimizer.min_lr, config.scheduler.lr_warmup_iters) == (1e-3, 1e-4, 0)
    assert (untouched.optimizer.lr, untouched.scheduler.lr_warmup_iters) != (1e-3, 0)  # the recipe's own
