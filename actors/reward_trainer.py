"""SpatialScore training on Ray Train: the worker loop (`train_func`, a DeepSpeed engine per worker fed by the Ray
Data streaming reader through `get_dataset_shard`) and the driver's `run` (TorchTrainer with FailureConfig and
checkpoints; `final/` published atomically). Config: spatialrl/reward/training.py; CLI and run folder:
jobs/train_reward.py.

Each epoch ends with validation summed over workers and a checkpoint through `ray.train.report` (every rank
saves its DeepSpeed state). A worker group restarted from a checkpoint first drops the metrics rows logged
after it, so no row is written twice.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import spatialrl.atomic as atomic
from spatialrl.metrics import MetricsLogger, plot_metrics
from spatialrl.reward.training import RUN_NAME, TrainRewardConfig, deepspeed_config, steps_per_epoch

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

    from spatialrl.deepspeed_config import skip_cpu_shm_op
    from spatialrl.reward.reader import PairCollator
    from spatialrl.reward.model import SpatialRewardModel, pair_loss_from_scores

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if not cfg.use_gpu:
        skip_cpu_shm_op()
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


def datasets(cfg: TrainRewardConfig) -> dict:
    from spatialrl.reward.reader import pair_dataset

    train = pair_dataset(cfg.data, "train", cfg.reader)
    if cfg.max_train_pairs:
        train = train.limit(cfg.max_train_pairs)
    val = pair_dataset(cfg.data, "val", cfg.reader)
    if cfg.max_val_pairs:
        val = val.limit(cfg.max_val_pairs)
    return {"train": train, "val": val}


def ingest_options():
    """Ray Train's ingest options with `preserve_order`: the preprocessing actors' batches then reach the
    streaming split in file order, and the split (which gives the next batch to the rank holding the fewest rows)
    hands every rank the same pairs in the same order on every run. Without it the order follows which actor
    finishes first, and the same command trained different adapters (bench/RESULTS.md, 2026-12-06)."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def plot_curves(metrics_path: Path, out_png: Path) -> None:
    """training loss, and pairwise accuracy (running on train, and on the validation split) per step."""
    plot_metrics(metrics_path, out_png, [("loss", [("loss/reward", "train loss")]),
                                         ("pairwise accuracy", [("train/running_accuracy", "train (running)"),
                                                                ("val/accuracy", "val")])],
                 ylims={"pairwise accuracy": (0, 1.02)})


def run(cfg: TrainRewardConfig, out: Path) -> dict:
    """Train into the run folder `out` (jobs.train_reward's prepare_out made it); returns the final metrics.
    Assumes Ray is initialised."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from data_pipeline.dataset_io import check_dataset

    manifest = check_dataset(Path(cfg.data))
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
        dataset_config=DataConfig(execution_options=ingest_options()),
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
