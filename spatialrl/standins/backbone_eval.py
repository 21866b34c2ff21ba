"""Teacher-free evaluation of a backbone's spatial skills, in the form the reward model uses them.

Nothing that holds the answer is in the context: each question is asked alone, right after the user turn (no
grounding list, no earlier answers), on fresh scenes of any world preset:

    <user> [image] Describe each object and answer the questions. <assistant> is the red circle left of the
    blue square? -> logit(" yes") vs logit(" no")

One question per decisive fact of the scene (`data_pipeline.world.decisive_facts`), with one of its phrasings
chosen at random, half of them asked with the converse word (answer "no"), in the canonical phrasing of each
relation word (the first of `QA_PHRASES`). Reported overall, by the relation word asked, and by the centroid gap
between the two objects in LM image tokens (< 1, 1-2, >= 2; positional words only).

Two more readings of the same model: `match` (the reward instruction with the world's full prompt, every
relation true or 1-2 of them flipped to their converse, judged by logit(yes) - logit(no) at the last prompt
token, which is where SpatialScore reads its hidden state) and `pairs` (dataset-style preference pairs with a
perturbed image, won when the chosen side has the larger yes-no margin); and the grounding of the image tokens
(logit lens at the LM's input: does each object-covered token name its object's colour and shape).

    python -m jobs.eval_backbone --model assets/tiny-pretrained/qwen2_5_vl --world configs/dataset_easy.yaml \
        --seed 7 --scenes 500 --json runs/eval_backbone.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data_pipeline.relations import AXIS, CONVERSE
from data_pipeline.world import PALETTE, SHAPES, decisive_facts, load_world_preset, render, render_labels, sample_scene
from spatialrl.config import ConfigError, repo_path

GAP_BUCKETS = ("<1", "1-2", ">=2")


@dataclass
class BackboneEvalConfig:
    """The `jobs.eval_backbone` config."""

    model: str = "assets/tiny-pretrained/qwen2_5_vl"  # a Qwen2.5-VL folder (Hugging Face layout)
    world: str = "configs/dataset_easy.yaml"  # any world preset (its `world` section is used)
    seed: int = 0
    scenes: int = 500  # fresh scenes for the questions and the match task
    pairs: int = 200  # dataset-style preference pairs (0 = skip)
    batch_size: int = 32
    threads: int = 2
    json: str = ""  # write the result here too ("" = print only)

    def validate(self) -> None:
        check_backbone_folder(self.model)
        if not repo_path(self.world).is_file():
            raise ConfigError(f"world={self.world!r} does not exist; point it at a configs/dataset_*.yaml preset")
        for name in ("scenes", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}: use a value >= 1")
        if self.pairs < 0:
            raise ConfigError(f"pairs={self.pairs}: use 0 (skip) or more")


def check_backbone_folder(folder: str) -> Path:
    """The folder as a Path, or a ConfigError that says what is wrong with it."""
    path = repo_path(folder)
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"model={folder!r} has no config.json: point --model at a Qwen2.5-VL folder in the Hugging "
                          f"Face layout (e.g. assets/tiny-pretrained/qwen2_5_vl)")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ConfigError(f"{config} is not valid JSON ({exc}); the folder is not a saved model") from None
    if model_type != "qwen2_5_vl":
        raise ConfigError(f"model={folder!r} is a {model_type!r} model, not a Qwen2.5-VL (model_type 'qwen2_5_vl'); "
                          f"point --model at a backbone folder")
    return path


def load_eval_backbone(folder: str):
    """(model in float32 eval mode, processor at the model's pretraining resolution)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from spatialrl.models.loader import load_vl_processor

    path = check_backbone_folder(folder)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    size = _image_size(path)
    return model.eval(), load_vl_processor(str(path), min_pixels=size * size, max_pixels=size * size)


def _image_size(path: Path) -> int:
    """The square side the backbone was trained at: its processor's fixed pixel count."""
    proc = json.loads((path / "processor_config.json").read_text()) if (path / "processor_config.json").is_file() else {}
    size = proc.get("image_processor", proc).get("size", {}) if isinstance(proc, dict) else {}
    pixels = size.get("longest_edge") or size.get("max_pixels") or 168 * 168
    return int(round(pixels ** 0.5))


def scene_image(scene, image_size: int) -> Image.Image:
    img = Image.fromarray(render(scene, render_labels(scene)))
    return img if img.size == (image_size,) * 2 else img.resize((image_size,) * 2, Image.BILINEAR)


def relation_questions(rng: np.random.Generator, world, n_scenes: int, image_size: int) -> list[dict]:
    """One yes/no question per decisive fact of each of `n_scenes` fresh scenes (see the module docstring)."""
    from spatialrl.standins.backbone import QA_PHRASES

    grid = image_size // 28
    out = []
    for _ in range(n_scenes):
        scene, m = sample_scene(rng, world)
        image = scene_image(scene, image_size)
        for options in decisive_facts(scene, m, world):
            rel = options[int(rng.integers(len(options)))]
            truth = bool(rng.random() < 0.5)
            word = rel.type if truth else CONVERSE[rel.type]
            a, b = scene.objects[rel.subject], scene.objects[rel.object]
            gap = None
            if AXIS[rel.type] in ("horizontal", "vertical"):
                coord = m.cx if AXIS[rel.type] == "horizontal" else m.cy
                gap = abs(coord[rel.subject] - coord[rel.object]) / scene.canvas * grid
            out.append({"image": image, "text": f" is the {a.colour} {a.shape} {QA_PHRASES[word][0]} the "
                                                f"{b.colour} {b.shape}?", "truth": truth, "word": word, "gap": gap,
                        "pair": (rel.subject, rel.object)})
    return out


@torch.no_grad()
def answer_margins(model, encoder, questions: list[dict], batch_size: int) -> list[float]:
    """logit(" yes") - logit(" no") after each question, asked alone after the pretraining prefix."""
    from spatialrl.standins.backbone import Example, answer_logits

    yes, no = encoder.yes_no
    out: list[float] = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        examples = [Example(q["image"], [(q["text"], False), (" yes", True)], "eval", ["qa"]) for q in chunk]
        logits, _ = answer_logits(model, encoder.encode(examples))  # one trained token per row: [B, V]
        out += (logits[:, yes] - logits[:, no]).tolist()
    return out


@torch.no_grad()
def yes_margin(model, processor, prompts: list[str], images: list, batch_size: int = 32) -> list[float]:
    """logit(" yes") - logit(" no") at the last token of the reward query (the reward model's reading position)."""
    from spatialrl.reward.prompt import reward_text

    tok = processor.tokenizer
    yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in (" yes", " no"))
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        texts = [reward_text(processor, p) for p in prompts[start:start + batch_size]]
        enc = processor(text=texts, images=images[start:start + batch_size], return_tensors="pt", padding=True)
        h = model.model(**enc, use_cache=False, return_dict=True).last_hidden_state[:, -1]  # [B, H], left padded
        logits = model.lm_head(h)  # [B, V]
        out += (logits[:, yes] - logits[:, no]).tolist()
    return out


def match_items(rng: np.random.Generator, world, n: int, image_size: int) -> list[dict]:
    """n fresh scenes with the world's full prompt: true, or with 1 (70%) or 2 relations flipped to the converse."""
    from data_pipeline.prompts import PromptWriter
    from data_pipeline.world import sample_relations

    out = []
    while len(out) < n:
        scene, m = sample_scene(rng, world)
        relations = sample_relations(rng, scene, m, world)
        if not relations:
            continue
        writer = PromptWriter(rng, scene, relations)
        truth = bool(rng.random() < 0.5)
        k = 0 if truth else min(len(relations), 1 if rng.random() < 0.7 else 2)
        flipped = {int(i) for i in rng.choice(len(relations), size=k, replace=False)}
        out.append({"image": scene_image(scene, image_size), "prompt": writer.write(flipped), "truth": truth})
    return out


def pair_items(seed: int, world, n: int, image_size: int) -> list[dict]:
    """n dataset-style preference pairs (`data_pipeline.pairs.make_pair`: the same prompt, a perturbed image)."""
    from data_pipeline.dataset_io import decode_image
    from data_pipeline.pairs import make_pair

    out = []
    for i in range(n):
        row = make_pair(i, seed, "test", world)
        sides = [decode_image(row[k]).convert("RGB").resize((image_size,) * 2, Image.BILINEAR)
                 for k in ("chosen_image", "rejected_image")]
        out.append({"prompt": row["prompt"], "chosen": sides[0], "rejected": sides[1],
                    "k": int(row["num_perturbations"]), "missing": row["category"] == "missing_object",
                    "wrong_shape": row["category"] == "wrong_shape"})
    return out


@torch.no_grad()
def grounding(model, encoder, rng: np.random.Generator, world, n: int, image_size: int) -> dict:
    """Logit lens at the LM's input: object-covered image tokens (>= 50% one object) naming its colour / shape."""
    from spatialrl.standins.backbone import PATCH_WORDS, patch_targets

    colours = [PATCH_WORDS.index(c) for c in PALETTE]
    shapes = [PATCH_WORDS.index(s) for s in SHAPES]
    ok_c, ok_s = [], []
    for start in range(0, n, 32):
        scenes = [sample_scene(rng, world)[0] for _ in range(min(32, n - start))]
        images = [scene_image(s, image_size) for s in scenes]
        targets = np.stack([patch_targets(s, render_labels(s), image_size) for s in scenes])  # [B, T, W]
        pixels = encoder.processor.image_processor(images=images, return_tensors="pt")
        emb = _image_embeddings(model, pixels, len(scenes))  # [B, T, H]
        logits = model.lm_head(model.model.language_model.norm(emb))[..., encoder.patch_word_ids]  # [B, T, W]
        covered = targets[..., colours].sum(-1) * 2 >= 0.5  # an object's share f puts f/2 on its colour word
        pred_c = np.array(colours)[logits[..., colours].argmax(-1).numpy()]
        pred_s = np.array(shapes)[logits[..., shapes].argmax(-1).numpy()]
        true_c = np.array(colours)[targets[..., colours].argmax(-1)]
        true_s = np.array(shapes)[targets[..., shapes].argmax(-1)]
        ok_c += (pred_c == true_c)[covered].tolist()
        ok_s += (pred_s == true_s)[covered].tolist()
    return {"token_colour_accuracy": float(np.mean(ok_c)), "token_shape_accuracy": float(np.mean(ok_s)),
            "n_tokens": len(ok_c)}


def _image_embeddings(model, pixels, batch: int) -> torch.Tensor:
    """The vision tower's output for each image, as the LM receives it: [B, T, H]."""
    out = model.model.get_image_features(pixels["pixel_values"], pixels["image_grid_thw"])
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
    return feats.reshape(batch, -1, feats.shape[-1])


def evaluate_backbone(cfg: BackboneEvalConfig) -> dict:
    """All readings of `cfg.model` on fresh scenes of `cfg.world` (keys: see the module docstring)."""
    from spatialrl.standins.backbone import ExampleEncoder

    torch.set_num_threads(cfg.threads)
    model, processor = load_eval_backbone(cfg.model)
    encoder = ExampleEncoder(processor)
    size = encoder.image_size
    world = load_world_preset(cfg.world)
    questions = relation_questions(np.random.default_rng([cfg.seed, 1]), world, cfg.scenes, size)
    margins = answer_margins(model, encoder, questions, cfg.batch_size)
    hits = [(m > 0) == q["truth"] for q, m in zip(questions, margins)]
    by_relation = {}
    for word in sorted({q["word"] for q in questions}):
        sel = [h for h, q in zip(hits, questions) if q["word"] == word]
        by_relation[word] = {"accuracy": float(np.mean(sel)), "n": len(sel)}
    by_gap = {}
    for bucket in GAP_BUCKETS:
        sel = [h for h, q in zip(hits, questions) if q["gap"] is not None and _bucket(q["gap"]) == bucket]
        by_gap[bucket] = {"accuracy": float(np.mean(sel)) if sel else float("nan"), "n": len(sel)}
    items = match_items(np.random.default_rng([cfg.seed, 2]), world, cfg.scenes, size)
    mm = yes_margin(model, processor, [i["prompt"] for i in items], [i["image"] for i in items], cfg.batch_size)
    result = {
        "model": str(cfg.model), "world": str(cfg.world), "seed": cfg.seed, "scenes": cfg.scenes,
        "question_accuracy": float(np.mean(hits)), "n_questions": len(hits),
        "said_yes_fraction": float(np.mean([m > 0 for m in margins])),
        "by_relation": by_relation, "by_gap": by_gap,
        "match_accuracy": float(np.mean([(m > 0) == i["truth"] for i, m in zip(items, mm)])),
        "grounding": grounding(model, encoder, np.random.default_rng([cfg.seed, 3]), world, min(cfg.scenes, 200), size),
    }
    if cfg.pairs:
        pairs = pair_items(cfg.seed + 90_001, world, cfg.pairs, size)
        prompts = [p["prompt"] for p in pairs]
        c = yes_margin(model, processor, prompts, [p["chosen"] for p in pairs], cfg.batch_size)
        r = yes_margin(model, processor, prompts, [p["rejected"] for p in pairs], cfg.batch_size)
        wins = np.array(c) > np.array(r)
        ks = np.array([p["k"] for p in pairs])
        result["pair_accuracy"] = float(wins.mean())
        result["pair_accuracy_by_perturbations"] = {int(k): float(wins[ks == k].mean()) for k in sorted(set(ks))}
        result["n_pairs"] = len(pairs)
    return result


def _bucket(gap: float) -> str:
    return "<1" if gap < 1 else "1-2" if gap < 2 else ">=2"
