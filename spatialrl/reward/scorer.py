"""SpatialScorer: the one way to score (prompt, image) pairs with SpatialScore, for every caller.

The eval job, the Ray Serve deployment and the GRPO reward workers all wrap this plain class:

    scorer = SpatialScorer.from_checkpoint("runs/rm/final", device="auto", batch_size=16)
    scores = scorer.score(prompts, images)      # np.ndarray [N] float32: the Gaussian head's mu
    baseline = SpatialScorer.untrained("tiny")  # fresh LoRA + head: the "no training" row of the eval table

Images are PIL images or uint8 HWC RGB arrays. They are prepared by `encode_items`, which is the training
reader's recipe (`spatialrl.reward.reader`): RGB, bilinear resize to the checkpoint's square image size (a non-square image letterboxed), the
same chat-formatted instruction (`reward_text`), the same processor with the pixel count fixed, left padding.
So a pair scored here gets the same mu as in the training batch (tests/test_reward_model.py checks 1e-5).
Scoring runs under torch.inference_mode in chunks of `batch_size`; with left padding a row's score does not
depend on what else is in its chunk. `max_batch_bytes` sizes the chunks by memory instead: as many rows as fit the
byte budget by `spatialrl.reward.memory.scoring_bytes_per_row` at the call's longest prompt (so a GPU scores
in the largest chunks it holds, whatever the image size and prompt length).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spatialrl.reward.model import RewardModelConfig, SpatialRewardModel, config_from_meta, read_checkpoint_meta


def as_rgb_image(image, image_size: int) -> Image.Image:
    """A PIL image or uint8 HWC array as an RGB PIL image of image_size^2, as the reader prepares it
    (`square_image`: bilinear resize, a non-square image letterboxed, never stretched)."""
    from spatialrl.reward.prompt import square_image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(
                f"image array of dtype {image.dtype} and shape {image.shape}: pass uint8 RGB in HWC layout "
                f"(e.g. (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy() for a CHW float tensor)"
            )
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a uint8 HWC numpy array, got {type(image).__name__}")
    if image.mode != "RGB":
        image = image.convert("RGB")  # the reader decodes with .convert("RGB") too
    return square_image(image, image_size)


def encode_items(processor, image_size: int, prompts: list[str], images: list) -> dict[str, torch.Tensor]:
    """Processor inputs for single (prompt, image) items, prepared exactly as the training reader does."""
    from spatialrl.reward.prompt import reward_text

    if len(prompts) != len(images):
        raise ValueError(f"got {len(prompts)} prompts and {len(images)} images; pass one image per prompt")
    texts = [reward_text(processor, p) for p in prompts]
    pil = [as_rgb_image(img, image_size) for img in images]
    enc = processor(text=texts, images=pil, padding=True, return_tensors="pt")
    return dict(enc)


class SpatialScorer:
    """Scores (prompt, image) pairs with a reward model: mu of the head, higher = follows the prompt better."""

    def __init__(self, model: SpatialRewardModel, processor, *, batch_size: int = 16, device: str = "auto",
                 max_batch_bytes: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if max_batch_bytes is not None and max_batch_bytes <= 0:
            raise ValueError(f"max_batch_bytes must be > 0 (or None for a fixed batch_size); got {max_batch_bytes}")
        self.device = _pick_device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.image_size = model.cfg.image_size
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.last_chunk_rows = batch_size  # the chunk size the last score() call used

    @classmethod
    def from_checkpoint(
        cls, ckpt_dir: str | os.PathLike, device: str = "auto", dtype: str | torch.dtype | None = None,
        batch_size: int = 16, max_batch_bytes: int | None = None,
    ) -> "SpatialScorer":
        """Load a `SpatialRewardModel.save_pretrained` folder. `dtype` None = the dtype it was trained in."""
        from spatialrl.reward.prompt import load_processor

        meta = read_checkpoint_meta(Path(ckpt_dir))
        cfg = config_from_meta(meta, Path(ckpt_dir))
        model = SpatialRewardModel.from_pretrained(ckpt_dir, dtype=dtype)
        return cls(model, load_processor(cfg.backbone, cfg.image_size), batch_size=batch_size, device=device,
                   max_batch_bytes=max_batch_bytes)

    @classmethod
    def untrained(
        cls, backbone: str | None = None, cfg: RewardModelConfig | None = None, seed: int = 0,
        device: str = "auto", batch_size: int = 16,
    ) -> "SpatialScorer":
        """A fresh reward model: LoRA B = 0 (so the backbone as loaded) and a random head seeded by `seed`.

        `backbone` overrides `cfg.backbone`; with neither given it is the "tiny" fixture.
        """
        from dataclasses import replace

        from spatialrl.reward.prompt import load_processor

        cfg = cfg or RewardModelConfig()
        if backbone is not None:
            cfg = replace(cfg, backbone=backbone)
        model = SpatialRewardModel(cfg, seed=seed)
        return cls(model, load_processor(cfg.backbone, cfg.image_size), batch_size=batch_size, device=device)

    @torch.inference_mode()
    def score(self, prompts: list[str], images: list) -> np.ndarray:
        """mu for each (prompt, image), as float32 [N], in the order given."""
        if len(prompts) != len(images):
            raise ValueError(f"got {len(prompts)} prompts and {len(images)} images; pass one image per prompt")
        out = []
        rows = self.chunk_rows(prompts, images) if len(prompts) else self.batch_size
        self.last_chunk_rows = rows
        for start in range(0, len(prompts), rows):
            chunk = slice(start, start + rows)
            enc = encode_items(self.processor, self.image_size, list(prompts[chunk]), list(images[chunk]))
            mu, _ = self.model(**enc)  # [n]
            out.append(mu.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


    def chunk_rows(self, prompts: list[str], images: list) -> int:
        """Rows per scoring chunk: `batch_size`, or with `max_batch_bytes` the rows whose estimated activations fit
        the budget at the longest prompt's sequence length (at least 1)."""
        if self.max_batch_bytes is None:
            return self.batch_size
        from spatialrl.reward.memory import scoring_bytes_per_row

        longest = max(range(len(prompts)), key=lambda i: len(prompts[i]))
        enc = encode_items(self.processor, self.image_size, [prompts[longest]], [images[longest]])
        seq_len = int(enc["input_ids"].shape[1])
        dtype_bytes = next(self.model.base_model.parameters()).element_size()
        per_row = scoring_bytes_per_row(self.model.base_model.config, seq_len, self.image_size, dtype_bytes)
        return max(1, int(self.max_batch_bytes // per_row))


def _pick_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
