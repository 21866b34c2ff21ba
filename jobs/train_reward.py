"""Train SpatialScore (Qwen2.5-VL + LoRA + reward head) on preference pairs: Ray Train + DeepSpeed ZeRO.

Paper: Qwen2.5-VL-7B with LoRA, a Bradley-Terry-style objective on (perfect, perturbed) pairs, 95.8% pairwise
accuracy. Here: the same recipe on any backbone preset (`tiny`, `tiny-pretrained`, `small`, `full`), the
HPSv3 uncertainty-aware BT loss by default (plain BT as an option), chosen and rejected in one batch.

    python -m jobs.train_reward --config configs/reward_cpu.yaml --data runs/dataset --out runs/reward
    python -m jobs.train_reward --config configs/reward_cpu.yaml --data runs/dataset --out runs/reward --resume
    python -m jobs.train_reward --config configs/reward_full.yaml --data /data/spatialreward --out /ckpt/ss --workers 8

Topology: the Ray Data streaming reader (spatialrl/reward/reader.py) feeds each worker through
`get_dataset_shard`; every worker runs a DeepSpeed engine (ZeRO-2 by default, ZeRO-3 option; gloo on CPU,
NCCL + bf16 on GPU). Each epoch ends with validation and a checkpoint through `ray.train.report` (all ranks
save DeepSpeed state); `FailureConfig` restarts a killed worker group from the last checkpoint, and
`--resume` continues an interrupted run. Outputs in --out: `final/` (peft adapter + head, loadable with stock
peft), `metrics.jsonl`, `training_curves.png`, `ray_results/` (Ray Train checkpoints).

Before Ray starts the dataset is checked (data_pipeline/dataset_io.py check_dataset: manifest, Parquet footers,
schemas, row counts). `--resume` needs an earlier run in --out and compares the config with its saved
config.yaml: only RESUME_SAFE keys (more epochs, logging, where and how it runs) may change unless
`--allow-change KEY` names the key. A worker group restarted from a checkpoint first drops the metrics rows
logged after that checkpoint, so no row is written twice. `final/` is written beside and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import spatialrl.atomic as atomic
from spatialrl.reward.reader import ReaderConfig
from spatialrl.config import ConfigError, add_config_args, check_resume_config, dump_yaml, job_config
from spatialrl.deepspeed_config import deepspeed_config as shared_deepspeed_config
from spatialrl.metrics import MetricsLogger, plot_metrics
from spatialrl.reward.model import RewardModelConfig

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


# ------------------------------------------------------------------------------------------- worker side


def deepspeed_config(cfg: TrainRewardConfig, steps_per_epoch: int) -> dict:
    total = max(1, steps_per_epoch * cfg.epochs)
    return shared_deepspeed_config(
        micro_batch=cfg.batch_size, world_size=cfg.workers, grad_clip=cfg.grad_clip, zero_stage=cfg.zero_stage,
        bf16=bool(cfg.use_gpu), scheduler={"type": "WarmupCosineLR", "params": {
            "total_num_steps": total, "warmup_num_steps": min(cfg.warmup_steps, total // 2)}})


def _all_reduce_sum(values: list[float]) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
    return t.cpu().tolist()


def evaluate(engine, shard, collate, cfg: TrainRewardConfig) -> dict:
    """Pairwise accuracy (and mean BT loss) on this worker's share of the val split, summed over workers."""
    import torch

    from spatialrl.reward.model import pair_loss_from_scores

    model = engine.module
    model.eval()
    correct = total = loss_sum = 0.0
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=cfg.batch_size, collate_fn=collate):
            _, m = pair_loss_from_scores(*engine(**batch), cfg.model.loss)
            b = batch["input_ids"].shape[0] // 2
            correct += m["reward/accuracy"] * b
            loss_sum += m["loss/bt"] * b
            total += b
    model.train()
    correct, loss_sum, total = _all_reduce_sum([correct, loss_sum, total])
    return {"val/accuracy": correct / max(total, 1), "val/loss_bt": loss_sum / max(total, 1), "val/pairs": int(total)}


def train_func(config: dict) -> None:
    """Runs on every Ray Train worker. Everything comes through `config` (no globals)."""
    cfg: TrainRewardConfig = config["cfg"]
    if not cfg.use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import ray.train
    import torch
    from ray.train import Checkpoint

    from spatialrl.reward.reader import PairCollator
    from spatialrl.reward.model import SpatialRewardModel, pair_loss_from_scores

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    deepspeed.init_distributed(dist_backend="nccl" if cfg.use_gpu else "gloo")  # reuses Ray Train's group
    torch.manual_seed(cfg.seed + rank)
    model = SpatialRewardModel(cfg.model, seed=cfg.seed)
    model.train()
    device = torch.device(f"cuda:{torch.cuda.current_device()}") if cfg.use_gpu else torch.device("cpu")
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = config["steps_per_epoch"]
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(cfg, steps_per_epoch)
    )
    start_epoch, global_step = 0, 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            engine.load_checkpoint(d, tag="deepspeed")
            state = json.loads((Path(d) / "train_state.json").read_text())
            start_epoch, global_step = state["epoch"] + 1, state["global_step"]
    collate = PairCollator.from_config(cfg.reader)
    metrics_path = Path(config["metrics_path"])
    # rank 0 logs through the one metrics path: metrics.jsonl and the dashboard's spatialrl_* gauges
    logger = MetricsLogger(metrics_path, run=metrics_path.parent.name) if rank == 0 else None
    if logger is not None:
        # a group restarted from a checkpoint (FailureConfig, --resume) redoes the steps after it: drop their rows
        logger.truncate_after(global_step)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(start_epoch, cfg.epochs):
        t0, seen, run_correct, run_n = time.time(), 0, 0.0, 0
        for step, batch in enumerate(train_shard.iter_torch_batches(batch_size=cfg.batch_size, collate_fn=collate)):
            if cfg.max_steps_per_epoch is not None and step >= cfg.max_steps_per_epoch:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, m = pair_loss_from_scores(*engine(**batch), cfg.model.loss)
            engine.backward(loss)
            engine.step()
            global_step += 1
            b = batch["input_ids"].shape[0] // 2
            seen += b
            run_correct += m["reward/accuracy"] * b
            run_n += b
            if rank == 0 and (global_step % cfg.log_every == 0 or step == 0):
                logger.log(global_step, {"epoch": epoch, **m, "train/running_accuracy": run_correct / run_n,
                                         "lr": engine.get_lr()[0], "perf/pairs_per_s_rank0": seen / (time.time() - t0)})
                print(f"[epoch {epoch} step {global_step}] loss {m['loss/reward']:.4f} "
                      f"acc(batch) {m['reward/accuracy']:.3f} running acc {run_correct / run_n:.3f}", flush=True)
        val = evaluate(engine, val_shard, collate, cfg)
        report = {"epoch": epoch, "step": global_step, **val, "train/running_accuracy": run_correct / max(run_n, 1),
                  "perf/epoch_seconds": time.time() - t0}
        with tempfile.TemporaryDirectory() as tmp:
            engine.save_checkpoint(tmp, tag="deepspeed")  # collective: every rank writes its ZeRO shard
            if rank == 0:
                (Path(tmp) / "train_state.json").write_text(json.dumps({"epoch": epoch, "global_step": global_step}))
                engine.module.save_pretrained(Path(tmp) / "model")  # peft adapter + head (ZeRO-2 keeps full params)
                logger.log(global_step, {k: v for k, v in report.items() if k != "step"})
                print(f"[epoch {epoch}] val accuracy {val['val/accuracy']:.4f} on {val['val/pairs']} pairs", flush=True)
            ray.train.report(report, checkpoint=Checkpoint.from_directory(tmp))


# ------------------------------------------------------------------------------------------- driver side


def datasets(cfg: TrainRewardConfig) -> dict:
    from spatialrl.reward.reader import pair_dataset

    train = pair_dataset(cfg.data, "train", cfg.reader)
    if cfg.max_train_pairs:
        train = train.limit(cfg.max_train_pairs)
    val = pair_dataset(cfg.data, "val", cfg.reader)
    if cfg.max_val_pairs:
        val = val.limit(cfg.max_val_pairs)
    return {"train": train, "val": val}


def steps_per_epoch(cfg: TrainRewardConfig, manifest: dict) -> int:
    pairs = manifest["counts"]["train"]["pairs"]
    if cfg.max_train_pairs:
        pairs = min(pairs, cfg.max_train_pairs)
    steps = -(-pairs // (cfg.batch_size * cfg.workers))
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps


def plot_curves(metrics_path: Path, out_png: Path) -> None:
    """training loss, and pairwise accuracy (running on train, and on the validation split) per step."""
    plot_metrics(metrics_path, out_png, [("loss", [("loss/reward", "train loss")]),
                                         ("pairwise accuracy", [("train/running_accuracy", "train (running)"),
                                                                ("val/accuracy", "val")])],
                 ylims={"pairwise accuracy": (0, 1.02)})


def run(cfg: TrainRewardConfig, out: Path | None = None) -> dict:
    """Train; returns the final metrics. Assumes Ray is initialised; `out` = prepare_out(cfg), done already."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from data_pipeline.dataset_io import check_dataset

    manifest = check_dataset(Path(cfg.data))
    out = out or prepare_out(cfg)
    storage = out / "ray_results"
    resources = {"CPU": cfg.cpus_per_worker, **({"GPU": 1} if cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"cfg": cfg, "steps_per_epoch": steps_per_epoch(cfg, manifest),
                           "metrics_path": str(out / "metrics.jsonl")},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        run_config=RunConfig(
            name=RUN_NAME, storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets=datasets(cfg),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        final = out / "final"
        atomic.remove_stale(out, "final")
        staging = atomic.staging_dir(final)
        shutil.copytree(Path(d) / "model", staging, dirs_exist_ok=True)
        atomic.publish_dir(staging, final)  # the old final/ stays until the new one is whole
    plot_curves(out / "metrics.jsonl", out / "training_curves.png")
    metrics = dict(result.metrics)
    atomic.write_text(out / "final_metrics.json", json.dumps(metrics, indent=2, default=str))
    return metrics


def prepare_out(cfg: TrainRewardConfig) -> Path:
    """--out for this run: refuses to clobber a run without --overwrite, and --resume without a run to resume
    or with a config that changes what the run means (RESUME_SAFE); writes config.yaml atomically."""
    out = Path(cfg.out).resolve()
    storage = out / "ray_results"
    if cfg.resume:
        if not (storage / RUN_NAME).is_dir():
            raise ConfigError(f"--resume: {out} holds no earlier run (no {storage / RUN_NAME}) to resume; start "
                              "without --resume")
        for change in check_resume_config(out / "config.yaml", cfg, safe=RESUME_SAFE, allow=cfg.allow_change):
            print(f"resume: {change}", file=sys.stderr)
    elif storage.exists():
        if not cfg.overwrite:
            raise FileExistsError(f"{out} holds a previous run; pass --resume to continue it or --overwrite to start over")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        (out / "metrics.jsonl").unlink(missing_ok=True)
    atomic.write_text(out / "config.yaml", dump_yaml(cfg))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--data")
    parser.add_argument("--out")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--resume", action="store_true", default=None)
    parser.add_argument("--allow-change", action="append", metavar="KEY",
                        help="with --resume: accept a change of this config key (dotted; repeatable)")
    parser.add_argument("--overwrite", action="store_true", default=None)
    parser.add_argument("--address")
    parser.add_argument("--num-cpus", type=int)
    args = parser.parse_args(argv)
    cfg = job_config(TrainRewardConfig, args, {
        "data": args.data, "out": args.out, "workers": args.workers, "resume": args.resume,
        "allow_change": args.allow_change,
        "overwrite": args.overwrite, "address": args.address, "num_cpus": args.num_cpus,
    })
    if isinstance(cfg, int):
        return cfg
    from cluster.runtime import ray_session
    from data_pipeline.dataset_io import check_dataset

    try:  # before Ray starts: a damaged dataset or a surprising --resume stops here
        check_dataset(Path(cfg.data))
        out = prepare_out(cfg)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        with ray_session(cfg.address, cfg.num_cpus):
            metrics = run(cfg, out)
    except (FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done in {time.time() - t0:.0f} s: val accuracy {metrics.get('val/accuracy'):.4f}; "
          f"checkpoint {Path(cfg.out) / 'final'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
