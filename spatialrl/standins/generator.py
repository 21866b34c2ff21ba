"""Pretrain the toy Flux on the spatial world: a tiny VAE, then a tiny FluxTransformer2DModel by flow matching.

The output is a real diffusers FluxPipeline folder (CLIP + T5 text encoders, FlowMatchEulerDiscreteScheduler with
dynamic shift, AutoencoderKL, guidance-embedding FluxTransformer2DModel) that `FluxPipeline.from_pretrained` loads;
the job that runs it: `jobs/pretrain_generator.py`. It is the `tiny-pretrained` Flux (`assets/tiny-pretrained/flux`,
trained from `configs/generator_toy.yaml`): the paper's starting point (FLUX.1-dev) in miniature, meant to draw the
objects right and the relations imperfectly, for the demo's GRPO to improve.

What the shipped model draws, the stages that made it and the runs that did not work:
`assets/tiny-pretrained/flux/RECIPE.md`.

Stages (each a plain function, run top to bottom by `pretrain`):
1. data: `make_pair(i, seed, "train", world)` of `data_pipeline.pairs`, keeping the perfect image and its
   prompt, i.e. the same PromptWriter text and world as `jobs.build_dataset` writes to prompts_*.jsonl;
2. text: the tiny fixture's CLIP, and a T5 with the fixture's shape whose tokenizer knows every word of the
   world's prompts (the fixture's T5 spells words like "rhombus" letter by letter: 2-3x longer sequences);
   both random and frozen, like the frozen text encoders of real Flux (or the T5 trained with the transformer,
   `text.t5_lr`, with an auxiliary read-out of each object's side, `text.role_loss`: see TextConfig);
3. VAE: `diffusers.AutoencoderKL`, 16 latent channels, MSE + a small KL term; its reconstructions are checked
   with the pixel verifier before anything else (object presence, relations); then its latent mean and std
   over the training images become `shift_factor` / `scaling_factor` in its config, as in Flux;
4. transformer: rectified flow matching in Flux's convention, x_t = (1 - t) x0 + t noise, target velocity
   noise - x0, t from a logit-normal shifted by the same mu(image tokens) the sampler uses; prompts encoded
   exactly as `FluxPipeline.encode_prompt` does at `text.max_sequence_length` tokens; EMA weights are saved;
5. save: `FluxPipeline.save_pretrained` (safetensors, float16 storage; loads into float32).

Departures from Flux: the VAE downsamples 4x (two down blocks), not 8x, because a 0.3M-parameter 8x VAE loses
the colours (measured: RECIPE.md); FluxPipeline and FluxSampler
read the factor from the VAE's block count. Guidance is an input the toy was trained with at one value (3.5):
it is not guidance-distilled, so other values are out of distribution; sample it with true classifier-free
guidance instead (`cond_dropout` trains the unconditional model it needs). Text is padded to
`text.max_sequence_length` (96) tokens, not 512: sample with the same `max_sequence_length` (Flux attends to
the padding, so another length shifts the conditioning).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from data_pipeline import world as spatial_world
from data_pipeline.world import WorldConfig
from spatialrl.config import ConfigError, repo_path, to_dict
from spatialrl.flux.math import calculate_shift, latent_image_ids, pack_latents

SAVE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


# ------------------------------------------------------------------------------------------------- configs


@dataclass
class GenDataConfig:
    world_preset: str = "configs/dataset_easy.yaml"  # the `world` section of this dataset preset
    num_images: int = 16000  # distinct training scenes (make_pair ids 0..N-1, split "train")
    seed: int = 1  # world seed; the evaluation dataset (jobs.build_dataset) uses another (default 0)
    eval_images: int = 200  # held-out scenes (split "val") for the VAE check and the in-job sample check

    def validate(self) -> None:
        if self.num_images < 1 or self.eval_images < 1:
            raise ConfigError("data.num_images and data.eval_images must be >= 1")
        load_world_preset(self.world_preset)  # raises ConfigError naming the file or the bad world value


@dataclass
class TextConfig:
    max_sequence_length: int = 96  # T5 tokens; covers every easy-world prompt (longest seen: 95)
    t5_layers: int = 2
    t5_dim: int = 96
    # Relative-position bias of the frozen T5's 4 heads toward the previous token, the next token, itself and
    # the 2-7 tokens before (0 = a plain random T5). See `build_text_encoders`.
    local_attention_bias: float = 10.0
    # Train the T5 with the transformer (by the flow loss, through the text states), at t5_lr (0 = frozen T5, as
    # in FLUX.1). Flux's text tokens carry no positions, so which side of the image an object belongs on must be
    # in its own T5 states; a linear probe reads it from the shipped frozen T5 only 58% (horizontal) / 62%
    # (vertical) of the time (bench/t5_binding_probe.py). role_loss adds a linear read-out of exactly that
    # (each named object's side per axis, from the mean state over its mentions) as an auxiliary loss on the T5;
    # the read-out is not part of the saved pipeline.
    t5_lr: float = 0.0
    role_loss: float = 0.0

    def validate(self) -> None:
        if self.t5_lr < 0 or self.role_loss < 0:
            raise ConfigError("text.t5_lr and text.role_loss must be >= 0")
        if self.role_loss > 0 and self.t5_lr == 0:
            raise ConfigError("text.role_loss > 0 trains the T5: set text.t5_lr > 0 too (e.g. 3e-4)")
        if not 8 <= self.max_sequence_length <= 512:
            raise ConfigError(f"text.max_sequence_length={self.max_sequence_length}: use 8..512 (Flux's T5 takes 512)")
        if self.t5_layers < 1 or self.t5_dim < 8 or self.t5_dim % 4:
            raise ConfigError("text.t5_layers must be >= 1 and text.t5_dim a multiple of 4 (>= 8; 4 heads)")
        if self.local_attention_bias < 0:
            raise ConfigError("text.local_attention_bias must be >= 0 (0 = a plain random T5)")


@dataclass
class VAEConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 32])  # 3 blocks = 4x downsampling
    layers_per_block: int = 1
    norm_num_groups: int = 8
    kl_weight: float = 1e-4  # on the per-element KL; small, as in SD/Flux VAEs
    steps: int = 650
    batch_size: int = 32
    lr: float = 2e-3
    min_presence: float = 0.9  # stop before the transformer if reconstructions fall below this (verifier)

    def validate(self) -> None:
        ch = self.block_out_channels
        if not 1 <= len(ch) <= 4:
            raise ConfigError(f"vae.block_out_channels={ch}: give 1-4 blocks (blocks - 1 = number of 2x downsamplings)")
        if any(c < 1 or c % self.norm_num_groups for c in ch):
            raise ConfigError(f"vae.block_out_channels={ch}: each must be a positive multiple of vae.norm_num_groups={self.norm_num_groups}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.kl_weight < 0:
            raise ConfigError("vae.steps and vae.batch_size must be >= 1, vae.lr > 0, vae.kl_weight >= 0")
        if not 0 <= self.min_presence <= 1:
            raise ConfigError("vae.min_presence must be in [0, 1]")


@dataclass
class TransformerConfig:
    num_layers: int = 2  # double-stream blocks
    num_single_layers: int = 2
    attention_head_dim: int = 32
    num_attention_heads: int = 3
    axes_dims_rope: list[int] = field(default_factory=lambda: [8, 12, 12])  # sums to attention_head_dim
    steps: int = 9000
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 200
    min_lr_frac: float = 0.1  # cosine decay to this fraction of lr
    weight_decay: float = 0.0
    ema_decay: float = 0.999  # the saved weights are the EMA (0 = save the raw weights)
    logit_mean: float = 0.0  # t = shift(sigmoid(N(logit_mean, logit_std))), shift = exp(mu(image tokens))
    logit_std: float = 1.0
    guidance: float = 3.5  # the guidance input during training (constant: not guidance-distilled)
    grad_clip: float = 1.0
    cond_dropout: float = 0.0  # fraction of samples trained on the empty prompt (classifier-free guidance)
    init: str = "dit"  # "dit": adaLN-Zero (blocks start as identity, output 0), xavier linears; "default": diffusers'
    zero_pooled: bool = True  # start with the CLIP pooled vector ignored (its projection's last layer at 0)

    def validate(self) -> None:
        if self.num_layers < 0 or self.num_single_layers < 0 or self.num_layers + self.num_single_layers < 1:
            raise ConfigError("transformer.num_layers + transformer.num_single_layers must be >= 1")
        if len(self.axes_dims_rope) != 3 or sum(self.axes_dims_rope) != self.attention_head_dim or any(
            a % 2 or a < 2 for a in self.axes_dims_rope
        ):
            raise ConfigError(
                f"transformer.axes_dims_rope={self.axes_dims_rope}: three even sizes summing to "
                f"attention_head_dim={self.attention_head_dim} (Flux: 16 + 56 + 56 = 128)"
            )
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("transformer.steps and transformer.batch_size must be >= 1, transformer.lr > 0")
        if self.init not in ("dit", "default"):
            raise ConfigError(f"transformer.init={self.init!r}: choose dit or default")
        if not 0 <= self.ema_decay < 1 or not 0 <= self.min_lr_frac <= 1 or self.logit_std <= 0:
            raise ConfigError("transformer.ema_decay in [0, 1), min_lr_frac in [0, 1], logit_std > 0")
        if not 0 <= self.cond_dropout < 1:
            raise ConfigError(f"transformer.cond_dropout={self.cond_dropout}: a fraction in [0, 1) (0.1 is usual)")


@dataclass
class SampleCheckConfig:
    """A quick verifier check of the saved pipeline at the end of the job (the full one: jobs.sample)."""

    prompts: int = 32  # held-out prompts (0 = skip)
    num_steps: int = 10
    noise_levels: list[float] = field(default_factory=lambda: [0.0, 0.7])
    true_cfg_scales: list[float] = field(default_factory=lambda: [1.0, 3.0])  # 1 = no classifier-free guidance

    def validate(self) -> None:
        if self.prompts < 0 or self.num_steps < 1 or any(a < 0 for a in self.noise_levels):
            raise ConfigError("sample_check.prompts >= 0, sample_check.num_steps >= 1, noise levels >= 0")
        if not self.true_cfg_scales or any(s < 1 for s in self.true_cfg_scales):
            raise ConfigError(f"sample_check.true_cfg_scales={self.true_cfg_scales}: scales >= 1 (1 = off), e.g. [1, 3]")


@dataclass
class GeneratorPretrainConfig:
    out: str = "runs/pretrain_generator"
    overwrite: bool = False
    seed: int = 0  # model init and training randomness
    num_threads: int = 1  # torch threads (tiny models gain little from more; the machine is shared)
    log_every: int = 50
    save_dtype: str = "float16"  # safetensors storage; the loader upcasts to float32
    data: GenDataConfig = field(default_factory=GenDataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    sample_check: SampleCheckConfig = field(default_factory=SampleCheckConfig)
    # Continue from a pipeline folder written by this job (e.g. assets/tiny-pretrained/flux): its VAE (not
    # retrained: the transformer's latents depend on it, scaling and shift factors included), its text encoders
    # and tokenizers, and its transformer as the starting weights (a fresh optimizer, warm-up and schedule).
    # The `vae`, `text` and transformer-architecture settings are then ignored. "" = train from scratch.
    init_from: str = ""

    def validate(self) -> None:
        if self.init_from and not (repo_path(self.init_from) / "transformer" / "config.json").is_file():
            raise ConfigError(f"init_from={self.init_from!r} is not a FluxPipeline folder (no transformer/config.json): "
                              "point it at a folder this job wrote (e.g. assets/tiny-pretrained/flux), or leave it empty")
        if self.save_dtype not in SAVE_DTYPES:
            raise ConfigError(f"save_dtype={self.save_dtype!r}: choose one of {list(SAVE_DTYPES)}")
        if self.num_threads < 1 or self.log_every < 1:
            raise ConfigError("num_threads and log_every must be >= 1")


def load_world_preset(path: str) -> WorldConfig:
    """`data_pipeline.world.load_world_preset`, checked for what Flux needs (a canvas divisible by 16)."""
    cfg = spatial_world.load_world_preset(path)
    if cfg.canvas % 16:
        raise ConfigError(f"{path}: world.canvas={cfg.canvas} must be a multiple of 16")
    return cfg


# ---------------------------------------------------------------------------------------------------- data


@dataclass
class Examples:
    images: np.ndarray  # [N, H, W, 3] uint8
    prompts: list[str]
    structured: list[dict]  # {"objects": [...], "relations": [...]} per image


def make_examples(world: WorldConfig, n: int, seed: int, split: str) -> Examples:
    """The perfect images and prompts of `make_pair(i, seed, split)` for i < n (the dataset's own pairs)."""
    from PIL import Image

    from data_pipeline.pairs import make_pair

    images, prompts, structured = [], [], []
    for i in range(n):
        row = make_pair(i, seed, split, world)
        images.append(np.asarray(Image.open(io.BytesIO(row["chosen_image"])).convert("RGB")))
        prompts.append(row["prompt"])
        info = json.loads(row["relations"])
        structured.append({"objects": info["objects"], "relations": info["relations"]})
    return Examples(np.stack(images), prompts, structured)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 `[N, H, W, 3]` -> float `[N, 3, H, W]` in [-1, 1] (the VAE's range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def verifier_scores(images: np.ndarray, structured: list[dict]) -> dict[str, float]:
    """Object presence, relation accuracy and the fraction of images with everything right (pixel verifier).

    `colour_found`: the fraction of named objects whose colour covers more than a speck, whatever its shape; the
    gap to `object_presence` is objects drawn in the right colour with a shape the verifier does not recognise.
    """
    from spatialrl.flux.evaluation import verify_images

    summary, _ = verify_images(structured, images, k=1)
    return {key: summary[key] for key in ("object_presence", "relation_accuracy", "all_correct", "colour_found")}


# ---------------------------------------------------------------------------------------------------- text


def world_corpus() -> list[str]:
    """Every word the world's prompts use (templates, synonyms, colours, backgrounds), plus the fixture corpus."""
    from data_pipeline import prompts
    from data_pipeline.world import BACKGROUNDS, PALETTE
    from spatialrl.models.fixtures import spatial_corpus

    lines = list(spatial_corpus())
    lines += [" ".join(PALETTE), " ".join(BACKGROUNDS), " ".join(w for ws in prompts.SHAPE_WORDS.values() for w in ws)]
    lines += prompts.INTROS + prompts.COUNT_INTROS + prompts.LEFTOVER + prompts.LINKS + prompts.OUTROS
    lines += prompts.NUMBER_WORDS + [w for ws in prompts.BG_WORDS.values() for w in ws]
    lines += [t for ts in prompts.RELATION_TEMPLATES.values() for t in ts]
    lines = [re.sub(r"\{\w+\}", " ", line) for line in lines]  # template slots are not words
    return lines + [line[:1].upper() + line[1:] for line in lines] + [line[:1].lower() + line[1:] for line in lines]


def build_t5_tokenizer(corpus: list[str]):
    """A T5 Unigram tokenizer with every corpus word as one piece (as `fixtures._build_t5_tokenizer` builds it,
    on another corpus): unseen words still fall back to characters."""
    from transformers import T5Tokenizer

    words, chars = Counter(), Counter()
    for line in corpus:
        for word in re.findall(r"\w+|[^\w\s]", line):
            words["\u2581" + word] += 1
            chars.update(word)
    total = sum(words.values()) + sum(chars.values())
    pieces = [("\u2581", math.log(1 / total))]
    pieces += [(w, math.log(n / total)) for w, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))]
    # The same words without the word boundary, for words glued to punctuation ("three-sided" -> "-", "sided").
    pieces += [(w[1:], math.log(n / total) - 2.0) for w, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))
               if len(w) > 2]
    pieces += [(c, math.log(1 / total) - 5.0) for c in sorted(chars)]
    pieces += [("\u2581" + c, math.log(1 / total) - 5.0) for c in sorted(chars) if "\u2581" + c not in words]
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]  # ids 0, 1, 2 as in T5
    return T5Tokenizer(vocab=specials + pieces, extra_ids=0, model_max_length=512)


def _round_trip(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Round the weights through the storage dtype now, so what follows sees exactly the weights that ship."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.to(dtype).float())
    return module


# T5's bidirectional relative-position buckets (8 buckets, max distance 32): 0 = same token, 1 = previous,
# 5 = next, 2 = 2-7 tokens before. One per head of the local-attention prior.
LOCAL_BUCKETS = (1, 5, 0, 2)


def build_text_encoders(cfg: TextConfig, seed: int):
    """(clip, clip_tokenizer, t5, t5_tokenizer): the tiny fixture's CLIP, and a T5 encoder (the fixture's kind,
    wider) with a world-vocabulary tokenizer. Random, frozen, in eval mode.

    A random T5 mixes tokens by content alone (its relative-position bias starts near 0), so the state of
    "rhombus" in "a red rhombus" hardly knows it is red: a linear probe reads the colour of a shape word from
    it 24-33% of the time (10 colours; d 32-64), and the Flux transformer, whose text tokens carry no
    positions, cannot bind colours to shapes. A trained T5 attends locally; we give the frozen one that prior
    by hand: each head's bias is `local_attention_bias` on one relative position (previous, next, same, 2-7
    before), 0 elsewhere. The probe then reads the colour 96% of the time (d 96, bias 10).
    """
    from transformers import T5Config, T5EncoderModel

    from spatialrl.models.loader import load_flux_pipeline

    tiny = load_flux_pipeline("tiny")
    clip, clip_tokenizer = tiny.text_encoder, tiny.tokenizer
    t5_tokenizer = build_t5_tokenizer(world_corpus())
    base = tiny.text_encoder_2.config
    torch.manual_seed(seed)
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tokenizer), d_model=cfg.t5_dim, d_kv=cfg.t5_dim // 4, d_ff=2 * cfg.t5_dim,
        num_layers=cfg.t5_layers, num_heads=4, feed_forward_proj=base.feed_forward_proj,
        relative_attention_num_buckets=8, relative_attention_max_distance=32,  # as the fixture; LOCAL_BUCKETS
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    if cfg.local_attention_bias:
        with torch.no_grad():
            bias = t5.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight  # [buckets, heads]
            bias.zero_()
            for head, bucket in enumerate(LOCAL_BUCKETS):
                bias[bucket, head] = cfg.local_attention_bias
    for m in (clip, t5):
        m.requires_grad_(False).eval()
    return clip, clip_tokenizer, t5, t5_tokenizer


@contextlib.contextmanager
def quiet_truncation_warnings():
    """CLIP keeps 77 tokens and most world prompts are longer: diffusers warns with the cut text for every batch."""
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    before = dlogging.get_verbosity(), tlogging.get_verbosity()
    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    try:
        yield
    finally:
        dlogging.set_verbosity(before[0])
        tlogging.set_verbosity(before[1])


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], max_sequence_length: int, batch_size: int = 256):
    """T5 states `[N, L, D]` and CLIP pooled `[N, Dp]`, through `FluxPipeline.encode_prompt` (the sampler's path)."""
    embeds, pooled = [], []
    with quiet_truncation_warnings():
        for start in range(0, len(prompts), batch_size):
            e, p, _ = pipe.encode_prompt(
                prompt=prompts[start:start + batch_size], prompt_2=None, device=torch.device("cpu"),
                num_images_per_prompt=1, max_sequence_length=max_sequence_length,
            )
            embeds.append(e)
            pooled.append(p)
    return torch.cat(embeds), torch.cat(pooled)


def t5_token_ids(tokenizer, prompts: list[str], max_sequence_length: int) -> torch.Tensor:
    """`[N, L]` T5 ids exactly as `FluxPipeline._get_t5_prompt_embeds` makes them (padded to the length, cut)."""
    with quiet_truncation_warnings():
        return tokenizer(prompts, padding="max_length", max_length=max_sequence_length, truncation=True,
                         return_tensors="pt").input_ids


ROLE_SIDE = {"left_of": (0, -1), "right_of": (0, 1), "above": (1, -1), "below": (1, 1)}  # axis, subject's sign


def role_targets(tokenizer, ids: torch.Tensor, structured: list[dict], max_objects: int = 9):
    """Where each named object is mentioned, and the side it belongs on per axis.

    Returns (mentions `[N, O, L]` float: 1/count at the object's colour token(s) and the token after each mention,
    labels `[N, O, 2]` long: 1 = right / below, 0 = left / above, -1 = no stated side or conflicting sides).
    """
    n, length = ids.shape
    mentions = torch.zeros(n, max_objects, length)
    labels = torch.full((n, max_objects, 2), -1, dtype=torch.long)
    for b, row in enumerate(structured):
        seq = ids[b].tolist()
        votes: dict[tuple[int, int], set[int]] = {}
        for r in row["relations"]:
            if r["type"] in ROLE_SIDE:
                axis, sign = ROLE_SIDE[r["type"]]
                votes.setdefault((r["subject"], axis), set()).add(sign)
                votes.setdefault((r["object"], axis), set()).add(-sign)
        for (obj, axis), signs in votes.items():
            if len(signs) == 1 and obj < max_objects:
                labels[b, obj, axis] = 1 if signs.pop() > 0 else 0
        for obj, o in enumerate(row["objects"][:max_objects]):
            colour = tokenizer(o["colour"], add_special_tokens=False).input_ids
            for i in range(length - len(colour)):
                if seq[i:i + len(colour)] == colour:
                    mentions[b, obj, i + len(colour) - 1] = 1.0
                    mentions[b, obj, i + len(colour)] = 1.0
        mentions[b] /= mentions[b].sum(-1, keepdim=True).clamp(min=1.0)
    labels[mentions.sum(-1) == 0] = -1  # never found in the tokens: no target
    return mentions, labels


@torch.no_grad()
def role_features(t5, tokenizer, prompts: list[str], structured: list[dict], max_sequence_length: int):
    """(features `[M, D]`, labels `[M]`, axis `[M]`) for every (prompt, object, axis) with a stated side: the
    object's mean T5 state over its mentions, as the role read-out sees it."""
    feats, labels, axes = [], [], []
    for start in range(0, len(prompts), 128):
        ids = t5_token_ids(tokenizer, prompts[start:start + 128], max_sequence_length)
        mentions, lab = role_targets(tokenizer, ids, structured[start:start + 128])
        f = torch.einsum("bol,bld->bod", mentions, t5(input_ids=ids)[0])  # [B, O, D]
        for axis in (0, 1):
            keep = lab[:, :, axis] >= 0
            feats.append(f[keep])
            labels.append(lab[:, :, axis][keep])
            axes.append(torch.full((int(keep.sum()),), axis))
    return torch.cat(feats), torch.cat(labels), torch.cat(axes)


def linear_probe_accuracy(x_train, y_train, x_test, y_test, steps: int = 600, weight_decay: float = 1e-3) -> float:
    """Held-out accuracy of a logistic regression (standardised features, Adam, full batch)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    w = torch.zeros(a.shape[1], requires_grad=True)
    c = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, c], lr=0.05, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(a @ w + c, y_train.float()).backward()
        opt.step()
    with torch.no_grad():
        return float(((b @ w + c > 0).long() == y_test).float().mean())


def role_probe_accuracy(t5, tokenizer, train: Examples, held: Examples, max_sequence_length: int,
                        n_train: int = 2000) -> dict[str, float]:
    """How well a fresh linear probe reads each object's side from the T5 states (fit on training prompts, scored
    on the held-out ones), per axis: what the Flux transformer has to work with."""
    xa, ya, aa = role_features(t5, tokenizer, train.prompts[:n_train], train.structured[:n_train], max_sequence_length)
    xb, yb, ab = role_features(t5, tokenizer, held.prompts, held.structured, max_sequence_length)
    out = {}
    for axis, name in ((0, "horizontal"), (1, "vertical")):
        out[name] = round(linear_probe_accuracy(xa[aa == axis], ya[aa == axis], xb[ab == axis], yb[ab == axis]), 4)
        out[f"{name}_n"] = int((ab == axis).sum())
    return out


class TextTrainer:
    """The T5 trained with the transformer: its ids per training prompt, the empty prompt's ids, the role
    read-out and its targets, and an EMA copy (the one saved, as for the transformer)."""

    def __init__(self, t5, tokenizer, prompts: list[str], structured: list[dict], cfg: TextConfig, ema_decay: float):
        import copy

        self.t5, self.cfg = t5.requires_grad_(True).eval(), cfg  # eval: no dropout, still trained
        self.ids = t5_token_ids(tokenizer, prompts, cfg.max_sequence_length)  # [N, L]
        self.empty = t5_token_ids(tokenizer, [""], cfg.max_sequence_length)  # [1, L]
        self.mentions, self.labels = role_targets(tokenizer, self.ids, structured)
        self.head = torch.nn.Linear(t5.config.d_model, 2)  # per-axis logit: right / below
        self.ema = copy.deepcopy(t5).requires_grad_(False).eval() if ema_decay > 0 else None

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.t5.parameters()) + list(self.head.parameters()), "weight_decay": 0.0,
                 "lr": self.cfg.t5_lr, "t5": True}]

    def encode(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 states `[B, L, D]` of these prompts, the role loss and accuracy as a 3-vector)."""
        states = self.t5(input_ids=self.ids[idx])[0]
        if self.cfg.role_loss == 0:
            return states, torch.zeros(3)
        feats = torch.einsum("bol,bld->bod", self.mentions[idx], states)  # [B, O, D]
        logits = self.head(feats)  # [B, O, 2]
        lab = self.labels[idx]
        keep = lab >= 0
        if not bool(keep.any()):
            return states, torch.zeros(3)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], lab[keep].float())
        acc = ((logits[keep] > 0).long() == lab[keep]).float().mean()
        return states, torch.stack([loss, acc.detach(), torch.tensor(float(keep.sum()))])

    def empty_states(self) -> torch.Tensor:
        return self.t5(input_ids=self.empty)[0][0]  # [L, D]

    def update_ema(self, d: float) -> None:
        if self.ema is not None:
            with torch.no_grad():
                for pe, p in zip(self.ema.parameters(), self.t5.parameters()):
                    pe.lerp_(p, 1 - d)

    def final(self):
        return (self.ema if self.ema is not None else self.t5.eval()).requires_grad_(False)


# ----------------------------------------------------------------------------------------------------- VAE


def build_vae(cfg: VAEConfig, sample_size: int, seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, latent_channels=16, norm_num_groups=cfg.norm_num_groups,
        sample_size=sample_size, scaling_factor=1.0, shift_factor=0.0,
        use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False,
    )


def _lr_at(step: int, steps: int, lr: float, warmup: int, min_frac: float) -> float:
    """Linear warm-up, then cosine decay to min_frac * lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(vae, pixels: torch.Tensor, cfg: VAEConfig, seed: int, log: Callable[[dict], None], log_every: int):
    """MSE + kl_weight * per-element KL on random batches; returns the VAE in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    vae.train()
    t0, c0 = time.time(), time.process_time()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg.steps, cfg.lr, min(50, cfg.steps // 10), 0.05)
        x = pixels[torch.randint(0, len(pixels), (cfg.batch_size,), generator=gen)]  # [B, 3, H, W]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)  # [B, 16, h, w]
        mse = (vae.decode(z).sample - x).pow(2).mean()
        kl = posterior.kl().mean() / z[0].numel()
        loss = mse + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            log({"stage": "vae", "step": step + 1, "loss/mse": round(mse.item(), 6), "loss/kl": round(kl.item(), 4),
                 "time_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)})
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Posterior means `[N, 16, h, w]` (unscaled)."""
    return torch.cat([vae.encode(pixels[i:i + batch_size]).latent_dist.mode() for i in range(0, len(pixels), batch_size)])


@torch.no_grad()
def reconstruct(vae, pixels: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    out = [vae.decode(vae.encode(pixels[i:i + batch_size]).latent_dist.mode()).sample for i in range(0, len(pixels), batch_size)]
    return to_uint8(torch.cat(out))


def set_latent_factors(vae, latents: torch.Tensor) -> tuple[float, float]:
    """Flux's normalisation, fitted: z_model = (z - shift_factor) * scaling_factor has mean 0 and std 1."""
    shift = float(latents.mean())
    scale = float(1.0 / latents.std())
    vae.register_to_config(shift_factor=round(shift, 6), scaling_factor=round(scale, 6))
    return shift, scale


# --------------------------------------------------------------------------------------------- transformer


def build_transformer(cfg: TransformerConfig, text_dim: int, pooled_dim: int, seed: int):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=cfg.num_layers, num_single_layers=cfg.num_single_layers,
        attention_head_dim=cfg.attention_head_dim, num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=text_dim, pooled_projection_dim=pooled_dim, guidance_embeds=True,
        axes_dims_rope=tuple(cfg.axes_dims_rope),
    )
    init_transformer(model, cfg.init, cfg.zero_pooled)
    return model


def init_transformer(transformer, init: str, zero_pooled: bool) -> None:
    """DiT's initialisation (Peebles & Xie 2023, adaLN-Zero) for a fresh FluxTransformer2DModel, in place.

    diffusers builds Flux for loading trained weights, so its fresh init is generic. adaLN-Zero: xavier-uniform
    linears with zero bias, N(0, 0.02) timestep/guidance MLPs, and zero adaLN modulations and output projection,
    so every block starts as the identity and the model's first prediction is 0. `zero_pooled` zeroes the last
    layer of the CLIP pooled-vector projection: our random CLIP's pooled vector is a per-prompt random vector
    added to the timestep embedding that conditions every layer; starting at 0 lets training take it in only
    as far as it helps.
    """
    if init == "dit":
        for name, module in transformer.named_modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
        for emb in (transformer.time_text_embed.timestep_embedder, getattr(transformer.time_text_embed, "guidance_embedder", None)):
            if emb is not None:
                for lin in (emb.linear_1, emb.linear_2):
                    torch.nn.init.normal_(lin.weight, std=0.02)
        for name, module in transformer.named_modules():
            if isinstance(module, torch.nn.Linear) and (name.endswith(("norm1.linear", "norm1_context.linear", "norm.linear"))
                                                        or name in ("norm_out.linear", "proj_out")):
                torch.nn.init.zeros_(module.weight)
                torch.nn.init.zeros_(module.bias)
    if zero_pooled:
        last = transformer.time_text_embed.text_embedder.linear_2
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)


def sample_sigmas(n: int, cfg: TransformerConfig, mu: float, gen: torch.Generator) -> torch.Tensor:
    """Training times `[n]`: logit-normal, then Flux's exponential shift by mu (the sampler's schedule shift)."""
    s = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=gen))
    return math.exp(mu) / (math.exp(mu) + (1 / s - 1))


def train_transformer(
    transformer, latents: torch.Tensor, embeds: torch.Tensor, pooled: torch.Tensor, cfg: TransformerConfig,
    seed: int, log: Callable[[dict], None], log_every: int, uncond: tuple[torch.Tensor, torch.Tensor] | None = None,
    on_log: Callable[[int, torch.nn.Module], None] | None = None, text: TextTrainer | None = None,
):
    """Rectified flow matching on packed latents `[N, S, 64]`; returns the EMA copy (or the raw model).

    `uncond` = the empty prompt's (T5 states, CLIP pooled), used for `cond_dropout`; `on_log(step, model)` is
    called at every log step with the model that would be saved (e.g. to sample it mid-run). With `text` (a
    TextTrainer) the T5 states are computed per batch and the T5 is trained too (`embeds` is then unused)."""
    import copy

    if cfg.cond_dropout > 0 and uncond is None:
        raise ValueError("transformer.cond_dropout > 0 needs `uncond` (the empty prompt's T5 states and pooled vector)")
    gen = torch.Generator().manual_seed(seed)
    n, seq_len, _ = latents.shape
    side = int(math.isqrt(seq_len))
    img_ids = latent_image_ids(side, side)  # [S, 3]
    txt_ids = torch.zeros(embeds.shape[1], 3)  # [L, 3], as FluxPipeline.encode_prompt makes them
    mu = calculate_shift(seq_len)
    ema = copy.deepcopy(transformer).requires_grad_(False).eval() if cfg.ema_decay > 0 else None
    decay_params = [p for name, p in transformer.named_parameters() if p.ndim >= 2 and "embed" not in name]
    other = [p for name, p in transformer.named_parameters() if not (p.ndim >= 2 and "embed" not in name)]
    groups = [{"params": decay_params, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups + (text.param_groups() if text else []), lr=cfg.lr, betas=(0.9, 0.99))
    transformer.train()
    guidance = torch.full((cfg.batch_size,), cfg.guidance)
    order = torch.randperm(n, generator=gen)
    pos, t0, c0, running = 0, time.time(), time.process_time(), []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            base = text.cfg.t5_lr if group.get("t5") else cfg.lr
            group["lr"] = _lr_at(step, cfg.steps, base, cfg.warmup_steps, cfg.min_lr_frac)
        if pos + cfg.batch_size > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        x0 = latents[idx]  # [B, S, 64]
        role = torch.zeros(3)
        if text is not None:
            emb, role = text.encode(idx)  # [B, L, D] with grad into the T5
            empty = text.empty_states() if cfg.cond_dropout > 0 else None
        else:
            emb, empty = embeds[idx], uncond[0] if uncond is not None else None  # [B, L, D]
        pool = pooled[idx]  # [B, Dp]
        if cfg.cond_dropout > 0:
            drop = torch.rand(len(idx), generator=gen) < cfg.cond_dropout  # [B]
            emb = torch.where(drop[:, None, None], empty, emb)
            pool = torch.where(drop[:, None], uncond[1], pool)
        noise = torch.randn(x0.shape, generator=gen)
        t = sample_sigmas(len(idx), cfg, mu, gen)  # [B]
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        v = transformer(
            hidden_states=xt, timestep=t, guidance=guidance[: len(idx)], pooled_projections=pool,
            encoder_hidden_states=emb, txt_ids=txt_ids, img_ids=img_ids, return_dict=False,
        )[0]  # [B, S, 64]
        loss = (v - (noise - x0)).pow(2).mean()
        total = loss + (text.cfg.role_loss * role[0] if text is not None and text.cfg.role_loss > 0 else 0.0)
        opt.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(transformer.parameters(), cfg.grad_clip)
        if text is not None:
            torch.nn.utils.clip_grad_norm_(text.t5.parameters(), cfg.grad_clip)
        opt.step()
        d = min(cfg.ema_decay, (1 + step) / (10 + step))
        if ema is not None:
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), transformer.parameters()):
                    pe.lerp_(p, 1 - d)
        if text is not None:
            text.update_ema(d)
        r0, r1, r2 = (float(v) for v in role.detach())
        running.append([loss.item(), r0, r1 * r2, r2])
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            r = np.array(running)
            entry = {"stage": "transformer", "step": step + 1, "loss/flow": round(float(r[:, 0].mean()), 5),
                     "grad_norm": round(float(grad_norm), 3), "lr": round(opt.param_groups[0]["lr"], 7),
                     "time_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
            if text is not None and text.cfg.role_loss > 0:
                entry["loss/role"] = round(float(r[:, 1].mean()), 4)
                entry["role_accuracy"] = round(float(r[:, 2].sum() / max(r[:, 3].sum(), 1)), 4)  # training batches
            log(entry)
            running = []
            if on_log is not None:
                on_log(step + 1, ema if ema is not None else transformer)
    return (ema if ema is not None else transformer.eval()).requires_grad_(False)


# ---------------------------------------------------------------------------------------------------- save


def build_scheduler():
    """FLUX.1-dev's scheduler config (dynamic shift by image tokens), as the tiny fixture has it."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )


def save_pipeline(out_dir: Path, *, vae, transformer, clip, clip_tokenizer, t5, t5_tokenizer, dtype: torch.dtype) -> Path:
    """A FluxPipeline folder (model_index.json + one subfolder per component), weights as safetensors.

    The transformer and the VAE are stored in `dtype` (diffusers loads them as float32 unless told otherwise);
    the text encoders stay float32 (0.3 MB), because transformers loads a checkpoint in its stored dtype, and a
    float16 CLIP next to a float32 transformer would break a plain `FluxPipeline.from_pretrained(dir)`.
    """
    import copy

    from diffusers import FluxPipeline

    parts = {"vae": copy.deepcopy(vae).to(dtype), "transformer": copy.deepcopy(transformer).to(dtype)}
    pipe = FluxPipeline(scheduler=build_scheduler(), text_encoder=clip, tokenizer=clip_tokenizer, text_encoder_2=t5,
                        tokenizer_2=t5_tokenizer, **parts)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    for part in parts:  # a model loaded from a folder (init_from) records that folder; it is no part of this one
        config = Path(out_dir) / part / "config.json"
        fields = json.loads(config.read_text())
        if fields.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    return out_dir


def load_pipeline_parts(folder: Path, canvas: int) -> dict[str, Any]:
    """The components of a pipeline folder this job wrote, float32 and trainable where they were trained."""
    from spatialrl.models.loader import load_flux_pipeline

    pipe = load_flux_pipeline(str(folder))
    if pipe.vae.config.sample_size != canvas:
        raise ConfigError(f"init_from={folder}: its VAE was trained at {pipe.vae.config.sample_size} px, the world draws "
                          f"{canvas} px images")
    for m in (pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
        m.requires_grad_(False).eval()
    return {"clip": pipe.text_encoder, "clip_tokenizer": pipe.tokenizer, "t5": pipe.text_encoder_2,
            "t5_tokenizer": pipe.tokenizer_2, "vae": pipe.vae, "transformer": pipe.transformer.requires_grad_(True)}


def folder_mb(path: Path) -> float:
    """Size of the pipeline's weights and configs (the subfolders), in MB."""
    return sum(f.stat().st_size for d in PIPELINE_PARTS for f in (Path(path) / d).rglob("*") if f.is_file()) / 1e6


# What save_pipeline writes; the job replaces exactly these on --overwrite (RECIPE.md and the like stay).
PIPELINE_PARTS = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae")
PIPELINE_FILES = ("model_index.json",)


# ------------------------------------------------------------------------------------------------ the recipe


def sample_settings(configs: list, prompts: list[str], seed: int = 0):
    """Yield `(config, images [N, H, W, 3], seconds)`: one image per prompt under each FluxSamplerConfig, from one
    loaded pipeline (the configs may differ in how they sample, not in the model, dtype or device they load)."""
    from spatialrl.flux.sampler import FluxSampler

    sampler = None
    for scfg in configs:
        scfg.validate()
        if sampler is None:
            sampler = FluxSampler(scfg)
        loaded = (sampler.cfg.model, sampler.cfg.dtype, sampler.cfg.device)
        if (scfg.model, scfg.dtype, scfg.device) != loaded:
            raise ValueError(f"sample_settings: every config must load {loaded}; got {(scfg.model, scfg.dtype, scfg.device)}")
        sampler.cfg = scfg
        t0 = time.time()
        with quiet_truncation_warnings():
            images = sampler.sample(prompts, seed=seed).images
        yield scfg, images, time.time() - t0


def sample_check(model_dir: Path, examples: Examples, cfg: SampleCheckConfig, text: TextConfig, resolution: int):
    """Sample the saved pipeline through FluxSampler on held-out prompts; verifier scores per noise level and
    classifier-free guidance scale (keys `noise_0.7`, `noise_0.7_cfg3`: the empty prompt as the negative one)."""
    from spatialrl.flux.sampler import FluxSamplerConfig

    n = min(cfg.prompts, len(examples.prompts))
    configs = [
        FluxSamplerConfig(
            model=str(model_dir), resolution=resolution, num_steps=cfg.num_steps, noise_level=a, group_size=1,
            batch_size=16, max_sequence_length=text.max_sequence_length, device="cpu", true_cfg_scale=scale,
        )
        for scale in cfg.true_cfg_scales for a in cfg.noise_levels
    ]
    results = {}
    for scfg, images, seconds in sample_settings(configs, examples.prompts[:n]):
        scores = verifier_scores(images, examples.structured[:n])
        scores["s_per_image"] = round(seconds / n, 4)
        scale = scfg.true_cfg_scale
        results[f"noise_{scfg.noise_level}" + (f"_cfg{scale:g}" if scale > 1 else "")] = scores
    return results


class StageClock:
    """Wall and CPU seconds per stage (the machine is shared: CPU time is what the recipe costs)."""

    def __init__(self):
        self.wall0, self.cpu0 = time.time(), time.process_time()
        self.times: dict[str, dict[str, float]] = {}

    def start(self) -> None:
        self._wall, self._cpu = time.time(), time.process_time()

    def stop(self, stage: str) -> dict[str, float]:
        t = {"time_s": round(time.time() - self._wall, 1), "cpu_s": round(time.process_time() - self._cpu, 1)}
        self.times[stage] = t
        return t

    def total(self) -> dict[str, float]:
        return {"time_s": round(time.time() - self.wall0, 1), "cpu_s": round(time.process_time() - self.cpu0, 1)}


def pretrain(cfg: GeneratorPretrainConfig, out_dir: Path, log: Callable[[dict], None]) -> dict[str, Any]:
    """The whole recipe; writes the pipeline into `out_dir` (model_index.json + subfolders); returns the summary."""
    torch.set_num_threads(cfg.num_threads)
    save_dtype = SAVE_DTYPES[cfg.save_dtype]
    world = load_world_preset(cfg.data.world_preset)
    clock = StageClock()
    summary: dict[str, Any] = {"torch_threads": torch.get_num_threads()}

    clock.start()
    train = make_examples(world, cfg.data.num_images, cfg.data.seed, "train")
    held = make_examples(world, cfg.data.eval_images, cfg.data.seed, "val")
    log({"stage": "data", "train_images": len(train.prompts), "eval_images": len(held.prompts), **clock.stop("data")})

    clock.start()
    pixels = to_pixels(train.images)  # [N, 3, H, W]
    start = None
    if cfg.init_from:
        init_dir = repo_path(cfg.init_from)
        start = load_pipeline_parts(init_dir, world.canvas)
        clip, clip_tok, t5, t5_tok, vae = (start[k] for k in ("clip", "clip_tokenizer", "t5", "t5_tokenizer", "vae"))
        log({"stage": "init_from", "path": str(init_dir)})
    else:
        clip, clip_tok, t5, t5_tok = build_text_encoders(cfg.text, cfg.seed)
        vae = train_vae(build_vae(cfg.vae, world.canvas, cfg.seed), pixels, cfg.vae, cfg.seed, log, cfg.log_every)
    _round_trip(vae, save_dtype)
    summary["vae_recon"] = verifier_scores(reconstruct(vae, to_pixels(held.images)), held.structured)
    summary["vae_params"] = sum(p.numel() for p in vae.parameters())
    log({"stage": "vae_check", **summary["vae_recon"], "params": summary["vae_params"], **clock.stop("vae")})
    if summary["vae_recon"]["object_presence"] < cfg.vae.min_presence:
        raise RuntimeError(
            f"VAE reconstructions keep only {summary['vae_recon']['object_presence']:.1%} of objects (need "
            f"{cfg.vae.min_presence:.0%}): train it longer (vae.steps) or wider (vae.block_out_channels)"
        )

    clock.start()
    latents = encode_latents(vae, pixels)  # [N, 16, h, w]
    if start is None:
        shift, scale = set_latent_factors(vae, latents)
    else:  # the loaded transformer learned latents normalised by these
        shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    packed = pack_latents((latents - shift) * scale)  # [N, S, 64]
    del pixels, latents
    from diffusers import FluxPipeline

    text_pipe = FluxPipeline(scheduler=build_scheduler(), vae=None, text_encoder=clip, tokenizer=clip_tok,
                             text_encoder_2=t5, tokenizer_2=t5_tok, transformer=None)
    embeds, pooled = encode_prompts(text_pipe, train.prompts, cfg.text.max_sequence_length)  # [N, L, D], [N, Dp]
    empty_embeds, empty_pooled = encode_prompts(text_pipe, [""], cfg.text.max_sequence_length)  # for cond_dropout
    log({"stage": "encode", "latent_shape": list(packed.shape), "shift_factor": shift, "scaling_factor": scale,
         **clock.stop("encode")})

    clock.start()
    transformer = start["transformer"] if start else build_transformer(cfg.transformer, embeds.shape[-1], pooled.shape[-1], cfg.seed)
    summary["transformer_params"] = sum(p.numel() for p in transformer.parameters())
    text = None
    if cfg.text.t5_lr > 0:
        text = TextTrainer(t5, t5_tok, train.prompts, train.structured, cfg.text, cfg.transformer.ema_decay)
    transformer = train_transformer(transformer, packed, embeds, pooled, cfg.transformer, cfg.seed, log, cfg.log_every,
                                    uncond=(empty_embeds[0], empty_pooled[0]), text=text)
    if text is not None:
        t5 = text.final()
        summary["role_probe"] = role_probe_accuracy(t5, t5_tok, train, held, cfg.text.max_sequence_length)
        log({"stage": "role_probe", **summary["role_probe"]})
    model_dir = save_pipeline(out_dir, vae=vae, transformer=transformer, clip=clip, clip_tokenizer=clip_tok,
                              t5=t5, t5_tokenizer=t5_tok, dtype=save_dtype)
    summary["size_mb"] = round(folder_mb(model_dir), 2)
    log({"stage": "saved", "path": str(model_dir), "size_mb": summary["size_mb"], **clock.stop("transformer")})
    summary["train"] = clock.total()

    if cfg.sample_check.prompts:
        clock.start()
        summary["sample_check"] = sample_check(model_dir, held, cfg.sample_check, cfg.text, world.canvas)
        log({"stage": "sample_check", **summary["sample_check"], **clock.stop("sample_check")})
    summary["stages"] = clock.times
    summary["total"] = clock.total()
    summary["config"] = to_dict(cfg)
    return summary


__all__ = [
    "GeneratorPretrainConfig", "GenDataConfig", "TextConfig", "VAEConfig", "TransformerConfig", "SampleCheckConfig",
    "load_world_preset", "make_examples", "verifier_scores", "world_corpus", "build_t5_tokenizer",
    "build_text_encoders", "encode_prompts", "build_vae", "train_vae", "set_latent_factors", "build_transformer",
    "sample_sigmas", "train_transformer", "save_pipeline", "pretrain",
]
