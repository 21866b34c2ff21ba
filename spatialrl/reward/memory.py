"""Memory of the reward model (Qwen2.5-VL + LoRA + head), estimated from its config: no weights, no device.

Two uses: `SpatialScorer` sizes its scoring chunks by a byte budget (`max_batch_bytes`) instead of a fixed count,
and the per-role memory estimate (`spatialrl.grpo.memory`, printed by `jobs.plan`) counts the reward role's
activations. Weights and trainable parameters are counted exactly on a meta-device model elsewhere
(`spatialrl.grpo.memory`); here only the activation side, which depends on the batch and the sequence.

Inference peak per row (under `torch.inference_mode`, `use_cache=False`): the widest layer's live tensors, as
elements per token: the LM decoder layer holds the residual and its norm, q, k, v, the attention output and the
MLP's gate, up and activated products (6 h + 2 kv + 3 I); a vision block the same with its own widths, over the
image's patches (before the 2x2 merge); plus the attention scores of the math kernel (heads x L^2, fp32), which
the flash / efficient kernels do not store. The estimate is an upper bound of what those kernels need: the GPU
suite (`bench/gpu_suite.py`) prints it beside the measured peak per row.

    from spatialrl.reward.memory import scoring_bytes_per_row
    per_row = scoring_bytes_per_row(model.base_model.config, seq_len=356, image_size=448, dtype_bytes=2)
"""

from __future__ import annotations


def _text(config):
    return getattr(config, "text_config", None) or config


def image_patches(config, image_size: int) -> int:
    """Vision-tower patches of one square image_size^2 image (before the spatial merge)."""
    vision = config.vision_config
    return (int(image_size) // int(vision.patch_size)) ** 2


def image_tokens(config, image_size: int) -> int:
    """LM tokens one image becomes (patches / merge^2)."""
    return image_patches(config, image_size) // int(config.vision_config.spatial_merge_size) ** 2


def scoring_bytes_per_row(config, seq_len: int, image_size: int, dtype_bytes: int = 2,
                          attention_scores: bool = True) -> int:
    """Peak activation bytes one (prompt, image) row adds to a scoring forward (inference, no KV cache)."""
    text = _text(config)
    h, inter = int(text.hidden_size), int(text.intermediate_size)
    heads = int(text.num_attention_heads)
    kv = int(text.num_key_value_heads) * (h // heads)
    lm = seq_len * (6 * h + 2 * kv + 3 * inter) * dtype_bytes
    vision = config.vision_config
    hv, iv = int(vision.hidden_size), int(vision.intermediate_size)
    patches = image_patches(config, image_size)
    vit = patches * (6 * hv + 3 * iv) * dtype_bytes
    scores = 0
    if attention_scores:  # the math kernel's [heads, L, L] fp32 scores, LM and vision (full-attention blocks)
        scores = max(heads * seq_len ** 2, int(vision.num_heads) * patches ** 2) * 4
    embeds = seq_len * h * dtype_bytes + patches * hv * dtype_bytes  # inputs_embeds and the patch embeddings
    return int(lm + vit + scores + embeds)
