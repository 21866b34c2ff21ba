"""Ray tier: the SamplerActor shell around FluxSampler, on a local CPU Ray with the tiny Flux fixture.

Run: .venv/bin/python -m pytest tests/test_sampler_actor.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.sampler_actor import make_sampler_actor, sampler_actor_name
from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig

pytestmark = pytest.mark.ray

PROMPTS = ["a red circle left of a blue square"]


def test_named_actor_samples_like_the_plain_class(ray_local):
    cfg = FluxSamplerConfig(
        model="tiny", resolution=32, num_steps=3, group_size=3, batch_size=3, max_sequence_length=32
    )
    name = sampler_actor_name(0)
    actor = make_sampler_actor(cfg, name=name, num_cpus=1)
    try:
        assert ray_local.get_actor(name) is not None
        remote = ray_local.get(ray_local.get_actor(name).sample.remote(PROMPTS, seed=3), timeout=300)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # Ray runs the 1-CPU actor with one thread; the same here keeps the math identical
        try:
            local = FluxSampler(cfg).sample(PROMPTS, seed=3)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(remote.latents, local.latents)
        assert torch.equal(remote.log_probs, local.log_probs)
        assert np.array_equal(remote.images, local.images)
        assert list(remote.seeds) == [3, 4, 5] and remote.policy_version == 0
    finally:
        ray_local.kill(actor)
