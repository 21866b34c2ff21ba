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
from pathlib import Path

from spatialrl.config import ConfigError, add_config_args, dump_yaml, job_config
from spatialrl.grpo.config import GRPOJobConfig


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
    from actors.grpo_controller import GRPOController

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
