"""Unit tests for spatialrl.models: the tiny Qwen2.5-VL / Flux fixtures and the offline model loader.

Real transformers / diffusers classes on tiny random weights (no mocks), CPU only, no Ray, no network.
Run: .venv/bin/python -m pytest tests/test_models.py -q
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch
from PIL import Image

from spatialrl.models import fixtures, loader
from spatialrl.models.loader import (
    PRESETS,
    ModelNotFoundError,
    RepoDir,
    load_flux_pipeline,
    load_vl_model,
    load_vl_processor,
    resolve_model_path,
)

PROMPT = "A red circle is to the left of a blue square."


@pytest.fixture(scope="session")
def qwen_dir(tmp_path_factory):
    return fixtures.build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny") / "qwen")


@pytest.fixture(scope="session")
def flux_dir(tmp_path_factory):
    return fixtures.build_tiny_flux(tmp_path_factory.mktemp("tiny") / "flux")


@pytest.fixture(scope="session")
def processor(qwen_dir):
    return load_vl_processor(qwen_dir)


@pytest.fixture(scope="session")
def qwen_model(qwen_dir):
    return load_vl_model(qwen_dir)


@pytest.fixture(scope="session")
def flux_pipe(flux_dir):
    return load_flux_pipeline(flux_dir)


@pytest.fixture
def isolated_caches(tmp_path, monkeypatch):
    """Empty SpatialRL and Hugging Face caches, so nothing on this machine can satisfy a lookup."""
    for var, sub in [("SPATIALRL_CACHE", "spatialrl"), ("HF_HOME", "hf"), ("HF_HUB_CACHE", "hf/hub")]:
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("SPATIALRL_MODELS", raising=False)
    return tmp_path


def chat_text(processor, prompt=PROMPT):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def square_image(color=(200, 30, 30), size=128):
    return Image.new("RGB", (size, size), color)


# ------------------------------------------------------------------------------------------- qwen fixture


def test_qwen_fixture_layout_and_config(qwen_dir):
    for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "processor_config.json", "chat_template.jinja", "generation_config.json"]:
        assert (qwen_dir / name).is_file(), name
    assert json.loads((qwen_dir / "processor_config.json").read_text())["processor_class"] == "Qwen2_5_VLProcessor"
    config = json.loads((qwen_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    text, vision = config["text_config"], config["vision_config"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]  # 64 / 4 = 16
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2 == 8
    assert vision["out_hidden_size"] == text["hidden_size"] == 64
    assert vision["fullatt_block_indexes"] == [1]


def test_qwen_special_tokens_follow_the_real_order(processor, qwen_dir):
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in fixtures.QWEN_SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # contiguous, in Qwen's order, after the BPE vocab
    config = json.loads((qwen_dir / "config.json").read_text())
    assert config["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config["video_token_id"] == tok.convert_tokens_to_ids("<|video_pad|>")
    assert config["vision_start_token_id"] == tok.convert_tokens_to_ids("<|vision_start|>")
    assert config["vision_end_token_id"] == tok.convert_tokens_to_ids("<|vision_end|>")
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    assert tok.padding_side == "left"
    assert len(tok) <= config["text_config"]["vocab_size"] == 1024


def test_qwen_tokenizer_is_byte_level(processor):
    tok = processor.tokenizer
    for text in [PROMPT, "Ünïcödé, 日本語 and an emoji 🙂", "tabs\tand\nnewlines  "]:
        ids = tok(text, add_special_tokens=False).input_ids
        assert tok.unk_token_id is None or tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    # Words of the corpus are single tokens (with their leading space), so the BPE really was trained on it.
    assert tok.tokenize(" left") == ["Ġleft"]
    assert tok.tokenize(" triangle") == ["Ġtriangle"]


def test_chat_template_renders_roles_images_and_generation_prompt(processor):
    messages = [
        {"role": "system", "content": "Judge spatial relations."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it right?"}]},
        {"role": "assistant", "content": "yes"},
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nJudge spatial relations.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is it right?<|im_end|>\n"
        "<|im_start|>assistant\nyes<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # No system message -> Qwen's default one; no generation prompt -> ends after the last message.
    text = processor.apply_chat_template(messages[1:2], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("Is it right?<|im_end|>\n")


def test_processor_expands_a_128px_image_to_16_tokens(processor):
    batch = processor(text=[chat_text(processor)], images=[square_image()], return_tensors="pt")
    # 128x128 -> resized to 112x112 -> 8x8 patches of 14 -> 2x2 merge -> 16 tokens.
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert batch["pixel_values"].shape == (64, 3 * 2 * 14 * 14)  # [patches, C * T * 14 * 14]
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    is_image = batch["input_ids"] == image_id  # [1, L]
    assert int(is_image.sum()) == 16
    assert "mm_token_type_ids" in batch
    assert torch.equal(batch["mm_token_type_ids"].bool(), is_image)


def test_processor_pads_left(processor):
    texts = [chat_text(processor), chat_text(processor, PROMPT + " The background is white.")]
    batch = processor(text=texts, images=[square_image(), square_image()], return_tensors="pt", padding=True)
    mask = batch["attention_mask"]  # [2, L]
    assert mask[0, 0] == 0 and mask[1].all()  # the shorter row is padded at the front
    assert (mask[:, -1] == 1).all()  # so the last position is a real token in every row
    assert (batch["input_ids"][0][mask[0] == 0] == processor.tokenizer.pad_token_id).all()


def test_processor_resolution_override(qwen_dir):
    processor = load_vl_processor(qwen_dir, min_pixels=56 * 56, max_pixels=56 * 56)
    batch = processor(text=[chat_text(processor)], images=[square_image()], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]  # 56 px -> 4x4 patches -> 4 tokens
    assert int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()) == 4


def test_forward_with_every_processor_key(processor, qwen_model):
    texts = [chat_text(processor), chat_text(processor, "A green diamond is above a pink triangle, far apart.")]
    batch = processor(text=texts, images=[square_image(), square_image((0, 0, 255))], return_tensors="pt",
                      padding=True)
    with torch.no_grad():
        out = qwen_model(**batch, output_hidden_states=True)
    B, L = batch["input_ids"].shape
    assert out.hidden_states[-1].shape == (B, L, 64)
    assert out.logits.shape == (B, L, 1024)
    assert torch.isfinite(out.logits).all()
    # Why every key must be forwarded: without mm_token_type_ids Qwen2.5-VL silently falls back to 1-D
    # positions instead of 3-D M-RoPE, and the hidden states change.
    without = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        fallback = qwen_model.model(**without).last_hidden_state
    assert not torch.allclose(fallback, out.hidden_states[-1], atol=1e-4)


def test_qwen_round_trip_is_lossless(qwen_dir, qwen_model, processor, tmp_path):
    model, info = load_vl_model(qwen_dir, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))  # every weight saved
    assert not model.training
    model.save_pretrained(tmp_path)
    again = load_vl_model(tmp_path)
    batch = processor(text=[chat_text(processor)], images=[square_image()], return_tensors="pt")
    with torch.no_grad():
        a, b = qwen_model(**batch).logits, again(**batch).logits
    assert torch.equal(a, b)
    # The processor round-trips too: same ids and pixels from the re-saved folder.
    processor.save_pretrained(tmp_path)
    reloaded = load_vl_processor(tmp_path)
    batch2 = reloaded(text=[chat_text(reloaded)], images=[square_image()], return_tensors="pt")
    assert torch.equal(batch["input_ids"], batch2["input_ids"])
    assert torch.equal(batch["pixel_values"], batch2["pixel_values"])


def test_qwen_build_is_deterministic_and_seeded(qwen_dir, tmp_path):
    fixtures.main(["--kind", "qwen", "--out", str(tmp_path / "same"), "--seed", "0"])  # the CLI path
    for name in ["model.safetensors", "tokenizer.json", "config.json", "processor_config.json"]:
        assert (tmp_path / "same" / name).read_bytes() == (qwen_dir / name).read_bytes(), name
    fixtures.build_tiny_qwen2_5_vl(tmp_path / "other", seed=1)
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != (qwen_dir / "model.safetensors").read_bytes()


def test_qwen_builder_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="multiple of 28"):
        fixtures.build_tiny_qwen2_5_vl(tmp_path, image_size=100)


# ------------------------------------------------------------------------------------------- flux fixture


def test_flux_fixture_layout_and_config(flux_dir, flux_pipe):
    index = json.loads((flux_dir / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    for sub in ["scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae"]:
        assert (flux_dir / sub).is_dir(), sub
    t = flux_pipe.transformer.config
    assert t.in_channels == 64 and t.guidance_embeds and sum(t.axes_dims_rope) == t.attention_head_dim
    vae = flux_pipe.vae.config
    assert (vae.latent_channels, vae.scaling_factor, vae.shift_factor) == (16, 0.3611, 0.1159)
    assert not vae.use_quant_conv and not vae.use_post_quant_conv
    assert flux_pipe.vae_scale_factor == 8
    s = flux_pipe.scheduler.config
    assert (s.shift, s.use_dynamic_shifting, s.base_shift, s.max_shift) == (3.0, True, 0.5, 1.15)
    assert (s.base_image_seq_len, s.max_image_seq_len) == (256, 4096)
    assert flux_pipe.tokenizer.model_max_length == 77
    assert flux_pipe.text_encoder.config.max_position_embeddings >= 77
    for name in ["transformer", "vae", "text_encoder", "text_encoder_2"]:
        assert not getattr(flux_pipe, name).training, name


def test_flux_tokenizers(flux_pipe):
    clip = flux_pipe.tokenizer(PROMPT).input_ids
    # bos, one token per corpus word (11) and one for ".", eos.
    assert len(clip) == 14
    assert clip[0] == flux_pipe.tokenizer.bos_token_id and clip[-1] == flux_pipe.tokenizer.eos_token_id
    assert flux_pipe.tokenizer.tokenize("left of") == ["left</w>", "of</w>"]
    assert flux_pipe.tokenizer.eos_token_id == len(flux_pipe.tokenizer) - 1  # like 49407 in real CLIP
    t5 = flux_pipe.tokenizer_2
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert t5.tokenize("a blue square") == ["\u2581a", "\u2581blue", "\u2581square"]
    assert t5("a blue square").input_ids[-1] == t5.eos_token_id


def test_flux_generates_64px_in_two_steps(flux_pipe):
    def run(seed):
        return flux_pipe(
            ["a red circle above a blue square", "a green diamond"],
            height=64,
            width=64,
            num_inference_steps=2,
            guidance_scale=3.5,
            max_sequence_length=32,
            generator=torch.Generator().manual_seed(seed),
            output_type="pt",
        ).images  # [B, 3, H, W] in [0, 1]

    images = run(0)
    assert images.shape == (2, 3, 64, 64)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, run(0))
    assert not torch.equal(images, run(1))


def test_flux_round_trip_is_lossless(flux_pipe, tmp_path):
    flux_pipe.save_pretrained(tmp_path)
    again = load_flux_pipeline(tmp_path)
    kwargs = dict(height=64, width=64, num_inference_steps=2, max_sequence_length=32, output_type="latent")
    a = flux_pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images  # [1, 16, 64] packed
    b = again(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert a.shape == (1, 16, 64)  # 8x8 latent packed 2x2 -> 16 tokens of 16 * 4 channels
    assert torch.equal(a, b)


def test_flux_build_is_deterministic(flux_dir, tmp_path):
    fixtures.build_tiny_flux(tmp_path / "same", seed=0)
    for name in ["transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "text_encoder_2/model.safetensors", "tokenizer/tokenizer.json",
                 "tokenizer_2/tokenizer.json"]:
        assert (tmp_path / "same" / name).read_bytes() == (flux_dir / name).read_bytes(), name


# ----------------------------------------------------------------------------------------------- resolution


def test_offline_mode_is_forced():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"


def test_hub_id_without_local_copy_says_how_to_download(isolated_caches):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_path("Qwen/Qwen2.5-VL-7B-Instruct", "qwen")
    message = str(err.value)
    target = isolated_caches / "spatialrl" / "models" / "Qwen2.5-VL-7B-Instruct"
    assert f"hf download Qwen/Qwen2.5-VL-7B-Instruct --local-dir {target}" in message
    assert f"huggingface-cli download Qwen/Qwen2.5-VL-7B-Instruct --local-dir {target}" in message
    assert "never downloads" in message
    assert str(isolated_caches / "hf" / "hub") in message  # says where it looked
    # The `full` preset goes through the same lookup; FLUX.1-dev also needs its licence accepted.
    with pytest.raises(ModelNotFoundError, match="hf download black-forest-labs/FLUX.1-dev --local-dir"):
        load_flux_pipeline("full")
    with pytest.raises(ModelNotFoundError, match="accept the licence"):
        resolve_model_path("black-forest-labs/FLUX.1-dev", "flux")
    with pytest.raises(ModelNotFoundError, match="hf download Qwen/Qwen2.5-VL-7B-Instruct"):
        load_vl_model("full")


def test_hub_id_found_in_models_dir(isolated_caches, qwen_dir, monkeypatch):
    models = isolated_caches / "models"
    shutil.copytree(qwen_dir, models / "Qwen2.5-VL-7B-Instruct")
    monkeypatch.setenv("SPATIALRL_MODELS", str(models))
    assert resolve_model_path("Qwen/Qwen2.5-VL-7B-Instruct", "qwen") == models / "Qwen2.5-VL-7B-Instruct"
    assert resolve_model_path("full", "qwen") == models / "Qwen2.5-VL-7B-Instruct"


def test_hub_id_found_in_hf_cache(isolated_caches, flux_dir):
    # The hub cache layout that `hf download` (without --local-dir) writes: refs/main names a snapshot folder.
    repo = isolated_caches / "hf" / "hub" / "models--black-forest-labs--FLUX.1-dev"
    commit = "0" * 40
    shutil.copytree(flux_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve_model_path("black-forest-labs/FLUX.1-dev", "flux") == repo / "snapshots" / commit


def test_local_folder_missing_config_is_a_clear_error(tmp_path, flux_dir, qwen_dir):
    with pytest.raises(ModelNotFoundError, match="config.json is missing"):
        resolve_model_path(tmp_path, "qwen")
    with pytest.raises(ModelNotFoundError, match="model_index.json is missing"):
        resolve_model_path(str(tmp_path), "flux")
    with pytest.raises(ModelNotFoundError, match="looks like a diffusers pipeline"):
        load_vl_model(flux_dir)
    with pytest.raises(ModelNotFoundError, match="looks like a transformers model"):
        load_flux_pipeline(qwen_dir)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_path(tmp_path / "nope", "qwen")
    with pytest.raises(ModelNotFoundError, match="not an existing folder, a preset"):
        resolve_model_path("no-such-preset", "qwen")
    with pytest.raises(ValueError, match="kind must be one of"):
        resolve_model_path(qwen_dir, "sd3")


def test_incomplete_flux_folder_is_a_clear_error(flux_dir, tmp_path):
    shutil.copytree(flux_dir, tmp_path / "flux")
    shutil.rmtree(tmp_path / "flux" / "transformer")
    with pytest.raises(ModelNotFoundError, match=r"lists \['transformer'\]"):
        resolve_model_path(tmp_path / "flux", "flux")


def test_repo_dir_preset_that_is_missing(monkeypatch):
    monkeypatch.setitem(PRESETS, "tiny-pretrained", {"qwen": RepoDir("assets/does-not-exist/qwen")})
    with pytest.raises(ModelNotFoundError, match="assets/does-not-exist/qwen"):
        resolve_model_path("tiny-pretrained", "qwen")
    with pytest.raises(ModelNotFoundError, match="defines no flux model"):
        resolve_model_path("tiny-pretrained", "flux")


def test_model_not_found_error_pickles():
    err = ModelNotFoundError("no model at /x; run `hf download ...`")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is ModelNotFoundError and str(again) == str(err)
    assert isinstance(again, FileNotFoundError)


def test_tiny_preset_builds_once_into_the_cache(isolated_caches, qwen_dir):
    path = resolve_model_path("tiny", "qwen")
    assert path == isolated_caches / "spatialrl" / "fixtures" / "tiny-qwen2_5_vl"
    assert (path / "model.safetensors").read_bytes() == (qwen_dir / "model.safetensors").read_bytes()
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("tiny", "qwen") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    # A copy from an older fixture recipe is replaced, and no temporary folders are left behind.
    stamp = path / fixtures.STAMP_FILE
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "version": -1}))
    assert loader.ensure_fixture("tiny-qwen2_5_vl") == path
    assert json.loads(stamp.read_text())["version"] == fixtures.FIXTURE_VERSION
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny-qwen2_5_vl"]


def test_fixture_build_race_keeps_the_winners_copy(isolated_caches, monkeypatch):
    """Two processes build at once: the one that renames second must keep the first one's folder."""
    final = isolated_caches / "spatialrl" / "fixtures" / "tiny-flux"
    kind, build = loader.FIXTURE_BUILDERS["tiny-flux"]

    def build_while_another_process_wins(out_dir):
        build(out_dir)
        shutil.copytree(out_dir, final)  # the other process's rename lands first
        (final / "winner").write_text("")

    monkeypatch.setitem(loader.FIXTURE_BUILDERS, "tiny-flux", (kind, build_while_another_process_wins))
    assert resolve_model_path("tiny", "flux") == final
    assert (final / "winner").exists()
    assert sorted(p.name for p in final.parent.iterdir()) == ["tiny-flux"]  # our temporary copy is gone
