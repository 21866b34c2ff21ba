"""The reward model's input format: the query around each prompt, the processor, and pairs as fixed-shape arrays.

One place for what SpatialScore reads, shared by training (`spatialrl.reward.reader`, the Ray Data stream), scoring
(`spatialrl.reward.scorer`) and the stand-in backbone's jobs. No Ray here: the scorer and the service import it.
"""

from __future__ import annotations

import numpy as np

REWARD_INSTRUCTION = (
    "Look at the image and judge whether it follows every spatial relation in this description: {prompt}"
)
SIDES = ("chosen", "rejected")
PIXEL_KEYS = ("pixel_values",)  # processor outputs indexed by image patch, not by sample



def square_image(img, image_size: int):
    """An RGB PIL image as the model's image_size^2 square: a square image is resized (bilinear); a non-square
    one is letterboxed first (centred on a black square of its longer side), never stretched, so the spatial
    relations it shows keep their geometry."""
    from PIL import Image

    if img.width != img.height:
        side = max(img.width, img.height)
        canvas = Image.new("RGB", (side, side), (0, 0, 0))
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        img = canvas
    return img if img.size == (image_size, image_size) else img.resize((image_size, image_size), Image.BILINEAR)


def reward_text(processor, prompt: str) -> str:
    """The chat-formatted reward query for one prompt (one image slot, generation prompt appended)."""
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": REWARD_INSTRUCTION.format(prompt=prompt)},
    ]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def load_processor(name: str, image_size: int):
    from spatialrl.models.loader import load_vl_processor

    pixels = image_size * image_size
    return load_vl_processor(name, min_pixels=pixels, max_pixels=pixels)


def encode_pairs(processor, image_size: int, prompts: list[str], chosen: list, rejected: list,
                 max_length: int = 640) -> dict[str, np.ndarray]:
    """Processor outputs for a list of pairs as fixed-shape arrays, one row per pair and side.

    Returns {f"{side}_{key}": array [n, ...]}: token-level keys left-padded to `max_length` ([n, max_length]),
    pixel keys as each image's patch rows ([n, P, D]; every image has the same size, so the same P), other
    per-image keys as they are (e.g. image_grid_thw [n, 3]). Fixed shapes keep Ray Data blocks as plain
    tensors (variable-shaped columns cost several times more to move); the collator trims the padding again.
    """
    n = len(prompts)
    texts = [reward_text(processor, p) for p in prompts]
    images = [square_image(img, image_size) for img in chosen + rejected]
    enc = processor(text=texts + texts, images=images, padding="max_length", max_length=max_length,
                    truncation=False, return_tensors="np")
    seq_len = enc["attention_mask"].shape[1]
    if seq_len > max_length:
        raise ValueError(
            f"a prompt needs {seq_len} tokens with its image, more than reader.max_length={max_length}; "
            "raise reader.max_length (prompts are never truncated: the cut relations would be lost)"
        )
    out: dict[str, np.ndarray] = {}
    for key, value in enc.items():
        value = np.asarray(value)
        if key in PIXEL_KEYS:
            value = value.reshape(2 * n, -1, value.shape[-1])  # [2n, P, D]
        for s_i, side in enumerate(SIDES):
            out[f"{side}_{key}"] = value[s_i * n:(s_i + 1) * n]
    return out
