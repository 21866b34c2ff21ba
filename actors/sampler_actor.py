"""SamplerActor: `spatialrl.flux.sampler.FluxSampler` as a Ray actor. The one place that adds Ray to it.

Resources come from the caller (the GRPO job's config): `num_gpus` may be fractional so that every role shares
one GPU in a demo. Named actors are `spatialrl/sampler-{i}` (`sampler_actor_name(i)`), so operators find them
in the dashboard and tests find them with `ray.get_actor`. A crashed actor is restarted (`max_restarts`) with
its base model reloaded and no LoRA: the driver re-sends the current LoRA and re-dispatches the lost work.

    from actors.sampler_actor import make_sampler_actor, sampler_actor_name
    sampler = make_sampler_actor(FluxSamplerConfig(model="tiny"), name=sampler_actor_name(0), num_gpus=0.25)
    traj = ray.get(sampler.sample.remote(["a red circle left of a blue square"], seed=0))
"""

from __future__ import annotations

import ray

from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig

SamplerActor = ray.remote(FluxSampler)


def sampler_actor_name(index: int) -> str:
    return f"spatialrl/sampler-{index}"


def make_sampler_actor(
    cfg: FluxSamplerConfig,
    name: str | None = None,
    num_gpus: float = 0,
    num_cpus: float = 1,
    max_restarts: int = 3,
    **options,
):
    """Start one sampler actor and return its handle; `options` go to `.options()` (e.g. a placement group
    scheduling strategy). The model loads inside the actor, in its constructor."""
    cfg.validate()
    if cfg.device.startswith("cuda") and not num_gpus:
        raise ValueError(f"sampler device={cfg.device!r} needs num_gpus > 0 for the actor (or use device=auto)")
    opts = dict(num_gpus=num_gpus, num_cpus=num_cpus, max_restarts=max_restarts, **options)
    if name is not None:
        opts["name"] = name
    return SamplerActor.options(**opts).remote(cfg)
