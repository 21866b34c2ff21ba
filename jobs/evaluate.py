"""Evaluate a Flux model (and its LoRA, side by side) on the benchmarks the paper reports, with offline judges.

    python -m jobs.evaluate --benchmark spatialworld --prompts runs/demo/dataset/prompts_test.jsonl \
        --model assets/tiny-pretrained/flux --lora runs/demo/grpo/final --spatialscore runs/demo/reward/final \
        --out runs/eval/world --set generation.true_cfg_scale=3 --set generation.max_sequence_length=96
    python -m jobs.evaluate --benchmark dpg --prompts ELLA/dpg_bench/prompts --model /models/FLUX.1-dev \
        --lora runs/grpo/final --vlm Qwen/Qwen2.5-VL-7B-Instruct --out runs/eval/dpg --set generation.dtype=bfloat16

Benchmarks (`data_pipeline.benchmarks`: their files, formats and output layouts): geneval, dpg, tiif (with
--prompt-length short|long), unigenbench, t2i-compbench, spatialworld. Generation and judging are two Ray actor
pools that scale on their own (`cluster.generator`, `cluster.judge`: count, num_cpus, num_gpus): the samplers are
the GRPO sampler actor (ODE, noise level 0), the judges `spatialrl.reward.judges.JudgePanel` (SpatialScore, the
verifier, a VLM reading P(yes) from a local Qwen2.5-VL). Image (prompt p, sample k) is seeded seed + p*K + k, for
the base model and the LoRA alike.

Writes into --out: `images/{base,lora}/` in the benchmark's own layout (its scorer runs on it unchanged),
`scores.jsonl` (every image's scores), `report.md` + `report_files/`, the self-contained `report.html`,
`summary.json`, `settings.yaml` (the resolved config, seeds and command: rerun with `--config settings.yaml`) and
`metrics.jsonl` (through the one metrics path: images/s per pass, each metric per variant; `spatialrl_eval_*`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from data_pipeline.benchmarks import (BENCHMARKS, DEFAULT_IMAGES_PER_PROMPT, PROMPT_LENGTHS, TABLE2_CATEGORIES,
                                      BenchmarkFormatError, image_relpath, load_benchmark, select,
                                      write_layout_sidecars)
from spatialrl.config import ConfigError, add_config_args, dump_yaml, job_config, repo_path, to_dict
from spatialrl.reward.judges import JudgeConfig


@dataclass
class GenerationConfig:
    """The generator and how it samples (the ODE by default; deterministic given the seeds either way)."""

    model: str = "tiny-pretrained"  # preset, hub id or diffusers folder
    lora: str | None = None  # diffusers-format LoRA folder: adds the "lora" variant beside "base"
    images_per_prompt: int | None = None  # None: the benchmark's protocol (GenEval 4, DPG 4, TIIF 1, ...)
    seed: int = 0
    steps: int = 28
    resolution: int | None = None  # None: the model's VAE sample_size (64 for tiny-pretrained, 1024 FLUX.1-dev)
    guidance: float = 3.5
    true_cfg_scale: float = 1.0  # tiny-pretrained: 3-4 (it is not guidance-distilled)
    # 0 = the ODE (the benchmarks' protocol). > 0: GRPO's SDE at that noise level (on the first sde_steps steps,
    # 0 = all), e.g. to tell a gain that does not carry over to the ODE from one that does not reach new prompts
    noise_level: float = 0.0
    sde_steps: int = 0
    sde_type: str = "flow_grpo"  # or cps (sampler.sde_type)
    noise_block: int = 1  # the SDE noise's block side in latent pixels (sampler.noise_block)
    negative_prompt: str = ""
    max_sequence_length: int = 512  # tiny-pretrained: 96
    batch_size: int = 4
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: str = "auto"

    def validate(self) -> None:
        if self.images_per_prompt is not None and self.images_per_prompt < 1:
            raise ConfigError(f"generation.images_per_prompt={self.images_per_prompt}: use 1 or more")
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("generation.steps and generation.batch_size must be >= 1")
        if not 0 <= self.noise_level < 10:
            raise ConfigError(f"generation.noise_level={self.noise_level}: use 0 (the ODE) or GRPO's SDE level, e.g. 0.7")
        if not 0 <= self.sde_steps <= self.steps:
            raise ConfigError(f"generation.sde_steps={self.sde_steps}: use 0 (SDE on every step) or 1..generation.steps")


@dataclass
class PoolConfig:
    count: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def validate(self) -> None:
        if self.count < 1 or self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError(f"cluster pool {self}: count >= 1, num_cpus and num_gpus >= 0 (fractions allowed)")


@dataclass
class EvalClusterConfig:
    generator: PoolConfig = field(default_factory=PoolConfig)
    judge: PoolConfig = field(default_factory=PoolConfig)
    address: str = ""  # join this cluster ("auto", HOST:PORT); empty: start a local Ray (or RAY_ADDRESS)
    num_cpus: int = 0  # CPUs of the local Ray (0 = the machine's)


@dataclass
class EvaluateConfig:
    benchmark: str = "spatialworld"
    prompts: str = ""  # the benchmark's prompt file or folder
    questions: str | None = None  # DPG-Bench's CSV / TIIF-Bench's test_eval_prompts/ when not found beside prompts
    prompt_length: str = "short"  # TIIF-Bench: short or long descriptions
    subset: list[str] = field(default_factory=list)  # keep prompts with any of these categories (testpoints, types)
    limit: int | None = None  # the first N prompts (after subset)
    chunk_prompts: int = 4  # prompts per generation task
    top_n: int = 3  # prompts shown as biggest wins and losses
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judges: JudgeConfig = field(default_factory=JudgeConfig)
    cluster: EvalClusterConfig = field(default_factory=EvalClusterConfig)

    @property
    def images_per_prompt(self) -> int:
        return self.generation.images_per_prompt or DEFAULT_IMAGES_PER_PROMPT[self.benchmark]

    def validate(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ConfigError(f"benchmark={self.benchmark!r}: choose one of {list(BENCHMARKS)}")
        if not self.prompts:
            raise ConfigError("prompts: give the benchmark's prompt file or folder (--prompts PATH)")
        if self.prompt_length not in PROMPT_LENGTHS:
            raise ConfigError(f"prompt_length={self.prompt_length!r}: choose short or long")
        if self.benchmark == "dpg" and self.images_per_prompt != 4:
            raise ConfigError("DPG-Bench scores a 2x2 grid of 4 images per prompt: use --images-per-prompt 4")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit={self.limit}: use 1 or more (or leave it out)")
        if self.chunk_prompts < 1 or self.top_n < 0:
            raise ConfigError("chunk_prompts must be >= 1 and top_n >= 0")


def default_judges(cfg: EvaluateConfig) -> list[str]:
    """Judges when none are named: the verifier where relations are structured, the VLM, SpatialScore if given."""
    if cfg.judges.judges:
        return list(cfg.judges.judges)
    names = (["verifier"] if cfg.benchmark == "spatialworld" else []) + ["vlm"]
    return names + (["spatialscore"] if cfg.judges.spatialscore else [])


def check_models(cfg: EvaluateConfig) -> None:
    """Every model named is on disk (the loader's message says how to get it); raises before Ray starts."""
    from spatialrl.models.loader import resolve_model_path

    resolve_model_path(cfg.generation.model, "flux")
    if "vlm" in cfg.judges.judges:
        resolve_model_path(cfg.judges.vlm_model, "qwen")
    if "spatialscore" in cfg.judges.judges:
        from spatialrl.reward.model import read_checkpoint_meta

        read_checkpoint_meta(repo_path(cfg.judges.spatialscore))
    if cfg.generation.lora and not (repo_path(cfg.generation.lora) / "pytorch_lora_weights.safetensors").is_file():
        raise FileNotFoundError(f"--lora {cfg.generation.lora}: no pytorch_lora_weights.safetensors there; pass a "
                                "diffusers-format LoRA folder (jobs.grpo's RUN_DIR/final)")


def native_resolution(model: str) -> int:
    """The VAE's sample_size when it is a usable square size, else 512."""
    from spatialrl.models.loader import resolve_model_path

    vae = resolve_model_path(model, "flux") / "vae" / "config.json"
    size = json.loads(vae.read_text()).get("sample_size") if vae.is_file() else None
    return size if isinstance(size, int) and size >= 16 and size % 16 == 0 else 512


def sampler_config(cfg: EvaluateConfig):
    from spatialrl.flux.sampler import FluxSamplerConfig

    g = cfg.generation
    return FluxSamplerConfig(
        model=str(repo_path(g.model)) if repo_path(g.model).is_dir() else g.model,
        resolution=g.resolution or native_resolution(g.model), num_steps=g.steps, noise_level=g.noise_level,
        sde_steps=g.sde_steps, sde_type=g.sde_type, noise_block=g.noise_block,
        guidance=g.guidance, true_cfg_scale=g.true_cfg_scale, negative_prompt=g.negative_prompt,
        group_size=cfg.images_per_prompt, batch_size=g.batch_size, seed=g.seed, dtype=g.dtype, device=g.device,
        max_sequence_length=g.max_sequence_length,
    )


def save_images(root: Path, items: list, images: np.ndarray, k: int, variant: str) -> list[str]:
    """Each image in the benchmark's layout under root; DPG-Bench's four as one 2x2 grid. Returns the paths."""
    from PIL import Image

    write_layout_sidecars(root, items)
    paths = []
    for p, it in enumerate(items):
        group = images[p * k:(p + 1) * k]  # [K, H, W, 3]
        rels = [image_relpath(it, j, model_name=variant, images_per_prompt=k) for j in range(k)]
        if it.benchmark == "dpg":
            grid = np.concatenate([np.concatenate(group[:2], axis=1), np.concatenate(group[2:], axis=1)])  # [2H, 2W, 3]
            (root / rels[0]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(grid).save(root / rels[0])
        else:
            for j, rel in enumerate(rels):
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(group[j]).save(root / rel)
        paths += [str(Path("images") / variant / rel) for rel in rels]
    return paths


def settings_of(cfg: EvaluateConfig, argv: list[str], resolution: int, n_items: int) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parents[1]).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    import diffusers
    import torch
    import transformers

    return {
        "benchmark": cfg.benchmark, "command": "python -m jobs.evaluate " + " ".join(argv),
        "seeds": f"image (prompt p, sample k) uses seed {cfg.generation.seed} + p * {cfg.images_per_prompt} + k "
                 "(p = position among the evaluated prompts), "
                 + (f"SDE sampling at noise {cfg.generation.noise_level} on "
                    f"{cfg.generation.sde_steps or 'all'} steps (its noise seeded the same way)"
                    if cfg.generation.noise_level else "ODE sampling") + ", for base and LoRA alike",
        "resolution": resolution, "prompts_evaluated": n_items, "images_per_prompt": cfg.images_per_prompt,
        "git_commit": commit, "versions": {"python": platform.python_version(), "torch": str(torch.__version__),
                                           "diffusers": diffusers.__version__,
                                           "transformers": transformers.__version__},
        "config": to_dict(cfg),
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--benchmark", choices=BENCHMARKS)
    p.add_argument("--prompts", help="the benchmark's prompt file or folder")
    p.add_argument("--questions", help="DPG-Bench's CSV or TIIF-Bench's test_eval_prompts/ (found beside by default)")
    p.add_argument("--prompt-length", choices=PROMPT_LENGTHS, help="TIIF-Bench: short or long descriptions")
    p.add_argument("--subset", action="append", help="keep prompts of this category (repeatable)")
    p.add_argument("--model", help="Flux preset, hub id or diffusers folder")
    p.add_argument("--lora", help="diffusers-format LoRA folder, evaluated beside the base model")
    p.add_argument("--images-per-prompt", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--limit", type=int)
    p.add_argument("--judge", help="comma list of judges: spatialscore, verifier, vlm (default: per benchmark)")
    p.add_argument("--spatialscore", help="SpatialScore checkpoint folder for the spatialscore judge")
    p.add_argument("--vlm", help="Qwen2.5-VL for the VLM judge (preset, hub id or folder)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    args = p.parse_args(argv)
    cfg = job_config(EvaluateConfig, args, {
        "benchmark": args.benchmark, "prompts": args.prompts, "questions": args.questions,
        "prompt_length": args.prompt_length, "subset": args.subset, "limit": args.limit,
        "generation.model": args.model, "generation.lora": args.lora,
        "generation.images_per_prompt": args.images_per_prompt, "generation.seed": args.seed,
        "judges.judges": args.judge.split(",") if args.judge else None, "judges.spatialscore": args.spatialscore,
        "judges.vlm_model": args.vlm,
    })
    if isinstance(cfg, int):
        return cfg
    cfg.judges = dataclasses.replace(cfg.judges, judges=default_judges(cfg))
    try:
        cfg.judges.validate()
        items = select(load_benchmark(cfg.benchmark, repo_path(cfg.prompts), prompt_length=cfg.prompt_length,
                                      questions=cfg.questions), cfg.subset, cfg.limit)
        check_models(cfg)
        if (args.out / "scores.jsonl").exists() and not args.overwrite:
            raise ConfigError(f"{args.out} already holds an evaluation: pass --overwrite or another --out")
    except (ConfigError, BenchmarkFormatError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    k, scfg = cfg.images_per_prompt, sampler_config(cfg)
    print(f"{cfg.benchmark}: {len(items)} prompts x {k} images at {scfg.resolution} px; judges {cfg.judges.judges}")

    from actors.evaluate_pools import make_pools, run_pass, set_lora, shutdown
    from cluster.runtime import ray_session
    from spatialrl.flux.report import write_report
    from spatialrl.metrics import MetricsLogger

    t0 = time.time()
    variants = {}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.jsonl").unlink(missing_ok=True)  # --overwrite: this evaluation's numbers only
    metrics = MetricsLogger(args.out / "metrics.jsonl", run=f"evaluate/{cfg.benchmark}/{args.out.name}")
    with ray_session(cfg.cluster.address or None, cfg.cluster.num_cpus or None):
        gens, judges = make_pools(scfg, cfg.judges, cfg.cluster.generator, cfg.cluster.judge, uuid.uuid4().hex[:6])
        try:
            for variant in ("base", "lora") if cfg.generation.lora else ("base",):
                if variant == "lora":
                    set_lora(gens, str(repo_path(cfg.generation.lora)))
                t_pass = time.time()
                variants[variant] = run_pass(gens, judges, items, images_per_prompt=k, seed=cfg.generation.seed,
                                             chunk_prompts=cfg.chunk_prompts,
                                             noise_level=cfg.generation.noise_level)
                n = len(variants[variant][0])
                print(f"{variant}: {n} images judged ({time.time() - t0:.0f} s)")
                metrics.log(0, {f"eval/{variant}/images": n,
                                 f"eval/{variant}/images_per_s": n / max(time.time() - t_pass, 1e-9)})
        finally:
            shutdown(gens, judges)

        rows, images = [], {}
        for variant, (imgs, results) in variants.items():
            images[variant] = imgs
            paths = save_images(args.out / "images" / variant, items, imgs, k, variant)
            for i, res in enumerate(results):
                it = items[i // k]
                rows.append({"variant": variant, "benchmark": cfg.benchmark, "item_id": it.item_id,
                             "index": it.index, "k": i % k, "seed": cfg.generation.seed + i, "prompt": it.prompt,
                             "categories": it.categories, "file": paths[i],
                             **({"cell": i % k} if cfg.benchmark == "dpg" else {}),
                             "scores": res["scores"], "questions": res["questions"]})
        settings = settings_of(cfg, argv, scfg.resolution, len(items))
        (args.out / "settings.yaml").write_text(dump_yaml(cfg))
        summary = write_report(args.out, rows, images, settings, TABLE2_CATEGORIES.get(cfg.benchmark), cfg.top_n)
        for e in summary["table"]:
            if e["category"] == "all":
                cells = ", ".join(f"{v} {m:.3f}" for v, (m, _, _) in e["variants"].items())
                print(f"  {e['metric']}: {cells}")
                metrics.log(0, {f"eval/{v}/{e['metric']}": m for v, (m, _, _) in e["variants"].items()})
        print(summary["hacking"])
        print(f"seeds: {settings['seeds']}; settings in {args.out}/settings.yaml "
              f"(rerun: --config {args.out}/settings.yaml)")
        print(f"wrote {args.out}/report.html, report.md, scores.jsonl ({len(rows)} images) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
