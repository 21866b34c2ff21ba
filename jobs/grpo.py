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
    python -m jobs.grpo --out runs/grpo --resume --set grpo.top_k=4 --allow-change grpo.top_k   # knowingly

Before any actor starts the driver checks what the roles will load: the prompt files (and, when they sit in a
dataset folder, that dataset: data_pipeline/dataset_io.py check_dataset), the generator's folder and the reward
checkpoint. `--resume` compares the config with the run's saved config.yaml and refuses a change to anything
but RESUME_SAFE (more steps, save/grid cadence, retries, timeouts, where the actors run) unless
`--allow-change KEY` names it; a run killed before its first checkpoint restarts from step 1 in place.
`--overwrite` moves the old run aside and deletes it only when the new run has finished.
    ray job submit --working-dir . -- python -m jobs.grpo --config configs/grpo_flux_dev.yaml --out /shared/grpo
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import spatialrl.atomic as atomic
from spatialrl.config import ConfigError, add_config_args, check_resume_config, dump_yaml, job_config
from spatialrl.grpo.config import GRPOJobConfig

# config keys a resume may change without altering what the run computes
RESUME_SAFE = ("grpo.steps", "grpo.save_every", "grpo.grid_every", "grpo.max_retries", "cluster.address",
               "cluster.num_cpus", "cluster.placement_timeout_s", "cluster.actor_max_restarts",
               "cluster.*timeout_s", "cluster.sampler.*", "cluster.reward.*", "reward.device", "sampler.device")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, default_config=None)
    parser.add_argument("--out", required=True, type=Path, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over: the old run is moved aside and deleted once the new one is complete")
    parser.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                        help="with --resume: accept a change of this config key (dotted; repeatable)")
    args = parser.parse_args(argv)
    cfg = job_config(GRPOJobConfig, args)  # a dry run returns here: it must not create or delete --out
    if isinstance(cfg, int):
        return cfg
    try:
        check_inputs(cfg)
        from_checkpoint, old_run = prepare_run_dir(args.out, resume=args.resume, overwrite=args.overwrite, cfg=cfg,
                                                   allow=args.allow_change)
    except (ConfigError, ValueError, FileNotFoundError) as e:  # ModelNotFoundError is a FileNotFoundError
        print(f"config error: {e}", file=sys.stderr)
        return 2

    from cluster.runtime import ray_session
    from actors.grpo_controller import GRPOController, JobStopped
    from cluster.resources import ResourceError

    atomic.write_text(args.out / "config.yaml", dump_yaml(cfg))
    try:
        with ray_session(cfg.cluster.address or None, cfg.cluster.num_cpus or None):
            controller = GRPOController(cfg, args.out)
            try:
                summary = controller.run(resume=from_checkpoint)
            finally:
                controller.shutdown()
    except (JobStopped, ResourceError) as e:  # a stopped run, or a cluster too small for the roles: no traceback
        print(f"error: {e}", file=sys.stderr)
        if old_run is not None:
            print(f"note: the run --overwrite replaced is kept in {old_run}", file=sys.stderr)
        return 1
    if old_run is not None:
        shutil.rmtree(old_run, ignore_errors=True)  # --overwrite: the new run is complete
    shown = {k: ({kk: vv for kk, vv in v.items() if not kk.endswith("_per_image")} if isinstance(v, dict) else v)
             for k, v in summary.items()}  # per-image scores stay in summary.json
    print(json.dumps(shown, indent=2))
    return 0


def check_inputs(cfg: GRPOJobConfig) -> None:
    """What the roles will load, checked here before any actor starts; raises ValueError with the fix."""
    from data_pipeline.dataset_io import MANIFEST, check_dataset
    from spatialrl.flux.evaluation import read_prompts
    from spatialrl.models.loader import resolve_model_path

    for key in ("prompts", "eval_prompts"):
        path = getattr(cfg.data, key)
        if not path:
            continue
        p = Path(path)
        if (p.parent / MANIFEST).is_file() and p.name.startswith("prompts_") and p.suffix == ".jsonl":
            check_dataset(p.parent, (p.stem.removeprefix("prompts_"),))  # a dataset's prompt file: the whole split
        read_prompts(path)
    resolve_model_path(cfg.sampler.model, "flux")
    if cfg.reward.checkpoint:
        from spatialrl.reward.model import read_checkpoint_meta

        read_checkpoint_meta(Path(cfg.reward.checkpoint))


def prepare_run_dir(out: Path, resume: bool, overwrite: bool, cfg: GRPOJobConfig | None = None,
                    allow: list[str] | tuple[str, ...] = ()) -> tuple[bool, Path | None]:
    """Check --resume / --overwrite against what `out` holds. Returns (resume from a checkpoint, the old run
    moved aside by --overwrite, to delete once the new run is complete)."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out; --overwrite deletes it: choose one")
    latest = out / "checkpoints" / "latest.json"
    old_run = None
    if overwrite and out.exists():
        atomic.remove_stale(out.parent, out.name)
        old_run = out.parent / f"{atomic.OLD_PREFIX}{out.name}-run"
        out.rename(old_run)
    if resume:
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"--resume: {out} has no checkpoint and no run (config.yaml) to resume; start "
                              "without --resume")
        if cfg is not None:
            for change in check_resume_config(out / "config.yaml", cfg, safe=RESUME_SAFE, allow=allow):
                print(f"resume: {change}", file=sys.stderr)
        if not latest.exists():  # killed before its first checkpoint: nothing to keep but the base evaluation
            from spatialrl.metrics import MetricsLogger

            print(f"resume: {out} has no checkpoint yet; restarting it from step 1", file=sys.stderr)
            MetricsLogger(out / "metrics.jsonl", dashboard=False).truncate_after(0)
            return False, None
        return True, None
    if (out / "metrics.jsonl").exists() or latest.exists():
        raise ConfigError(f"{out} already holds a run: continue it with --resume or start over with --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return False, old_run


if __name__ == "__main__":
    t0 = time.time()
    rc = main()
    print(f"jobs.grpo finished in {time.time() - t0:.1f} s", file=sys.stderr)
    sys.exit(rc)
