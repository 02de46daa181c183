"""The built-in tiny Omni on the CPU: it loads through transformers' Auto classes offline, its tokenizer and
processor give what Megatron-Bridge's Omni collator needs, and its tensors carry the names and shapes the
Omni bridge maps. Built without the full-size vision tower (vision="omit") to stay light."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from safetensors import safe_open  # noqa: E402

from omni3_import.builtin import resolve_hf_model  # noqa: E402
from omni3_import.tiny_model import TINY_RECORD, build_tiny_omni  # noqa: E402
from omni3_import.tiny_model.spec import TinyOmniSpec, projector_shapes, vision_shapes  # noqa: E402
from omni3_import.tiny_model.weights import small_state  # noqa: E402

SPECIALS = {"<image>": 18, "<img>": 21, "</img>": 22, "<so_embedding>": 27, "<so_start>": 28, "<so_end>": 29}
PROCESSOR_CLASS = "NemotronH_Nano_Omni_Reasoning_V3Processor"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_omni(path, seed=0, vision="omit")
    return path


@pytest.fixture(scope="module")
def tensors(tiny_dir: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for shard in tiny_dir.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def auto_load(cls_name: str, path: Path):
    cls = getattr(transformers, cls_name)
    return cls.from_pretrained(str(path), trust_remote_code=True, local_files_only=True)


def test_config_loads_with_the_fields_the_bridge_reads(tiny_dir: Path) -> None:
    config = auto_load("AutoConfig", tiny_dir)
    assert config.architectures == ["NemotronH_Nano_Omni_Reasoning_V3"]
    assert type(config.llm_config).__name__ == "NemotronHConfig"
    assert config.llm_config.hybrid_override_pattern == TinyOmniSpec().hybrid_override_pattern
    assert config.llm_config.num_hidden_layers == len(TinyOmniSpec().hybrid_override_pattern)
    assert config.llm_config.conv_kernel == 4 and config.llm_config.tie_word_embeddings is False
    assert config.img_context_token_id == 18 and config.sound_context_token_id == 27
    sound = config.sound_config
    assert sound.hidden_size == 128 and sound.projection_hidden_size == 256 and sound.model_type == "parakeet"
    assert sound.subsampling_factor == 8 and sound.num_mel_bins == 128
    assert sound.to_dict()["num_hidden_layers"] == 2
    assert config.vision_config.separate_video_embedder is True  # as the real model; the temporal recipes need it
    assert config.vision_config.video_temporal_patch_size == 2
    assert "auto_map" in json.loads((tiny_dir / "config.json").read_text())


def test_tokenizer_specials_are_single_tokens_at_their_ids(tiny_dir: Path) -> None:
    tokenizer = auto_load("AutoTokenizer", tiny_dir)
    for token, token_id in SPECIALS.items():
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id], token
        assert tokenizer.convert_ids_to_tokens(token_id) == token
    assert tokenizer.pad_token is not None and tokenizer.eos_token == "<|im_end|>"
    assert len(tokenizer) <= TinyOmniSpec().vocab_size
    decoder = {token.content for token in tokenizer.added_tokens_decoder.values()}
    assert set(SPECIALS) <= decoder


def test_chat_template_is_chatml_and_role_markers_are_distinct(tiny_dir: Path) -> None:
    tokenizer = auto_load("AutoTokenizer", tiny_dir)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is shown? <image>"},
        {"role": "assistant", "content": "A red square."},
    ]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is shown? <image><|im_end|>\n"
        "<|im_start|>assistant\nA red square.<|im_end|>\n"
    )
    markers = [f"<|im_start|>{role}\n" for role in ("system", "developer", "user", "assistant", "tool")]
    encoded = [tuple(tokenizer.encode(marker, add_special_tokens=False)) for marker in markers]
    assert all(encoded) and len(set(encoded)) == len(encoded)
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_processor_expands_images_and_returns_normalized_chw(tiny_dir: Path) -> None:
    from PIL import Image

    processor = auto_load("AutoProcessor", tiny_dir)
    assert type(processor).__name__ == PROCESSOR_CLASS
    assert not hasattr(processor.image_processor, "max_num_tiles")
    output = processor(
        text=["Look: <image> done"],
        images=[Image.new("RGB", (100, 70), "red")],
        padding=False,
        truncation=False,
        return_tensors=None,
    )
    (pixels,) = output["pixel_values"]
    assert pixels.shape[0] == 3 and pixels.shape[1] % 32 == 0 and pixels.shape[2] % 32 == 0
    regions = (pixels.shape[1] // 32) * (pixels.shape[2] // 32)
    ids = output["input_ids"][0]
    start = ids.index(21)
    assert ids[start + 1 : start + 1 + regions] == [18] * regions and ids[start + 1 + regions] == 22
    assert abs(float(pixels.mean())) > 0.1  # normalized, not raw 0..1 pixels
    assert processor(text=["no image"], images=None)["input_ids"]


def test_the_image_side_is_the_specs_and_bounds_the_image_tokens(tmp_path: Path, tiny_dir: Path) -> None:
    from PIL import Image

    receipt = Image.new("RGB", (1536, 1056), "white")  # a CORD-sized synthetic receipt (omni3-prep --receipt-width)
    small = auto_load("AutoProcessor", tiny_dir).image_processor
    assert json.loads((tiny_dir / "preprocessor_config.json").read_text())["max_side"] == 512
    assert small(receipt)["pixel_values"][0].shape[1:] == (352, 512)  # shrunk: 11 x 16 = 176 image tokens
    path = tmp_path / "large"
    build_tiny_omni(path, seed=0, vision="omit", spec=TinyOmniSpec(image_max_side=1536))
    large = auto_load("AutoProcessor", path).image_processor
    assert large(receipt)["pixel_values"][0].shape[1:] == (1056, 1536)  # whole: 33 x 48 = 1,584 image tokens


def llm_keys(spec: TinyOmniSpec) -> dict[str, tuple[int, ...]]:
    """The HF keys and shapes the Omni bridge maps for the LLM, derived from the spec (not from transformers)."""
    h, v = spec.hidden_size, spec.vocab_size
    di, gn, nh = spec.mamba_num_heads * spec.mamba_head_dim, spec.n_groups * spec.ssm_state_size, spec.mamba_num_heads
    keys = {
        "language_model.backbone.embeddings.weight": (v, h),
        "language_model.backbone.norm_f.weight": (h,),
        "language_model.lm_head.weight": (v, h),
    }
    for i, kind in enumerate(spec.hybrid_override_pattern):
        p = f"language_model.backbone.layers.{i}."
        keys[p + "norm.weight"] = (h,)
        if kind == "M":
            keys.update(
                {
                    p + "mixer.in_proj.weight": (2 * di + 2 * gn + nh, h),
                    p + "mixer.conv1d.weight": (di + 2 * gn, 1, 4),
                    p + "mixer.conv1d.bias": (di + 2 * gn,),
                    p + "mixer.A_log": (nh,),
                    p + "mixer.D": (nh,),
                    p + "mixer.dt_bias": (nh,),
                    p + "mixer.norm.weight": (di,),
                    p + "mixer.out_proj.weight": (h, di),
                }
            )
        elif kind == "*":
            q, kv = spec.num_attention_heads * spec.head_dim, spec.num_key_value_heads * spec.head_dim
            keys.update(
                {
                    p + "mixer.q_proj.weight": (q, h),
                    p + "mixer.k_proj.weight": (kv, h),
                    p + "mixer.v_proj.weight": (kv, h),
                    p + "mixer.o_proj.weight": (h, q),
                }
            )
        elif kind == "E":
            e, m, s = spec.n_routed_experts, spec.moe_intermediate_size, spec.moe_shared_expert_intermediate_size
            keys.update({p + "mixer.gate.weight": (e, h), p + "mixer.gate.e_score_correction_bias": (e,)})
            for j in range(e):
                keys.update(
                    {p + f"mixer.experts.{j}.up_proj.weight": (m, h), p + f"mixer.experts.{j}.down_proj.weight": (h, m)}
                )
            keys.update(
                {p + "mixer.shared_experts.up_proj.weight": (s, h), p + "mixer.shared_experts.down_proj.weight": (h, s)}
            )
        elif kind == "-":
            keys.update(
                {
                    p + "mixer.up_proj.weight": (spec.intermediate_size, h),
                    p + "mixer.down_proj.weight": (h, spec.intermediate_size),
                }
            )
    return keys


def test_tensor_names_and_shapes_match_the_bridge_mapping(tiny_dir: Path, tensors: dict) -> None:
    spec = TinyOmniSpec()
    expected = {**llm_keys(spec), **projector_shapes(spec)}
    llm = {k: s for k, s in tensors.items() if k.startswith("language_model.")}
    assert llm == llm_keys(spec)
    for key, shape in projector_shapes(spec).items():
        assert tensors[key] == shape, key
    sound = [k for k in tensors if k.startswith("sound_encoder.encoder.")]
    assert any(re.search(r"layers\.1\.", k) for k in sound) and any("running_var" in k for k in sound)
    assert set(tensors) == set(expected) | set(sound)  # nothing else, and no vision in "omit" mode
    assert not any(k.startswith("vision_model.") for k in tensors)
    record = json.loads((tiny_dir / TINY_RECORD).read_text())
    assert record["vision"] == "omit" and record["num_tensors"] == len(tensors)
    index = json.loads((tiny_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)


def test_vision_spec_is_radio_vit_h() -> None:
    shapes = vision_shapes()
    assert len(shapes) == 4 + 32 * 12
    assert shapes["vision_model.radio_model.model.patch_generator.video_embedder.weight"] == (1280, 1536)
    prefix = "vision_model.radio_model.model."
    assert shapes[prefix + "patch_generator.pos_embed"] == (1, 16384, 1280)
    assert shapes[prefix + "blocks.31.attn.qkv.weight"] == (3840, 1280)
    assert shapes[prefix + "blocks.0.mlp.fc1.weight"] == (5120, 1280)
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert 640e6 < total < 670e6


def test_same_seed_same_weights_and_norms_are_not_trivial() -> None:
    first, second = small_state(TinyOmniSpec(), seed=3), small_state(TinyOmniSpec(), seed=3)
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = small_state(TinyOmniSpec(), seed=4)
    assert not torch.equal(first["language_model.lm_head.weight"], other["language_model.lm_head.weight"])
    norm = first["language_model.backbone.layers.2.norm.weight"]
    assert not torch.allclose(norm, torch.ones_like(norm))  # a lost norm mapping must show in the logits


def test_build_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        build_tiny_omni(tmp_path, seed=0, vision="omit")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_builtin_name_resolves_to_a_cached_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNI3_CACHE_DIR", str(tmp_path / "cache"))
    path = resolve_hf_model("tiny", vision="omit")
    assert (path / TINY_RECORD).is_file() and (path / "config.json").is_file()
    assert resolve_hf_model("tiny", vision="omit") == path  # second call reuses it
    assert resolve_hf_model("some/dir") == Path("some/dir")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_the_hf_reference_of_the_import_check_runs_on_the_cpu(tiny_dir: Path) -> None:
    """What rank 0 computes for --verify when the HF model does not fit on its GPU (here: no GPU at all). The
    model is built from the stored bf16 tensors, without a float32 copy, and gives the float32 model's logits
    within bf16 noise."""
    from omni3_import.core import hf_language_model, hf_reference_logits, text_ids
    from omni3_shared.omni_logits import logit_stats, within_limits

    ids = text_ids(tiny_dir, trust_remote_code=True)
    assert ids.shape == (2, 128) and text_ids(tiny_dir, trust_remote_code=True).equal(ids)  # the same on every rank
    model = hf_language_model(tiny_dir, trust_remote_code=True)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    logits, device = hf_reference_logits(tiny_dir, True, ids)
    assert device == "cpu" and logits.dtype == torch.float32 and logits.shape[:2] == (2, 128)
    with torch.no_grad():
        exact = model.float()(ids).logits.float()
    stats = logit_stats(exact, logits)
    assert within_limits(stats) and stats["mean_abs_err"] > 0, stats  # bf16, so not bit-equal; within the bar
