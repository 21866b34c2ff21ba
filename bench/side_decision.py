"""Benchmark: at which sampling step a toy generator decides where its objects go.

For each of N held-out prompts, one start (seeded) is sampled with the ODE (true CFG as the GRPO preset); then, for each
step k, M continuations add Flow-GRPO SDE noise (noise level `--noise`) at step k only and follow the ODE everywhere
else. Printed per k: the share of relations whose outcome (holds or not, by the pixel verifier) differs from the ODE
image's. A step whose noise flips no relation no longer decides the layout, so that is where exploration and credit
for a layout-level reward have to be.

    python -m bench.side_decision --model assets/tiny-pretrained/flux_trained_t5 --prompts runs/demo/dataset/prompts_test.jsonl
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from data_pipeline.verifier import margins_for, relation_margins
from spatialrl.flux.math import latent_image_ids, ode_step, sde_step
from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig


def flips_by_step(sampler: FluxSampler, rows: list[dict], continuations: int, noise: float, seed: int) -> dict[int, float]:
    res = sampler.cfg.resolution
    h, w = sampler.latent_size(res)
    sigmas = sampler.schedule(res)  # [T + 1]
    timesteps = sigmas[:-1] * 1000
    steps = len(timesteps)
    img_ids = latent_image_ids(h // 2, w // 2, device=sampler.device, dtype=torch.float32)
    margins = margins_for(res)
    flips: dict[int, list[float]] = {k: [] for k in range(steps - 1)}
    for p, row in enumerate(rows):
        emb, pooled, text_ids = sampler.encode([row["prompt"]])
        start = sampler.initial_noise([torch.Generator().manual_seed(seed + p)], np.zeros(1, int), h, w, False)

        def run(k: int, n: int) -> np.ndarray:  # SDE noise at step k only (k = -1: the ODE)
            x = start.expand(n, -1, -1).clone()  # [n, S, 64]
            gen = torch.Generator().manual_seed(seed + 7_919 + p)
            for i in range(steps):
                v = sampler.velocity(x, timesteps[i], emb.expand(n, -1, -1), pooled.expand(n, -1), text_ids, img_ids)
                if i == k:
                    x = sde_step(x, v, sigmas[i], sigmas[i + 1], noise, noise=torch.randn(x.shape, generator=gen))[0]
                else:
                    x = ode_step(x, v, sigmas[i], sigmas[i + 1])
            return sampler.decode(x, res)

        with torch.no_grad():
            ref = relation_margins(run(-1, 1)[0], row["objects"], row["relations"], margins) > 0
            for k in flips:
                for image in run(k, continuations):
                    held = relation_margins(image, row["objects"], row["relations"], margins) > 0
                    flips[k].append(float((held != ref).mean()))
    return {k: round(float(np.mean(v)), 4) for k, v in flips.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="assets/tiny-pretrained/flux_trained_t5")
    parser.add_argument("--prompts", required=True, help="prompts_test.jsonl of jobs.build_dataset (easy world)")
    parser.add_argument("--n", type=int, default=12, help="prompts")
    parser.add_argument("--continuations", type=int, default=8)
    parser.add_argument("--noise", type=float, default=1.0, help="the SDE's noise level a at the perturbed step")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sampler = FluxSampler(FluxSamplerConfig(model=args.model, resolution=64, num_steps=8, guidance=3.5, true_cfg_scale=4.0,
                                            group_size=1, batch_size=8, max_sequence_length=96))
    with open(args.prompts) as f:
        rows = [json.loads(line) for line in f if line.strip()][:args.n]
    flips = flips_by_step(sampler, rows, args.continuations, args.noise, args.seed)
    sig = [round(float(s), 3) for s in sampler.schedule(64)]
    for k, share in flips.items():
        print(f"step {k} (t {sig[k]} -> {sig[k + 1]}): {share:.3f} of relations flip", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
