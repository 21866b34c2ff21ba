"""Pretrain the tiny Qwen2.5-VL backbone on the spatial world (grounding + spatial questions, a curriculum).

The stand-in for Qwen2.5-VL-7B's own pretraining: the result is the `tiny-pretrained` backbone that the
reward model starts from (shipped in assets/tiny-pretrained/qwen2_5_vl with its RECIPE.md and log).
What is trained and why: spatialrl/standins/backbone.py.

    python -m jobs.pretrain_backbone --config configs/backbone_tiny.yaml --out runs/backbone
    python -m jobs.pretrain_backbone --config configs/backbone_tiny.yaml --out runs/backbone --set steps=200 --dry-run
    python -m jobs.pretrain_backbone --config configs/backbone_tiny.yaml --out runs/backbone --from-scratch

An interrupted run resumes from OUT/resume when started again with the same --out; --from-scratch deletes
OUT first and starts from random weights. OUT ends up a Hugging Face model folder (config.json,
model.safetensors, tokenizer and processor files) plus training_log.jsonl, pretrain_config.yaml and eval.json.
Single process, no Ray: one small model on a few CPU threads (`threads` in the config).
"""

from __future__ import annotations

import argparse
import sys
import time

from spatialrl.standins.backbone import PretrainConfig, pretrain
from spatialrl.config import add_config_args, job_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, default_config="configs/backbone_tiny.yaml")
    parser.add_argument("--out", help="output folder (the pretrained model in the Hugging Face layout)")
    parser.add_argument("--from-scratch", action="store_true", help="delete --out and start from random weights")
    args = parser.parse_args(argv)
    cfg = job_config(PretrainConfig, args, {"out": args.out})
    if isinstance(cfg, int):
        return cfg
    t0 = time.time()
    metrics = pretrain(cfg, cfg.out, from_scratch=args.from_scratch)
    summary = ", ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in metrics.items()
                        if k.startswith("eval/") and k.endswith(("qa_accuracy", "x_mae", "y_mae")))
    print(f"done in {time.time() - t0:.0f} s: {summary}; model in {cfg.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
