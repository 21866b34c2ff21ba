"""The `gpu` tier: the sampler and learner invariants on CUDA in bfloat16, on the tiny random Flux fixture.

Skipped without CUDA (`make test-all`); `bench/gpu_suite.sh` runs this file first and counts a skip as a failure
when a GPU is present. What only a GPU can show: bf16 ODE sampling against the stock pipeline on the same device,
the recomputed ratio exactly 1 in bf16 with the flash SDPA kernels pinned for the backward (cuDNN's crashed on an
H200), and the compiled transformer on CUDA.
Run: .venv/bin/python -m pytest -m gpu tests/test_gpu.py -q
"""

from __future__ import annotations

import pytest
import torch

from spatialrl.flux.math import latent_image_ids, sde_step
from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig
from spatialrl.flux.sampler import attention_context

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
BASE = dict(model="tiny", resolution=64, num_steps=4, group_size=4, batch_size=4, max_sequence_length=32,
            dtype="bfloat16", device="cuda")
PROMPT = ["a red circle left of a blue square"]


def test_bf16_ode_follows_the_stock_pipeline_on_cuda():
    sampler = FluxSampler(FluxSamplerConfig(**BASE))
    traj = sampler.sample(PROMPT, seed=11, noise_level=0.0, decode=False)
    gens = [torch.Generator().manual_seed(11 + i) for i in range(4)]
    ref = sampler.pipe(PROMPT[0], height=64, width=64, num_inference_steps=4, guidance_scale=3.5,
                       num_images_per_prompt=4, generator=gens, output_type="latent", max_sequence_length=32).images
    # the sampler keeps latents in fp32 between steps, the pipeline in bf16: they differ by bf16 rounding per step
    dev = (traj.latents[:, -1].to(ref.device) - ref.float()).abs().max().item()
    assert dev <= 0.05 * ref.float().abs().max().item()
    assert traj.latents.dtype == torch.float32


def test_bf16_recomputed_ratio_is_exactly_one_and_flash_backward_runs():
    sampler = FluxSampler(FluxSamplerConfig(**BASE))
    sampler.init_lora(seed=0)
    traj = sampler.sample(PROMPT, seed=3)
    assert traj.log_probs.dtype == torch.float32 and torch.isfinite(traj.log_probs).all()
    assert torch.equal(sampler.recompute_log_probs(traj), traj.log_probs)
    emb, pool, text_ids = sampler.encode(PROMPT)
    ids = latent_image_ids(*(s // 2 for s in sampler.latent_size(64)), device="cuda", dtype=emb.dtype)
    lora = [p for n, p in sampler.transformer.named_parameters() if "lora_" in n]
    for p in lora:
        p.requires_grad_(True)
    x = traj.latents[:, 0].cuda()
    with torch.enable_grad(), attention_context("cuda", "flash"):
        v = sampler.velocity(x, traj.timesteps[0].cuda(), emb.expand(4, -1, -1), pool.expand(4, -1), text_ids, ids)
        _, lp, _, _ = sde_step(x, v, traj.sigmas[0].cuda(), traj.sigmas[1].cuda(), traj.noise_level,
                               prev_sample=traj.latents[:, 1].cuda())
        lp.mean().backward()
    assert torch.equal(lp.detach().cpu(), traj.log_probs[:, 0])  # the learner's grad path: the same numbers
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lora)
    assert any(p.grad.abs().sum() > 0 for p in lora)


def test_compiled_sampler_on_cuda_keeps_log_probs():
    eager = FluxSampler(FluxSamplerConfig(**BASE))
    fast = FluxSampler(FluxSamplerConfig(**BASE, compile=True))
    te, tc = eager.sample(PROMPT, seed=5), fast.sample(PROMPT, seed=5)
    assert (tc.log_probs - te.log_probs).abs().max().item() <= 5e-3  # bf16 kernels fused differently
    assert torch.equal(fast.recompute_log_probs(tc), tc.log_probs)
