"""Per-role unit costs for the capacity planner, measured on the real role actors of a GRPO config.

Starts the GRPO job's own actors (one sampler, one reward worker, one learner rank, as `actors.grpo_controller`
places them), then times each role alone: a group's rollout on the sampler, its scoring on the reward worker, a
learner step on all of a step's groups and on half of them (the difference gives the cost per trained
sample-step, the rest the fixed overhead per step), a sampler taking up new LoRA weights, and a learner
checkpoint. Writes the JSON `jobs.plan --measured` reads.

    python -m bench.plan_calibrate --config configs/grpo_demo.yaml --out runs/plan/costs.json \
        --set data.prompts=runs/demo/dataset/prompts_train.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import torch

from actors.grpo_controller import GRPOController, step_prompt_ids, step_seed
from cluster.runtime import init_ray
from jobs.plan import shape_of
from spatialrl.config import add_config_args, job_config
from spatialrl.grpo.config import GRPOJobConfig
from spatialrl.grpo.learner import TrainSelection
from spatialrl.grpo.math import topk_filter


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def calibrate(cfg: GRPOJobConfig, reps: int = 2) -> dict:
    """Unit costs (the `cluster.capacity.RoleCosts` keys) of cfg's roles on this machine, one replica each."""
    for role in (cfg.cluster.sampler, cfg.cluster.reward, cfg.cluster.learner):
        role.count = 1
    shape = shape_of(cfg)
    G, P = cfg.sampler.group_size, cfg.grpo.prompts_per_step
    with tempfile.TemporaryDirectory(prefix="spatialrl-calibrate-") as tmp:
        ctl = GRPOController(cfg, Path(tmp))
        try:
            sampler, rewarder = ctl.samplers[0], ctl.rewarders[0]
            sample_s, score_s, groups = [], [], []
            for step in range(1, reps + 2):  # the first step warms up (compiles kernels, fills caches)
                ids = step_prompt_ids(len(ctl.rows), P, step, cfg.grpo.seed)
                for i, pid in enumerate(ids):
                    row = ctl.rows[pid]
                    images, traj = sampler.rollout.options(num_returns=2).remote(
                        [row["prompt"]], prompt_ids=[pid], seed=step_seed(cfg.grpo.seed, step, i),
                        lora_state=ctl.state_ref, version=0)
                    _, t_s = _timed(lambda: ray.get(images))
                    result, t_r = _timed(lambda: ray.get(rewarder.score.remote(images, [row] * G)))
                    if step > 1:
                        sample_s.append(t_s)
                        score_s.append(t_r)
                    groups.append((traj, result["reward"]))
            step_groups = groups[-P:]
            rewards = torch.as_tensor(np.concatenate([r for _, r in step_groups]), dtype=torch.float32)
            sel = topk_filter(rewards, torch.arange(P).repeat_interleave(G), cfg.grpo.top_k,
                              normalize=cfg.grpo.topk_normalize, global_std=cfg.grpo.global_std, seed=0)
            batch = []
            for i, (traj, _) in enumerate(step_groups):
                keep = sel.keep[i * G:(i + 1) * G].numpy()
                if not keep.any():  # equal rewards: let the learner still see the group (cost, not learning)
                    keep[:] = True
                batch.append((traj, TrainSelection(np.nonzero(keep)[0], np.ones(int(keep.sum()), np.float32))))

            def learn(part):
                return _timed(lambda: ctl.learner.train_step([t for t, _ in part], [s for _, s in part]))[1]

            learn(batch)  # warm-up
            half = batch[: max(1, len(batch) // 2)]
            fulls, halves = [], []
            for _ in range(reps):  # interleaved, so that a change in the machine's load hits both alike
                fulls.append(learn(batch))
                if len(half) < len(batch):
                    halves.append(learn(half))
            t_full = float(np.median(fulls))
            t_half = float(np.median(halves)) if halves else t_full
            work = lambda part: sum(len(s.indices) for _, s in part) * shape.trained_steps  # noqa: E731
            per, overhead = t_full / work(batch), 0.0  # one point: exact for this shape
            if halves and 0.1 * t_full < t_half < t_full:  # two points: a fixed cost per step and a cost per sample
                per = (t_full - t_half) / (work(batch) - work(half))
                overhead = t_full - per * work(batch)
            state = ctl.learner.lora_state_ref()
            sync = [_timed(lambda v=v: ray.get(sampler.set_lora.remote(state, 100 + v)))[1] for v in range(reps)]
            _, ckpt = _timed(lambda: ctl.learner.save_checkpoint(str(Path(tmp) / "ckpt")))
        finally:
            ctl.shutdown()
    n_img_steps = G * cfg.sampler.num_steps
    return {
        "source": f"bench/plan_calibrate.py on this machine: {cfg.sampler.model} at {cfg.sampler.resolution}px, "
                  f"{cfg.sampler.num_steps} steps, groups of {G}, one replica per role",
        "sampler_s_per_image_step": float(np.median(sample_s)) / n_img_steps,
        "reward_s_per_image": float(np.median(score_s)) / G,
        "learner_s_per_sample_step": per,
        "learner_step_overhead_s": overhead,
        "sync_s": float(np.median(sync)),
        "checkpoint_s": ckpt,
        "measured": {"group_sample_s": sample_s, "group_score_s": score_s, "learn_full_s": t_full,
                     "learn_half_s": t_half, "learn_full_all_s": fulls, "learn_half_all_s": halves, "full_sample_steps": work(batch), "half_sample_steps": work(half)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, default_config="configs/grpo_demo.yaml")
    parser.add_argument("--out", type=Path, required=True, help="where to write the unit costs (JSON)")
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args(argv)
    cfg = job_config(GRPOJobConfig, args)
    if isinstance(cfg, int):
        return cfg
    started = init_ray(address=cfg.cluster.address or None, num_cpus=cfg.cluster.num_cpus or None)
    try:
        costs = calibrate(cfg, reps=args.reps)
    finally:
        if started:
            ray.shutdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(costs, indent=2) + "\n")
    print(json.dumps({k: v for k, v in costs.items() if k != "measured"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
