"""The two actor pools of jobs.evaluate: generators (the GRPO sampler actor, `actors.sampler_actor`) and judges
(`spatialrl.reward.judges.JudgePanel` as a Ray actor), each with its own count and resources.

A pass over the prompts splits them into chunks; chunk c is sampled by generator c mod Ng and judged by judge
c mod Nj. Every `.remote()` is launched before one `ray.get`, and a chunk's trajectory goes from its generator
to its judge as an object ref (the latents never reach the driver; the judge hands back the pixels with the
scores). Image (prompt p, sample k) is seeded `seed + p * K + k` whatever the chunking, so the base model and
the LoRA see the same noise image for image (a paired comparison).

    gens, judges = make_pools(sampler_cfg, judge_cfg, cfg.cluster.generator, cfg.cluster.judge)
    images, results = run_pass(gens, judges, items, images_per_prompt=4, seed=0, chunk_prompts=4)
    set_lora(gens, "runs/grpo/final")       # then the LoRA pass, same seeds
"""

from __future__ import annotations

import numpy as np
import ray

from actors.sampler_actor import make_sampler_actor
from spatialrl.flux.sampler import FluxSamplerConfig
from spatialrl.reward.judges import JudgeConfig, JudgePanel

JudgeActor = ray.remote(JudgePanel)


def make_pools(sampler_cfg: FluxSamplerConfig, judge_cfg: JudgeConfig, generator, judge, run: str = "0"):
    """`generator` and `judge`: each role's `count`, `num_cpus` and `num_gpus` (jobs.evaluate's PoolConfig).
    Actors are named `spatialrl/eval-{generator,judge}-{run}-{i}` (find them in the dashboard)."""
    gens = [make_sampler_actor(sampler_cfg, name=f"spatialrl/eval-generator-{run}-{i}", num_cpus=generator.num_cpus,
                               num_gpus=generator.num_gpus, max_restarts=0) for i in range(generator.count)]
    judges = [JudgeActor.options(name=f"spatialrl/eval-judge-{run}-{i}", num_cpus=judge.num_cpus,
                                 num_gpus=judge.num_gpus).remote(judge_cfg) for i in range(judge.count)]
    return gens, judges


def set_lora(gens: list, lora: str) -> None:
    ray.get([g.load_lora.remote(lora) for g in gens])


def run_pass(gens: list, judges: list, items: list, *, images_per_prompt: int, seed: int,
             chunk_prompts: int, noise_level: float = 0.0) -> tuple[np.ndarray, list[dict]]:
    """Sample K images per item (the ODE unless `noise_level` > 0: the SDE, its noise seeded too) and judge them;
    (images [P*K, H, W, 3], one result per image)."""
    k = images_per_prompt
    refs = []
    for c, start in enumerate(range(0, len(items), chunk_prompts)):
        chunk = items[start:start + chunk_prompts]
        traj = gens[c % len(gens)].sample.remote([it.prompt for it in chunk], seed=seed + start * k, group_size=k,
                                                  noise_level=noise_level)
        per_image = [it for it in chunk for _ in range(k)]
        refs.append(judges[c % len(judges)].judge_trajectory.remote(traj, per_image))
    done = ray.get(refs)
    return np.concatenate([imgs for imgs, _ in done]), [r for _, res in done for r in res]


def shutdown(*pools: list) -> None:
    for pool in pools:
        for a in pool:
            ray.kill(a)
