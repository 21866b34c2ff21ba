"""Unit tests for spatialrl.reward.model and spatialrl.reward.scorer on the tiny random Qwen2.5-VL fixture.

Real transformers / peft classes (no mocks), CPU, no Ray. Pairs come from the spatial world
(`data_pipeline.pairs.make_pair`) through the training reader's own preprocessing (`encode_pairs` +
`PairCollator`), so these tests see exactly the batches the training job sees.
Run: .venv/bin/python -m pytest tests/test_reward_model.py -q
"""

from __future__ import annotations

import json
import numpy as np
import pytest
import torch

from data_pipeline.dataset_io import decode_image
from data_pipeline.pairs import make_pair
from spatialrl.reward.prompt import encode_pairs, load_processor
from spatialrl.reward.reader import PairCollator
from data_pipeline.world import WorldConfig
from spatialrl.config import ConfigError
from spatialrl.reward.model import (
    CONFIG_FILE,
    HEAD_FILE,
    META_KEYS,
    CheckpointError,
    RewardModelConfig,
    SpatialRewardModel,
    last_token_index,
    lora_target_regex,
    pair_loss_from_scores,
)
from spatialrl.reward.scorer import SpatialScorer, encode_items

IMAGE_SIZE = 112
NUM_PAIRS = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def processor():
    return load_processor("tiny", IMAGE_SIZE)


@pytest.fixture(scope="module")
def rows():
    return [make_pair(i, 0, "train", WorldConfig()) for i in range(NUM_PAIRS)]


@pytest.fixture(scope="module")
def images(rows):
    """(prompts, chosen PIL images, rejected PIL images)."""
    return ([r["prompt"] for r in rows], [decode_image(r["chosen_image"]) for r in rows],
            [decode_image(r["rejected_image"]) for r in rows])


@pytest.fixture(scope="module")
def batch(processor, rows, images):
    """The training batch for 4 pairs: [8, ...], chosen rows first, left padded."""
    prompts, chosen, rejected = images
    enc = encode_pairs(processor, IMAGE_SIZE, prompts, chosen, rejected)
    enc["num_perturbations"] = np.array([r["num_perturbations"] for r in rows])
    out = PairCollator(padding_side="left")(enc)
    assert out["input_ids"].shape[0] == 2 * NUM_PAIRS
    return out


def fresh_model(**overrides) -> SpatialRewardModel:
    return SpatialRewardModel(RewardModelConfig(backbone="tiny", image_size=IMAGE_SIZE, **overrides), seed=0)


@pytest.fixture(scope="module")
def model():
    """A LoRA model whose adapters and head are randomised, so a checkpoint differs from the bare backbone."""
    m = fresh_model()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name or name.startswith("head."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return m


def to_right_padding(batch: dict) -> dict:
    """The same batch right padded: each row's tokens moved to the front of its token-level tensors."""
    mask = batch["attention_mask"]
    out = dict(batch)
    for key, value in batch.items():
        if torch.is_tensor(value) and value.shape == mask.shape:
            rows = []
            for v, m in zip(value, mask):
                real = v[m.bool()]
                rows.append(torch.cat([real, torch.zeros(len(v) - len(real), dtype=v.dtype)]))
            out[key] = torch.stack(rows)
    if "input_ids" in batch:  # pad with the same pad id the left-padded batch used
        pad_id = batch["input_ids"][~mask.bool()]
        if len(pad_id):
            out["input_ids"] = torch.where(out["attention_mask"].bool(), out["input_ids"], pad_id[0])
    return out


# ------------------------------------------------------------------------------------------------ config


def test_config_validation_names_the_fix():
    with pytest.raises(ConfigError, match="head=gaussian"):
        RewardModelConfig(head="scalar", loss="uncertainty").validate()
    with pytest.raises(ConfigError, match="multiple of 28"):
        RewardModelConfig(image_size=100).validate()
    with pytest.raises(ConfigError, match="plain module names"):
        RewardModelConfig(lora_targets=[".*proj"]).validate()
    RewardModelConfig(head="scalar", loss="bt").validate()
    RewardModelConfig(lora_rank=0, full_finetune=True).validate()


# ---------------------------------------------------------------------------------------------- LoRA


def test_lora_target_regex_excludes_vision_tower():
    import re

    pattern = lora_target_regex(["q_proj", "gate_proj", "down_proj"])
    for name in ("language_model.layers.0.self_attn.q_proj", "language_model.layers.11.mlp.gate_proj",
                 "model.language_model.layers.3.mlp.down_proj"):
        assert re.fullmatch(pattern, name), name
    for name in ("visual.blocks.0.mlp.gate_proj", "model.visual.blocks.1.mlp.down_proj",
                 "visual.merger.mlp.0", "language_model.layers.0.self_attn.k_proj", "language_model.embed_tokens"):
        assert not re.fullmatch(pattern, name), name


def test_lora_lands_only_in_language_model(model):
    names = model.lora_module_names()
    assert [n for n in names if "visual" in n] == []
    assert len([n for n in names if n.startswith("language_model.layers.")]) == 2 * 7  # 2 layers x 7 projections
    assert len(names) == 14
    # the vision MLP does use the same names: a plain name list would have put LoRA there too
    vision_twins = [n for n, _ in model.base_model.named_modules()
                    if n.startswith("visual") and n.endswith("gate_proj")]
    assert len(vision_twins) == 2


def test_parameter_counts_by_hand():
    m = fresh_model()
    # per layer, r * (in + out) per projection, r = 16: q 64->64, k 64->32, v 64->32, o 64->64,
    # gate/up 64->128, down 128->64 = 16 * (128 + 96 + 96 + 128 + 3 * 192) = 16384; 2 layers; head 64*2 + 2
    lora = 2 * 16 * (128 + 96 + 96 + 128 + 3 * 192)
    counts = m.parameter_counts()
    assert counts["trainable"] == lora + 130 == 32898
    backbone = sum(p.numel() for n, p in m.base_model.named_parameters() if "lora_" not in n)
    assert counts["total"] == backbone + lora + 130
    assert all(not p.requires_grad for n, p in m.base_model.named_parameters() if "lora_" not in n)
    full = fresh_model(full_finetune=True, head="scalar", loss="bt")
    assert full.parameter_counts()["trainable"] == full.parameter_counts()["total"] == backbone + 65


# ------------------------------------------------------------------------------------------- forward


def test_forward_shapes_and_dtypes(model, batch):
    with torch.no_grad():
        mu, log_sigma = model(**batch)
    assert mu.shape == log_sigma.shape == (2 * NUM_PAIRS,)
    assert mu.dtype == log_sigma.dtype == torch.float32
    assert torch.isfinite(mu).all() and torch.isfinite(log_sigma).all()
    assert mu.std() > 0  # different images get different rewards
    scalar = fresh_model(head="scalar", loss="bt")
    with torch.no_grad():
        mu_s, ls_s = scalar(**batch)
    assert ls_s is None and mu_s.shape == (2 * NUM_PAIRS,)


def test_every_processor_key_reaches_the_backbone(model, batch):
    seen = {}

    def spy(module, args, kwargs):
        seen.update(kwargs)

    handle = model.base_model.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        with torch.no_grad():
            mu, _ = model(**batch)
    finally:
        handle.remove()
    model_keys = set(batch) - set(META_KEYS)
    assert {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"} <= model_keys
    assert model_keys <= set(seen)
    assert "num_perturbations" not in seen
    # and they matter: without mm_token_type_ids Qwen2.5-VL silently drops to 1-D positions
    without = {k: v for k, v in batch.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        mu_without, _ = model(**without)
    assert (mu_without - mu).abs().max() > 1e-4


def test_unknown_key_is_an_error_not_dropped(model, batch):
    # Qwen2_5_VLModel.forward takes **kwargs and would ignore it (e.g. a collator's misnamed key)
    with pytest.raises(ValueError, match="not inputs of Qwen2_5_VLModel.forward"):
        model(**batch, chosen_input_ids=torch.zeros(1))
    with torch.no_grad():
        model(**batch, pair_id=np.array(["a"] * 8))  # pair metadata is not a model input, and is skipped


def test_last_token_index():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    assert last_token_index(mask, 4).tolist() == [3, 3, 1, 0]
    assert last_token_index(None, 4) == 3


def test_left_and_right_padding_give_the_same_rewards(model, batch):
    right = to_right_padding(batch)
    assert (batch["attention_mask"][:, 0] == 0).any(), "the fixture batch must contain padding"
    assert (right["attention_mask"][:, -1] == 0).any() and (right["attention_mask"][:, 0] == 1).all()
    with torch.no_grad():
        mu_l, ls_l = model(**batch)
        mu_r, ls_r = model(**right)
    torch.testing.assert_close(mu_r, mu_l, atol=1e-5, rtol=0)
    torch.testing.assert_close(ls_r, ls_l, atol=1e-5, rtol=0)


def test_bfloat16_backbone_keeps_an_fp32_head(batch):
    m = fresh_model(dtype="bfloat16")
    assert m.base_model.language_model.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for n, p in m.named_parameters() if "lora_" in n or n.startswith("head."))
    with torch.no_grad():
        mu, log_sigma = m(**batch)
    assert mu.dtype == torch.float32 and torch.isfinite(mu).all() and torch.isfinite(log_sigma).all()


# ------------------------------------------------------------------------------------------- training


def test_pair_loss_splits_chosen_then_rejected():
    # B = 2: chosen mu [1, 0], rejected mu [0, 0] -> BT = (ln(1 + e^-1) + ln 2) / 2, accuracy 1/2, margin 1/2
    loss, metrics = pair_loss_from_scores(torch.tensor([1.0, 0.0, 0.0, 0.0]), None, "bt")
    expected = (np.log1p(np.exp(-1.0)) + np.log(2.0)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6) and metrics["loss/bt"] == pytest.approx(expected, abs=1e-6)
    assert metrics["reward/accuracy"] == 0.5 and metrics["reward/margin"] == pytest.approx(0.5)
    assert metrics["reward/mu_chosen"] == pytest.approx(0.5) and metrics["reward/mu_rejected"] == 0.0
    # near-zero sigma: the uncertainty loss equals BT; sigma is reported
    loss_u, metrics_u = pair_loss_from_scores(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.full((4,), -20.0))
    assert loss_u.item() == pytest.approx(expected, abs=1e-6)
    assert metrics_u["reward/sigma"] == pytest.approx(np.exp(-20), rel=1e-5)
    with pytest.raises(ValueError, match="even number of rows"):
        pair_loss_from_scores(torch.zeros(3), None, "bt")
    with pytest.raises(ValueError, match="head='gaussian'"):
        pair_loss_from_scores(torch.zeros(4), None, "uncertainty")



@pytest.mark.parametrize("head,loss", [("gaussian", "uncertainty"), ("scalar", "bt")])
def test_a_few_adamw_steps_reduce_the_loss(batch, head, loss):
    m = fresh_model(head=head, loss=loss).train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    losses, bt_on_mu = [], []
    for _ in range(6):
        value, metrics = m.pair_loss(batch)
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
        bt_on_mu.append(metrics["loss/bt"])
    assert metrics["loss/reward"] == pytest.approx(losses[-1])
    # the uncertainty loss falls first by shrinking sigma; the ranking of mu must improve as well
    assert bt_on_mu[-1] < bt_on_mu[0], bt_on_mu
    assert set(metrics) >= {"loss/reward", "loss/bt", "reward/accuracy", "reward/margin"}
    assert ("reward/sigma" in metrics) == (head == "gaussian")
    assert losses[-1] < losses[0] - 1e-4, losses
    lora_b = [p for n, p in m.named_parameters() if "lora_B" in n]
    assert len(lora_b) == 14 and all(p.abs().sum() > 0 for p in lora_b)  # every adapter moved off zero


def test_gradient_checkpointing_gives_the_same_gradients(batch):
    grads = []
    for checkpointing in (False, True):
        m = fresh_model(gradient_checkpointing=checkpointing).train()
        assert m.base_model.language_model.gradient_checkpointing == checkpointing
        with torch.no_grad():  # nonzero LoRA B, so LoRA A gets a gradient too
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.fill_(0.01)
        loss, _ = m.pair_loss(batch)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    assert set(grads[0]) == set(grads[1]) and len(grads[0]) == 2 * 14 + 2
    for name in grads[0]:
        assert grads[1][name].abs().sum() > 0, name
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------------ save / load


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return model.save_pretrained(tmp_path_factory.mktemp("rm") / "ckpt")


def test_checkpoint_files(checkpoint, model):
    names = {p.name for p in checkpoint.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", HEAD_FILE, CONFIG_FILE} <= names
    meta = json.loads((checkpoint / CONFIG_FILE).read_text())
    assert meta["config"]["backbone"] == "tiny" and meta["image_size"] == IMAGE_SIZE
    assert meta["backbone_path"] == model.backbone_path and meta["instruction_version"]


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # peft 0.21 on transformers 5
def test_stock_peft_loads_the_adapter(checkpoint, model):
    from peft import PeftModel
    from transformers import Qwen2_5_VLModel

    base = Qwen2_5_VLModel.from_pretrained(model.backbone_path)
    loaded = PeftModel.from_pretrained(base, checkpoint)
    ours = {n: p for n, p in model.base_model.named_parameters() if "lora_" in n}
    theirs = {n: p for n, p in loaded.get_base_model().named_parameters() if "lora_" in n}
    assert set(ours) == set(theirs) and len(ours) == 28
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], atol=0, rtol=0)
    assert any(p.abs().sum() > 0 for n, p in theirs.items() if "lora_B" in n)


def test_from_pretrained_gives_identical_scores(checkpoint, model, batch):
    restored = SpatialRewardModel.from_pretrained(checkpoint)
    assert restored.cfg == model.cfg
    with torch.no_grad():
        mu, ls = model(**batch)
        mu2, ls2 = restored(**batch)
    torch.testing.assert_close(mu2, mu, atol=0, rtol=0)
    torch.testing.assert_close(ls2, ls, atol=0, rtol=0)
    assert restored.parameter_counts()["trainable"] == 0  # frozen for scoring unless trainable=True
    assert SpatialRewardModel.from_pretrained(checkpoint, trainable=True).parameter_counts()["trainable"] == 32898


def test_full_finetune_round_trip(batch, tmp_path):
    m = fresh_model(full_finetune=True, head="gaussian", head_hidden=16)
    with torch.no_grad():
        m.base_model.language_model.layers[1].mlp.down_proj.weight.mul_(1.5)  # differs from the stock fixture
    out = m.save_pretrained(tmp_path / "full")
    assert (out / "backbone" / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    restored = SpatialRewardModel.from_pretrained(out)
    with torch.no_grad():
        torch.testing.assert_close(restored(**batch)[0], m(**batch)[0], atol=0, rtol=0)


def test_not_a_checkpoint_says_so(tmp_path, checkpoint):
    with pytest.raises(CheckpointError, match="not a SpatialScore checkpoint"):
        SpatialRewardModel.from_pretrained(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in checkpoint.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    meta = json.loads((bad / CONFIG_FILE).read_text())
    meta["instruction_version"] = "0123456789ab"
    (bad / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="reward instruction"):
        SpatialScorer.from_checkpoint(bad)


# ---------------------------------------------------------------------------------------------- scorer


def test_scorer_matches_the_model_on_the_training_batch(checkpoint, model, batch, images):
    prompts, chosen, rejected = images
    scorer = SpatialScorer.from_checkpoint(checkpoint, device="cpu", batch_size=3)  # chunks of 3, 3, 2
    scores = scorer.score(prompts + prompts, chosen + rejected)
    assert scores.dtype == np.float32 and scores.shape == (2 * NUM_PAIRS,)
    with torch.no_grad():
        mu, _ = model(**batch)
    np.testing.assert_allclose(scores, mu.numpy(), atol=1e-5, rtol=0)
    # uint8 HWC arrays, and images not yet at the model's size, are prepared the same way
    arrays = [np.asarray(img) for img in chosen]
    assert arrays[0].shape != (IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_allclose(scorer.score(prompts, arrays), scores[:NUM_PAIRS], atol=1e-5, rtol=0)


def test_encode_items_matches_the_reader(processor, images):
    prompts, chosen, rejected = images
    enc = encode_items(processor, IMAGE_SIZE, prompts[:1], chosen[:1])
    pair = encode_pairs(processor, IMAGE_SIZE, prompts[:1], chosen[:1], rejected[:1])
    mask = pair["chosen_attention_mask"][0].astype(bool)
    np.testing.assert_array_equal(enc["input_ids"][0].numpy(), pair["chosen_input_ids"][0][mask])
    np.testing.assert_array_equal(enc["mm_token_type_ids"][0].numpy(), pair["chosen_mm_token_type_ids"][0][mask])
    np.testing.assert_array_equal(enc["pixel_values"].numpy(), pair["chosen_pixel_values"][0])
    assert set(k.split("_", 1)[1] for k in pair if k.startswith("chosen_")) == set(enc)


def test_scorer_rejects_bad_inputs(checkpoint, images):
    prompts, chosen, _ = images
    scorer = SpatialScorer.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="one image per prompt"):
        scorer.score(prompts, chosen[:2])
    with pytest.raises(ValueError, match="uint8 RGB in HWC"):
        scorer.score(prompts[:1], [np.zeros((3, 64, 64), dtype=np.float32)])
    assert scorer.score([], []).shape == (0,)


def test_untrained_scorer_is_a_seeded_baseline(images):
    prompts, chosen, _ = images
    a = SpatialScorer.untrained("tiny", seed=0, device="cpu").score(prompts, chosen)
    b = SpatialScorer.untrained("tiny", seed=0, device="cpu").score(prompts, chosen)
    c = SpatialScorer.untrained("tiny", cfg=RewardModelConfig(head="scalar", loss="bt"), seed=1,
                                device="cpu").score(prompts, chosen)
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all() and not np.allclose(a, c)
