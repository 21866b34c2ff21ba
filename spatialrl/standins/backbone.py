"""Pretraining of the tiny Qwen2.5-VL backbone on the spatial world: grounding and spatial questions.

The real SpatialScore starts from Qwen2.5-VL-7B, which already grounds objects and reads spatial relations
from its own densely supervised pretraining (boxes as text, captions, VQA). A tiny random Qwen2.5-VL has none of
that, and a pairwise reward loss alone does not teach it (the measurements: the RECIPE.md beside the shipped
backbone). This module gives the tiny model that kind of dense supervision on spatial-world scenes, so the
reward-model recipe can start from a pretrained backbone as the paper's does.

One training example = one rendered scene and one chat turn, the answer written in the assistant turn:

    <system> <user> [image] Describe each object and answer the questions. <assistant>
     the red circle at x37 y05 size14. the blue square at x71 y40 size21. ...           (grounding)
     is the blue square right of the red circle? yes is the red circle bigger than ... no  (spatial questions)

Only answer tokens are trained: each object's colour (which one comes next in the list), its shape, centroid
and visible size as two-digit percentages of the canvas, and the answers. Questions are asked only about
relations that are decisive in the world's own sense (`data_pipeline.world.decisive_facts`), half of them
true; `question_style=which` asks "which is further left, the red circle or the blue square? the red" instead.
The phrasings here are a small set of our own, not the dataset's prompt templates.

Per-image-token objectives (logit lens: the LM head applied to an image token's hidden state after a given
number of decoder layers) stand in for the vision encoder's own pretraining, which a real Qwen2.5-VL had:
- patch loss (on by default, on the image embeddings entering the LM): each image token names the colours,
  shapes and background in its 28x28 region. With tied embeddings this puts image tokens and words in one
  space, so "the red ..." can find the red token by similarity (otherwise text did not bind to the image
  at all within our budget).
- position loss (optional): each image token names its grid row and column.
- relation loss (optional): each object's tokens name the colours of the objects right of it / below it.

Curriculum and mixture: easy-world scenes only (`configs/dataset_easy.yaml`, 64 px, 2-3 big objects) at first;
then the paper-like default world (`configs/dataset_default.yaml`, 128 px) comes in with its object count
ramping from 2 to its maximum. Some images are slightly blurred, so that a reward model built on this backbone
copes with a toy generator's soft renderings.

The model is a stock `Qwen2_5_VLForConditionalGeneration` built from a config (the shipped one: 1.5M
parameters, 168 px -> 36 image tokens, tied embeddings, M-RoPE theta 1000 with sections [1, 3, 12] because
Qwen's theta 1e6 leaves the width section no usable frequency on a 6-token-wide image), with a byte-level BPE
tokenizer learned here on spatial scene text (every word of the world's prompts is one token, as in a real
150k vocabulary) and the stock Qwen2.5-VL processor, saved with `save_pretrained` in the Hugging Face layout
(weights in float16). Every processor key goes to the model (mm_token_type_ids included: M-RoPE needs it).
What it learned and what it did not: assets/tiny-pretrained/qwen2_5_vl/RECIPE.md.

Run: `python -m jobs.pretrain_backbone --config configs/backbone_tiny.yaml --out DIR`.
Tests: `.venv/bin/python -m pytest tests/test_pretrain_backbone.py -q`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image, ImageFilter

from data_pipeline.relations import AXIS, CONVERSE
from data_pipeline.world import (
    PALETTE, WorldConfig, decisive_facts, load_world_preset, render, render_labels, sample_scene,
)
from spatialrl.config import ConfigError, dump_yaml, repo_path
from spatialrl.metrics import MetricsLogger

QUESTION = "Describe each object and answer the questions."
RESUME_DIR = "resume"
LOG_FILE = "training_log.jsonl"
EVAL_FILE = "eval.json"
# Our own phrasings of each relation for the questions (the dataset's prompt templates are not reused).
QA_PHRASES = {
    "left_of": ["left of", "to the left of", "on the left of"],
    "right_of": ["right of", "to the right of", "on the right of"],
    "above": ["above", "higher than", "over"],
    "below": ["below", "lower than", "under"],
    "bigger_than": ["bigger than", "larger than"],
    "smaller_than": ["smaller than", "tinier than"],
    "in_front_of": ["in front of", "covering", "on top of"],
    "behind": ["behind", "covered by", "underneath"],
}
# "Which is further left, the red circle or the blue square? the red": the answer points at one of the two
# named objects. Unlike yes/no, whose answer is an XOR of the relation word and the comparison (no first-order
# signal, so gradient descent sits at chance for a long time), the relation word here only sets what to look for.
WHICH_PHRASES = {
    "left_of": "further left", "right_of": "further right", "above": "higher", "below": "lower",
    "bigger_than": "bigger", "smaller_than": "smaller", "in_front_of": "in front", "behind": "further back",
}
# Shape synonyms used in question names (never as trained answers: a random synonym is not predictable).
SHAPE_SYNONYMS = {
    "circle": ["circle", "disc", "round shape"],
    "square": ["square", "block", "box"],
    "triangle": ["triangle", "three-sided shape", "wedge"],
    "diamond": ["diamond", "rhombus", "lozenge"],
}
AXES = ("horizontal", "vertical", "size", "depth")
# Words an image token is trained to "be" (the per-image-token objective): colours, shapes, background.
PATCH_WORDS = [*PALETTE, *SHAPE_SYNONYMS, "background"]
# Words of the per-image-token relation targets: colours, and "background" for an empty set.
RELATION_WORDS = [*PALETTE, "background"]


# --------------------------------------------------------------------------------------------------- configs


@dataclass
class BackboneModelConfig:
    """Architecture of the tiny Qwen2.5-VL (the `model` section)."""

    image_size: int = 168  # fixed square input (multiple of 28): 168 -> 12x12 patches -> 36 image tokens
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    vision_hidden_size: int = 96
    vision_depth: int = 3
    vision_heads: int = 3
    vision_intermediate_size: int = 192
    vocab_size: int = 2048  # BPE budget; merging stops earlier once every corpus word is one token (~1150)
    # M-RoPE of the language model: the rotary frequencies of each head are split into temporal / height /
    # width sections (in that order, highest frequencies first). Qwen2.5-VL-7B uses theta 1e6, which leaves
    # the width section with frequencies ~1e-4..1e-6 rad per token: invisible across a 6-token-wide image.
    # A small theta gives height and width usable frequencies on a small grid.
    # Tied input/output embeddings (as Qwen2.5-VL-3B): image tokens trained to read as words (patch loss)
    # then share one space with the text's words, so "the red ..." can find the red image token by similarity.
    tie_word_embeddings: bool = True
    rope_theta: float = 1_000_000.0
    mrope_section: list[int] | None = None  # None: [h - 2*(3h//8), 3h//8, 3h//8] with h = head size / 2

    def validate(self) -> None:
        if self.image_size < 28 or self.image_size % 28:
            raise ConfigError(
                f"model.image_size={self.image_size}: use a multiple of 28 (patch 14 x merge 2), e.g. 168")
        if self.hidden_size % self.num_heads or (self.hidden_size // self.num_heads) % 8:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} / num_heads={self.num_heads}: the head size must be a "
                f"multiple of 8 (M-RoPE splits it into three sections); e.g. hidden 128 with 4 heads"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model.num_heads={self.num_heads} must be a multiple of model.num_kv_heads={self.num_kv_heads}")
        if self.vision_hidden_size % self.vision_heads or (self.vision_hidden_size // self.vision_heads) % 4:
            raise ConfigError(
                f"model.vision_hidden_size={self.vision_hidden_size} / vision_heads={self.vision_heads}: the head "
                f"size must be a multiple of 4 (2-D rotary); e.g. 96 with 3 heads"
            )
        if min(self.num_layers, self.vision_depth, self.intermediate_size, self.vision_intermediate_size) < 1:
            raise ConfigError("model.num_layers, vision_depth and the intermediate sizes must be >= 1")
        if self.mrope_section is not None and (
            len(self.mrope_section) != 3 or sum(self.mrope_section) != self.hidden_size // self.num_heads // 2
        ):
            raise ConfigError(
                f"model.mrope_section={self.mrope_section}: give three sizes (temporal, height, width) summing to "
                f"half the head size ({self.hidden_size // self.num_heads // 2}), or null for the default split"
            )
        if self.rope_theta <= 1:
            raise ConfigError(f"model.rope_theta={self.rope_theta}: use a base > 1 (Qwen2.5-VL: 1e6)")
        if self.vocab_size < 512:
            raise ConfigError(
                f"model.vocab_size={self.vocab_size}: use at least 512 (256 byte tokens + merges + specials)")


@dataclass
class PretrainDataConfig:
    """What the scenes and texts look like (the `data` section)."""

    world_preset: str = "configs/dataset_default.yaml"  # dataset presets: their `world` section is used
    easy_world_preset: str = "configs/dataset_easy.yaml"
    # Curriculum over the fraction of steps done: only easy-world scenes (big objects, 2-3 of them) until
    # ramp[0]; between ramp[0] and ramp[1] the easy share falls to easy_fraction and the default world's
    # maximum object count climbs from start_objects to its own max_objects; then both stay.
    easy_fraction: float = 0.3
    start_objects: int = 2
    ramp: list[float] = field(default_factory=lambda: [0.3, 0.7])
    max_questions: int = 10  # spatial questions per scene (fewer if the scene has fewer decisive facts)
    question_style: Literal["which", "yes_no"] = "which"  # see WHICH_PHRASES
    patch_loss_weight: float = 0.5  # per-image-token objective (see module docstring); 0 turns it off
    patch_loss_layer: int = 0  # hidden state it reads (logit lens): 0 = image embeddings entering the LM
    position_loss_weight: float = 0.0  # each image token names its grid row and column (see position_loss)
    position_loss_layer: int = 2  # after this many decoder layers
    relation_loss_weight: float = 0.0  # image tokens name the colours right of / below (/ left of / above) their object
    # one layer per trained set, in the order right-of, below[, left-of, above]: two sets hold every fact, four
    # put each relation word's set on the subject's own tokens (no role swap for the converses)
    relation_loss_layers: list[int] = field(default_factory=lambda: [1, 2])
    train_colour: bool = True  # train the colour words of the object list too (a dense, easy first signal)
    synonym_prob: float = 0.3  # a question names a shape by a synonym ("disc", "box", ...)
    blur_prob: float = 0.3  # share of images blurred slightly (Gaussian, radius in pixels of the canvas)
    blur_radius: list[float] = field(default_factory=lambda: [0.3, 1.2])

    def validate(self) -> None:
        if len(self.ramp) != 2 or not 0.0 <= self.ramp[0] <= self.ramp[1] <= 1.0:
            raise ConfigError(
                f"data.ramp={self.ramp}: give [start, end] fractions of the steps, 0 <= start <= end <= 1")
        for name in ("easy_fraction", "synonym_prob", "blur_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"data.{name}={value}: use a value in [0, 1]")
        for name in ("patch_loss_weight", "position_loss_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}={getattr(self, name)}: use 0 (off) or a positive weight")
        if self.start_objects < 2:
            raise ConfigError(f"data.start_objects={self.start_objects}: relations need at least 2 objects")
        if self.max_questions < 0:
            raise ConfigError(f"data.max_questions={self.max_questions}: use 0 (grounding only) or more")
        if len(self.blur_radius) != 2 or not 0 <= self.blur_radius[0] <= self.blur_radius[1]:
            raise ConfigError(f"data.blur_radius={self.blur_radius}: give [min, max] with 0 <= min <= max")
        for name in ("world_preset", "easy_world_preset"):
            if not repo_path(getattr(self, name)).is_file():
                raise ConfigError(
                    f"data.{name}={getattr(self, name)!r} does not exist; point it at a configs/dataset_*.yaml")


@dataclass
class PretrainConfig:
    """The whole `jobs.pretrain_backbone` config."""

    out: str = "runs/backbone"
    model: BackboneModelConfig = field(default_factory=BackboneModelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    steps: int = 1500
    batch_size: int = 32  # scenes per step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 1  # torch threads: 1 leaves the other core to whatever shares the machine
    log_every: int = 25
    eval_every: int = 250
    eval_scenes: int = 200  # fresh held-out scenes per world for the periodic evaluation
    checkpoint_every: int = 250  # resumable state in OUT/resume (removed when the run finishes)
    save_dtype: str = "float16"  # storage dtype of the final weights ("float16", "bfloat16" or "float32")
    # Continue from a pretrained backbone folder (e.g. assets/tiny-pretrained/qwen2_5_vl: its weights, tokenizer and
    # processor; `model` must describe the same architecture) instead of random weights. "" = random init.
    init_from: str = ""

    def validate(self) -> None:
        if self.init_from and not (repo_path(self.init_from) / "config.json").is_file():
            raise ConfigError(f"init_from={self.init_from!r} has no config.json: point it at a backbone folder "
                              f"written by this job (e.g. assets/tiny-pretrained/qwen2_5_vl), or leave it empty")
        for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: use a value >= 1")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr={self.lr}: use a learning rate in (0, 1), e.g. 1e-3")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio={self.min_lr_ratio}: use a value in [0, 1]")
        if self.warmup_steps < 0 or self.eval_scenes < 0:
            raise ConfigError("warmup_steps and eval_scenes must be >= 0")
        d = self.data
        for name, layers in (("patch_loss_layer", [d.patch_loss_layer]),
                             ("position_loss_layer", [d.position_loss_layer]),
                             ("relation_loss_layers", d.relation_loss_layers)):
            if any(not 0 <= layer <= self.model.num_layers for layer in layers):
                raise ConfigError(
                    f"data.{name}={getattr(d, name)}: a layer index counts decoder layers done, so it must lie in "
                    f"[0, model.num_layers={self.model.num_layers}]"
                )
        if len(d.relation_loss_layers) not in (2, 4):
            raise ConfigError(
                f"data.relation_loss_layers={d.relation_loss_layers}: give two layers (right-of set, below set) or "
                "four (right-of, below, left-of, above)")
        if self.save_dtype not in SAVE_DTYPES:
            raise ConfigError(f"save_dtype={self.save_dtype!r}: use one of {list(SAVE_DTYPES)}")


SAVE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# ------------------------------------------------------------------------------------------- model building


def backbone_corpus() -> list[str]:
    """Text the tokenizer's merges are learned on: the fixture corpus, the world's prompt vocabulary, our phrases."""
    from data_pipeline import prompts
    from data_pipeline.world import BACKGROUNDS, PALETTE
    from spatialrl.models.fixtures import spatial_corpus

    lines = spatial_corpus()
    names = [f"the {c} {w}" for c in PALETTE for ws in SHAPE_SYNONYMS.values() for w in ws]
    for (rtype, templates), name in itertools.product(prompts.RELATION_TEMPLATES.items(), names[::7]):
        lines += [t.format(a=name, b="the blue square") for t in templates]
    for template in prompts.INTROS + prompts.COUNT_INTROS + prompts.LEFTOVER:
        for bg in BACKGROUNDS:
            lines.append(template.format(bg=bg, objects="a red circle and a blue square", n="three", N="Three"))
    bg_pairs = list(zip(BACKGROUNDS, list(BACKGROUNDS)[1:]))
    lines += [w.format(c0=a, c1=b) for ws in prompts.BG_WORDS.values() for w in ws for a, b in bg_pairs]
    lines += prompts.LINKS + prompts.OUTROS + prompts.NUMBER_WORDS
    from spatialrl.reward.prompt import REWARD_INSTRUCTION

    lines.append(REWARD_INSTRUCTION.format(prompt=""))
    lines.append(QUESTION)
    for rtype, phrases in QA_PHRASES.items():
        lines += [f"is the {n} {p} the red circle? yes no" for p in phrases for n in names[::5]]
    lines += [f"{n} at x {i:02d} y {99 - i:02d} size {i % 40:02d}." for i, n in enumerate(names)]
    return lines


def build_backbone(cfg: BackboneModelConfig, seed: int = 0):
    """A fresh random tiny Qwen2.5-VL and its processor: `(Qwen2_5_VLForConditionalGeneration, processor)`."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from spatialrl.models.fixtures import QWEN_CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, _train_qwen_tokenizer

    cfg.validate()
    tokenizer = _train_qwen_tokenizer(cfg.vocab_size, corpus=backbone_corpus())
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    pixels = cfg.image_size**2
    kw = dict(min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**kw), tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**kw), chat_template=QWEN_CHAT_TEMPLATE,
    )
    half = cfg.hidden_size // cfg.num_heads // 2  # rotary frequencies per head, split temporal / height / width
    mrope = list(cfg.mrope_section or [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8])
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta), "mrope_section": mrope},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = dict(
        depth=cfg.vision_depth, hidden_size=cfg.vision_hidden_size, intermediate_size=cfg.vision_intermediate_size,
        num_heads=cfg.vision_heads, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        out_hidden_size=cfg.hidden_size,
        fullatt_block_indexes=list(range(cfg.vision_depth)),  # images are small: full attention in every block
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config, vision_config=vision_config, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=cfg.tie_word_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    return model, processor


def load_backbone(folder: str, cfg: BackboneModelConfig):
    """A backbone saved by this job, as float32 `(model, processor)`, checked against `cfg`'s architecture."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from spatialrl.models.loader import load_vl_processor

    path = repo_path(folder)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, torch_dtype=torch.float32)
    text = model.config.text_config
    found = {"hidden_size": text.hidden_size, "num_layers": text.num_hidden_layers,
             "vision_depth": model.config.vision_config.depth}
    wanted = {"hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers, "vision_depth": cfg.vision_depth}
    if found != wanted:
        raise ConfigError(f"init_from={folder}: its architecture {found} differs from the config's model {wanted}; "
                          f"use the model section it was trained with (its pretrain_config.yaml)")
    pixels = cfg.image_size**2
    return model, load_vl_processor(str(path), min_pixels=pixels, max_pixels=pixels)


def save_backbone(model, processor, out_dir: str | os.PathLike, dtype: str = "float16") -> Path:
    """`save_pretrained` of model (cast to `dtype` for storage) and processor: the Hugging Face folder layout."""
    import copy

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stored = copy.deepcopy(model).to(SAVE_DTYPES[dtype]).eval()
    stored.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------- examples


@dataclass
class Example:
    """One scene: the model-size image and the answer text as (text, trained?) segments."""

    image: Image.Image
    segments: list[tuple[str, bool]]
    world: str  # "default" or "easy"
    kinds: list[str]  # per trained segment: "colour", "shape", "x", "y", "size", "qa/<axis>[/<other colour>]"
    patch_targets: np.ndarray | None = None  # [image tokens, len(PATCH_WORDS)]: what each token's region holds
    relation_targets: np.ndarray | None = None  # [image tokens, sets, len(RELATION_WORDS)]: RELATION_SETS order


def _digits(value: float) -> str:
    return f"{int(min(max(value, 0.0), 0.999) * 100):02d}"


def scene_example(rng: np.random.Generator, world: WorldConfig, data: PretrainDataConfig, image_size: int,
                  world_name: str = "default") -> Example:
    """Sample a scene of `world` and write its grounding lines and spatial questions (see module docstring)."""
    scene, m = sample_scene(rng, world)
    canvas = scene.canvas
    labels = render_labels(scene)
    img = Image.fromarray(render(scene, labels))
    if rng.random() < data.blur_prob:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(*data.blur_radius))))
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)  # as spatialrl.reward.reader does
    segments: list[tuple[str, bool]] = []
    kinds: list[str] = []

    def add(text: str, trained: bool = False, kind: str = "") -> None:
        segments.append((text, trained))
        if trained:
            kinds.append(kind)

    for i in rng.permutation(len(scene.objects)).tolist():
        o = scene.objects[i]
        side = math.sqrt(m.area[i]) / canvas  # visible area, as bigger_than / smaller_than measure it
        add(" the")
        add(f" {o.colour}", data.train_colour, "colour")  # which colour comes next: any not yet listed
        add(f" {o.shape}", True, "shape")
        add(" at x")
        add(_digits(m.cx[i] / canvas), True, "x")
        add(" y")
        add(_digits(m.cy[i] / canvas), True, "y")
        add(" size")
        add(_digits(side), True, "size")
        add(".")
    facts = decisive_facts(scene, m, world)
    for f in rng.permutation(len(facts))[: data.max_questions].tolist():
        options = facts[f]
        rel = options[int(rng.integers(len(options)))]
        truth = bool(rng.random() < 0.5)
        rtype = rel.type if truth else CONVERSE[rel.type]
        s, o = (rel.subject, rel.object)
        if data.question_style == "yes_no":
            phrase = QA_PHRASES[rtype][int(rng.integers(len(QA_PHRASES[rtype])))]
            add(f" is the {_name(rng, scene.objects[s], data)} {phrase} the {_name(rng, scene.objects[o], data)}?")
            add(" yes" if truth else " no", True, "qa/" + AXIS[rtype])
            continue
        # "which" questions: the answer names one of the two objects (s if the asked relation holds for s)
        answer, other = (s, o) if truth else (o, s)
        first, second = (s, o) if rng.random() < 0.5 else (o, s)
        add(f" which is {WHICH_PHRASES[rtype]}, the {_name(rng, scene.objects[first], data)} or the "
            f"{_name(rng, scene.objects[second], data)}? the")
        add(f" {scene.objects[answer].colour}", True, f"qa/{AXIS[rtype]}/{scene.objects[other].colour}")
        add(".")
    return Example(img, segments, world_name, kinds, patch_targets(scene, labels, image_size),
                   relation_targets(scene, m, labels, image_size, world))


def patch_targets(scene, labels: np.ndarray, image_size: int) -> np.ndarray:
    """What each image token's 28x28 region holds, as a distribution over PATCH_WORDS: [tokens, words].

    An object covering a share f of the region contributes f/2 to its colour word and f/2 to its shape word;
    the background's share goes to "background". Tokens are in the processor's raster order (row by row).
    """
    grid = image_size // 28
    idx = (np.arange(image_size) * labels.shape[0] // image_size)  # nearest-neighbour resize of the label map
    lab = labels[np.ix_(idx, idx)].reshape(grid, 28, grid, 28).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    n = len(scene.objects)
    share = np.stack([(lab == k).mean(axis=1) for k in range(n + 1)], axis=1)  # [tokens, 1 + objects]
    out = np.zeros((grid * grid, len(PATCH_WORDS)), dtype=np.float32)
    out[:, -1] = share[:, 0]
    for k, o in enumerate(scene.objects):
        out[:, PATCH_WORDS.index(o.colour)] += share[:, k + 1] / 2
        out[:, PATCH_WORDS.index(o.shape)] += share[:, k + 1] / 2
    return out


# The order of relation_targets' set axis: set r of object o holds the objects k with `o SET_RELATIONS[r] k`, i.e.
# the objects that stand in RELATION_SETS[r] to o (the converse word).
RELATION_SETS = ("right_of", "below", "left_of", "above", "smaller_than", "bigger_than", "behind", "in_front_of")
SET_RELATIONS = ("left_of", "above", "right_of", "below", "bigger_than", "smaller_than", "in_front_of", "behind")


def relation_targets(scene, m, labels: np.ndarray, image_size: int, world: WorldConfig, n_sets: int = 4) -> np.ndarray:
    """For each image token mostly covered by one object o: the colours of the objects decisively to the right
    of o, below o, left of o and above o (then, with n_sets 6 or 8: smaller than o, bigger than o, behind o, in
    front of o), each as a uniform distribution over RELATION_WORDS ("background" when there are none):
    [tokens, n_sets, words], in RELATION_SETS order. Rows of tokens that no object dominates are all zero (no loss).

    The first two sets hold every left/right/above/below fact of the scene (the other two are their converses);
    the last two put the set a converse question asks for on the subject's own tokens.
    """
    from data_pipeline.relations import relation_score

    grid = image_size // 28
    idx = (np.arange(image_size) * labels.shape[0] // image_size)
    lab = labels[np.ix_(idx, idx)].reshape(grid, 28, grid, 28).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    n = len(scene.objects)
    share = np.stack([(lab == k + 1).mean(axis=1) for k in range(n)], axis=1)  # [tokens, objects]
    sets = np.zeros((n, n_sets, len(RELATION_WORDS)), dtype=np.float32)
    for o in range(n):
        for r, rtype in enumerate(SET_RELATIONS[:n_sets]):  # o left of k <=> k is right of o
            others = [k for k in range(n) if k != o and relation_score(m, o, rtype, k, world.margins) >= 1]
            for k in others:
                sets[o, r, RELATION_WORDS.index(scene.objects[k].colour)] = 1 / len(others)
            if not others:
                sets[o, r, -1] = 1.0
    out = np.zeros((grid * grid, n_sets, len(RELATION_WORDS)), dtype=np.float32)
    dominant = share.argmax(axis=1)
    covered = share.max(axis=1) >= 0.25
    out[covered] = sets[dominant[covered]]
    return out


def _name(rng: np.random.Generator, obj, data: PretrainDataConfig) -> str:
    words = SHAPE_SYNONYMS[obj.shape]
    shape = words[int(rng.integers(len(words)))] if rng.random() < data.synonym_prob else obj.shape
    return f"{obj.colour} {shape}"


class ExampleEncoder:
    """Turns Examples into a model batch: every processor key plus `labels` (-100 where nothing is trained).

    The prefix (system turn, user turn with the image and the question, assistant header) comes from the
    processor's chat template once; the answer segments are tokenised one by one so that the trained tokens
    are known exactly. Rows are left-padded, as the reward model's processor pads.
    """

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        size = int(math.isqrt(processor.image_processor.size["longest_edge"]))
        self.image_size = size
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = processor(text=[text], images=[Image.new("RGB", (size, size))], return_tensors="pt")
        self.prefix = {k: enc[k][0] for k in ("input_ids", "mm_token_type_ids")}
        self.yes_no = [self._single_id(" yes"), self._single_id(" no")]
        self.digits = [self._single_id(str(d)) for d in range(10)]
        self.patch_word_ids = torch.tensor([self._single_id(f" {w}") for w in PATCH_WORDS])
        self.letters = [self._single_id(c) for c in "abcdefghij"]  # grid columns for the position loss
        self.relation_word_ids = torch.tensor([self._single_id(f" {w}") for w in RELATION_WORDS])
        self._cache: dict[str, list[int]] = {}

    def _single_id(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens in this tokenizer; the answers must be single tokens")
        return ids[0]

    def _ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._cache[text]

    def encode(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        rows, labels = [], []
        for ex in examples:
            ids, lab = list(self.prefix["input_ids"].tolist()), [-100] * len(self.prefix["input_ids"])
            for text, trained in ex.segments:
                piece = self._ids(text)
                ids += piece
                lab += piece if trained else [-100] * len(piece)
            rows.append(ids)
            labels.append(lab)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        n_prefix = len(self.prefix["input_ids"])
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # [B, L]
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        mm_types = torch.zeros((len(rows), width), dtype=torch.long)
        label_t = torch.full((len(rows), width), -100, dtype=torch.long)
        for r, (ids, lab) in enumerate(zip(rows, labels)):
            start = width - len(ids)  # left padding
            input_ids[r, start:] = torch.tensor(ids)
            attention[r, start:] = 1
            mm_types[r, start:start + n_prefix] = self.prefix["mm_token_type_ids"]
            label_t[r, start:] = torch.tensor(lab)
        return {"input_ids": input_ids, "attention_mask": attention, "mm_token_type_ids": mm_types, "labels": label_t,
                **image_inputs(self.processor, examples)}


def image_inputs(processor, examples) -> dict[str, torch.Tensor]:
    """The image half of a batch: the processor's pixel values and grid, and the per-image-token targets stacked
    (`patch_targets` [B, T, W], `relation_targets` [B, T, sets, W]) when every example has them."""
    pixels = processor.image_processor(images=[ex.image for ex in examples], return_tensors="pt")
    out = {"pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]}
    for key in ("patch_targets", "relation_targets"):
        if all(getattr(ex, key) is not None for ex in examples):
            out[key] = torch.from_numpy(np.stack([getattr(ex, key) for ex in examples]))
    return out


# ---------------------------------------------------------------------------------------------- training


NOT_MODEL_INPUTS = ("labels", "patch_targets", "relation_targets")


def answer_logits(model, batch: dict[str, torch.Tensor], hidden: torch.Tensor | None = None):
    """Logits at every position that predicts a trained token, and those tokens: ([T, V], [T]).

    Runs the backbone (`model.model`) on every processor key and applies the LM head only where a label
    follows, instead of over the whole sequence (the vocabulary projection is most of the compute otherwise).
    """
    if hidden is None:
        hidden = backbone_hidden(model, batch)
    targets = batch["labels"][:, 1:]  # [B, L-1]: position t predicts token t+1
    where = targets != -100
    return model.lm_head(hidden[:, :-1][where]), targets[where]


def backbone_hidden(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Last hidden states [B, L, H] of the backbone, fed every processor key of the batch."""
    inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
    return model.model(**inputs, use_cache=False, return_dict=True).last_hidden_state


def word_set_loss(model, batch, hidden: torch.Tensor, target: torch.Tensor, word_ids: torch.Tensor,
                  readout: torch.nn.Module | None = None) -> torch.Tensor:
    """Soft cross-entropy of the LM head at each image token (logit lens, after the final norm) against a
    distribution over `word_ids` ([B, T, W], tokens in the processor's raster order); all-zero rows are skipped.
    `readout` (a module on the hidden state, e.g. a linear map) reads the target through its own view of the
    token instead of the bare lens, so several targets at one hidden state need not share one distribution."""
    image = batch["input_ids"] == model.config.image_token_id  # [B, L]
    h = hidden[image].view(target.shape[0], target.shape[1], -1)  # [B, T, H]
    if readout is not None:
        h = readout(h)
    logp = torch.log_softmax(model.lm_head(model.model.language_model.norm(h)).float(), dim=-1)[..., word_ids]
    rows = target.sum(-1) > 0  # [B, T]
    return -(target * logp).sum(-1)[rows].mean() if rows.any() else hidden.sum() * 0


class SceneStream:
    """Deterministic batches of Examples: batch `step` depends only on (seed, step), so a resumed run matches."""

    def __init__(self, cfg: PretrainConfig, encoder: ExampleEncoder):
        self.cfg = cfg
        self.encoder = encoder
        self.world = load_world_preset(cfg.data.world_preset)
        self.easy = load_world_preset(cfg.data.easy_world_preset)

    def progress(self, step: int) -> float:
        """Where the curriculum is: 0 before the ramp, 1 after it."""
        start, end = self.cfg.data.ramp
        t = step / max(1, self.cfg.steps)
        return 1.0 if t >= end else max(0.0, (t - start) / max(end - start, 1e-9))

    def max_objects(self, step: int) -> int:
        start = min(self.cfg.data.start_objects, self.world.max_objects)
        return start + round((self.world.max_objects - start) * self.progress(step))

    def easy_fraction(self, step: int) -> float:
        return 1.0 - (1.0 - self.cfg.data.easy_fraction) * self.progress(step)

    def examples(self, step: int, n: int, seed_offset: int = 0) -> list[Example]:
        from dataclasses import replace

        rng = np.random.default_rng([self.cfg.seed, seed_offset, step])
        top = self.max_objects(step)
        world = replace(self.world, min_objects=min(self.cfg.data.start_objects, top), max_objects=top)
        easy = self.easy_fraction(step)
        out = []
        for _ in range(n):
            if rng.random() < easy:
                out.append(scene_example(rng, self.easy, self.cfg.data, self.encoder.image_size, "easy"))
            else:
                out.append(scene_example(rng, world, self.cfg.data, self.encoder.image_size, "default"))
        return out


def eval_examples(cfg: PretrainConfig, encoder: ExampleEncoder, world_preset: str, n: int, seed: int,
                  world_name: str) -> list[Example]:
    """n fresh held-out scenes of a world at its full object range, without blur (a fixed evaluation set)."""
    from dataclasses import replace

    world = load_world_preset(world_preset)
    data = replace(cfg.data, blur_prob=0.0)
    rng = np.random.default_rng([seed, 987_654])
    return [scene_example(rng, world, data, encoder.image_size, world_name) for _ in range(n)]


@torch.no_grad()
def evaluate(model, encoder: ExampleEncoder, examples: list[Example], batch_size: int = 32) -> dict[str, float]:
    """Teacher-forced grounding and QA metrics on Examples (the answer tokens are read, nothing is sampled).

    qa_accuracy (and per axis): yes vs no logit at each question's answer; shape_accuracy: argmax over the
    four shape words; x_mae / y_mae / size_mae: |predicted - true| in percent of the canvas, the predicted
    two digits read as argmax over the ten digit tokens (the second given the true first digit).
    """
    was_training = model.training
    model.eval()
    shape_ids = [encoder._ids(f" {s}")[0] for s in SHAPE_SYNONYMS]
    yes, no = encoder.yes_no
    qa: dict[str, list[bool]] = {a: [] for a in AXES}
    shape_ok: list[bool] = []
    colour_ids = [encoder._ids(f" {c}")[0] for c in PALETTE]
    colour_ok: list[bool] = []
    errors: dict[str, list[float]] = {"x": [], "y": [], "size": []}
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        logits, targets = answer_logits(model, encoder.encode(chunk))
        pos = 0
        for ex in chunk:
            for kind in ex.kinds:
                if kind == "colour":
                    colour_ok.append(colour_ids[int(logits[pos][colour_ids].argmax())] == int(targets[pos]))
                    pos += 1
                elif kind == "shape":
                    shape_ok.append(shape_ids[int(logits[pos][shape_ids].argmax())] == int(targets[pos]))
                    pos += 1
                elif kind in errors:
                    digits = logits[pos:pos + 2][:, encoder.digits].argmax(-1).tolist()
                    truth = [encoder.digits.index(int(t)) for t in targets[pos:pos + 2]]
                    errors[kind].append(abs(10 * digits[0] + digits[1] - 10 * truth[0] - truth[1]))
                    pos += 2
                else:
                    _, axis, *distractor = kind.split("/")
                    if distractor:  # "which" question: the named answer beats the other named object
                        wrong = encoder._ids(f" {distractor[0]}")[0]
                        qa[axis].append(bool(logits[pos][int(targets[pos])] > logits[pos][wrong]))
                    else:
                        said_yes = bool(logits[pos][yes] > logits[pos][no])
                        qa[axis].append(said_yes == (int(targets[pos]) == yes))
                    pos += 1
        assert pos == len(targets), "answer bookkeeping out of step with the labels"
    model.train(was_training)
    answered = [v for a in AXES for v in qa[a]]
    out = {"qa_accuracy": float(np.mean(answered)) if answered else float("nan"),
           "shape_accuracy": float(np.mean(shape_ok)) if shape_ok else float("nan"),
           "colour_accuracy": float(np.mean(colour_ok)) if colour_ok else float("nan"),
           **{f"{k}_mae": float(np.mean(v)) if v else float("nan") for k, v in errors.items()}}
    out.update({f"qa_accuracy/{a}": float(np.mean(qa[a])) for a in AXES if qa[a]})
    return out


def pretrain_loss(model, batch: dict[str, torch.Tensor], encoder: ExampleEncoder, data: PretrainDataConfig,
                  relation_readouts: list[torch.nn.Module] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Answer-token cross-entropy + the weighted per-image-token losses; and each part as a number.
    `relation_readouts`: one module per relation set (see word_set_loss), or None for the bare logit lens."""
    layers = [w for w in (data.patch_loss_weight, data.position_loss_weight, data.relation_loss_weight) if w > 0]
    inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
    out = model.model(**inputs, use_cache=False, return_dict=True, output_hidden_states=bool(layers))
    logits, targets = answer_logits(model, batch, out.last_hidden_state)
    loss = torch.nn.functional.cross_entropy(logits.float(), targets)  # [T, V] vs [T]
    parts = {"loss/text": loss.item()}
    if data.patch_loss_weight > 0:
        patch = word_set_loss(model, batch, out.hidden_states[data.patch_loss_layer], batch["patch_targets"],
                              encoder.patch_word_ids)
        parts["loss/patch"] = patch.item()
        loss = loss + data.patch_loss_weight * patch
    if data.relation_loss_weight > 0:
        per_set = [word_set_loss(model, batch, out.hidden_states[layer], batch["relation_targets"][:, :, r],
                                 encoder.relation_word_ids, relation_readouts[r] if relation_readouts else None)
                   for r, layer in enumerate(data.relation_loss_layers)]
        rel = sum(per_set)
        parts["loss/relation"] = rel.item()
        parts.update({f"loss/relation/{RELATION_SETS[r]}": x.item() for r, x in enumerate(per_set)})
        loss = loss + data.relation_loss_weight * rel
    if data.position_loss_weight > 0:
        pos = position_loss(model, batch, out.hidden_states[data.position_loss_layer], encoder)
        parts["loss/position"] = pos.item()
        loss = loss + data.position_loss_weight * pos
    return loss, parts


def position_loss(model, batch: dict[str, torch.Tensor], hidden: torch.Tensor, encoder: ExampleEncoder) -> torch.Tensor:
    """Each image token names its own place in the grid: half its row as a digit, half its column as a letter.

    M-RoPE gives the language model an image token's place only as a rotation of attention scores; this makes
    it write the place into the token's content (in a middle layer), where text tokens that look the token up
    by colour read it along. Dense (every image token, every image) and cheap.
    """
    image = batch["input_ids"] == model.config.image_token_id  # [B, L]
    b = batch["input_ids"].shape[0]
    h = hidden[image].view(b, -1, hidden.shape[-1])  # [B, T, H]
    grid = int(math.isqrt(h.shape[1]))
    logp = torch.log_softmax(model.lm_head(model.model.language_model.norm(h)).float(), dim=-1)  # [B, T, V]
    rows = torch.tensor([encoder.digits[i // grid] for i in range(grid * grid)])  # [T]
    cols = torch.tensor([encoder.letters[i % grid] for i in range(grid * grid)])  # [T]
    return -0.5 * (logp[:, torch.arange(grid * grid), rows] + logp[:, torch.arange(grid * grid), cols]).mean()


def lr_at(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def pretrain(cfg: PretrainConfig, out_dir: str | os.PathLike, *, from_scratch: bool = False,
             log: Callable[[str], None] = print) -> dict:
    """Pretrain and save the backbone to `out_dir` (Hugging Face layout); returns the final evaluation.

    Resumes from `out_dir/resume` when an earlier run was interrupted there, unless `from_scratch`.
    Writes `training_log.jsonl` (one row per log/eval step), `pretrain_config.yaml` and `eval.json`.
    """
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    resume = out / RESUME_DIR
    if from_scratch and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = load_backbone(cfg.init_from, cfg.model) if cfg.init_from else build_backbone(cfg.model, cfg.seed)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )
    start_step, elapsed_before = 0, 0.0
    if (resume / "state.json").is_file():
        start_step, elapsed_before = _load_resume(resume, model, optimizer)
        log(f"resuming from {resume} at step {start_step}")
    else:
        (out / LOG_FILE).unlink(missing_ok=True)
    metrics = MetricsLogger(out / LOG_FILE, run=f"pretrain_backbone:{out.name}")
    metrics.truncate_after(start_step)  # rows a killed run logged after its checkpoint are redone, not doubled
    (out / "pretrain_config.yaml").write_text(dump_yaml(cfg))
    encoder = ExampleEncoder(processor)
    stream = SceneStream(cfg, encoder)
    evals = {
        "default": eval_examples(cfg, encoder, cfg.data.world_preset, cfg.eval_scenes, cfg.seed + 1, "default"),
        "easy": eval_examples(cfg, encoder, cfg.data.easy_world_preset, cfg.eval_scenes, cfg.seed + 1, "easy"),
    }
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters, {cfg.model.image_size} px -> "
        f"{(cfg.model.image_size // 28) ** 2} image tokens, vocabulary {len(processor.tokenizer)}; "
        f"{cfg.steps} steps x {cfg.batch_size} scenes, {cfg.threads} torch thread(s)")
    model.train()
    t0 = time.time()
    window = {"steps": 0, "scenes": 0, "t": time.time()}
    final: dict = {}
    for step in range(start_step, cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg, step)
        loss, parts = pretrain_loss(model, encoder.encode(stream.examples(step, cfg.batch_size)), encoder, cfg.data)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        for k, v in parts.items():
            window[k] = window.get(k, 0.0) + v
        window["steps"] += 1
        window["scenes"] += cfg.batch_size
        done = step + 1
        elapsed = elapsed_before + time.time() - t0
        if done % cfg.log_every == 0 or done == cfg.steps:
            row = {"step": done, **{k: window[k] / window["steps"] for k in parts}, "lr": lr_at(cfg, step),
                   "max_objects": stream.max_objects(step), "easy_fraction": round(stream.easy_fraction(step), 3),
                   "elapsed_s": round(elapsed, 1),
                   "scenes_per_s": window["scenes"] / (time.time() - window["t"])}
            metrics.log(done, row)
            losses = " ".join(f"{k} {row[k]:.4f}" for k in parts)
            log(f"step {done}/{cfg.steps} {losses} lr {row['lr']:.2e} objects<= {row['max_objects']} "
                f"{row['scenes_per_s']:.1f} scenes/s {elapsed:.0f} s")
            window = {"steps": 0, "scenes": 0, "t": time.time()}
        if done % cfg.eval_every == 0 or done == cfg.steps:
            final = {"step": done, "elapsed_s": round(elapsed, 1)}
            for name, exs in evals.items():
                final.update({f"eval/{name}/{k}": v for k, v in evaluate(model, encoder, exs).items()})
            metrics.log(done, final)
            log("eval " + " ".join(f"{k.removeprefix('eval/')} {v:.3f}" for k, v in final.items()
                                   if k.startswith("eval/") and "/qa_accuracy/" not in k))
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            _save_resume(resume, model, optimizer, done, elapsed)
    save_backbone(model, processor, out, cfg.save_dtype)
    (out / EVAL_FILE).write_text(json.dumps(final, indent=2) + "\n")
    shutil.rmtree(resume, ignore_errors=True)
    return final


def _save_resume(folder: Path, model, optimizer, step: int, elapsed: float) -> None:
    from safetensors.torch import save_model

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding / LM head
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "elapsed_s": elapsed}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def _load_resume(folder: Path, model, optimizer) -> tuple[int, float]:
    from safetensors.torch import load_model

    load_model(model, str(folder / "model.safetensors"))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    state = json.loads((folder / "state.json").read_text())
    return int(state["step"]), float(state["elapsed_s"])


__all__ = [
    "BackboneModelConfig", "PretrainDataConfig", "PretrainConfig", "build_backbone", "save_backbone",
    "scene_example", "ExampleEncoder", "SceneStream", "evaluate", "eval_examples", "pretrain", "patch_targets",
    "relation_targets", "image_inputs", "pretrain_loss",
]
