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
import shutil
import sys
import time
from pathlib import Path

import spatialrl.atomic as atomic
from spatialrl.config import ConfigError, add_config_args, check_resume_config, dump_yaml, job_config
from spatialrl.reward.training import RESUME_SAFE, RUN_NAME, TrainRewardConfig


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
        from actors.reward_trainer import run

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
