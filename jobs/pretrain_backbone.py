"""Pretrain the tiny Qwen2.5-VL backbone on the spatial world: the base recipe, then the relation curriculum.

The stand-in for Qwen2.5-VL-7B's own pretraining. Two recipes:

- `--recipe base` (default): grounding + spatial questions from random weights (configs/backbone_tiny.yaml,
  spatialrl/standins/backbone.py): the `tiny-pretrained` backbone in assets/tiny-pretrained/qwen2_5_vl (its
  RECIPE.md and log beside it). It grounds objects but answers relation questions at chance.
- `--recipe curriculum`: the stages of configs/backbone_curriculum.yaml (spatialrl/standins/curriculum.py) on a
  base backbone grown to 6 LM layers: one relation word, then the converses, the word hint, the reward model's own
  question. Its resume points ship in assets/tiny-pretrained/qwen2_5_vl_curriculum/ (s5m_missing_objects is the demo's
  reward backbone); OUT/<stage> is each stage's model folder, OUT/<stage>.log its log. A stage whose folder exists
  is reused, so starting the same command again continues with the next stage.

    python -m jobs.pretrain_backbone --config configs/backbone_tiny.yaml --out runs/backbone
    python -m jobs.pretrain_backbone --config configs/backbone_tiny.yaml --out runs/backbone --set steps=200 --dry-run
    python -m jobs.pretrain_backbone --config configs/backbone_tiny.yaml --out runs/backbone --from-scratch
    python -m jobs.pretrain_backbone --recipe curriculum --out runs/curriculum                # s1 .. s6 (hours)
    python -m jobs.pretrain_backbone --recipe curriculum --out runs/curriculum --stages s6 \
        --init assets/tiny-pretrained/qwen2_5_vl_curriculum/s5_clause_hints               # continue a resume point

Base recipe: an interrupted run resumes from OUT/resume when started again with the same --out; --from-scratch deletes
OUT first and starts from random weights. OUT ends up a Hugging Face model folder (config.json,
model.safetensors, tokenizer and processor files) plus training_log.jsonl, pretrain_config.yaml and eval.json.
Single process, no Ray: one small model on a few CPU threads (`threads` in the config).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from spatialrl.standins.backbone import PretrainConfig, pretrain
from spatialrl.config import add_config_args, job_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, default_config="configs/backbone_tiny.yaml")
    parser.add_argument("--out", help="output folder (the pretrained model in the Hugging Face layout)")
    parser.add_argument("--from-scratch", action="store_true", help="delete --out and start from random weights")
    parser.add_argument("--recipe", choices=["base", "curriculum"], default="base")
    parser.add_argument("--plan", default="configs/backbone_curriculum.yaml", help="curriculum: the stages to run")
    parser.add_argument("--stages", default="", help="curriculum: comma list of stages (default: all, in order)")
    parser.add_argument("--init", default="", help="curriculum: the folder the first stage run starts from")
    parser.add_argument("--base", default="", help="curriculum: the backbone the first stage grows (default: the "
                        "shipped tiny-pretrained one; e.g. a --recipe base output)")
    parser.add_argument("--threads", type=int, default=1, help="curriculum: torch threads")
    args = parser.parse_args(argv)
    if args.recipe == "curriculum":
        return curriculum(args)
    cfg = job_config(PretrainConfig, args, {"out": args.out})
    if isinstance(cfg, int):
        return cfg
    t0 = time.time()
    metrics = pretrain(cfg, cfg.out, from_scratch=args.from_scratch)
    summary = ", ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in metrics.items()
                        if k.startswith("eval/") and k.endswith(("qa_accuracy", "x_mae", "y_mae")))
    print(f"done in {time.time() - t0:.0f} s: {summary}; model in {cfg.out}")
    return 0


def curriculum(args) -> int:
    from spatialrl.config import ConfigError
    from spatialrl.standins.curriculum import run_curriculum

    if args.config != "configs/backbone_tiny.yaml" or args.overrides or args.from_scratch:
        print("config error: --config, --set and --from-scratch belong to --recipe base; the curriculum's stages are "
              "in --plan", file=sys.stderr)
        return 2
    if args.dry_run:  # the plan's stages, validated, with the arguments each stage runs with
        from spatialrl.standins.curriculum import load_plan

        try:
            plan = load_plan(args.plan)
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        for name, stage_args in plan["stages"].items():
            print(f"{name}: {' '.join(plan['common'] + stage_args)}")
        return 0
    if not args.out:
        print("config error: --recipe curriculum needs --out (the folder for the stages)", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        last = run_curriculum(args.plan, Path(args.out), [s for s in args.stages.split(",") if s], args.init,
                              args.base, args.threads)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    print(f"done in {time.time() - t0:.0f} s; the last stage's model: {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
