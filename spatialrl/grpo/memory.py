"""Per-role memory of a GRPO config, from the models' published configs on the meta device (no weights, no GPU).

Each role replica holds:
  sampler  the whole FluxPipeline (transformer + LoRA, VAE, CLIP, T5) in `sampler.dtype`; activations of one
           no-grad forward at `sampler.batch_size` (one block's working set) and of the VAE decode
  reward   Qwen2.5-VL (no LM head) + SpatialScore's LoRA + head; activations of one scoring chunk
           (`spatialrl.reward.memory.scoring_bytes_per_row` x `reward.batch_size`)
  learner  the same pipeline as the sampler (its policy copy) plus what training adds: activations kept for the
           backward of one micro-batch (`sampler.batch_size` images; Korthikanti et al. 2022: 34 s h bytes per
           block in 16-bit with flash attention, no activation checkpointing), and per trainable parameter a fp32
           master copy, AdamW's two moments and a fp32 gradient (16 bytes), partitioned over the ranks by ZeRO >= 2
Weights and trainable parameters are exact counts of the modules built from the configs with the project's LoRA
selection (`spatialrl.flux.sampler.add_flux_lora`, `spatialrl.reward.model.apply_lora`); activations are
formula estimates (the GPU suite prints the measured peaks beside them). `jobs.plan --memory` prints them.

    from spatialrl.grpo.memory import role_memory
    mem = role_memory(cfg)                    # {"sampler": RoleMemory, "reward": ..., "learner": ...}
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from spatialrl.config import REPO_ROOT

CONFIGS = REPO_ROOT / "assets" / "configs"
FLUX_DEV = CONFIGS / "flux1-dev"
QWEN_7B = CONFIGS / "qwen2_5_vl_7b_instruct"
BYTES = {"float32": 4, "bfloat16": 2}
OPTIMIZER_BYTES_PER_TRAINABLE = 16  # fp32 master weight, AdamW m and v, fp32 gradient
GIB = 2 ** 30


@dataclass
class RoleMemory:
    weights_bytes: int
    activation_bytes: int
    optimizer_bytes: int
    params: int
    trainable_params: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes + self.optimizer_bytes

    def to_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}

    def line(self) -> str:
        return (f"{self.total_bytes / GIB:.1f} GiB (weights {self.weights_bytes / GIB:.1f}, activations "
                f"{self.activation_bytes / GIB:.1f}, optimizer {self.optimizer_bytes / GIB:.2f}; "
                f"{self.trainable_params / 1e6:.1f}M of {self.params / 1e9:.2f}B parameters trainable)")


def config_folder(name: str, kind: str) -> Path:
    """The folder whose config files describe model `name`: the local model when it is on disk, else, for the
    `full` preset and the real models' hub ids, the published configs shipped in assets/configs."""
    from spatialrl.models.loader import ModelNotFoundError, resolve_model_path

    shipped = {"flux": FLUX_DEV, "qwen": QWEN_7B}[kind]
    real = {"flux": "black-forest-labs/FLUX.1-dev", "qwen": "Qwen/Qwen2.5-VL-7B-Instruct"}[kind]
    try:
        return resolve_model_path(name, kind)
    except ModelNotFoundError:
        if name in ("full", real):
            return shipped
        raise


def flux_on_meta(folder: str | os.PathLike) -> dict:
    """The FluxPipeline's modules built from `folder`'s configs on the meta device: transformer, vae, text_encoder
    (CLIP), text_encoder_2 (T5 encoder)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    folder = Path(folder)
    with init_empty_weights():
        return {
            "transformer": FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(folder / "transformer")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
            "text_encoder_2": T5EncoderModel(T5Config.from_pretrained(folder / "text_encoder_2")),
        }


def qwen_on_meta(folder: str | os.PathLike):
    """Qwen2_5_VLModel (what SpatialScore wraps: no LM head) from `folder`/config.json on the meta device."""
    from accelerate import init_empty_weights
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    with init_empty_weights():
        return Qwen2_5_VLModel(Qwen2_5_VLConfig.from_pretrained(folder))


def count(module) -> tuple[int, int]:
    """(parameters, trainable parameters)."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


@functools.lru_cache(maxsize=8)
def flux_counts(folder: Path, rank: int, alpha: float, targets: tuple[str, ...]) -> tuple[int, int, dict, dict]:
    """(pipeline parameters with the LoRA on `targets`, trainable LoRA parameters, transformer config, VAE config)."""
    from spatialrl.flux.sampler import add_flux_lora

    mods = flux_on_meta(folder)
    for module in mods.values():
        module.requires_grad_(False)
    tr = mods["transformer"]
    add_flux_lora(tr, rank, alpha, targets)
    return (sum(count(m)[0] for m in mods.values()), count(tr)[1], dict(tr.config), dict(mods["vae"].config))


def flux_memory(folder, sampler_cfg, *, train: bool, world_size: int = 1) -> RoleMemory:
    """A sampler (train=False) or learner rank (train=True) replica of `sampler_cfg` on the models in `folder`."""
    from types import SimpleNamespace

    params, trainable, tconf, vconf = flux_counts(Path(folder), sampler_cfg.lora_rank, float(sampler_cfg.lora_alpha),
                                                  tuple(sampler_cfg.lora_targets))
    b = BYTES[sampler_cfg.dtype]
    c = SimpleNamespace(**tconf)
    h = int(c.num_attention_heads * c.attention_head_dim)
    latent = 2 * (sampler_cfg.resolution // 16)  # VAE 8x, rounded to the 2x2 packing
    tokens = (latent // 2) ** 2 + sampler_cfg.max_sequence_length  # image + text tokens of the joint attention
    blocks = int(c.num_layers + c.num_single_layers)
    batch = sampler_cfg.batch_size
    if train:
        activations = int(blocks * 34 * tokens * batch * h * b / 2)
    else:
        forward = 16 * tokens * batch * h * b  # one block's live tensors (norms, q/k/v, attention out, 4h MLP)
        v = SimpleNamespace(**vconf)
        side = sampler_cfg.resolution
        decode = batch * int(v.block_out_channels[0]) * side * side * b * 4  # full-resolution feature maps
        activations = max(forward, decode)
    optimizer = trainable * OPTIMIZER_BYTES_PER_TRAINABLE // max(1, world_size) if train else 0
    return RoleMemory(params * b, activations, optimizer, params, trainable if train else 0)


def reward_memory(backbone: str, reward_cfg, *, image_size: int = 448, text_tokens: int = 160,
                  dtype: str = "bfloat16", lora_rank: int = 16, lora_alpha: int = 32) -> RoleMemory:
    """One reward replica: Qwen2.5-VL + SpatialScore's LoRA and head, scoring chunks of `reward_cfg.batch_size`."""
    from spatialrl.reward.memory import image_tokens, scoring_bytes_per_row
    from spatialrl.reward.model import RewardModelConfig, apply_lora

    model = apply_lora(qwen_on_meta(config_folder(backbone, "qwen")),
                       RewardModelConfig(backbone=backbone, lora_rank=lora_rank, lora_alpha=lora_alpha))
    params, _ = count(model)
    b = BYTES[dtype]
    hidden = int(model.get_base_model().config.text_config.hidden_size)
    params += 2 * hidden + 2  # the Gaussian head
    seq = image_tokens(model.get_base_model().config, image_size) + text_tokens
    per_row = scoring_bytes_per_row(model.get_base_model().config, seq, image_size, b)
    return RoleMemory(params * b, per_row * reward_cfg.batch_size, 0, params, 0)


def reward_checkpoint_backbone(checkpoint: str) -> tuple[str, int] | None:
    """(backbone, image_size) of a SpatialScore checkpoint folder, or None when there is none to read."""
    meta = Path(checkpoint) / "spatialscore_config.json" if checkpoint else None
    if not meta or not meta.is_file():
        return None
    data = json.loads(meta.read_text())
    return data.get("backbone_path") or data["config"]["backbone"], int(data["image_size"])


def role_memory(cfg, reward_backbone: str | None = None, reward_image_size: int | None = None) -> dict[str, RoleMemory]:
    """Per-replica memory of each GRPO role for a `GRPOJobConfig` (reward backbone: the checkpoint's, else
    `reward_backbone`, else Qwen2.5-VL-7B)."""
    s = cfg.sampler
    folder = config_folder(s.model, "flux")
    found = reward_checkpoint_backbone(cfg.reward.checkpoint)
    backbone = reward_backbone or (found[0] if found else "full")
    image_size = reward_image_size or (found[1] if found else 448)
    ranks = max(1, cfg.cluster.learner.count)
    out = {"sampler": flux_memory(folder, s, train=False),
           "learner": flux_memory(folder, s, train=True, world_size=ranks if cfg.learner.zero_stage >= 2 else 1)}
    if cfg.reward.source == "spatialscore":
        out["reward"] = reward_memory(backbone, cfg.reward, image_size=image_size, dtype=s.dtype)
    return out
