"""The GRPO job's typed config: the loop, the data, each role's resources, and the parts it is made of.

`jobs.grpo` reads it from YAML (`configs/grpo_*.yaml`) with `--set` overrides; `actors.grpo_controller` runs it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cluster.resources import RoleResources
from spatialrl.config import ConfigError
from spatialrl.flux.sampler import FluxSamplerConfig
from spatialrl.grpo.learner import GRPOLearnerConfig
from spatialrl.grpo.rewards import RewardConfig


@dataclass
class GRPOLoopConfig:
    steps: int = 4
    prompts_per_step: int = 2  # prompt groups per step; each gets sampler.group_size images
    top_k: int = 6  # keep the k best and k worst per group; 0 = keep all (plain GRPO)
    topk_normalize: Literal["kept", "group"] = "kept"
    global_std: bool = False
    max_staleness: int = 0  # 0 = on-policy; k = sample up to k steps ahead with older weights
    seed: int = 0
    save_every: int = 2  # checkpoint every N steps (and at the end)
    grid_every: int = 2  # sample grid every N steps
    eval_prompts: int = 8  # held-out prompts evaluated (ODE) before and after training; 0 = skip
    eval_images_per_prompt: int = 2
    eval_every: int = 0  # also evaluate the held-out prompts every N steps (eval.json "step_N", eval/* metrics); 0 = off
    max_retries: int = 3  # re-dispatches of one group after actor failures before the job gives up
    # reward-hacking monitor: over the last hack_window steps, the reward's trend t >= hack_z while the verifier's
    # relation accuracy on the same rollouts does not rise -> metric monitor/hacking = 1, a warning, the summary
    hack_window: int = 10
    hack_z: float = 2.0

    def validate(self) -> None:
        if self.steps < 1 or self.prompts_per_step < 1:
            raise ConfigError("grpo.steps and grpo.prompts_per_step must be >= 1")
        if self.top_k < 0:
            raise ConfigError(f"grpo.top_k={self.top_k}: use 0 (keep all) or a positive k")
        if self.max_staleness < 0:
            raise ConfigError(f"grpo.max_staleness={self.max_staleness}: 0 (on-policy) or more")
        if self.save_every < 1 or self.grid_every < 1:
            raise ConfigError("grpo.save_every and grpo.grid_every must be >= 1")
        if self.hack_window < 3 or self.hack_z <= 0:
            raise ConfigError(f"grpo.hack_window={self.hack_window} (>= 3) and grpo.hack_z={self.hack_z} (> 0)")
        if self.eval_prompts < 0 or self.eval_images_per_prompt < 1 or self.max_retries < 0 or self.eval_every < 0:
            raise ConfigError("grpo.eval_prompts >= 0, grpo.eval_images_per_prompt >= 1, grpo.max_retries >= 0, "
                              "grpo.eval_every >= 0")


@dataclass
class DataConfig:
    prompts: str = ""  # training prompts: prompts_train.jsonl of jobs.build_dataset, or a text file
    eval_prompts: str = ""  # held-out prompts (prompts_test.jsonl); empty = no before/after evaluation

    def validate(self) -> None:
        for key in ("prompts", "eval_prompts"):
            value = getattr(self, key)
            if value and not Path(value).is_file():
                raise ConfigError(
                    f"data.{key}={value!r} does not exist; build prompts with python -m jobs.build_dataset "
                    f"--config configs/dataset_easy.yaml --out DIR (it writes DIR/prompts_{{train,test}}.jsonl)"
                )


@dataclass
class ClusterConfig:
    sampler: RoleResources = field(default_factory=lambda: RoleResources(count=1, num_cpus=0.5))
    reward: RoleResources = field(default_factory=lambda: RoleResources(count=1, num_cpus=0.5))
    learner: RoleResources = field(default_factory=lambda: RoleResources(count=1, num_cpus=0.5))
    address: str = ""  # empty: RAY_ADDRESS or a new local Ray
    num_cpus: int = 0  # local Ray only; 0 = the machine's
    placement_timeout_s: float = 120.0
    actor_max_restarts: int = 3  # samplers and reward workers
    # the longest the driver waits with no prompt group finishing (one group's sampling and scoring must fit in
    # it; a long queue of groups need not); past it the actors the unfinished groups wait on are taken as hung:
    # killed, restarted by Ray, and their groups redone (counts as a retry)
    actor_timeout_s: float = 600.0
    # the longest a sampler or reward actor may take to (re)start and load its models: a FLUX.1-dev sampler takes
    # minutes, far longer than a tiny model's step, so it has its own budget
    actor_start_timeout_s: float = 1800.0
    learner_timeout_s: float = 1800.0  # one learner call (train step, checkpoint); past it the job stops

    def validate(self) -> None:
        if self.actor_max_restarts < 0:
            raise ConfigError("cluster.actor_max_restarts must be >= 0")
        for key in ("actor_timeout_s", "actor_start_timeout_s", "learner_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"cluster.{key}={getattr(self, key)} must be > 0 (seconds)")


@dataclass
class GRPOJobConfig:
    sampler: FluxSamplerConfig = field(default_factory=lambda: FluxSamplerConfig(
        model="tiny", resolution=32, num_steps=4, group_size=4, batch_size=2, lora_rank=4, lora_alpha=8))
    learner: GRPOLearnerConfig = field(default_factory=GRPOLearnerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOLoopConfig = field(default_factory=GRPOLoopConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def validate(self) -> None:
        if not self.data.prompts:
            raise ConfigError(
                "data.prompts is empty: give training prompts, e.g. --set data.prompts=DIR/prompts_train.jsonl "
                "(python -m jobs.build_dataset --config configs/dataset_easy.yaml --out DIR makes them)"
            )
        if self.sampler.noise_level <= 0 and self.learner.objective == "grpo":
            raise ConfigError("sampler.noise_level must be > 0 for learner.objective=grpo (SDE sampling gives the "
                              "log-probs); fm and nft train on final latents and take ODE rollouts (noise_level 0)")
        if self.sampler.group_size < 2:
            raise ConfigError(f"sampler.group_size={self.sampler.group_size}: GRPO needs groups of >= 2 images")
        if self.grpo.top_k and 2 * self.grpo.top_k >= self.sampler.group_size:
            print(f"note: grpo.top_k={self.grpo.top_k} keeps whole groups of {self.sampler.group_size} "
                  f"(Top-k filters only when group_size > 2k)", file=sys.stderr)
