"""The reward-training config (`jobs.train_reward`): what a run trains, on what, and how it runs; its DeepSpeed
config and step count. The Ray Train loop that uses it: actors/reward_trainer.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from spatialrl.config import ConfigError
from spatialrl.deepspeed_config import deepspeed_config as shared_deepspeed_config
from spatialrl.reward.model import RewardModelConfig
from spatialrl.reward.reader import ReaderConfig

RUN_NAME = "train_reward"
# config keys a resume may change without altering what the run computes
RESUME_SAFE = ("epochs", "resume", "allow_change", "overwrite", "address", "num_cpus", "max_failures", "log_every",
               "reader.num_actors", "reader.cpus_per_actor", "reader.read_cpus", "reader.read_tasks")


@dataclass
class TrainRewardConfig:
    data: str = "runs/dataset"
    out: str = "runs/reward"
    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    epochs: int = 1
    max_steps_per_epoch: int | None = None  # cap (e.g. for smoke tests); None = the whole shard
    max_train_pairs: int | None = None  # use only the first N training pairs
    max_val_pairs: int | None = 512
    batch_size: int = 8  # pairs per worker per step (2x rows: chosen + rejected)
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float = 1.0
    zero_stage: Literal[2, 3] = 2
    max_failures: int = 2
    log_every: int = 10
    seed: int = 0
    resume: bool = False
    allow_change: list[str] = field(default_factory=list)  # with resume: config keys the user accepts changing
    overwrite: bool = False
    address: str | None = None
    num_cpus: int | None = None  # local Ray only

    def validate(self) -> None:
        # A folder given relative to where the job was started: Ray Train's workers run in their own trial folder,
        # where the relative path names nothing, so it is made absolute here, on the driver.
        for section, key in ((self.model, "backbone"), (self.reader, "processor")):
            value = getattr(section, key)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute() \
                    and Path(value).expanduser().is_dir():
                setattr(section, key, str(Path(value).expanduser().resolve()))
        if self.model.image_size != self.reader.image_size:
            raise ConfigError(
                f"model.image_size={self.model.image_size} but reader.image_size={self.reader.image_size}: the "
                "model must see images at the size it is trained on; set both to the same value"
            )
        if self.reader.processor != self.model.backbone:
            raise ConfigError(
                f"reader.processor={self.reader.processor!r} but model.backbone={self.model.backbone!r}: the "
                "tokenizer/processor must come from the backbone; set reader.processor to the same value"
            )
        if self.workers < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("workers, batch_size and epochs must be >= 1")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr={self.lr}: use a learning rate in (0, 1), e.g. 1e-4 (LoRA) or 1e-5 (full fine-tune)")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run in --out; --overwrite deletes it: choose one")


def deepspeed_config(cfg: TrainRewardConfig, steps_per_epoch: int) -> dict:
    total = max(1, steps_per_epoch * cfg.epochs)
    return shared_deepspeed_config(
        micro_batch=cfg.batch_size, world_size=cfg.workers, grad_clip=cfg.grad_clip, zero_stage=cfg.zero_stage,
        bf16=bool(cfg.use_gpu), scheduler={"type": "WarmupCosineLR", "params": {
            "total_num_steps": total, "warmup_num_steps": min(cfg.warmup_steps, total // 2)}})


def steps_per_epoch(cfg: TrainRewardConfig, manifest: dict) -> int:
    pairs = manifest["counts"]["train"]["pairs"]
    if cfg.max_train_pairs:
        pairs = min(pairs, cfg.max_train_pairs)
    steps = -(-pairs // (cfg.batch_size * cfg.workers))
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps
