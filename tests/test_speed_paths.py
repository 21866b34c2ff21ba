"""The speed paths behind config switches, each shown not to change the math (CPU, tiny real models, no Ray):
torch.compile of the Flux transformer (sampler and learner read one field), the SDPA backends pinned for the
learner on CUDA, a FluxSampler on an already built pipeline, reward scoring chunks sized by memory.

The compile test is `slow` (inductor compiles the tiny transformer's forward and its training graph: ~150 s
cold on 2 loaded cores, ~30 s with inductor's on-disk cache warm); the GPU suite repeats it at FLUX.1-dev shapes.
Run: .venv/bin/python -m pytest tests/test_speed_paths.py -q   (add -m slow for the compile test)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spatialrl.config import ConfigError
from spatialrl.flux.math import latent_image_ids, sde_step
from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig
from spatialrl.flux.sampler import attention_context, sdpa_backends

BASE = dict(model="tiny", resolution=32, num_steps=4, group_size=3, batch_size=3, max_sequence_length=32)
PROMPT = ["a red circle left of a blue square"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_sdpa_backends_pin_flash_on_cuda_only():
    from torch.nn.attention import SDPBackend

    assert sdpa_backends("cuda", "flash") == [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    assert SDPBackend.CUDNN_ATTENTION not in sdpa_backends("cuda", "flash")
    assert sdpa_backends("cpu", "flash") is None and sdpa_backends("cuda", "auto") is None
    with attention_context("cpu", "flash"):  # a no-op on CPU
        q = torch.randn(1, 2, 4, 8)
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    with pytest.raises(ConfigError, match="attention_backend"):
        FluxSamplerConfig(attention_backend="cudnn").validate()
    with pytest.raises(ConfigError, match="compile_mode"):
        FluxSamplerConfig(compile_mode="fast").validate()


def test_sampler_on_a_given_pipeline_equals_the_loaded_one():
    from spatialrl.models.loader import load_flux_pipeline

    a = FluxSampler(FluxSamplerConfig(**BASE)).sample(PROMPT, seed=5)
    b = FluxSampler(FluxSamplerConfig(**BASE), pipe=load_flux_pipeline("tiny")).sample(PROMPT, seed=5)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)


def test_scoring_chunks_sized_by_memory_give_the_same_scores():
    from data_pipeline.dataset_io import decode_image
    from data_pipeline.pairs import make_pair
    from data_pipeline.world import WorldConfig
    from spatialrl.reward.memory import scoring_bytes_per_row
    from spatialrl.reward.scorer import SpatialScorer, encode_items

    pairs = [make_pair(i, 0, "train", WorldConfig(canvas=112)) for i in range(4)]
    prompts = [p["prompt"] for p in pairs] * 2
    images = [decode_image(p["chosen_image"]) for p in pairs] + [decode_image(p["rejected_image"]) for p in pairs]
    fixed = SpatialScorer.untrained("tiny", seed=1, device="cpu", batch_size=8)
    ref = fixed.score(prompts, images)
    assert fixed.last_chunk_rows == 8
    longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
    seq = encode_items(fixed.processor, fixed.image_size, [prompts[longest]], [images[longest]])["input_ids"].shape[1]
    per_row = scoring_bytes_per_row(fixed.model.base_model.config, seq, fixed.image_size, 4)
    for rows in (3, 1):
        scorer = SpatialScorer(fixed.model, fixed.processor, device="cpu", max_batch_bytes=rows * per_row + 1)
        got = scorer.score(prompts, images)
        assert scorer.last_chunk_rows == rows
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)  # left padding: a row's score ignores its chunk
    with pytest.raises(ValueError, match="max_batch_bytes"):
        SpatialScorer(fixed.model, fixed.processor, device="cpu", max_batch_bytes=0)


def test_reward_config_checks_the_memory_budget():
    from spatialrl.grpo.rewards import RewardConfig

    with pytest.raises(ConfigError, match="batch_memory_gb"):
        RewardConfig(source="verifier", batch_memory_gb=-1).validate()


@pytest.mark.slow
def test_compiled_transformer_keeps_the_log_probs_and_the_on_policy_ratio():
    eager = FluxSampler(FluxSamplerConfig(**BASE))
    compiled = FluxSampler(FluxSamplerConfig(**BASE, compile=True))
    te, tc = eager.sample(PROMPT, seed=3), compiled.sample(PROMPT, seed=3)
    assert compiled.forward_model is not compiled.transformer  # the compiled wrapper ran
    # inductor fuses and reorders float32 ops (norms, softmax, matmul epilogues): velocities move by ulps (~1e-6
    # relative), and a log-prob, a mean over latent elements of O(1) terms, by ~1e-7 (measured 6e-8): 1e-6 is ~8
    # float32 ulps at |log p| ~ 1, while one LoRA update moves these log-probs by ~1e-4
    assert (tc.log_probs - te.log_probs).abs().max().item() <= 1e-6
    assert (tc.latents - te.latents).abs().max().item() <= 1e-5
    # the same compiled path in sampler and learner: the ratio is exactly 1, without and with autograd
    assert torch.equal(compiled.recompute_log_probs(tc), tc.log_probs)
    emb, pool, text_ids = compiled.encode(PROMPT)
    h, w = compiled.latent_size(32)
    img_ids = latent_image_ids(h // 2, w // 2, device=compiled.device, dtype=emb.dtype)
    compiled.transformer.requires_grad_(True)
    x = tc.latents[:, 0]
    v = compiled.velocity(x, tc.timesteps[0], emb.expand(3, -1, -1), pool.expand(3, -1), text_ids, img_ids)
    _, lp, _, _ = sde_step(x, v, tc.sigmas[0], tc.sigmas[1], tc.noise_level, prev_sample=tc.latents[:, 1])
    assert lp.requires_grad and torch.equal(lp.detach(), tc.log_probs[:, 0])
