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
    python -m jobs.sample --model tiny --set sampler.noise_level=0.7 --set sampler.sde_steps=2 --dry-run

The config is `SampleJobConfig`: a `sampler:` section (spatialrl.flux.sampler.FluxSamplerConfig, the one GRPO
uses) plus `lora` and `limit`; without a chosen `sampler.resolution` the model's own size is used (its VAE's
sample_size: 64 for tiny-pretrained, 1024 for FLUX.1-dev); `--config` reads it from YAML, `--set KEY=VALUE` overrides a key, and
the short flags above set the same keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from spatialrl.config import ConfigError, add_config_args, config_from_args, dump_yaml
from spatialrl.flux.evaluation import image_grid, read_prompts, verify_images
from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig


@dataclass
class SampleJobConfig:
    """What jobs.sample runs: the sampler's own config (sampler.group_size = images per prompt) plus the job's."""

    sampler: FluxSamplerConfig = field(default_factory=lambda: FluxSamplerConfig(
        num_steps=28, noise_level=0.0))
    lora: str = ""  # a diffusers-format LoRA folder (FluxPipeline.load_lora_weights)
    limit: int = 0  # the first N prompts only; 0 = all

    def validate(self) -> None:
        if self.limit < 0:
            raise ConfigError(f"limit={self.limit}: 0 (all prompts) or a positive count")
        if self.lora and not Path(self.lora).is_dir():
            raise ConfigError(f"lora={self.lora!r} is not a folder; give a diffusers-format LoRA folder "
                              f"(jobs.grpo writes RUN_DIR/final)")


# the job's short flags, each a dotted key of SampleJobConfig
FLAGS = {"model": "sampler.model", "n_per_prompt": "sampler.group_size", "seed": "sampler.seed",
         "steps": "sampler.num_steps", "noise_level": "sampler.noise_level", "guidance": "sampler.guidance",
         "true_cfg_scale": "sampler.true_cfg_scale", "negative_prompt": "sampler.negative_prompt",
         "batch_size": "sampler.batch_size", "max_sequence_length": "sampler.max_sequence_length",
         "dtype": "sampler.dtype", "device": "sampler.device", "resolution": "sampler.resolution", "lora": "lora",
         "limit": "limit"}


def _resolution_given(args: argparse.Namespace) -> bool:
    """Whether the user chose sampler.resolution (a flag, a --set or the YAML); if not, the model's own size."""
    import yaml

    if args.resolution is not None or any(o.split("=")[0].strip() == "sampler.resolution" for o in args.overrides):
        return True
    if args.config:
        data = yaml.safe_load(Path(args.config).read_text()) or {}
        return "resolution" in (data.get("sampler") or {})
    return False


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--prompts", help="FILE.jsonl, a text file (one per line) or a prompt")
    p.add_argument("--out", type=Path)
    p.add_argument("--model", help="preset (tiny, small, full), hub id or diffusers folder (sampler.model)")
    p.add_argument("--lora", help="diffusers-format LoRA folder (FluxPipeline.load_lora_weights)")
    p.add_argument("--n-per-prompt", type=int, help="images per prompt (sampler.group_size; default 4)")
    p.add_argument("--limit", type=int, help="use the first N prompts only")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="denoising steps (sampler.num_steps; default 28)")
    p.add_argument("--resolution", type=int,
                   help="pixels, square (default: the model's own, its VAE's sample_size: 64 for tiny-pretrained, "
                        "1024 for FLUX.1-dev)")
    p.add_argument("--noise-level", type=float, help="0 = deterministic (ODE, the default); >0 = Flow-GRPO SDE")
    p.add_argument("--guidance", type=float, help="the guidance input of guidance-distilled Flux (3.5)")
    p.add_argument("--true-cfg-scale", type=float,
                   help="classifier-free guidance, as FluxPipeline's true_cfg_scale: 1 = off (FLUX.1-dev); "
                        "tiny-pretrained: 4 (a second forward per step on --negative-prompt)")
    p.add_argument("--negative-prompt", help="the prompt guided away from when --true-cfg-scale > 1")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-sequence-length", type=int,
                   help="T5 tokens; use the length the model was trained with (tiny-pretrained: 96; default 512)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"])
    p.add_argument("--device")
    args = p.parse_args(argv)

    try:
        job = config_from_args(SampleJobConfig, args, {key: getattr(args, flag) for flag, key in FLAGS.items()})
    except ConfigError as e:
        raise SystemExit(f"jobs.sample: {e}") from None
    if args.dry_run:
        print(dump_yaml(job))
        return None
    if not args.prompts or not args.out:
        raise SystemExit("jobs.sample: give --prompts (a file or a prompt) and --out DIR")
    try:
        rows = read_prompts(args.prompts, job.limit or None)
    except ValueError as e:
        raise SystemExit(f"jobs.sample: {e}") from None
    cfg = job.sampler
    k = cfg.group_size
    sampler = FluxSampler(cfg)
    if not _resolution_given(args):  # a model drawn at another size than it learned draws another picture
        native = sampler.pipe.vae.config.get("sample_size")
        if isinstance(native, int) and native >= 16 and native % 16 == 0:
            sampler.cfg = dataclasses.replace(cfg, resolution=native)
            print(f"resolution: {native} px (the model's VAE sample_size; --resolution to change)")
        else:
            print(f"resolution: {cfg.resolution} px (the model's VAE sample_size {native!r} is not a usable size; "
                  "--resolution to change)")
    if job.lora:
        sampler.load_lora(job.lora)
    traj = sampler.sample([r["prompt"] for r in rows], seed=cfg.seed)

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
