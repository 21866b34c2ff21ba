"""FLUX.1-dev and Qwen2.5-VL-7B at their real shapes, built on the meta device from the published configs in
assets/configs (no weights, no memory, no download): parameter counts against the published sizes, the project's
LoRA selection on each (where the adapters land, how many parameters train, counted by hand), and the per-role
memory estimate `jobs.plan --memory` prints. Default tier: seconds on a quiet machine.
Run: .venv/bin/python -m pytest tests/test_real_shapes.py -q
"""

from __future__ import annotations

import re

import pytest

from spatialrl.config import load_config
from spatialrl.flux.sampler import FLUX_LORA_TARGETS, add_flux_lora
from spatialrl.grpo.config import GRPOJobConfig
from spatialrl.grpo.memory import FLUX_DEV, GIB, QWEN_7B, count, flux_on_meta, qwen_on_meta, role_memory
from spatialrl.reward.model import RewardModelConfig, apply_lora

H, FF, TXT = 3072, 4 * 3072, 4096  # FLUX.1-dev: 24 heads x 128, MLP ratio 4, T5-XXL width


def lora_params(r: int, d_in: int, d_out: int) -> int:
    return r * (d_in + d_out)  # A [r, d_in] + B [d_out, r]


@pytest.fixture(scope="module")
def flux():
    return flux_on_meta(FLUX_DEV)


@pytest.fixture(scope="module")
def qwen():
    return qwen_on_meta(QWEN_7B)


def test_published_sizes(flux, qwen):
    assert all(p.device.type == "meta" for p in flux["transformer"].parameters())
    assert count(flux["transformer"])[0] == 11_901_408_320  # FLUX.1-dev transformer: "12B"
    assert round(count(flux["text_encoder"])[0] / 1e6) == 123  # CLIP ViT-L/14 text model
    assert round(count(flux["vae"])[0] / 1e6) == 84
    t5 = count(flux["text_encoder_2"])[0]
    assert t5 - 32128 * TXT == 4_762_310_656  # T5-v1.1-XXL encoder; transformers builds embed_tokens untied
    lm_head = 152064 * 3584
    assert count(qwen)[0] + lm_head == 8_292_166_656  # Qwen2.5-VL-7B-Instruct: "8.29B" (with its LM head)


def test_flux_lora_lands_on_attention_and_mlp_projections_only(flux):
    tr = flux["transformer"]
    tr.requires_grad_(False)
    add_flux_lora(tr, rank=64, alpha=128)  # configs/grpo_flux_dev.yaml: r = 64
    adapted = [n for n, m in tr.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]
    double = [n for n in adapted if n.startswith("transformer_blocks.")]
    single = [n for n in adapted if n.startswith("single_transformer_blocks.")]
    assert len(double) == 19 * 12 and len(single) == 38 * 3 and len(adapted) == len(double) + len(single)
    assert all(any(n.endswith("." + t) for t in FLUX_LORA_TARGETS) for n in adapted)
    # single blocks: only q/k/v (their attention is pre_only: no to_out; proj_mlp / proj_out are not targeted)
    assert {n.split(".", 2)[2] for n in single} == {"attn.to_q", "attn.to_k", "attn.to_v"}
    assert not any(re.search(r"norm|embed|proj_out$|proj_mlp", n) for n in adapted)
    per_double = 8 * lora_params(64, H, H) + 2 * (lora_params(64, H, FF) + lora_params(64, FF, H))
    per_single = 3 * lora_params(64, H, H)
    total, trainable = count(tr)
    assert trainable == 19 * per_double + 38 * per_single == 179_306_496
    assert all("lora_" in n for n, p in tr.named_parameters() if p.requires_grad)
    assert total == 11_901_408_320 + trainable


def test_spatialscore_lora_lands_on_the_language_model_only(qwen):
    model = apply_lora(qwen, RewardModelConfig(backbone="full", lora_rank=16, lora_alpha=32))
    adapted = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]
    assert len(adapted) == 28 * 7
    assert all(".language_model.layers." in n for n in adapted)
    assert not any(".visual." in n or "merger" in n for n in adapted)  # the ViT reuses gate/up/down_proj names
    h, inter, kv = 3584, 18944, 4 * 128  # 28 heads of 128, 4 key-value heads
    per_layer = (2 * lora_params(16, h, h) + 2 * lora_params(16, h, kv)
                 + 2 * lora_params(16, h, inter) + lora_params(16, inter, h))
    trainable = count(model)[1]
    assert trainable == 28 * per_layer == 40_370_176
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)


def test_role_memory_of_the_flux_dev_preset():
    cfg = load_config(GRPOJobConfig, "configs/grpo_flux_dev.yaml", [], validate=False)
    mem = role_memory(cfg)
    s, l, r = mem["sampler"], mem["learner"], mem["reward"]
    lora = 179_306_496
    pipe = 11_901_408_320 + lora + 4_893_906_944 + 123_060_480 + 83_819_683  # transformer+LoRA, T5, CLIP, VAE
    assert s.params == l.params == pipe and s.weights_bytes == 2 * pipe  # bf16
    assert l.trainable_params == lora and s.trainable_params == 0
    assert l.optimizer_bytes == lora * 16 // 2  # fp32 master + Adam m, v + fp32 grad, ZeRO-2 over 2 ranks
    # backward activations: 57 blocks x 34 bytes x (1024 image + 512 text tokens) x batch 3 x 3072 (bf16)
    assert l.activation_bytes == 57 * 34 * (1024 + 512) * 3 * H
    assert s.activation_bytes < l.activation_bytes
    assert r.params == 7_747_169_280 + 40_370_176 + 2 * 3584 + 2  # Qwen2_5_VLModel + LoRA + Gaussian head
    for role in (s, l, r):
        assert role.total_bytes < 139 * GIB  # each fits one H200 at the preset's batch
    assert 55 * GIB < l.total_bytes < 65 * GIB
    # sampler.lora_targets: only the queries of the 19 double and 38 single blocks, rank 64 on 3072 x 3072
    cfg.sampler.lora_targets = ("attn.to_q",)
    assert role_memory(cfg)["learner"].trainable_params == 57 * 64 * (3072 + 3072)


def test_plan_prints_each_roles_memory_and_what_does_not_fit(capsys, tmp_path):
    from jobs import plan

    assert plan.main(["--config", "configs/grpo_flux_dev.yaml", "--gpus", "8", "--memory", "--json",
                      str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"learner +\d+\.\d GiB .*: fits in 1 GPU", out)
    assert re.search(r"reward +\d+\.\d GiB .*: fits in 0.5 GPU", out)  # two reward workers share a GPU
    import json

    mem = json.loads((tmp_path / "p.json").read_text())["memory"]
    assert mem["learner"]["trainable_params"] == 179_306_496 and all(m["fits"] for m in mem.values())
    assert plan.main(["--config", "configs/grpo_flux_dev.yaml", "--gpus", "8", "--memory", "--gpu-memory-gb", "40"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"learner .*DOES NOT FIT \(over by \d+\.\d GiB\)", out)
    assert re.search(r"sampler .*: fits in 1 GPU", out) and re.search(r"reward .*: fits in 0.5 GPU", out)
