"""Teacher-free spatial evaluation of a Qwen2.5-VL backbone on fresh scenes of a world preset.

What is asked and how it is read: spatialrl/standins/backbone_eval.py. Single process, no Ray (one small model).

    python -m jobs.eval_backbone --model assets/tiny-pretrained/qwen2_5_vl --world configs/dataset_easy.yaml \
        --seed 7 --scenes 500 --json runs/eval_backbone.json
    python -m jobs.eval_backbone --model DIR --world configs/dataset_default.yaml --scenes 200 --dry-run

Prints and writes `question_accuracy`, `by_relation`, `by_gap`, `n_questions`, `match_accuracy`,
`pair_accuracy` (and by perturbation count) and `grounding`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spatialrl.standins.backbone_eval import BackboneEvalConfig, evaluate_backbone
from spatialrl.config import add_config_args, job_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--model", help="Qwen2.5-VL folder (default: the shipped tiny-pretrained backbone)")
    parser.add_argument("--world", help="world preset, e.g. configs/dataset_easy.yaml or configs/dataset_default.yaml")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--scenes", type=int, help="fresh scenes (default 500)")
    parser.add_argument("--pairs", type=int, help="dataset-style preference pairs (default 200; 0 = skip)")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    cfg = job_config(BackboneEvalConfig, args, {"model": args.model, "world": args.world, "seed": args.seed,
                                                "scenes": args.scenes, "pairs": args.pairs, "json": args.json})
    if isinstance(cfg, int):
        return cfg
    result = evaluate_backbone(cfg)
    rel = ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in result["by_relation"].items())
    gap = ", ".join(f"{k} {v['accuracy']:.3f} (n={v['n']})" for k, v in result["by_gap"].items())
    print(f"relation questions: {result['question_accuracy']:.3f} on {result['n_questions']} "
          f"(said yes {result['said_yes_fraction']:.2f})\n  by relation: {rel}\n  by gap (image tokens): {gap}")
    print(f"match task: {result['match_accuracy']:.3f}" + (
        f"; preference pairs: {result['pair_accuracy']:.3f} on {result['n_pairs']}" if "pair_accuracy" in result else ""))
    g = result["grounding"]
    print(f"grounding: token colour {g['token_colour_accuracy']:.3f}, shape {g['token_shape_accuracy']:.3f}")
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {cfg.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
