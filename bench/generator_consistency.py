"""Benchmark: how a generator's relations depend on the prompt. For each held-out prompt, the fraction of seeds
in which each stated relation holds (pixel verifier, ODE); their spread against the binomial spread they would
have if every relation held equally often, a histogram, and the mean by relation word.

    python -m bench.generator_consistency --prompts runs/g13/dataset/prompts_test.jsonl --limit 40 --seeds 16
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from spatialrl.flux.evaluation import verify_images
from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", required=True, help="a prompts jsonl with objects and relations (a dataset split)")
    p.add_argument("--model", default="tiny-pretrained")
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--seeds", type=int, default=16, help="images per prompt")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--true-cfg-scale", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with open(args.prompts) as f:
        rows = [json.loads(line) for line in f][: args.limit]
    k = args.seeds
    sampler = FluxSampler(FluxSamplerConfig(model=args.model, resolution=64, num_steps=args.steps, noise_level=0.0,
                                            guidance=3.5, true_cfg_scale=args.true_cfg_scale, group_size=k,
                                            batch_size=k, max_sequence_length=96))
    rates = []  # (fraction of seeds where it holds, relation word)
    for i in range(0, len(rows), 4):
        chunk = rows[i:i + 4]
        tr = sampler.sample([r["prompt"] for r in chunk], seed=1000 + i * k)
        _, per = verify_images(chunk, tr.images, k=k)
        for j, row in enumerate(chunk):
            holds = np.array([im["relations_hold"] for im in per[j * k:(j + 1) * k]], dtype=float)  # [k, R]
            rates += [(float(holds[:, r].mean()), rel["type"]) for r, rel in enumerate(row["relations"])]
    r = np.array([x for x, _ in rates])
    out = {"relations": len(r), "mean": float(r.mean()), "std_across_relations": float(r.std()),
           "binomial_std_if_equal": float(np.sqrt(r.mean() * (1 - r.mean()) / k)),
           "histogram_8_bins": np.histogram(r, bins=8, range=(0, 1))[0].tolist(),
           "by_word": {t: float(np.mean([x for x, w in rates if w == t])) for t in sorted({w for _, w in rates})}}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
