"""SpatialScore, the reward model: Qwen2.5-VL backbone + LoRA on the language model + an fp32 reward head.

    image + chat-formatted prompt -> Qwen2_5_VLModel (no lm_head) -> hidden state at the last real token
        -> head -> mu (the score) and, for the Gaussian head, log sigma (HPSv3's uncertainty)

Follows HPSv3 (docs/architecture.md section 3) with these departures:
- LoRA on the language model only, by default, instead of HPSv3's full fine-tune; `full_finetune=True` trains
  the whole backbone (vision tower and merger included, as HPSv3's release does). The LoRA targets are a
  regex anchored on `language_model.layers.N.(self_attn|mlp)`, because the vision MLP reuses the names
  gate_proj / up_proj / down_proj and a plain name list would put LoRA on the ViT too.
- The reward is read at the last token of the prompt (no added `<|Reward|>` token, so no vocabulary change).
  The processor pads left, so that is position -1; right padding works too (the last attended position).
- Chosen and rejected go through one concatenated [2B] batch (`spatialrl.reward.reader.PairCollator`), not two
  passes; the uncertainty loss uses quadrature, not Monte Carlo (`spatialrl.reward.losses`).
Every processor key (input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids, ...) goes to
the backbone: without mm_token_type_ids Qwen2.5-VL silently falls back from 3-D M-RoPE to 1-D positions.

A checkpoint folder (`save_pretrained` / `from_pretrained`):
    spatialscore_config.json   RewardModelConfig, the resolved backbone folder, image size, instruction version
    reward_head.safetensors    the head (fp32)
    adapter_config.json        LoRA: a stock peft adapter, loadable with
    adapter_model.safetensors    peft.PeftModel.from_pretrained(Qwen2_5_VLModel.from_pretrained(backbone), dir)
    backbone/                  full fine-tune instead of the adapter: the whole Qwen2_5_VLModel, safetensors
The processor is never saved: it is the backbone's (`cfg.backbone`), with the pixel count fixed to image_size^2.

    from spatialrl.reward.model import RewardModelConfig, SpatialRewardModel
    model = SpatialRewardModel(RewardModelConfig(backbone="tiny"))
    loss, metrics = model.pair_loss(batch)        # batch from spatialrl.reward.reader.PairCollator
    model.save_pretrained("runs/rm/final"); SpatialRewardModel.from_pretrained("runs/rm/final")

Tests: .venv/bin/python -m pytest tests/test_reward_model.py -q
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from spatialrl.config import ConfigError
from spatialrl.reward.losses import bradley_terry_loss, pairwise_accuracy, uncertainty_bt_loss

CONFIG_FILE = "spatialscore_config.json"
HEAD_FILE = "reward_head.safetensors"
BACKBONE_DIR = "backbone"
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Batch entries that describe the pair, not the model input (added by PairCollator); everything else is passed on.
META_KEYS = ("num_perturbations", "pair_id")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class CheckpointError(ValueError):
    """A reward-model checkpoint folder that is missing, incomplete or incompatible; the message says the fix."""


@dataclass
class RewardModelConfig:
    backbone: str = "tiny"  # folder, preset or hub id (spatialrl.models.loader), e.g. "full" = Qwen2.5-VL-7B
    image_size: int = 112  # square side the images are resized to (multiple of 28); must match the reader's
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))  # language model only
    full_finetune: bool = False  # train the whole backbone instead of LoRA (saved as backbone/ safetensors)
    head: Literal["gaussian", "scalar"] = "gaussian"  # gaussian = (mu, log sigma); scalar = mu only
    loss: Literal["uncertainty", "bt"] = "uncertainty"  # uncertainty needs the gaussian head; bt uses mu only
    head_hidden: int = 0  # 0 = one Linear; > 0 = Linear -> GELU -> Linear with this width
    dtype: Literal["float32", "bfloat16"] = "float32"  # backbone dtype; LoRA and the head stay fp32
    gradient_checkpointing: bool = False  # non-reentrant activation checkpointing (active in train mode)

    def validate(self) -> None:
        if self.image_size <= 0 or self.image_size % 28:
            raise ConfigError(
                f"reward_model.image_size={self.image_size}: use a positive multiple of 28 (patch 14 x merge 2), "
                f"and the same value as reader.image_size"
            )
        if self.loss == "uncertainty" and self.head != "gaussian":
            raise ConfigError(
                "reward_model.loss=uncertainty needs reward_model.head=gaussian (it learns log sigma); "
                "set head=gaussian, or loss=bt for the scalar head"
            )
        if self.head_hidden < 0:
            raise ConfigError(f"reward_model.head_hidden={self.head_hidden}: use 0 (a Linear head) or a width > 0")
        if self.full_finetune:
            return
        if self.lora_rank <= 0:
            raise ConfigError(f"reward_model.lora_rank={self.lora_rank}: use a rank > 0, or full_finetune=true")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"reward_model.lora_dropout={self.lora_dropout}: use a value in [0, 1)")
        bad = [t for t in self.lora_targets if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", t)]
        if not self.lora_targets or bad:
            raise ConfigError(
                f"reward_model.lora_targets={self.lora_targets}: give plain module names such as "
                f"{list(DEFAULT_LORA_TARGETS)} (they are restricted to the language model for you)"
            )


def lora_target_regex(targets: list[str] | tuple[str, ...]) -> str:
    """A peft `target_modules` regex (peft full-matches it against module names) for the language model only.

    Matches `language_model.layers.N.self_attn.q_proj` (Qwen2_5_VLModel) and `model.language_model.layers...`
    (the ...ForConditionalGeneration layout), never `visual.blocks.N.mlp.gate_proj` or the merger.
    """
    names = "|".join(re.escape(t) for t in targets)
    return rf"(?:.*\.)?language_model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{names})"


def last_token_index(attention_mask: torch.Tensor | None, seq_len: int) -> torch.Tensor | int:
    """Index of each row's last real token: the largest position with attention_mask 1 ([N]).

    With left padding (the project default) this is seq_len - 1 for every row; with right padding it is
    each row's length - 1. Without a mask every position is real.
    """
    if attention_mask is None:
        return seq_len - 1
    positions = torch.arange(seq_len, device=attention_mask.device)  # [L]
    return (attention_mask.long() * positions).argmax(dim=-1)  # [N]


def instruction_version() -> tuple[str, str]:
    """The reward query's instruction text and a short hash of it, stored with every checkpoint."""
    from spatialrl.reward.prompt import REWARD_INSTRUCTION

    return REWARD_INSTRUCTION, hashlib.sha1(REWARD_INSTRUCTION.encode()).hexdigest()[:12]


class RewardHead(nn.Module):
    """fp32 head on the pooled hidden state: [N, H] -> [N, out]. Last layer init N(0, 1/(d+1)), bias 0."""

    def __init__(self, hidden_size: int, out_dim: int, head_hidden: int = 0):
        super().__init__()
        if head_hidden:
            self.net = nn.Sequential(nn.Linear(hidden_size, head_hidden), nn.GELU(), nn.Linear(head_hidden, out_dim))
        else:
            self.net = nn.Sequential(nn.Linear(hidden_size, out_dim))
        last = self.net[-1]
        nn.init.normal_(last.weight, std=1.0 / (last.in_features + 1))  # small initial rewards (OpenRLHF, ImageReward)
        nn.init.zeros_(last.bias)
        self.float()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled.float())


class SpatialRewardModel(nn.Module):
    """The reward model. `forward(**processor_batch) -> (mu [N], log_sigma [N] or None)`.

    Built on the CPU in eval mode, deterministically for a given `seed` (LoRA A and head init); call `.train()`
    before training (LoRA dropout and activation checkpointing only act in train mode) and `.to(device)`.
    `backbone` is for `from_pretrained`: an already loaded (and possibly adapter-wrapped) Qwen2_5_VLModel.
    """

    def __init__(self, cfg: RewardModelConfig, *, seed: int = 0, backbone: nn.Module | None = None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.backbone = backbone if backbone is not None else _build_backbone(cfg)
            hidden = _text_hidden_size(self.base_model.config)
            self.head = RewardHead(hidden, 2 if cfg.head == "gaussian" else 1, cfg.head_hidden)
        if cfg.gradient_checkpointing:
            _enable_checkpointing(self.base_model)
        params = inspect.signature(type(self.base_model).forward).parameters.values()
        self._input_names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        self.eval()

    # ------------------------------------------------------------------------------------------- structure

    @property
    def base_model(self) -> nn.Module:
        """The Qwen2_5_VLModel itself (inside the peft wrapper when there is one)."""
        from peft import PeftModel

        return self.backbone.get_base_model() if isinstance(self.backbone, PeftModel) else self.backbone

    @property
    def backbone_path(self) -> str:
        """The folder the backbone weights came from (the resolved `cfg.backbone`)."""
        return str(self.base_model.name_or_path)

    def lora_module_names(self) -> list[str]:
        """Names of the modules carrying a LoRA adapter (relative to the Qwen2_5_VLModel)."""
        return [n for n, m in self.base_model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0]

    def parameter_counts(self) -> dict[str, int]:
        return {
            "trainable": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in self.parameters()),
        }

    # ------------------------------------------------------------------------------------------- compute

    def forward(self, **batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Score every row of a processor batch: mu [N] and log_sigma [N] (None for the scalar head), fp32.

        Every batch entry except the pair metadata (`META_KEYS`) goes to the backbone, moved to its device;
        a key the backbone does not accept is an error, never silently dropped.
        """
        device = next(self.head.parameters()).device
        inputs = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items() if k not in META_KEYS}
        if "input_ids" not in inputs:
            raise ValueError(f"batch has no input_ids (keys: {sorted(batch)}); pass the processor's output as is")
        unknown = sorted(set(inputs) - self._input_names)
        if unknown:  # the backbone's **kwargs would swallow them silently
            raise ValueError(
                f"batch keys {unknown} are not inputs of {type(self.base_model).__name__}.forward; pass the "
                f"processor's keys as they are, and add pair metadata to META_KEYS ({list(META_KEYS)})"
            )
        out = self.backbone(**inputs, use_cache=False, return_dict=True)
        hidden = out.last_hidden_state  # [N, L, H]
        last = last_token_index(inputs.get("attention_mask"), hidden.shape[1])  # [N]
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [N, H]
        y = self.head(pooled)  # [N, 1 or 2], fp32
        return y[:, 0], (y[:, 1] if self.cfg.head == "gaussian" else None)

    def pair_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The configured pairwise loss on a [2B] batch (rows 0..B-1 chosen, B..2B-1 rejected) and its metrics.

        Under DDP call the wrapper instead (`pair_loss_from_scores(*ddp_model(**batch), cfg.loss)`): calling
        `ddp_model.module.pair_loss` would bypass DDP's forward and its gradient synchronisation.
        """
        mu, log_sigma = self(**batch)
        return pair_loss_from_scores(mu, log_sigma, self.cfg.loss)

    # ------------------------------------------------------------------------------------------ save / load

    def save_pretrained(self, out_dir: str | os.PathLike) -> Path:
        """Write the checkpoint folder described in the module docstring; returns it.

        Call on the unwrapped module (not a DDP/DeepSpeed engine), with full parameters on this rank.
        """
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.cfg.full_finetune:
            self.base_model.save_pretrained(out / BACKBONE_DIR)
        else:
            self.backbone.save_pretrained(out)  # adapter_config.json + adapter_model.safetensors
        head = {k: v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head, out / HEAD_FILE)
        instruction, version = instruction_version()
        meta = {
            "format": "spatialscore",
            "format_version": FORMAT_VERSION,
            "config": asdict(self.cfg),
            "backbone_path": self.backbone_path,
            "image_size": self.cfg.image_size,
            "hidden_size": self.head.net[0].in_features,
            "instruction_version": version,
            "instruction": instruction,
        }
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(
        cls,
        ckpt_dir: str | os.PathLike,
        *,
        trainable: bool = False,
        dtype: str | torch.dtype | None = None,
        backbone: str | None = None,
    ) -> "SpatialRewardModel":
        """Restore a `save_pretrained` folder (same scores). `trainable` keeps LoRA trainable (to resume);
        `dtype` overrides the saved backbone dtype; `backbone` overrides the base model (folder/preset/hub id)."""
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import Qwen2_5_VLModel

        from spatialrl.models.loader import check_safe_weights, load_vl_model

        ckpt = Path(ckpt_dir)
        meta = read_checkpoint_meta(ckpt)
        cfg = config_from_meta(meta, ckpt)
        if backbone is not None:
            cfg.backbone = backbone
        if dtype is not None:
            cfg.dtype = dtype if isinstance(dtype, str) else _dtype_name(dtype)
        if cfg.dtype not in DTYPES:
            raise ValueError(f"dtype {cfg.dtype!r} is not supported; use one of {list(DTYPES)}")
        torch_dtype = DTYPES[cfg.dtype]
        if cfg.full_finetune:
            if not (ckpt / BACKBONE_DIR / "config.json").is_file():
                raise CheckpointError(f"{ckpt} is a full fine-tune checkpoint but {ckpt / BACKBONE_DIR} is missing")
            net = load_vl_model(ckpt / BACKBONE_DIR, dtype=torch_dtype, model_cls=Qwen2_5_VLModel)
            net.requires_grad_(trainable)
        else:
            if not (ckpt / "adapter_config.json").is_file():
                raise CheckpointError(f"{ckpt} has no adapter_config.json: not a LoRA reward-model checkpoint")
            base = load_vl_model(cfg.backbone, dtype=torch_dtype, model_cls=Qwen2_5_VLModel)
            check_safe_weights(ckpt)  # adapter_model.bin would be unpickled
            with _quiet_peft():
                net = PeftModel.from_pretrained(base, ckpt, is_trainable=trainable)
        model = cls(cfg, backbone=net)
        model.head.load_state_dict(load_file(ckpt / HEAD_FILE))
        model.head.requires_grad_(trainable)
        return model.eval()


def pair_loss_from_scores(
    mu: torch.Tensor, log_sigma: torch.Tensor | None, loss: str = "uncertainty"
) -> tuple[torch.Tensor, dict[str, float]]:
    """Split a [2B] forward output into chosen / rejected halves and apply the loss ("uncertainty" or "bt").

    Metrics: loss/reward (the optimised loss), loss/bt (BT on mu whatever the loss, comparable across heads),
    reward/accuracy, reward/mu_chosen, reward/mu_rejected, reward/margin, and reward/sigma for a Gaussian head.
    """
    if mu.shape[0] % 2:
        raise ValueError(f"a pair batch has an even number of rows (chosen then rejected); got {mu.shape[0]}")
    if loss not in ("uncertainty", "bt"):
        raise ValueError(f"loss must be 'uncertainty' or 'bt'; got {loss!r}")
    if loss == "uncertainty" and log_sigma is None:
        raise ValueError("loss='uncertainty' needs log_sigma: use head='gaussian', or loss='bt'")
    b = mu.shape[0] // 2
    mu_c, mu_r = mu[:b], mu[b:]  # [B], [B]
    bt = bradley_terry_loss(mu_c, mu_r)
    value = uncertainty_bt_loss(mu_c, log_sigma[:b], mu_r, log_sigma[b:]) if loss == "uncertainty" else bt
    stats = {
        "loss/reward": value,
        "loss/bt": bt,
        "reward/accuracy": pairwise_accuracy(mu_c, mu_r),
        "reward/mu_chosen": mu_c.mean(),
        "reward/mu_rejected": mu_r.mean(),
        "reward/margin": (mu_c - mu_r).mean(),
    }
    if log_sigma is not None:
        stats["reward/sigma"] = log_sigma.exp().mean()
    numbers = torch.stack([v.detach().float() for v in stats.values()]).tolist()  # one device sync
    return value, dict(zip(stats, numbers))


def read_checkpoint_meta(ckpt: Path) -> dict:
    """spatialscore_config.json of a checkpoint, checked for format and instruction compatibility."""
    path = Path(ckpt) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} does not exist: {ckpt} is not a SpatialScore checkpoint (write one with "
            f"SpatialRewardModel.save_pretrained, e.g. the reward-model training job's output folder)"
        )
    meta = json.loads(path.read_text())
    if meta.get("format") != "spatialscore" or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format {meta.get('format')!r} version {meta.get('format_version')!r}; this code reads "
            f"'spatialscore' version {FORMAT_VERSION}"
        )
    if not (Path(ckpt) / HEAD_FILE).is_file():
        raise CheckpointError(f"{ckpt} has no {HEAD_FILE}; the checkpoint is incomplete (copy the whole folder)")
    instruction, version = instruction_version()
    if meta.get("instruction_version") != version:
        raise CheckpointError(
            f"{ckpt} was trained with the reward instruction {meta.get('instruction')!r} but "
            f"spatialrl.reward.reader.REWARD_INSTRUCTION is now {instruction!r}; its scores would be meaningless. "
            f"Restore that instruction or retrain the reward model."
        )
    return meta


def config_from_meta(meta: dict, ckpt: Path) -> RewardModelConfig:
    try:
        cfg = RewardModelConfig(**meta["config"])
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{Path(ckpt) / CONFIG_FILE}: cannot rebuild RewardModelConfig ({exc})") from exc
    cfg.validate()
    return cfg


def _build_backbone(cfg: RewardModelConfig) -> nn.Module:
    """Qwen2_5_VLModel from cfg.backbone, frozen and wrapped with LoRA on the language model (or all trainable)."""
    from transformers import Qwen2_5_VLModel

    from spatialrl.models.loader import load_vl_model

    base = load_vl_model(cfg.backbone, dtype=DTYPES[cfg.dtype], model_cls=Qwen2_5_VLModel)
    if cfg.full_finetune:
        return base.requires_grad_(True)
    return apply_lora(base, cfg)


def reward_lora_config(cfg: RewardModelConfig):
    """The peft LoraConfig of SpatialScore: cfg's rank / alpha / dropout on the language model's projections only."""
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=lora_target_regex(cfg.lora_targets),
        bias="none",
    )


def apply_lora(base: nn.Module, cfg: RewardModelConfig) -> nn.Module:
    """Wrap a Qwen2_5_VLModel with SpatialScore's LoRA (also on a meta-device model: tests at the real shapes)."""
    from peft import get_peft_model

    with _quiet_peft():
        return get_peft_model(base, reward_lora_config(cfg))  # freezes the base; adapters in fp32 on bf16


@contextlib.contextmanager
def _quiet_peft():
    """peft 0.21 probes `model.is_gradient_checkpointing`, which transformers 5 deprecates with a FutureWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _text_hidden_size(config) -> int:
    text = getattr(config, "text_config", None)
    return int(text.hidden_size if text is not None else config.hidden_size)


def _enable_checkpointing(model: nn.Module) -> None:
    kwargs = {"use_reentrant": False}  # reentrant checkpointing loses gradients when the inputs need none (LoRA)
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"dtype {dtype} is not supported; use one of {list(DTYPES)}")
