"""Benchmark: FluxSampler's own denoising loop vs the stock `FluxPipeline.__call__`, in one run.

The same pipeline object, prompt, resolution, steps, guidance and batch for every path; each call encodes the
prompt once and decodes the batch with the VAE. Paths: `stock` (pipe(...) with output_type="np"),
`sampler ode` (noise level 0: the stock computation, plus storing every step's latents) and `sampler sde`
(Flow-GRPO steps: noise, log-probs, stored latents, what GRPO rollouts run). The paths alternate for
`--rounds` rounds after a warm-up, so a busy machine slows all of them alike; reported: median images/s by
wall clock, and (CPU runs) by this process's CPU time, which a machine shared with other work distorts less.

    python -m bench.sampler                              # tiny model, CPU, 1 thread
    python -m bench.sampler --model tiny-pretrained --resolution 64 --steps 8 --batch 12 --max-sequence-length 96 \
        --true-cfg-scale 4                                # the demo's rollouts, guided (two forwards per step)
    python -m bench.sampler --model full --dtype bfloat16 --resolution 512 --steps 16 --batch 8 --threads 0
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig

PROMPT = "a red circle to the left of a blue square, above a small green triangle"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = leave torch's default)")
    p.add_argument("--max-sequence-length", type=int, default=512)
    p.add_argument("--true-cfg-scale", type=float, default=1.0, help="> 1: classifier-free guidance on every path")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = FluxSamplerConfig(
        model=args.model, resolution=args.resolution, num_steps=args.steps, group_size=args.batch,
        batch_size=args.batch, dtype=args.dtype, device=args.device, max_sequence_length=args.max_sequence_length,
        true_cfg_scale=args.true_cfg_scale,
    )
    sampler = FluxSampler(cfg)

    def sync():
        if sampler.device.type == "cuda":
            torch.cuda.synchronize()

    def stock(seed: int):
        gens = [torch.Generator().manual_seed(seed + i) for i in range(args.batch)]
        return sampler.pipe(
            PROMPT, height=args.resolution, width=args.resolution, num_inference_steps=args.steps,
            guidance_scale=cfg.guidance, num_images_per_prompt=args.batch, generator=gens, output_type="np",
            max_sequence_length=cfg.max_sequence_length, true_cfg_scale=cfg.true_cfg_scale,
            negative_prompt=cfg.negative_prompt if cfg.true_cfg_scale > 1 else None,
        ).images

    paths = {
        "stock FluxPipeline.__call__": stock,
        "sampler ode (a=0)": lambda seed: sampler.sample([PROMPT], seed=seed, noise_level=0.0).images,
        f"sampler sde (a={cfg.noise_level})": lambda seed: sampler.sample([PROMPT], seed=seed).images,
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    cpu_times: dict[str, list[float]] = {name: [] for name in paths}
    for rnd in range(args.rounds + 1):  # round 0 warms up
        for name, fn in paths.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn(1000 * rnd)
            sync()
            if rnd:
                times[name].append(time.perf_counter() - t0)
                cpu_times[name].append(time.process_time() - c0)

    print(
        f"model={args.model} device={sampler.device} dtype={args.dtype} resolution={args.resolution} "
        f"steps={args.steps} batch={args.batch} rounds={args.rounds} threads={torch.get_num_threads()} "
        f"true_cfg_scale={cfg.true_cfg_scale}"
    )
    print(f"{'path':<30} {'images/s (median)':>18} {'min':>8} {'max':>8} {'s/batch':>8} {'images/CPU-s':>13}")
    result = {}
    for name, ts in times.items():
        ips = [args.batch / t for t in ts]
        per_cpu_s = statistics.median(args.batch / t for t in cpu_times[name])
        result[name] = {"images_per_s": statistics.median(ips), "images_per_cpu_s": per_cpu_s}
        print(
            f"{name:<30} {result[name]['images_per_s']:>18.2f} {min(ips):>8.2f} {max(ips):>8.2f} "
            f"{statistics.median(ts):>8.3f} {per_cpu_s:>13.2f}"
        )
    return result


if __name__ == "__main__":
    main()
