"""Sample images from a Flux model (optionally with a LoRA) and, for spatial-world prompts, verify them.

Writes into --out: one PNG per image, `grid.png` (a row per prompt, a column per sample), `samples.jsonl`
(prompt, file, seed, and per-relation verdicts when known), and `verify.json` when the prompts carry the
structured `objects` / `relations` of `prompts_*.jsonl` from jobs.build_dataset: `object_presence` (fraction
of objects found with the named shape) and `relation_accuracy` (fraction of relations that hold), over all
images. Deterministic sampling (noise level 0) by default. In-process, no Ray.

    python -m jobs.sample --model tiny --prompts data/prompts_test.jsonl --limit 8 --out runs/samples
    python -m jobs.sample --model assets/tiny-pretrained/flux --prompts runs/demo/dataset/prompts_test.jsonl \
        --out runs/toy --n-per-prompt 1 --limit 64 --max-sequence-length 96 --true-cfg-scale 4
    python -m jobs.sample --model /models/FLUX.1-dev --lora runs/grpo/lora --prompts "a red circle left of a cat" \
        --out runs/one --n-per-prompt 4 --resolution 512 --steps 28 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from PIL import Image

from spatialrl.config import ConfigError
from spatialrl.flux.evaluation import image_grid, read_prompts, verify_images
from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="preset (tiny, small, full), hub id or diffusers folder")
    p.add_argument("--lora", help="diffusers-format LoRA folder (FluxPipeline.load_lora_weights)")
    p.add_argument("--prompts", required=True, help="FILE.jsonl, a text file (one per line) or a prompt")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n-per-prompt", type=int, default=4)
    p.add_argument("--limit", type=int, help="use the first N prompts only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--resolution", type=int,
                   help="pixels, square (default: the model's own, its VAE's sample_size: 64 for tiny-pretrained, "
                        "1024 for FLUX.1-dev)")
    p.add_argument("--noise-level", type=float, default=0.0, help="0 = deterministic (ODE); >0 = Flow-GRPO SDE")
    p.add_argument("--guidance", type=float, default=3.5, help="the guidance input of guidance-distilled Flux")
    p.add_argument("--true-cfg-scale", type=float, default=1.0,
                   help="classifier-free guidance, as FluxPipeline's true_cfg_scale: 1 = off (FLUX.1-dev); "
                        "tiny-pretrained: 4 (a second forward per step on --negative-prompt)")
    p.add_argument("--negative-prompt", default="", help="the prompt guided away from when --true-cfg-scale > 1")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-sequence-length", type=int, default=512,
                   help="T5 tokens; use the length the model was trained with (tiny-pretrained: 96)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    try:
        rows = read_prompts(args.prompts, args.limit)
    except ValueError as e:
        raise SystemExit(f"jobs.sample: {e}") from None
    k = args.n_per_prompt
    cfg = FluxSamplerConfig(
        model=args.model, resolution=args.resolution or 128, num_steps=args.steps, noise_level=args.noise_level,
        guidance=args.guidance, group_size=k, batch_size=args.batch_size, seed=args.seed, dtype=args.dtype,
        device=args.device, max_sequence_length=args.max_sequence_length, true_cfg_scale=args.true_cfg_scale,
        negative_prompt=args.negative_prompt,
    )
    try:
        cfg.validate()
    except ConfigError as e:
        raise SystemExit(f"jobs.sample: {e}") from None
    sampler = FluxSampler(cfg)
    if args.resolution is None:  # a model drawn at another size than it learned draws another picture
        native = sampler.pipe.vae.config.get("sample_size")
        if isinstance(native, int) and native >= 16 and native % 16 == 0:
            sampler.cfg = dataclasses.replace(cfg, resolution=native)
            print(f"resolution: {native} px (the model's VAE sample_size; --resolution to change)")
        else:
            print(f"resolution: {cfg.resolution} px (the model's VAE sample_size {native!r} is not a usable size; "
                  "--resolution to change)")
    if args.lora:
        sampler.load_lora(args.lora)
    traj = sampler.sample([r["prompt"] for r in rows], seed=args.seed)

    args.out.mkdir(parents=True, exist_ok=True)
    summary, verdicts = verify_images(rows, traj.images, k)
    with open(args.out / "samples.jsonl", "w") as f:
        for i, img in enumerate(traj.images):
            name = f"p{i // k:04d}_s{i % k:02d}.png"
            Image.fromarray(img).save(args.out / name)
            record = {"prompt": rows[i // k]["prompt"], "file": name, "seed": int(traj.seeds[i])}
            f.write(json.dumps({**record, **(verdicts[i] if verdicts else {})}) + "\n")
    image_grid(traj.images, rows=len(rows)).save(args.out / "grid.png")
    if summary is not None:
        (args.out / "verify.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {len(traj.images)} images of {len(rows)} prompts to {args.out}")
    if summary is not None:
        print(f"verify: {summary}")
    return summary


if __name__ == "__main__":
    main()
