"""Online GRPO of Flux with SpatialScore as the reward and Top-k filtering: the paper's Spatial RL stage.

Single controller (docs/architecture.md section 1): this driver owns the loop; Ray actors do the work, each role with its
own count and resource request (cluster.sampler / cluster.reward / cluster.learner, fractional GPUs allowed),
reserved in placement groups after a fail-fast resource check:

    prompts -> SamplerActor x Ns (images + SDE trajectory + old log-probs, policy version)
            -> RewardActor x Nr (SpatialScore; verifier metrics when prompts carry relations)
            -> driver: group advantages + Top-k (k best + k worst per group)
            -> LearnerGroup (DeepSpeed ZeRO-2 over the LoRA, one process group) -> LoRA v+1 -> samplers

Weights move as the LoRA state dict, put in the object store once per version; each sampling task carries the
version it must use, so a restarted sampler re-syncs before redoing lost work. A dead sampler or reward actor
is restarted by Ray and its group re-dispatched; a step never trains on a partial group. `max_staleness`
samples up to that many steps ahead with older weights (0 = on-policy, Flow-GRPO). Per-step metrics go to
RUN_DIR/metrics.jsonl and the Ray dashboard (`spatialrl_*` gauges); grids, curves.png, checkpoints and the
final diffusers-format LoRA (RUN_DIR/final/, `FluxPipeline.load_lora_weights`) land in RUN_DIR.

    python -m jobs.grpo --config configs/grpo_demo.yaml --out runs/grpo [--resume] [--set grpo.steps=20]
    ray job submit --working-dir . -- python -m jobs.grpo --config configs/grpo_flux_dev.yaml --out /shared/grpo
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cluster.resources import RoleResources
from spatialrl.config import ConfigError, add_config_args, dump_yaml, job_config
from spatialrl.flux_sampler import FluxSamplerConfig
from spatialrl.grpo_learner import GRPOLearnerConfig
from spatialrl.rewards import RewardConfig


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
        if self.eval_prompts < 0 or self.eval_images_per_prompt < 1 or self.max_retries < 0:
            raise ConfigError("grpo.eval_prompts >= 0, grpo.eval_images_per_prompt >= 1, grpo.max_retries >= 0")


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

    def validate(self) -> None:
        if self.actor_max_restarts < 0:
            raise ConfigError("cluster.actor_max_restarts must be >= 0")


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
        if self.sampler.noise_level <= 0:
            raise ConfigError("sampler.noise_level must be > 0 for GRPO (SDE sampling gives the log-probs)")
        if self.sampler.group_size < 2:
            raise ConfigError(f"sampler.group_size={self.sampler.group_size}: GRPO needs groups of >= 2 images")
        if self.grpo.top_k and 2 * self.grpo.top_k >= self.sampler.group_size:
            print(f"note: grpo.top_k={self.grpo.top_k} keeps whole groups of {self.sampler.group_size} "
                  f"(Top-k filters only when group_size > 2k)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, default_config=None)
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete --out first")
    args = parser.parse_args(argv)
    cfg = job_config(GRPOJobConfig, args)  # a dry run returns here: it must not create or delete --out
    if isinstance(cfg, int):
        return cfg
    try:
        prepare_run_dir(args.out, resume=args.resume, overwrite=args.overwrite)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2

    from cluster.runtime import ray_session
    from spatialrl.grpo_controller import GRPOController

    (args.out / "config.yaml").write_text(dump_yaml(cfg))
    with ray_session(cfg.cluster.address or None, cfg.cluster.num_cpus or None):
        controller = GRPOController(cfg, args.out)
        try:
            summary = controller.run(resume=args.resume)
        finally:
            controller.shutdown()
    shown = {k: ({kk: vv for kk, vv in v.items() if not kk.endswith("_per_image")} if isinstance(v, dict) else v)
             for k, v in summary.items()}  # per-image scores stay in summary.json
    print(json.dumps(shown, indent=2))
    return 0


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out; --overwrite deletes it: choose one")
    if overwrite and out.exists():
        shutil.rmtree(out)
    if resume and not (out / "checkpoints" / "latest.json").exists():
        raise ConfigError(f"--resume: {out} has no checkpoint (checkpoints/latest.json); start without --resume")
    if not resume and (out / "metrics.jsonl").exists():
        raise ConfigError(f"{out} already holds a run: continue it with --resume or start over with --overwrite")
    out.mkdir(parents=True, exist_ok=True)


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print(f"jobs.grpo finished in {time.time() - t0:.1f} s", file=sys.stderr)
    sys.exit(rc)
