"""Benchmark: the pixel verifier on a toy generator's samples, for several models and guidance scales, in one run.

Held-out prompts are the generator job's own validation split (`make_examples(world, N, 1, "val")`, the easy
world), one image per prompt, drawn through `FluxSampler` (ODE by default) with the same seeds for every model
and scale. Reported per (model, scale): object presence, relation accuracy, named colour found, all correct, and
which shapes the verifier read where a named shape was missed (e.g. `diamond->circle`).

    python -m bench.generator_eval --models assets/tiny-pretrained/flux --scales 1,3,4
    python -m bench.generator_eval --models runs/a,runs/b --scales 1,3 --prompts 200 --steps 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch

from data_pipeline.verifier import object_presence, read_objects
from spatialrl.flux.sampler import FluxSamplerConfig
from spatialrl.standins.generator import load_world_preset, make_examples, sample_settings, verifier_scores


def shape_misses(images: np.ndarray, structured: list[dict]) -> Counter:
    """`named->seen` counts over objects whose named shape was not read back (`seen` = none when not found)."""
    misses = Counter()
    for image, row in zip(images, structured):
        present, seen = object_presence(read_objects(image, row["objects"]), row["objects"])
        for obj, ok, got in zip(row["objects"], present, seen):
            if not ok:
                misses[f"{obj['shape']}->{got or 'none'}"] += 1
    return misses


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="comma-separated generator folders or presets")
    p.add_argument("--scales", default="1,3", help="comma-separated true_cfg_scale values (1 = no guidance)")
    p.add_argument("--prompts", type=int, default=200)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--noise-level", type=float, default=0.0)
    p.add_argument("--world", default="configs/dataset_easy.yaml")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--max-sequence-length", type=int, default=96)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    scales = [float(s) for s in args.scales.split(",")]
    held = make_examples(load_world_preset(args.world), args.prompts, 1, "val")

    results = {}
    print(f"{'model':<40} {'cfg':>4} {'presence':>9} {'relations':>10} {'colour':>7} {'all':>6}  misses")
    for model in args.models.split(","):
        configs = [
            FluxSamplerConfig(
                model=model, resolution=args.resolution, num_steps=args.steps, noise_level=args.noise_level,
                group_size=1, batch_size=args.batch, max_sequence_length=args.max_sequence_length, device="cpu",
                true_cfg_scale=scale,
            )
            for scale in scales
        ]
        for cfg, images, _ in sample_settings(configs, held.prompts, seed=args.seed):
            scale = cfg.true_cfg_scale
            scores = verifier_scores(images, held.structured)
            misses = shape_misses(images, held.structured)
            results[f"{model}@cfg{scale:g}"] = {**scores, "misses": dict(misses.most_common())}
            top = ", ".join(f"{k} {n}" for k, n in misses.most_common(4))
            print(f"{model[-40:]:<40} {scale:>4g} {scores['object_presence']:>9.3f} "
                  f"{scores['relation_accuracy']:>10.3f} {scores['colour_found']:>7.3f} {scores['all_correct']:>6.3f}  "
                  f"{top}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
