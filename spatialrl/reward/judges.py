"""Judges of generated images, each a plain class behind one interface: SpatialScore, the pixel verifier, a VLM.

    panel = JudgePanel(JudgeConfig(judges=["verifier", "vlm"], vlm_model="tiny-pretrained"))
    results = panel.judge(items, images)   # one {"scores": {metric: float}, "questions": [...]} per image

`judge(items, images)` takes one `data_pipeline.benchmarks.BenchmarkItem` per image (uint8 HWC RGB) and returns
per-image metrics under namespaced keys:
- `SpatialScoreJudge` (any SpatialScore checkpoint): `spatialscore` = the head's mu, as `SpatialScorer` returns it.
- `VerifierJudge` (only where the item carries the world's structured `objects` / `relations`):
  `verifier/relation_accuracy`, `verifier/object_presence`, `verifier/all_correct`.
- `VLMJudge`: asks a local Qwen2.5-VL each of the item's yes/no questions (TIIF's and DPG-Bench's lists, or the
  questions the loader built; one about the whole prompt when there are none) and reads P(yes) from the logits of
  the first answer token: P(yes) = sum of p over the "yes" spellings / (that + the same over "no"). `vlm` = the share
  of questions answered as expected (P(yes) > 0.5 counts as yes; DPG-Bench's rule: a question whose parent was not
  answered yes scores 0), `vlm/soft` = the mean probability of the expected answer, `vlm/cat/<c>` = `vlm` over the
  questions of category c. It is also the zero-shot baseline of the paper's Table 1 (`jobs.eval_reward`).

Offline only: a judge model that is not on disk raises `ModelNotFoundError` with the download command (from
`spatialrl.models.loader`). Ray wraps `JudgePanel` in `actors/evaluate_pools.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import Image

from data_pipeline.benchmarks import BenchmarkItem, Question, prompt_question
from spatialrl.config import ConfigError

JUDGES = ("spatialscore", "verifier", "vlm")
YES_WORDS = ("Yes", "yes", " Yes", " yes")
NO_WORDS = ("No", "no", " No", " no")
QUESTION_SUFFIX = " Answer yes or no."


@dataclass
class JudgeConfig:
    """Which judges run and on what. `judges` empty = the defaults for the benchmark (the job picks them)."""

    judges: list[str] = field(default_factory=list)
    spatialscore: str | None = None  # a SpatialScore checkpoint folder (jobs.train_reward's final/)
    vlm_model: str = "tiny-pretrained"  # preset, hub id or folder of a Qwen2.5-VL (Qwen/Qwen2.5-VL-7B-Instruct)
    vlm_pixels: int | None = None  # fix the VLM's pixels per image (None: its processor's own range)
    batch_size: int = 8
    device: str = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"

    def validate(self) -> None:
        bad = [j for j in self.judges if j not in JUDGES]
        if bad:
            raise ConfigError(f"judges.judges: {bad} unknown; choose from {list(JUDGES)}")
        if "spatialscore" in self.judges and not self.spatialscore:
            raise ConfigError("judges.spatialscore: the spatialscore judge needs a checkpoint folder "
                              "(--spatialscore runs/reward/final)")
        if self.batch_size < 1:
            raise ConfigError(f"judges.batch_size={self.batch_size}: use 1 or more")
        if self.vlm_pixels is not None and self.vlm_pixels < 28 * 28:
            raise ConfigError(f"judges.vlm_pixels={self.vlm_pixels}: use at least 784 (one 28x28 patch) or null")


def _device(device: str) -> torch.device:
    return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                        "cpu" if device == "auto" else device)


# ------------------------------------------------------------------------------------------------ pure scoring


def gate_dependencies(questions: list[Question], correct: list[bool]) -> list[bool]:
    """DPG-Bench's rule: a question counts only if every question it depends on (by qid) was answered right."""
    ok = {q.qid: c for q, c in zip(questions, correct)}
    return [c and all(ok.get(d, True) for d in q.depends_on) for q, c in zip(questions, correct)]


def question_scores(questions: list[Question], p_yes: list[float]) -> tuple[dict[str, float], list[dict]]:
    """Per-image VLM metrics from P(yes) per question (see the module docstring), and per-question details."""
    said_yes = [p > 0.5 for p in p_yes]
    right = [s == (q.expected == "yes") for q, s in zip(questions, said_yes)]
    gated = gate_dependencies(questions, right)
    soft = [p if q.expected == "yes" else 1.0 - p for q, p in zip(questions, p_yes)]
    scores = {"vlm": float(np.mean(gated)), "vlm/soft": float(np.mean(soft))}
    for c in sorted({c for q in questions for c in q.categories}):
        scores[f"vlm/cat/{c}"] = float(np.mean([g for q, g in zip(questions, gated) if c in q.categories]))
    details = [{"q": q.text, "expected": q.expected, "p_yes": round(float(p), 6), "counted": bool(g)}
               for q, p, g in zip(questions, p_yes, gated)]
    return scores, details


# ------------------------------------------------------------------------------------------------ judges


class VLMJudge:
    """P(yes) of a local Qwen2.5-VL for (question, image) pairs, read from the first answer token's logits."""

    name = "vlm"

    def __init__(self, model: str = "tiny-pretrained", *, pixels: int | None = None, batch_size: int = 8,
                 device: str = "auto", dtype: str = "float32"):
        from spatialrl.models.loader import load_vl_model, load_vl_processor

        self.device = _device(device)
        self.processor = load_vl_processor(model, min_pixels=pixels, max_pixels=pixels)
        self.model = load_vl_model(model, dtype=getattr(torch, dtype)).to(self.device).eval()
        self.batch_size = batch_size
        tok = self.processor.tokenizer
        first = lambda words: sorted({tok(w, add_special_tokens=False)["input_ids"][0] for w in words})  # noqa: E731
        self.yes_ids, self.no_ids = first(YES_WORDS), first(NO_WORDS)
        if set(self.yes_ids) & set(self.no_ids):
            raise ValueError(f"the tokenizer of {model} maps a yes and a no spelling to the same first token")

    def text(self, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                      "text": question.strip() + QUESTION_SUFFIX}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.inference_mode()
    def p_yes(self, questions: list[str], images: list) -> np.ndarray:
        """P(yes) for each (question, image) pair, float64 [N], in order."""
        if len(questions) != len(images):
            raise ValueError(f"{len(questions)} questions for {len(images)} images; pass one image per question")
        out = []
        for s in range(0, len(questions), self.batch_size):
            texts = [self.text(q) for q in questions[s:s + self.batch_size]]
            pil = [Image.fromarray(im) if isinstance(im, np.ndarray) else im.convert("RGB")
                   for im in images[s:s + self.batch_size]]
            enc = self.processor(text=texts, images=pil, padding=True, return_tensors="pt").to(self.device)
            logits = self.model(**enc, use_cache=False, logits_to_keep=1).logits[:, -1].float()  # [B, V], left pad
            probs = torch.softmax(logits, dim=-1)
            yes, no = probs[:, self.yes_ids].sum(-1), probs[:, self.no_ids].sum(-1)  # [B]
            out.append((yes / (yes + no).clamp_min(1e-30)).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def judge(self, items: list[BenchmarkItem], images: list) -> list[dict]:
        asked = [it.questions or [prompt_question(it.prompt)] for it in items]
        flat_q = [q.text for qs in asked for q in qs]
        flat_i = [im for qs, im in zip(asked, images) for _ in qs]
        p = self.p_yes(flat_q, flat_i).tolist()
        results, at = [], 0
        for qs in asked:
            scores, details = question_scores(qs, p[at:at + len(qs)])
            results.append({"scores": scores, "questions": details})
            at += len(qs)
        return results


class SpatialScoreJudge:
    """SpatialScore's mu for each (prompt, image), from any checkpoint folder."""

    name = "spatialscore"

    def __init__(self, checkpoint: str, *, batch_size: int = 8, device: str = "auto"):
        from spatialrl.reward.scorer import SpatialScorer

        self.scorer = SpatialScorer.from_checkpoint(checkpoint, device=device, batch_size=batch_size)

    def judge(self, items: list[BenchmarkItem], images: list) -> list[dict]:
        mu = self.scorer.score([it.prompt for it in items], list(images))
        return [{"scores": {"spatialscore": float(m)}} for m in mu]


class VerifierJudge:
    """The pixel verifier of the spatial world; no scores for items without structured objects and relations."""

    name = "verifier"

    def judge(self, items: list[BenchmarkItem], images: list) -> list[dict]:
        from data_pipeline.verifier import margins_for, verify

        out = []
        for it, img in zip(items, images):
            objs, rels = it.meta.get("objects"), it.meta.get("relations")
            if not objs or rels is None:
                out.append({"scores": {}})
                continue
            res = verify(np.asarray(img), objs, rels, margins_for(img.shape[0]))
            out.append({"scores": {
                "verifier/relation_accuracy": float(np.mean(res.relations_hold)) if rels else math.nan,
                "verifier/object_presence": float(np.mean(res.objects_present)),
                "verifier/all_correct": float(all(res.objects_present) and res.all_hold),
            }})
        return out


def build_judge(name: str, cfg: JudgeConfig):
    if name == "vlm":
        return VLMJudge(cfg.vlm_model, pixels=cfg.vlm_pixels, batch_size=cfg.batch_size, device=cfg.device,
                        dtype=cfg.dtype)
    if name == "spatialscore":
        return SpatialScoreJudge(cfg.spatialscore, batch_size=cfg.batch_size, device=cfg.device)
    if name == "verifier":
        return VerifierJudge()
    raise ValueError(f"unknown judge {name!r}; choose from {list(JUDGES)}")


class JudgePanel:
    """Every configured judge over the same images; one merged result per image."""

    def __init__(self, cfg: JudgeConfig):
        cfg.validate()
        if not cfg.judges:
            raise ValueError("JudgePanel needs at least one judge in cfg.judges")
        self.judges = [build_judge(n, cfg) for n in cfg.judges]

    def judge(self, items: list[BenchmarkItem], images) -> list[dict]:
        images = list(images)
        if len(items) != len(images):
            raise ValueError(f"{len(items)} items for {len(images)} images; pass one item per image")
        merged = [{"scores": {}, "questions": []} for _ in images]
        for j in self.judges:
            for m, r in zip(merged, j.judge(items, images)):
                m["scores"].update(r["scores"])
                m["questions"] += r.get("questions", [])
        return merged

    def judge_trajectory(self, trajectory, items: list[BenchmarkItem]) -> tuple[np.ndarray, list[dict]]:
        """Judge a FluxSampler trajectory's images (passed actor to actor, never through the driver) and return
        (images, results): the driver gets the pixels once, without the latents."""
        images = trajectory.images  # [N, H, W, 3] uint8
        return images, self.judge(items, images)
