"""Unit tests for spatialrl.flux.sampler and jobs.sample on the tiny random Flux fixture (CPU, no Ray).

The invariants of docs/architecture.md section 3, exactly (max abs difference 0.0): noise level 0 reproduces the stock
FluxPipeline; recomputed log-probs with unchanged weights give ratio 1. Plus LoRA swaps, seeding and the CLI.
Run: .venv/bin/python -m pytest tests/test_flux_sampler.py -q
"""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from spatialrl.config import ConfigError
from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig, flux_lora_config
from spatialrl.flux.math import latent_image_ids, ode_step

PROMPTS = ["a red circle left of a blue square", "a green triangle above a small yellow star"]
BASE = dict(model="tiny", resolution=32, num_steps=4, group_size=3, batch_size=3, max_sequence_length=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sampler():
    return FluxSampler(FluxSamplerConfig(**BASE))


def random_lora(sampler: FluxSampler, seed: int, zero: bool = False) -> dict[str, torch.Tensor]:
    """A LoRA state dict as a learner makes it: the same adapter on its own copy of the transformer."""
    from peft.utils import get_peft_model_state_dict

    model = copy.deepcopy(sampler.transformer)
    if not getattr(model, "peft_config", None):  # the sampler has no adapter yet
        model.add_adapter(flux_lora_config(sampler.cfg.lora_rank, sampler.cfg.lora_alpha))
    g = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    for k, v in state.items():
        if ".lora_B." in k:
            v.copy_(torch.zeros_like(v) if zero else 0.5 * torch.randn(v.shape, generator=g))
    return state


def test_ode_reproduces_stock_flux_pipeline_exactly(sampler):
    traj = sampler.sample(PROMPTS[:1], seed=11, noise_level=0.0)
    generators = [torch.Generator().manual_seed(11 + i) for i in range(3)]
    ref = sampler.pipe(
        PROMPTS[0], height=32, width=32, num_inference_steps=4, guidance_scale=3.5, num_images_per_prompt=3,
        generator=generators, output_type="latent", max_sequence_length=32,
    ).images  # [3, S, 64]
    assert (traj.latents[:, -1] - ref).abs().max().item() == 0.0
    generators = [torch.Generator().manual_seed(11 + i) for i in range(3)]
    ref_np = sampler.pipe(
        PROMPTS[0], height=32, width=32, num_inference_steps=4, guidance_scale=3.5, num_images_per_prompt=3,
        generator=generators, output_type="np", max_sequence_length=32,
    ).images  # [3, H, W, 3] float in [0, 1]
    assert np.array_equal(traj.images, (ref_np * 255).round().astype(np.uint8))
    assert torch.equal(traj.sigmas[:-1] * 1000, traj.timesteps)
    assert torch.isnan(traj.log_probs).all()  # no log-probs for deterministic steps
    assert traj.images.shape == (3, 32, 32, 3) and traj.latents.shape == (3, 5, 4, 64)


def test_recomputed_log_probs_give_ratio_exactly_one(sampler):
    traj = sampler.sample(PROMPTS, seed=5, group_size=4)  # N = 8 in batches of 3: batches span both prompts
    assert traj.log_probs.shape == (8, 4) and torch.isfinite(traj.log_probs).all()
    new = sampler.recompute_log_probs(traj)
    assert (torch.exp(new - traj.log_probs) - 1).abs().max().item() == 0.0
    subset = sampler.recompute_log_probs(traj, [0, 2])
    assert torch.equal(subset, traj.log_probs[:, [0, 2]])
    with pytest.raises(ValueError, match="out of range"):
        sampler.recompute_log_probs(traj, [4])
    with pytest.raises(ValueError, match="ODE"):
        sampler.recompute_log_probs(sampler.sample(PROMPTS[:1], noise_level=0.0))


def test_true_cfg_reproduces_stock_flux_pipeline_and_keeps_ratio_one():
    s = FluxSampler(FluxSamplerConfig(**BASE, true_cfg_scale=3.0, negative_prompt="a blurry picture"))
    traj = s.sample(PROMPTS[:1], seed=11, noise_level=0.0)
    generators = [torch.Generator().manual_seed(11 + i) for i in range(3)]
    ref = s.pipe(
        PROMPTS[0], negative_prompt="a blurry picture", true_cfg_scale=3.0, height=32, width=32,
        num_inference_steps=4, guidance_scale=3.5, num_images_per_prompt=3, generator=generators,
        output_type="latent", max_sequence_length=32,
    ).images  # [3, S, 64]
    assert (traj.latents[:, -1] - ref).abs().max().item() == 0.0
    plain = FluxSampler(FluxSamplerConfig(**BASE)).sample(PROMPTS[:1], seed=11, noise_level=0.0)
    assert (plain.latents[:, -1] - ref).abs().max().item() > 1e-3  # guidance changed the images
    sde = s.sample(PROMPTS, seed=5, group_size=2)
    assert sde.true_cfg_scale == 3.0 and sde.negative_prompt == "a blurry picture"
    assert torch.equal(s.recompute_log_probs(sde), sde.log_probs)
    with pytest.raises(ValueError, match="true_cfg_scale"):  # another guidance scores other transitions
        FluxSampler(FluxSamplerConfig(**BASE, true_cfg_scale=2.0)).recompute_log_probs(sde)
    # another T5 length: the negative prompt is encoded again to match, still as the stock pipeline does
    s.cfg = FluxSamplerConfig(**{**BASE, "max_sequence_length": 16}, true_cfg_scale=3.0,
                              negative_prompt="a blurry picture")
    short = s.sample(PROMPTS[:1], seed=11, noise_level=0.0)
    ref16 = s.pipe(
        PROMPTS[0], negative_prompt="a blurry picture", true_cfg_scale=3.0, height=32, width=32,
        num_inference_steps=4, guidance_scale=3.5, num_images_per_prompt=3,
        generator=[torch.Generator().manual_seed(11 + i) for i in range(3)], output_type="latent",
        max_sequence_length=16,
    ).images
    assert (short.latents[:, -1] - ref16).abs().max().item() == 0.0


def test_detach_negative_trains_the_guided_velocity_through_its_conditional_branch():
    """guided velocity v = v_neg + s (v - v_neg): same value with the negative branch detached, and the gradient of
    any loss on it is then s times the conditional velocity's (learner.fm_guided)."""
    s = FluxSampler(FluxSamplerConfig(**BASE, true_cfg_scale=3.0, lora_rank=4, lora_alpha=8))
    s.set_lora(random_lora(s, seed=1), version=1)
    embeds, pooled, text_ids = s.encode(PROMPTS[:1])
    h, w = s.latent_size(32)
    img_ids = latent_image_ids(h // 2, w // 2, device=s.device, dtype=embeds.dtype)
    x = torch.randn(2, (h // 2) * (w // 2), 64, generator=torch.Generator().manual_seed(0))
    args = (x, torch.tensor(700.0), embeds.expand(2, -1, -1), pooled.expand(2, -1), text_ids, img_ids)
    params = [p for n, p in s.transformer.named_parameters() if "lora_B" in n]
    for p in params:
        p.requires_grad_(True)

    def grads(v):
        return torch.autograd.grad((v ** 2).sum(), params, allow_unused=True)

    v_full = s.velocity(*args)
    v_det = s.velocity(*args, detach_negative=True)
    assert torch.equal(v_full, v_det)
    v_cond = s.velocity(*args, guided=False)
    target = torch.cat([3.0 * 2 * g.flatten() for g in torch.autograd.grad((v_cond * v_det.detach()).sum(), params)])

    def relative_error(v) -> float:  # over every LoRA B weight at once (float32 sums differ by thread count)
        got = torch.cat([g.flatten() for g in grads(v)])
        return float((got - target).norm() / target.norm())

    assert relative_error(v_det) < 1e-3
    assert relative_error(s.velocity(*args)) > 0.05  # with grad through the negative branch: another gradient


def test_bfloat16_ratio_is_exactly_one_and_math_stays_float32():
    s = FluxSampler(FluxSamplerConfig(**BASE, dtype="bfloat16"))
    assert s.transformer.dtype == torch.bfloat16
    traj = s.sample(PROMPTS[:1], seed=6)
    assert traj.latents.dtype == torch.float32 and traj.log_probs.dtype == torch.float32
    assert torch.isfinite(traj.log_probs).all() and traj.images.dtype == np.uint8
    assert torch.equal(s.recompute_log_probs(traj), traj.log_probs)


def test_set_lora_changes_outputs_and_zero_lora_restores_them():
    s = FluxSampler(FluxSamplerConfig(**BASE, lora_rank=4, lora_alpha=8))
    base = s.sample(PROMPTS[:1], seed=1, noise_level=0.0)
    assert base.policy_version == 0
    assert s.set_lora(random_lora(s, seed=0), version=1) == 1
    tuned = s.sample(PROMPTS[:1], seed=1, noise_level=0.0)
    assert tuned.policy_version == 1
    assert (tuned.latents[:, -1] - base.latents[:, -1]).abs().max() > 1e-3
    adapter_params = [p for n, p in s.transformer.named_parameters() if "lora_" in n]
    s.set_lora(random_lora(s, seed=0, zero=True), version=2)
    assert [p for n, p in s.transformer.named_parameters() if "lora_" in n][0] is adapter_params[0]  # in place
    restored = s.sample(PROMPTS[:1], seed=1, noise_level=0.0)
    assert torch.equal(restored.latents, base.latents) and restored.policy_version == 2
    # ratio 1 holds with an adapter too
    traj = s.sample(PROMPTS[:1], seed=2)
    assert torch.equal(s.recompute_log_probs(traj), traj.log_probs)
    bad = random_lora(s, seed=0)
    bad.pop(next(iter(bad)))
    with pytest.raises(ValueError, match="1 missing"):
        s.set_lora(bad, version=3)
    with pytest.raises(ValueError, match="rank"):
        s.set_lora({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(8, 32)}, version=3)


def test_load_lora_from_a_diffusers_folder(tmp_path):
    from diffusers import FluxPipeline

    s = FluxSampler(FluxSamplerConfig(**BASE, lora_rank=4, lora_alpha=8))
    state = random_lora(s, seed=3)
    s.set_lora(state, version=1)
    via_set = s.sample(PROMPTS[:1], seed=4, noise_level=0.0)
    FluxPipeline.save_lora_weights(
        tmp_path, transformer_lora_layers=state,
        transformer_lora_adapter_metadata=flux_lora_config(4, 8).to_dict(),
    )
    fresh = FluxSampler(FluxSamplerConfig(**BASE, lora_rank=4, lora_alpha=8))
    fresh.load_lora(tmp_path, version=7)
    via_load = fresh.sample(PROMPTS[:1], seed=4, noise_level=0.0)
    assert via_load.policy_version == 7
    torch.testing.assert_close(via_load.latents, via_set.latents, rtol=0, atol=1e-6)
    assert fresh.lora_state_dict().keys() == state.keys()
    fresh.set_lora(state, version=8)  # replaces the loaded adapter
    assert torch.equal(fresh.sample(PROMPTS[:1], seed=4, noise_level=0.0).latents, via_set.latents)
    s.load_lora(tmp_path)  # and the other way round
    again = s.sample(PROMPTS[:1], seed=4, noise_level=0.0)
    torch.testing.assert_close(again.latents, via_set.latents, rtol=0, atol=1e-6)


def test_shared_versus_independent_initial_noise(sampler):
    shared = FluxSampler(FluxSamplerConfig(**BASE, shared_noise_per_group=True))
    ind = sampler.sample(PROMPTS, seed=9)
    sh = shared.sample(PROMPTS, seed=9)
    x0_ind, x0_sh = ind.latents[:, 0], sh.latents[:, 0]  # [6, S, 64]
    for group in (0, 1):
        rows = list(range(3 * group, 3 * group + 3))
        assert all(torch.equal(x0_sh[r], x0_sh[rows[0]]) for r in rows)  # one start per group
        assert not torch.equal(x0_ind[rows[0]], x0_ind[rows[1]])  # independent starts
        assert torch.equal(x0_sh[rows[0]], x0_ind[rows[0]])  # the group's first image keeps its own noise
        assert not torch.equal(sh.latents[rows[0], -1], sh.latents[rows[1], -1])  # the SDE noise still differs
    assert not torch.equal(x0_sh[0], x0_sh[3])  # groups differ
    assert np.array_equal(sh.seeds, ind.seeds) and list(sh.group_index) == [0, 0, 0, 1, 1, 1]
    ode = shared.sample(PROMPTS[:1], seed=9, noise_level=0.0)
    assert torch.equal(ode.latents[0], ode.latents[1])  # same start, no SDE noise: identical images
    ode = shared.sample(PROMPTS[:1], seed=9, noise_level=0.0, shared_noise=False)  # what evaluation asks for
    assert torch.equal(ode.latents[:, 0], ind.latents[:3, 0]) and not torch.equal(ode.latents[0], ode.latents[1])
    # the public starting noise is the start sample uses: image k of seed s draws from a generator seeded s + k
    h, w = sampler.latent_size(sampler.cfg.resolution)
    start = sampler.initial_noise([torch.Generator().manual_seed(9 + k) for k in range(6)], ind.group_index, h, w, False)
    assert torch.equal(start, x0_ind)


def test_deterministic_per_seed(sampler):
    a = sampler.sample(PROMPTS, seed=21)
    b = sampler.sample(PROMPTS, seed=21)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)
    assert np.array_equal(a.images, b.images) and list(a.seeds) == list(range(21, 27))
    c = sampler.sample(PROMPTS, seed=22)
    assert not torch.equal(a.latents[:, 0], c.latents[:, 0])
    assert torch.equal(a.latents[1:, 0], c.latents[:-1, 0])  # image i uses seed + i, whatever else is sampled
    # noise depends on the seed alone, not on the batch an image ran in
    one_by_one = FluxSampler(FluxSamplerConfig(**{**BASE, "batch_size": 1})).sample(PROMPTS, seed=21)
    assert torch.equal(one_by_one.latents[:, 0], a.latents[:, 0])
    torch.testing.assert_close(one_by_one.latents, a.latents, rtol=0, atol=1e-4)


def test_sde_window_is_sde_then_exactly_the_ode():
    """sde_steps=2 of 4: the first two transitions are the full SDE sampler's (same noise, same log-probs), the
    last two are deterministic Euler steps from where the SDE left off, with no log-prob."""
    full = FluxSampler(FluxSamplerConfig(**BASE, noise_level=0.7))
    windowed = FluxSampler(FluxSamplerConfig(**BASE, noise_level=0.7, sde_steps=2))
    a = full.sample(PROMPTS[:1], seed=3)
    b = windowed.sample(PROMPTS[:1], seed=3)
    assert torch.equal(a.latents[:, :3], b.latents[:, :3]) and torch.equal(a.log_probs[:, :2], b.log_probs[:, :2])
    assert torch.isnan(b.log_probs[:, 2:]).all() and b.sde_window == 2 and a.sde_window == 4
    ode = full.sample(PROMPTS[:1], seed=3, noise_level=0.0)
    assert ode.sde_window == 0
    # the tail is what the ODE sampler does from b's latent after step 2
    emb, pool, text_ids = full.encode(PROMPTS[:1])
    h, w = full.latent_size(32)
    img_ids = latent_image_ids(h // 2, w // 2, device=full.device, dtype=emb.dtype)
    x = b.latents[:, 2]
    for i in (2, 3):
        v = full.velocity(x, b.timesteps[i], emb[[0, 0, 0]], pool[[0, 0, 0]], text_ids, img_ids)
        x = ode_step(x, v, b.sigmas[i], b.sigmas[i + 1])
    assert torch.equal(x, b.latents[:, -1])
    new = windowed.recompute_log_probs(b)  # every SDE step, and only those
    assert new.shape == (3, 2) and torch.equal(new, b.log_probs[:, :2])
    with pytest.raises(ValueError, match="deterministic"):
        windowed.recompute_log_probs(b, [3])
    with pytest.raises(ConfigError, match="sde_steps=5"):
        FluxSamplerConfig(num_steps=4, sde_steps=5).validate()


def test_block_noise_sampler_recomputes_exactly_and_refuses_blocks_that_do_not_tile():
    blocky = FluxSampler(FluxSamplerConfig(**BASE, noise_level=0.7, noise_block=2))
    tr = blocky.sample(PROMPTS[:1], seed=3)
    assert tr.noise_block == 2 and torch.isfinite(tr.log_probs).all()
    assert torch.equal(blocky.recompute_log_probs(tr), tr.log_probs)  # the ratio is exactly 1 on-policy
    h, w = blocky.latent_size(tr.resolution)
    from spatialrl.flux.math import unpack_latents

    step = unpack_latents(tr.latents[:, 1] - tr.latents[:, 0], h, w)  # first transition: drift + block noise
    plain = FluxSampler(FluxSamplerConfig(**BASE, noise_level=0.7)).sample(PROMPTS[:1], seed=3)
    assert torch.equal(plain.latents[:, 0], tr.latents[:, 0])  # the same start; only the SDE noise differs
    assert not torch.equal(plain.latents[:, 1], tr.latents[:, 1]) and step.shape[-1] == w
    with pytest.raises(ConfigError, match="noise_block=3"):
        FluxSampler(FluxSamplerConfig(**BASE, noise_level=0.7, noise_block=3)).sample(PROMPTS[:1], seed=3)
    with pytest.raises(ConfigError, match="noise_block=0"):
        FluxSamplerConfig(noise_block=0).validate()


def test_cps_sampler_trains_every_step_but_the_last_and_recomputes_exactly():
    cps = FluxSampler(FluxSamplerConfig(**BASE, noise_level=0.7, sde_type="cps"))
    tr = cps.sample(PROMPTS[:1], seed=3)
    assert tr.sde_type == "cps" and tr.sde_window == 3  # the step into sigma 0 is deterministic
    assert torch.isfinite(tr.log_probs[:, :3]).all() and torch.isnan(tr.log_probs[:, 3]).all()
    assert torch.equal(cps.recompute_log_probs(tr), tr.log_probs[:, :3])
    flow = FluxSampler(FluxSamplerConfig(**BASE, noise_level=0.7)).sample(PROMPTS[:1], seed=3)
    assert not torch.equal(flow.latents[:, -1], tr.latents[:, -1])  # another step, from the same noise
    with pytest.raises(ConfigError, match="eta in"):
        FluxSamplerConfig(noise_level=1.5, sde_type="cps").validate()
    with pytest.raises(ConfigError, match="sde_steps=4 with sde_type=cps"):
        FluxSamplerConfig(num_steps=4, sde_steps=4, sde_type="cps").validate()
    with pytest.raises(ConfigError, match="sde_type='ddim'"):
        FluxSamplerConfig(sde_type="ddim").validate()


def test_config_is_validated():
    with pytest.raises(ConfigError, match="multiple of 16"):
        FluxSamplerConfig(resolution=100).validate()
    with pytest.raises(ConfigError, match="noise_level"):
        FluxSamplerConfig(noise_level=-1).validate()
    with pytest.raises(ConfigError, match="true_cfg_scale=0.5"):
        FluxSamplerConfig(true_cfg_scale=0.5).validate()


def test_verify_images_counts_against_world_images():
    from data_pipeline.pairs import make_pair
    from data_pipeline.world import WorldConfig
    from jobs.sample import verify_images

    pair = make_pair(0, seed=0, split="test", cfg=WorldConfig())
    info = json.loads(pair["relations"])
    row = {"prompt": pair["prompt"], **info}
    images = np.stack(
        [np.asarray(Image.open(io.BytesIO(pair[c])).convert("RGB")) for c in ("chosen_image", "rejected_image")]
    )
    summary, per_image = verify_images([row], images, k=2)
    n_rel = len(info["relations"])
    assert summary["num_relations"] == 2 * n_rel and summary["num_objects"] == 2 * len(info["objects"])
    assert all(per_image[0]["relations_hold"]) and all(per_image[0]["objects_present"])  # the perfect image
    violated = per_image[1]["relations_hold"].count(False)
    assert violated == pair["num_perturbations"]  # the perturbed image breaks exactly that many
    assert summary["relation_accuracy"] == pytest.approx((2 * n_rel - violated) / (2 * n_rel))


def test_jobs_sample_end_to_end(tmp_path):
    from jobs import sample

    objects = [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"}]
    prompts = tmp_path / "prompts_test.jsonl"
    with open(prompts, "w") as f:
        for text, rel in zip(PROMPTS, ("left_of", "above")):
            relations = [{"subject": 0, "type": rel, "object": 1}]
            f.write(json.dumps({"prompt": text, "objects": objects, "relations": relations}) + "\n")
    out = tmp_path / "out"
    summary = sample.main([
        "--model", "tiny", "--prompts", str(prompts), "--out", str(out), "--n-per-prompt", "3", "--steps", "2",
        "--resolution", "32", "--seed", "4",
    ])
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [4, 5, 6, 7, 8, 9] and rows[3]["prompt"] == PROMPTS[1]
    assert all((out / r["file"]).is_file() for r in rows)
    assert Image.open(out / "grid.png").size == (3 * 34 + 2, 2 * 34 + 2)  # 3 columns, 2 rows, 2 px gaps
    verify = json.loads((out / "verify.json").read_text())
    assert verify == summary and verify["num_objects"] == 12 and verify["num_relations"] == 6
    assert 0.0 <= verify["object_presence"] <= 1.0 and 0.0 <= verify["relation_accuracy"] <= 1.0
    assert len(rows[0]["relations_hold"]) == 1
    # a plain prompt: no structure, no verify.json
    plain = ["--prompts", "a cat", "--out", str(tmp_path / "plain"), "--n-per-prompt", "1", "--steps", "1"]
    sample.main([*plain, "--resolution", "32"])
    assert not (tmp_path / "plain" / "verify.json").exists()
    # without --resolution the model's own size (its VAE's sample_size), not a fixed default
    sample.main([*plain, "--out", str(tmp_path / "native")])
    assert Image.open(tmp_path / "native" / "p0000_s00.png").size == (64, 64)  # the tiny fixture's VAE: 64
    with pytest.raises(SystemExit, match="true_cfg_scale=0.5.*use 1 .off"):
        sample.main([*plain, "--true-cfg-scale", "0.5"])


def test_lora_targets_are_configurable_and_checked():
    """sampler.lora_targets: a bad name is a config error before any actor starts (named and with the fix); the
    names the check accepts are exactly the real FluxTransformer2DModel's Linear modules; the LoRA adapts only the
    named ones."""
    import re

    from spatialrl.flux.sampler import FLUX_LINEAR_MODULES, FLUX_LORA_TARGETS

    for targets in ((), ("attn.no_such_proj",), ("attn.to_q", "to_k|to_v"), (3,)):
        with pytest.raises(ConfigError, match="lora_targets"):
            FluxSamplerConfig(lora_targets=targets).validate()
    FluxSamplerConfig(lora_targets=("to_q", "proj_mlp", "attn.to_out.0")).validate()
    sampler = FluxSampler(FluxSamplerConfig(**{**BASE, "lora_targets": ("attn.add_q_proj", "attn.add_k_proj")}))
    linears = {re.sub(r"\.\d+\.", ".", n, count=1) for n, m in sampler.transformer.named_modules()
               if isinstance(m, torch.nn.Linear)}
    assert linears == set(FLUX_LINEAR_MODULES)
    assert all(any(m.endswith("." + t) for m in FLUX_LINEAR_MODULES) for t in FLUX_LORA_TARGETS)
    sampler.init_lora(seed=0)
    adapted = {k.split(".lora_")[0] for k in sampler._lora_keys}
    assert adapted and all(k.endswith(("attn.add_q_proj", "attn.add_k_proj")) for k in adapted)
