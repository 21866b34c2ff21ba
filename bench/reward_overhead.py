"""What Ray Train + DeepSpeed costs: reward training through `jobs.train_reward` vs a plain single-process torch
loop doing the same steps, in one run on this machine.

Both train SpatialScore from the same config (`--config`, default configs/reward_demo.yaml) for `--steps` steps of
`batch_size` pairs on the same dataset, one worker, one torch thread (what Ray gives a worker with < 2 CPUs):
  ray    `python -m jobs.train_reward --workers 1` as its own process: Ray start, the Ray Data streaming reader
         (preprocessing in its own actor), a DeepSpeed ZeRO-2 engine over gloo, the epoch's validation and checkpoint
  plain  this process: pyarrow reads the train shards, the reader's own preprocessing (`PairPreprocessor`,
         `PairCollator`) inline, the same model, torch AdamW with gradient clipping, no validation or checkpoint
Reported: wall seconds end to end (process start to exit for ray; model build to last step for plain), the
training loop's pairs/s from the epoch's start (ray: rank 0's own `perf/pairs_per_s_rank0`, which includes the wait
for the reader's first batch; plain: the same count), the same over steps 2..N only, and the ratios ray / plain. The variants alternate over `--repeats`.

    python -m bench.reward_overhead --data runs/dataset --out runs/bench-reward-overhead --steps 25 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from spatialrl.config import load_config


def run_ray(cfg_path: str, data: Path, out: Path, steps: int) -> dict:
    from spatialrl.reward.training import TrainRewardConfig
    from spatialrl.metrics import read_metrics

    cmd = [sys.executable, "-m", "jobs.train_reward", "--config", cfg_path, "--data", str(data), "--out", str(out),
           "--workers", "1", "--overwrite", "--set", f"max_steps_per_epoch={steps}", "--set", "epochs=1",
           "--set", "log_every=1", "--set", "max_val_pairs=16"]
    t0 = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc:
        raise SystemExit(f"jobs.train_reward exited {rc}; see {out.parent / (out.name + '.log')}")
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "perf/pairs_per_s_rank0" in r]
    # rank 0 logs pairs seen / seconds since the epoch began at every step (log_every=1): the time at step k is
    # k * batch / rate_k, so steps 2..N alone (no wait for the reader's first batch) are (t_N - t_1) / (N - 1)
    batch = load_config(TrainRewardConfig, cfg_path, []).batch_size
    t = [r["step"] * batch / r["perf/pairs_per_s_rank0"] for r in rows]
    steady = (len(t) - 1) * batch / (t[-1] - t[0]) if len(t) > 1 else float("nan")
    return {"wall_s": wall, "loop_pairs_per_s": rows[-1]["perf/pairs_per_s_rank0"], "steady_pairs_per_s": steady,
            "first_batch_s": t[0], "steps": rows[-1]["step"]}


def run_plain(cfg_path: str, data: Path, steps: int) -> dict:
    import pyarrow.parquet as pq

    from data_pipeline.dataset_io import split_dir
    from spatialrl.reward.training import TrainRewardConfig
    from spatialrl.reward.model import SpatialRewardModel, pair_loss_from_scores
    from spatialrl.reward.reader import READ_COLUMNS, PairCollator, PairPreprocessor

    cfg = load_config(TrainRewardConfig, cfg_path, [])
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = SpatialRewardModel(cfg.model, seed=cfg.seed).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    prep = PairPreprocessor(cfg.reader.processor, cfg.reader.image_size, cfg.reader.max_length)
    collate = PairCollator.from_config(cfg.reader)
    files = sorted(split_dir(data, "train").glob("*.parquet"))
    table = pq.read_table(files, columns=READ_COLUMNS) if len(files) > 1 else pq.read_table(files[0], columns=READ_COLUMNS)
    cols = table.to_pydict()
    n = len(cols["pair_id"])
    t_loop, seen, t_first = time.perf_counter(), 0, None
    for step in range(steps):
        lo = (step * cfg.batch_size) % n
        batch = {k: v[lo:lo + cfg.batch_size] for k, v in cols.items()}
        tensors = collate(prep(batch))
        loss, _ = pair_loss_from_scores(*model(**tensors), cfg.model.loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += len(batch["pair_id"])
        if t_first is None:
            t_first = time.perf_counter()
    end = time.perf_counter()
    steady = (seen - cfg.batch_size) / (end - t_first) if steps > 1 else float("nan")
    return {"wall_s": end - t0, "loop_pairs_per_s": seen / (end - t_loop), "steady_pairs_per_s": steady,
            "first_batch_s": t_first - t_loop, "steps": steps}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/reward_demo.yaml")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"ray": [], "plain": []}
    for rep in range(args.repeats):
        for name in (["ray", "plain"] if rep % 2 == 0 else ["plain", "ray"]):
            if name == "ray":
                runs[name].append(run_ray(args.config, args.data, args.out / f"ray_{rep}", args.steps))
            else:
                runs[name].append(run_plain(args.config, args.data, args.steps))
            print(name, runs[name][-1], flush=True)
    keys = ("wall_s", "loop_pairs_per_s", "steady_pairs_per_s", "first_batch_s")
    mean = {k: {m: statistics.fmean(r[m] for r in rs) for m in keys} for k, rs in runs.items()}
    ratios = {"wall_ratio_ray_over_plain": mean["ray"]["wall_s"] / mean["plain"]["wall_s"],
              "loop_speed_ratio_plain_over_ray": mean["plain"]["loop_pairs_per_s"] / mean["ray"]["loop_pairs_per_s"],
              "steady_speed_ratio_plain_over_ray": mean["plain"]["steady_pairs_per_s"] / mean["ray"]["steady_pairs_per_s"]}
    print("\n| path | wall s (end to end) | loop pairs/s (from the epoch start) | steps 2..N pairs/s | first step s |")
    print("|---|---|---|---|---|")
    for k, m in mean.items():
        print(f"| {k} | {m['wall_s']:.1f} | {m['loop_pairs_per_s']:.2f} | {m['steady_pairs_per_s']:.2f} | "
              f"{m['first_batch_s']:.1f} |")
    print(f"\nray / plain wall: {ratios['wall_ratio_ray_over_plain']:.2f}x; plain / ray loop speed: "
          f"{ratios['loop_speed_ratio_plain_over_ray']:.2f}x; steps 2..N: {ratios['steady_speed_ratio_plain_over_ray']:.2f}x")
    result = {"config": args.config, "steps": args.steps, "repeats": args.repeats, "runs": runs, "mean": mean, **ratios}
    (args.out / "reward_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
