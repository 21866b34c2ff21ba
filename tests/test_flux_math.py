"""Unit tests for spatialrl.flux.math: schedule, SDE/ODE steps and log-probs, latent packing.

Expected values are worked out by hand in the comments; the schedule is also checked against diffusers'
FlowMatchEulerDiscreteScheduler with FLUX.1-dev's config. CPU, no Ray, well under a second each.
Run: .venv/bin/python -m pytest tests/test_flux_math.py -q
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from spatialrl.flux.math import (
    block_means,
    block_noise,
    calculate_shift,
    cps_std,
    kl_std,
    sde_window,
    flux_sigmas,
    latent_image_ids,
    ode_step,
    pack_latents,
    sde_std,
    sde_step,
    unpack_latents,
)

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)  # 0.9189385...
# scheduler/scheduler_config.json of black-forest-labs/FLUX.1-dev
FLUX_DEV_SCHEDULER = dict(
    num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
    base_image_seq_len=256, max_image_seq_len=4096,
)


def test_imports_without_ray_diffusers_or_deepspeed():
    code = (
        "import sys\n"
        "for m in ('ray', 'diffusers', 'deepspeed', 'transformers', 'peft'): sys.modules[m] = None\n"
        "import spatialrl.flux.math as fm\n"
        "print(sorted(m for m in ('ray', 'diffusers', 'deepspeed') if sys.modules.get(m) is not None))\n"
        "print([round(s, 4) for s in fm.flux_sigmas(2, 256).tolist()])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "[1.0, 0.6225, 0.0]"]  # hand-worked below


# ------------------------------------------------------------------------------------------------ schedule


def test_calculate_shift_hand_worked():
    # m = 0.65 / 3840, b = 0.5 - 256 m; linear between (256, 0.5) and (4096, 1.15).
    assert calculate_shift(256) == pytest.approx(0.5, abs=1e-12)
    assert calculate_shift(4096) == pytest.approx(1.15, abs=1e-12)
    assert calculate_shift(1024) == pytest.approx(0.5 + 768 * 0.65 / 3840, abs=1e-12)  # 0.63, 512^2 images


def test_flux_sigmas_hand_worked_512px_6_steps():
    # 512^2 -> 1024 tokens -> mu = 0.63, e^mu = 1.877611. Base grid s = 1, 5/6, ..., 1/6, so 1/s - 1 =
    # 0, .2, .5, 1, 2, 5 and sigma = 1.877611 / (1.877611 + that) = 1, .90374, .78970, .65249, .48422, .27300.
    expected = [1.0, 0.90374, 0.78970, 0.65249, 0.48422, 0.27300, 0.0]
    got = flux_sigmas(6, 1024)
    assert got.dtype == torch.float32 and got.shape == (7,)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=6e-6)
    # two steps at 256 tokens: mu = 0.5, s = [1, 0.5] -> 1/s - 1 = [0, 1] -> [1, e^.5/(e^.5+1)] = [1, 0.62246]
    torch.testing.assert_close(flux_sigmas(2, 256), torch.tensor([1.0, 0.622459, 0.0]), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "num_steps,seq_len", [(1, 256), (2, 16), (6, 1024), (16, 2025), (28, 4096), (50, 4096), (7, 300)]
)
def test_flux_sigmas_equal_diffusers_scheduler(num_steps, seq_len):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_SCHEDULER)
    # exactly what FluxPipeline.__call__ passes
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=calculate_shift(seq_len))
    ours = flux_sigmas(num_steps, seq_len)
    assert torch.equal(ours, scheduler.sigmas), (ours - scheduler.sigmas).abs().max()
    assert torch.equal(ours[:-1] * 1000, scheduler.timesteps)


# --------------------------------------------------------------------------------------------------- steps


def test_sde_std_hand_worked():
    # a sqrt(t / (1 - t)): t = 0.5 -> a; t = 0.8 -> 2a; at t = 1 the denominator is 1 - sigma_next.
    a = 0.7
    t = torch.tensor([0.5, 0.8, 1.0])
    t_next = torch.tensor([0.25, 0.6, 0.75])
    torch.testing.assert_close(sde_std(t, t_next, a), torch.tensor([0.7, 1.4, 0.7 * 2.0]), rtol=0, atol=1e-6)


def test_sde_step_hand_worked():
    # x = 1, v = -1, t = 0.5, t_next = 0.25, a = 0.5:
    #   sigma_t = 0.5 sqrt(0.5 / 0.5) = 0.5; Delta = -0.25; sigma_t^2 / (2t) = 0.25; x + (1 - t) v = 0.5
    #   mean = 1 + (-1 + 0.25 * 0.5) * (-0.25) = 1 + 0.21875 = 1.21875;  std = 0.5 sqrt(0.25) = 0.25
    #   eps = 2 -> x_next = 1.71875
    #   log p = -(0.5)^2 / (2 * 0.0625) - log 0.25 - log sqrt(2 pi) = -2 + 1.386294 - 0.918939
    x = torch.ones(1, 1)
    v = -torch.ones(1, 1)
    x_next, lp, mean, std = sde_step(x, v, 0.5, 0.25, 0.5, noise=torch.full((1, 1), 2.0))
    assert mean.item() == 1.21875 and std.item() == 0.25 and x_next.item() == 1.71875
    assert lp.shape == (1,)
    assert lp.item() == pytest.approx(-2 + math.log(4) - LOG_SQRT_2PI, abs=1e-6)  # -1.532645


def test_first_step_std_equals_noise_level():
    # t = 1: sigma_t = a sqrt(1 / (1 - sigma_1)) and std = sigma_t sqrt(1 - sigma_1) = a exactly (Flow-GRPO's s_0 = a).
    sigmas = flux_sigmas(6, 1024)
    x = torch.zeros(2, 4, 8)
    _, _, _, std = sde_step(x, x, sigmas[0], sigmas[1], 0.9, generator=torch.Generator().manual_seed(0))
    assert std.item() == pytest.approx(0.9, abs=1e-6)


def test_log_prob_equals_torch_normal_mean_over_latent_elements():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 64, generator=g)  # [B, S, C]
    v = torch.randn(3, 16, 64, generator=g)
    sigmas = flux_sigmas(6, 16)
    for i in range(6):
        x_next, lp, mean, std = sde_step(x, v, sigmas[i], sigmas[i + 1], 0.7, generator=g)
        expected = torch.distributions.Normal(mean, std).log_prob(x_next).mean(dim=(1, 2))  # [B]
        assert lp.shape == (3,)
        torch.testing.assert_close(lp, expected, rtol=0, atol=1e-6)
        # scoring a given sample: the same density, at that sample
        other = torch.randn(3, 16, 64, generator=g)
        _, lp_other, _, _ = sde_step(x, v, sigmas[i], sigmas[i + 1], 0.7, prev_sample=other)
        expected_other = torch.distributions.Normal(mean, std).log_prob(other).mean(dim=(1, 2))
        torch.testing.assert_close(lp_other, expected_other, rtol=0, atol=1e-6)


def test_prev_sample_reproduces_the_drawn_log_prob_exactly():
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 8, 64, generator=g), torch.randn(2, 8, 64, generator=g)
    x_next, lp, _, _ = sde_step(x, v, 0.8, 0.6, 0.7, generator=g)
    again, lp2, _, _ = sde_step(x, v, 0.8, 0.6, 0.7, prev_sample=x_next)
    assert torch.equal(again, x_next) and torch.equal(lp, lp2)


def test_sde_step_math_is_float32_for_bf16_inputs():
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(2, 8, 64, generator=g), torch.randn(2, 8, 64, generator=g)
    noise = torch.randn(2, 8, 64, generator=g)
    xb, vb = x.bfloat16(), v.bfloat16()
    out_b = sde_step(xb, vb, 0.8, 0.6, 0.7, noise=noise)
    out_f = sde_step(xb.float(), vb.float(), 0.8, 0.6, 0.7, noise=noise)
    assert all(t.dtype == torch.float32 for t in out_b)
    for a, b in zip(out_b, out_f):
        assert torch.equal(a, b)


def test_per_sample_sigmas_match_scalar_calls():
    g = torch.Generator().manual_seed(3)
    x, v, noise = (torch.randn(3, 4, 64, generator=g) for _ in range(3))
    t, t_next = torch.tensor([1.0, 0.7, 0.3]), torch.tensor([0.9, 0.5, 0.1])
    x_next, lp, mean, _ = sde_step(x, v, t, t_next, 0.7, noise=noise)
    for b in range(3):
        xb, lpb, meanb, _ = sde_step(x[b : b + 1], v[b : b + 1], t[b], t_next[b], 0.7, noise=noise[b : b + 1])
        assert torch.equal(x_next[b : b + 1], xb) and torch.equal(mean[b : b + 1], meanb)
        torch.testing.assert_close(lp[b : b + 1], lpb, rtol=0, atol=1e-7)


def test_ode_step_hand_worked_and_sde_rejects_zero_noise():
    # x + (sigma_next - sigma) v = 1 + (0.25 - 0.75) * 3 = -0.5
    out = ode_step(torch.ones(1, 2), torch.full((1, 2), 3.0), 0.75, 0.25)
    assert out.dtype == torch.float32 and out.tolist() == [[-0.5, -0.5]]
    with pytest.raises(ValueError, match="ode_step"):
        sde_step(torch.ones(1, 2), torch.ones(1, 2), 0.75, 0.25, 0.0)


def test_sde_mean_tends_to_the_ode_step():
    g = torch.Generator().manual_seed(4)
    x, v = torch.randn(2, 4, 64, generator=g), torch.randn(2, 4, 64, generator=g)
    _, _, mean, _ = sde_step(x, v, 0.6, 0.4, 1e-4, generator=g)
    torch.testing.assert_close(mean, ode_step(x, v, 0.6, 0.4), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------- packing


def test_pack_layout_and_round_trip():
    z = torch.arange(2 * 16 * 4 * 6, dtype=torch.float32).view(2, 16, 4, 6)  # [B, C, H, W]
    tokens = pack_latents(z)
    assert tokens.shape == (2, 2 * 3, 64)  # [B, H/2 * W/2, 64]
    # token (row 0, col 1) of sample 0: channel 0's 2x2 patch at rows 0-1, cols 2-3, then channel 1's, ...
    expected = torch.stack([z[0, c, 0:2, 2:4].reshape(4) for c in range(16)]).reshape(64)
    assert torch.equal(tokens[0, 1], expected)
    assert torch.equal(unpack_latents(tokens, 4, 6), z)


def test_pack_matches_diffusers_flux_pipeline():
    from diffusers import FluxPipeline

    z = torch.randn(3, 16, 8, 6, generator=torch.Generator().manual_seed(5))
    ref = FluxPipeline._pack_latents(z, 3, 16, 8, 6)
    assert torch.equal(pack_latents(z), ref)
    assert torch.equal(unpack_latents(ref, 8, 6), FluxPipeline._unpack_latents(ref, 8 * 8, 6 * 8, 8))


def test_latent_image_ids():
    ids = latent_image_ids(2, 3)
    assert ids.tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 1, 2]]
    from diffusers import FluxPipeline

    ref = FluxPipeline._prepare_latent_image_ids(1, 4, 5, "cpu", torch.bfloat16)
    assert torch.equal(latent_image_ids(4, 5, dtype=torch.bfloat16), ref)


def test_cps_step_hand_worked():
    # x = 1, v = -1, t = 0.5, t' = 0.25, eta = 0.5: sin = cos = 1 / sqrt 2
    #   x0 = x - t v = 1.5, x1 = x + (1 - t) v = 0.5
    #   mean = (1 - t') x0 + t' cos x1 = 1.125 + 0.25 * 0.5 / sqrt 2 = 1.2133883;  std = t' sin = 0.1767767
    #   eps = 2 -> x_next = mean + 0.3535534
    #   log p = -(2 std)^2 / (2 std^2) - log std - log sqrt(2 pi) = -2 - log 0.1767767 - 0.918939 = -1.186071
    x, v = torch.ones(1, 1), -torch.ones(1, 1)
    x_next, lp, mean, std = sde_step(x, v, 0.5, 0.25, 0.5, noise=torch.full((1, 1), 2.0), kind="cps")
    r = 1 / math.sqrt(2)
    assert mean.item() == pytest.approx(1.125 + 0.125 * r, abs=1e-6) and std.item() == pytest.approx(0.25 * r, abs=1e-7)
    assert x_next.item() == pytest.approx(1.125 + 0.125 * r + 0.5 * r, abs=1e-6)
    assert lp.item() == pytest.approx(-2 - math.log(0.25 * r) - LOG_SQRT_2PI, abs=1e-5)
    again, lp2, _, _ = sde_step(x, v, 0.5, 0.25, 0.5, prev_sample=x_next, kind="cps")
    assert torch.equal(again, x_next) and torch.equal(lp, lp2)
    assert torch.equal(cps_std(torch.tensor(0.25), 0.5), std.reshape(()))
    assert kl_std(torch.tensor(0.5), torch.tensor(0.25), 0.5, "cps").item() == pytest.approx(0.25 * r, abs=1e-7)


def test_cps_keeps_the_schedules_noise_level_and_flow_grpo_adds_to_it():
    """With the exact velocity of x_t = (1 - t) x0 + t eps (v = eps - x0), a CPS step lands on the schedule:
    x_t' - (1 - t') x0 has std t' over draws. Flow-GRPO's step, at this coarse step, leaves more noise."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 0.3)
    eps = torch.randn(20000, 1, generator=g)
    t, t_next = 0.6, 0.3
    x, v = (1 - t) * x0 + t * eps, eps - x0
    cps, _, _, _ = sde_step(x, v, t, t_next, 0.8, generator=g, kind="cps")
    assert (cps - (1 - t_next) * x0).std().item() == pytest.approx(t_next, rel=0.02)
    assert (cps - (1 - t_next) * x0).mean().item() == pytest.approx(0.0, abs=0.01)
    flow, _, _, _ = sde_step(x, v, t, t_next, 0.8, generator=g)
    assert (flow - (1 - t_next) * x0).std().item() > 1.1 * t_next


def test_cps_refuses_a_step_into_sigma_zero_and_an_eta_above_one():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="deterministic"):
        sde_step(x, x, 0.2, 0.0, 0.7, kind="cps")
    with pytest.raises(ValueError, match="eta in"):
        sde_step(x, x, 0.5, 0.25, 1.5, kind="cps")
    with pytest.raises(ValueError, match="kind="):
        sde_step(x, x, 0.5, 0.25, 0.5, kind="ddim")
    assert [sde_window(4, k, 0.7, "cps") for k in (0, 2, 3)] == [3, 2, 3]
    assert [sde_window(4, k, 0.7) for k in (0, 2, 4)] == [4, 2, 4] and sde_window(4, 0, 0.0, "cps") == 0


def test_block_noise_log_prob_hand_worked():
    # One channel, a 4x4 latent = 4 tokens of 4 (2x2 packing); blocks of 2 = the four 2x2 quadrants, which here are
    # exactly the four tokens. Flow-GRPO step at t = 0.5 -> 0.25, a = 0.5, v = 0: sigma_t = 0.5 * sqrt(0.5 / 0.5) =
    # 0.5, mean = x + (0.25 / 1 * x) * (-0.25) = x * (1 - 1/16), std = 0.5 * sqrt(0.25) = 0.25.
    x, v = torch.ones(1, 4, 4), torch.zeros(1, 4, 4)
    # residual per quadrant (token): [1, 3, 1, 3] -> block mean 2; [0, 0, 0, 0] -> 0; [-1] * 4 -> -1; [0.5] * 4
    resid = torch.tensor([[[1.0, 3.0, 1.0, 3.0], [0.0] * 4, [-1.0] * 4, [0.5] * 4]])
    mean = x * (1 - 1 / 16)
    _, lp, m, std = sde_step(x, v, 0.5, 0.25, 0.5, prev_sample=mean + resid, block=2, latent_size=(4, 4))
    assert torch.allclose(m, mean) and std.item() == pytest.approx(0.25)
    coarse = torch.tensor([2.0, 0.0, -1.0, 0.5])  # the block means, one per quadrant
    expected = (-(coarse**2) / (2 * 0.25**2) - math.log(0.25) - 0.5 * math.log(2 * math.pi)).mean()
    assert lp.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(block_means(resid, 4, 4, 2).flatten(), coarse)
    # the same step with independent noise scores every element: another number
    _, lp1, _, _ = sde_step(x, v, 0.5, 0.25, 0.5, prev_sample=mean + resid)
    assert lp1.item() != pytest.approx(lp.item())
    with pytest.raises(ValueError, match="latent_size"):
        sde_step(x, v, 0.5, 0.25, 0.5, prev_sample=mean, block=2)
    with pytest.raises(ValueError, match="does not tile"):
        sde_step(x, v, 0.5, 0.25, 0.5, prev_sample=mean, block=3, latent_size=(4, 4))


def test_block_noise_is_one_standard_normal_per_block_and_channel():
    g = torch.Generator().manual_seed(0)
    eps = torch.cat([block_noise(16, 16, 16, 4, g) for _ in range(200)])  # [200, 64, 64]: 16 channels, 16x16 latent
    lat = unpack_latents(eps, 16, 16)  # [200, 16, 16, 16]
    blocks = lat.reshape(200, 16, 4, 4, 4, 4)
    assert torch.equal(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))  # constant over each 4x4 block
    coarse = block_means(eps, 16, 16, 4)  # [200, 16, 4, 4]: 51,200 draws
    assert coarse.mean().item() == pytest.approx(0.0, abs=0.02) and coarse.std().item() == pytest.approx(1.0, rel=0.02)
    # a step with block noise leaves each pixel the same std as independent noise (std * eps, eps ~ N(0, 1))
    assert lat.std().item() == pytest.approx(1.0, rel=0.02)
