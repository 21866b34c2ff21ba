"""FluxSampler: groups of Flux images per prompt, with the whole latent trajectory and per-step log-probs.

A plain class (Ray wraps it in `actors/sampler_actor.py`). It loads a FluxPipeline through
`spatialrl.models.loader` (tiny, small or full presets, or a folder), encodes each prompt once, and runs its
own denoising loop over the transformer (not `pipe.__call__`), so that each step can be an SDE step with a
log-prob (`spatialrl.flux.math.sde_step`, GRPO rollouts) or a plain Euler step (noise level 0, evaluation).
Noise level 0 reproduces the stock `FluxPipeline` latents bit for bit in float32 (same seeds, steps, batch), with
or without its true classifier-free guidance (`true_cfg_scale` > 1: a second forward per step on the negative
prompt; FLUX.1-dev is guidance-distilled and needs none, the toy generator is not and gains from it). The SDE
step's mean comes from the guided velocity, so GRPO trains the guided policy, as Flow-GRPO does for SD3.

Randomness: image i of a call gets its own CPU generator seeded `seed + i` (i = group * group_size + k), used
first for its initial noise (drawn as `FluxPipeline` draws with a list of generators) and then for its SDE
noise, step by step. So an image depends on its seed alone, never on the batch it ran in, and with
`shared_noise_per_group` every image of a group starts from the group's first image's noise (only the SDE
noise differs: DanceGRPO's `init_same_noise`).

The learner's importance ratio: `recompute_log_probs` re-runs the transformer on the stored latents in the
same batches as sampling and scores the stored next latents with the same `sde_step`, so with unchanged
weights the ratio is exactly 1. LoRA: `set_lora(state_dict, version)` swaps peft weights in place (the base
model stays loaded); `load_lora(dir)` loads a diffusers-format LoRA folder.

Departures from Flow-GRPO: latents are kept in float32 between steps even when the model runs in bfloat16
(the transformer sees `x.to(bf16)`), so bf16 runs match the stock pipeline only approximately; the T5 length
defaults to diffusers' 512 (Flow-GRPO uses 128), since spatial prompts run to 120 words.

    sampler = FluxSampler(FluxSamplerConfig(model="tiny", resolution=64, num_steps=6, group_size=4))
    traj = sampler.sample(["a red circle left of a blue square"], seed=0)
    traj.images  # [4, 64, 64, 3] uint8;  traj.log_probs  # [4, 6]
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from spatialrl.config import ConfigError
from spatialrl.flux.math import (
    SDE_KINDS, block_noise, check_block, flux_sigmas, latent_image_ids, ode_step, pack_latents, sde_step, sde_window,
    unpack_latents,
)

# Flow-GRPO's Flux LoRA targets (train_flux.py): attention and MLPs of the double-stream blocks; in the
# single-stream blocks only attn.to_q/k/v match (their attention is pre_only, proj_mlp/proj_out not targeted).
FLUX_LORA_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)
# Every Linear of a FluxTransformer2DModel, whatever its size (its blocks' names without the block index:
# tests/test_flux_sampler.py checks the list against the real class): what `sampler.lora_targets` may name
# (`unmatched_targets`).
FLUX_LINEAR_MODULES = (
    "x_embedder", "context_embedder", "proj_out", "norm_out.linear",
    *(f"time_text_embed.{e}.linear_{i}" for e in ("guidance_embedder", "text_embedder", "timestep_embedder")
      for i in (1, 2)),
    *(f"transformer_blocks.attn.{m}" for m in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                               "add_v_proj", "to_add_out")),
    *(f"transformer_blocks.{m}" for m in ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
                                          "norm1.linear", "norm1_context.linear")),
    *(f"single_transformer_blocks.{m}" for m in ("attn.to_q", "attn.to_k", "attn.to_v", "norm.linear", "proj_mlp",
                                                 "proj_out")),
)


def unmatched_targets(targets, module_names) -> list:
    """The LoRA targets that name none of `module_names`, as peft matches them: a target names a module whose name
    is the target or ends in "." + target."""
    return [t for t in targets
            if not isinstance(t, str) or not any(n == t or n.endswith("." + t) for n in module_names)]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
ADAPTER = "default"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class FluxSamplerConfig:
    """What to sample and how. Defaults run on a laptop CPU with the tiny fixture."""

    model: str = "tiny"  # preset (tiny, small, full), hub id or diffusers folder
    resolution: int = 128  # pixels, square; a multiple of 16 (VAE 8x times 2x2 packing)
    num_steps: int = 6
    noise_level: float = 0.7  # Flow-GRPO's a; 0 = deterministic Euler (evaluation)
    # SDE only on the first sde_steps steps, deterministic Euler after (0 = SDE on every step). The layout of an
    # image is settled in the early, noisy steps: exploring there and sampling the rest as the ODE does gives
    # GRPO its variation where it matters, cleaner images and fewer steps to train (learner trains SDE steps only)
    sde_steps: int = 0
    # flow_grpo: Flow-GRPO's SDE step (the paper's; noise_level = a). cps: the coefficients-preserving step
    # (noise_level = eta in (0, 1]): SDE samples as clean as the ODE's, so a gain in the rollouts is one the ODE
    # can have too; its last step (into sigma 0) is deterministic
    sde_type: str = "flow_grpo"
    # 1 = the papers' independent noise per latent element. b > 1: one noise draw per channel and b x b block of
    # latent pixels (same per-pixel std), and the policy's log-prob on the block means only: exploration and credit
    # in the low-frequency directions that decide a layout, meant to cut the policy gradient's variance (on the toy
    # generator it has not yet given a held-out gain)
    noise_block: int = 1
    guidance: float = 3.5  # FLUX.1-dev's distilled guidance, one forward per step
    # Stock FluxPipeline's true_cfg_scale: 1 = off (FLUX.1-dev is guidance-distilled). Above 1, a second forward
    # per step on `negative_prompt`, mixed as v_neg + scale * (v - v_neg): for models that are not distilled
    # (the toy generator draws the requested objects 82% of the time at 4 against 64% without).
    true_cfg_scale: float = 1.0
    negative_prompt: str = ""
    group_size: int = 4  # images per prompt (G)
    batch_size: int = 4  # images per transformer forward
    max_sequence_length: int = 512  # T5 tokens
    seed: int = 0
    shared_noise_per_group: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: str = "auto"  # auto = cuda if visible, else cpu
    lora_rank: int = 64  # the adapter set_lora creates; must match the learner's
    lora_alpha: float = 128.0
    # the module names the LoRA adapts (peft matches a name's end); default Flow-GRPO's Flux set
    lora_targets: tuple[str, ...] = FLUX_LORA_TARGETS
    # torch.compile the transformer (the learner's policy copy reads the same field, so sampler and learner run one
    # path and the on-policy ratio stays exactly 1). Default off: compiling takes minutes at FLUX.1-dev shapes; pays
    # back over a run (1.38x per step measured on an H200). Graphs are static-shape (one per batch size met):
    # keep group_size a multiple of batch_size so every sampling batch reuses one graph.
    compile: bool = False
    compile_mode: str = "default"  # torch.compile mode: default, reduce-overhead, max-autotune
    # SDPA kernels of every transformer forward on CUDA (sampling, and the learner's forward + backward, which
    # must run the same kernels for the ratio to be exactly 1): flash (memory-efficient as the fp32 fallback; never
    # cuDNN, whose backward crashed with an illegal memory access in the Flux transformer on an H200) or auto
    # (torch's own choice). Ignored on CPU.
    attention_backend: Literal["flash", "auto"] = "flash"

    def validate(self) -> None:
        if self.resolution < 16 or self.resolution % 16:
            raise ConfigError(f"sampler.resolution={self.resolution}: use a multiple of 16 (VAE 8x, 2x2 packing)")
        if self.num_steps < 1:
            raise ConfigError(f"sampler.num_steps={self.num_steps}: need at least 1 step")
        if not 0 <= self.noise_level < 10 or math.isnan(self.noise_level):
            raise ConfigError(f"sampler.noise_level={self.noise_level}: use 0 (ODE) or a positive value like 0.7")
        if self.sde_type not in SDE_KINDS:
            raise ConfigError(f"sampler.sde_type={self.sde_type!r}: use flow_grpo (the paper's SDE) or cps")
        if self.sde_type == "cps" and self.noise_level > 1:
            raise ConfigError(f"sampler.noise_level={self.noise_level} with sde_type=cps: its noise level is eta in "
                              "(0, 1], e.g. 0.7")
        if self.sde_type == "cps" and self.sde_steps >= self.num_steps:
            raise ConfigError(f"sampler.sde_steps={self.sde_steps} with sde_type=cps: the last step is "
                              f"deterministic, use 0 (all stochastic steps) or 1..{self.num_steps - 1}")
        if not isinstance(self.noise_block, int) or self.noise_block < 1:
            raise ConfigError(f"sampler.noise_block={self.noise_block!r}: use 1 (independent noise, the papers') or a "
                              "block side in latent pixels that divides the latent size, e.g. 4")
        if not 0 <= self.sde_steps <= self.num_steps:
            raise ConfigError(f"sampler.sde_steps={self.sde_steps}: use 0 (SDE on every step) or 1..num_steps "
                              f"({self.num_steps})")
        if not 1 <= self.true_cfg_scale < 100 or math.isnan(self.true_cfg_scale):
            raise ConfigError(
                f"sampler.true_cfg_scale={self.true_cfg_scale}: use 1 (off, FLUX.1-dev) or a scale above 1 (e.g. 3)"
            )
        if not isinstance(self.negative_prompt, str):
            raise ConfigError(f"sampler.negative_prompt must be a string, got {self.negative_prompt!r}")
        if self.group_size < 1 or self.batch_size < 1:
            raise ConfigError("sampler.group_size and sampler.batch_size must be >= 1")
        if not 1 <= self.max_sequence_length <= 512:
            raise ConfigError(f"sampler.max_sequence_length={self.max_sequence_length}: Flux's T5 takes 1..512 tokens")
        if self.dtype not in DTYPES:
            raise ConfigError(f"sampler.dtype={self.dtype!r}: choose one of {list(DTYPES)}")
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda")):
            raise ConfigError(f"sampler.device={self.device!r}: use auto, cpu, cuda or cuda:N")
        if self.lora_rank < 1 or self.lora_alpha <= 0:
            raise ConfigError("sampler.lora_rank must be >= 1 and sampler.lora_alpha > 0")
        bad = unmatched_targets(self.lora_targets, FLUX_LINEAR_MODULES)
        if not self.lora_targets or bad:
            raise ConfigError(f"sampler.lora_targets={list(self.lora_targets)}: {bad or 'none given'} names no Linear "
                              f"of the Flux transformer; give names such as {list(FLUX_LORA_TARGETS[:4])} (the default "
                              f"is Flow-GRPO's {list(FLUX_LORA_TARGETS)})")
        self.lora_targets = tuple(self.lora_targets)
        if self.attention_backend not in ("flash", "auto"):
            raise ConfigError(f"sampler.attention_backend={self.attention_backend!r}: use flash (pinned on CUDA) "
                              f"or auto (torch's choice)")
        if self.compile_mode not in COMPILE_MODES:
            raise ConfigError(f"sampler.compile_mode={self.compile_mode!r}: choose one of {list(COMPILE_MODES)}")
        if self.compile and self.group_size % self.batch_size:
            import sys

            print(f"note: sampler.compile with group_size={self.group_size} not a multiple of batch_size="
                  f"{self.batch_size}: a call's last batch is smaller and compiles a graph of its own", file=sys.stderr)


@dataclass
class Trajectory:
    """One sampling call: N = len(prompts) * group_size images, in group order, and how they were made."""

    images: np.ndarray | None  # [N, H, W, 3] uint8 (None when decode=False)
    latents: torch.Tensor  # [N, T + 1, S, 64] float32, CPU; latents[:, 0] is the initial noise
    log_probs: torch.Tensor  # [N, T] float32: log p(latents[:, j + 1] | latents[:, j]); NaN in ODE mode
    sigmas: torch.Tensor  # [T + 1] float32, ends with 0
    timesteps: torch.Tensor  # [T] float32, sigmas[:-1] * 1000
    prompts: list[str]  # [P] one per group
    prompt_ids: list  # [P] the caller's ids for the prompts (default 0..P-1)
    group_index: np.ndarray  # [N] int64: which prompt each image belongs to
    seeds: np.ndarray  # [N] int64: each image's generator seed
    noise_level: float
    policy_version: int
    resolution: int
    batch_size: int  # images per forward when sampled; recompute_log_probs uses the same batches
    guidance: float
    true_cfg_scale: float = 1.0
    negative_prompt: str = ""
    sde_steps: int = 0  # the first sde_steps transitions are SDE (have log-probs); 0 = all of them
    sde_type: str = "flow_grpo"  # which SDE step made them (spatialrl.flux.math.sde_step's kind)
    noise_block: int = 1  # the SDE noise's block side in latent pixels (1 = independent per element)

    @property
    def sde_window(self) -> int:
        """How many leading transitions are stochastic (the ones GRPO can train)."""
        return sde_window(self.num_steps, self.sde_steps, self.noise_level, self.sde_type)

    @property
    def num_images(self) -> int:
        return int(self.latents.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.log_probs.shape[1])

    @property
    def group_size(self) -> int:
        return self.num_images // max(1, len(self.prompts))


def flux_lora_config(rank: int = 64, alpha: float = 128.0, targets: tuple[str, ...] = FLUX_LORA_TARGETS):
    """The peft LoraConfig of Flow-GRPO's Flux recipe (Gaussian A, zero B: the new adapter changes nothing)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))


def sdpa_backends(device_type: str, choice: str) -> list | None:
    """The SDPA backends a Flux forward may use (`FluxSamplerConfig.attention_backend`): None = torch's choice (CPU,
    or `auto`); `flash` on CUDA = flash attention first (bf16 / fp16) and memory-efficient attention for fp32, with
    cuDNN and the math kernel left out."""
    if choice == "auto" or device_type != "cuda":
        return None
    from torch.nn.attention import SDPBackend

    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def attention_context(device_type: str, choice: str):
    """A context manager pinning `sdpa_backends(device_type, choice)` (a no-op where that is None)."""
    backends = sdpa_backends(device_type, choice)
    if backends is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backends)


def add_flux_lora(transformer, rank: int, alpha: float, targets: tuple[str, ...] = FLUX_LORA_TARGETS) -> None:
    """Put the project's LoRA (`flux_lora_config`, adapter `ADAPTER`) on a FluxTransformer2DModel: what the sampler
    and the learner train, also on a meta-device model (tests at FLUX.1-dev shapes)."""
    unmatched = unmatched_targets(targets, [n for n, _ in transformer.named_modules()])
    if unmatched:
        raise ConfigError(f"sampler.lora_targets: no module of the transformer is named {unmatched}; the default "
                          f"targets are {list(FLUX_LORA_TARGETS)}")
    transformer.add_adapter(flux_lora_config(rank, alpha, tuple(targets)), ADAPTER)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but CUDA is not available here; use device=auto or cpu")
    return torch.device(device)


class FluxSampler:
    """Samples groups of images per prompt with log-probs; holds one Flux pipeline and its LoRA adapter."""

    def __init__(self, cfg: FluxSamplerConfig | None = None, *, pipe=None):
        """`pipe`: an already built FluxPipeline to use instead of loading `cfg.model` (benchmarks at real shapes
        with random weights); it is cast to `cfg.dtype` and moved to the device like a loaded one."""
        from spatialrl.models.loader import load_flux_pipeline

        self.cfg = cfg or FluxSamplerConfig()
        self.cfg.validate()
        self.device = resolve_device(self.cfg.device)
        self.dtype = DTYPES[self.cfg.dtype]
        if pipe is None:
            pipe = load_flux_pipeline(self.cfg.model, dtype=self.dtype)
        else:
            pipe = pipe.to(dtype=self.dtype)
        self.pipe = pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        # Flux reads only CLIP's pooled output (first 77 tokens by design; T5 carries the whole prompt): the
        # pipeline's truncation warning on every long prompt is noise, not news.
        logging.getLogger("diffusers.pipelines.flux.pipeline_flux").setLevel(logging.ERROR)
        for module in (self.pipe.transformer, self.pipe.vae, self.pipe.text_encoder, self.pipe.text_encoder_2):
            module.requires_grad_(False).eval()
        self.transformer = self.pipe.transformer
        self.vae = self.pipe.vae
        self._check_scheduler()
        self.policy_version = 0
        self._adapter: Literal["set", "loaded"] | None = None
        self._lora_keys: set[str] | None = None
        self._negative: tuple[tuple, torch.Tensor, torch.Tensor] | None = None  # (key, T5 [1, L, D], pooled)
        self._compiled = None  # torch.compile(transformer), made at the first forward when cfg.compile

    @property
    def forward_model(self):
        """What `velocity` calls: the transformer, or its torch.compile wrapper when `cfg.compile` (built once, at
        the first call, so adapters added before sampling are part of the first graph; the wrapper shares the
        transformer's parameters, so set_lora and the learner's optimizer act on what it runs)."""
        if not self.cfg.compile:
            return self.transformer
        if self._compiled is None:
            import torch._dynamo

            # one graph per batch size met (static shapes); a step has at most batch_size distinct sizes, and the
            # reference forward (adapters disabled) doubles that
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit,
                                                        4 * self.cfg.batch_size + 8)
            self._compiled = torch.compile(self.transformer, mode=self.cfg.compile_mode, dynamic=False)
        return self._compiled

    # ------------------------------------------------------------------------------------------ schedule

    def _check_scheduler(self) -> None:
        sc = self.pipe.scheduler.config
        unsupported = {
            "use_dynamic_shifting": (sc.get("use_dynamic_shifting"), True),
            "time_shift_type": (sc.get("time_shift_type", "exponential"), "exponential"),
            "shift_terminal": (sc.get("shift_terminal"), None),
            "invert_sigmas": (bool(sc.get("invert_sigmas")), False),
            "use_karras_sigmas": (bool(sc.get("use_karras_sigmas")), False),
            "use_exponential_sigmas": (bool(sc.get("use_exponential_sigmas")), False),
            "use_beta_sigmas": (bool(sc.get("use_beta_sigmas")), False),
        }
        bad = {k: got for k, (got, want) in unsupported.items() if got != want}
        if bad:
            raise ValueError(
                f"{self.cfg.model}: scheduler settings {bad} are not FLUX.1-dev's; FluxSampler implements the "
                f"dynamically shifted schedule only (use_dynamic_shifting=True, exponential time shift)."
            )

    def latent_size(self, resolution: int) -> tuple[int, int]:
        """Latent height and width for a square image (as FluxPipeline.prepare_latents rounds them)."""
        side = 2 * (int(resolution) // (self.pipe.vae_scale_factor * 2))
        return side, side

    def schedule(self, resolution: int | None = None, num_steps: int | None = None) -> torch.Tensor:
        """Sigmas `[T + 1]` for this resolution: the stock FluxPipeline schedule (shift by image tokens)."""
        h, w = self.latent_size(resolution or self.cfg.resolution)
        sc = self.pipe.scheduler.config
        return flux_sigmas(
            num_steps or self.cfg.num_steps,
            (h // 2) * (w // 2),
            base_seq_len=sc.get("base_image_seq_len", 256),
            max_seq_len=sc.get("max_image_seq_len", 4096),
            base_shift=sc.get("base_shift", 0.5),
            max_shift=sc.get("max_shift", 1.15),
        )

    # ---------------------------------------------------------------------------------------- the model

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """T5 states `[P, L, D]`, CLIP pooled `[P, Dp]` and text ids `[L, 3]`; each prompt encoded on its own."""
        embeds, pooled = [], []
        for prompt in prompts:
            e, p, text_ids = self.pipe.encode_prompt(
                prompt=prompt, prompt_2=None, device=self.device, num_images_per_prompt=1,
                max_sequence_length=self.cfg.max_sequence_length,
            )
            embeds.append(e)
            pooled.append(p)
        return torch.cat(embeds), torch.cat(pooled), text_ids

    def _negative_conditioning(self) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 states `[1, L, D]` and pooled `[1, Dp]` of `cfg.negative_prompt`, encoded once per prompt and T5 length
        (the encoders are frozen), so they always line up with prompts `encode` pads to the same length."""
        key = (self.cfg.negative_prompt, self.cfg.max_sequence_length)
        if self._negative is None or self._negative[0] != key:
            e, p, _ = self.encode([self.cfg.negative_prompt])
            self._negative = (key, e, p)
        return self._negative[1], self._negative[2]

    def velocity(self, x, timestep, embeds, pooled, text_ids, img_ids, guided: bool = True,
                 detach_negative: bool = False) -> torch.Tensor:
        """The transformer's velocity for latents x `[B, S, 64]` (float32) at one step: as FluxPipeline calls it,
        with its true classifier-free guidance when `cfg.true_cfg_scale` > 1 (a second forward, negative prompt)
        unless `guided=False` (the conditional velocity alone: what flow matching trains). `detach_negative`: the
        negative prompt's forward runs without grad, so a loss on the guided velocity trains the conditional branch
        alone (scaled by true_cfg_scale)."""
        hidden = x.to(self.dtype)
        b = hidden.shape[0]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([1], self.cfg.guidance, device=self.device, dtype=torch.float32).expand(b)
        t = timestep.expand(b).to(hidden.dtype)  # [B]

        model = self.forward_model

        def forward(embeds, pooled):
            return model(
                hidden_states=hidden,
                timestep=t / 1000,
                guidance=guidance,
                pooled_projections=pooled,
                encoder_hidden_states=embeds,
                txt_ids=text_ids,
                img_ids=img_ids,
                joint_attention_kwargs={},
                return_dict=False,
            )[0]  # [B, S, 64]

        with attention_context(self.device.type, self.cfg.attention_backend):
            v = forward(embeds, pooled)
        scale = self.cfg.true_cfg_scale
        if scale > 1 and guided:
            neg_embeds, neg_pooled = self._negative_conditioning()
            with attention_context(self.device.type, self.cfg.attention_backend), \
                    (torch.no_grad() if detach_negative else contextlib.nullcontext()):
                v_neg = forward(neg_embeds.expand(b, -1, -1), neg_pooled.expand(b, -1))
            v = v_neg + scale * (v - v_neg)  # FluxPipeline's order of operations, so ODE runs match it exactly
        return v

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, resolution: int | None = None) -> np.ndarray:
        """Packed latents `[B, S, 64]` -> uint8 images `[B, H, W, 3]` (unpack, unscale, VAE decode)."""
        h, w = self.latent_size(resolution or self.cfg.resolution)
        z = unpack_latents(latents.to(device=self.device, dtype=self.dtype), h, w)  # [B, 16, h, w]
        z = z / self.vae.config.scaling_factor + self.vae.config.shift_factor
        image = self.vae.decode(z.to(self.vae.dtype), return_dict=False)[0]  # [B, 3, H, W] in [-1, 1]
        image = (image.float() / 2 + 0.5).clamp(0, 1)
        return (image * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    # ----------------------------------------------------------------------------------------- sampling

    def initial_noise(self, generators, group_index: np.ndarray, h: int, w: int, shared: bool) -> torch.Tensor:
        """`[N, S, 64]` float32 packed starting latents for an `h` x `w` latent: one draw per image from its own
        generator, as FluxPipeline draws per generator; `shared`: every image of a group (`group_index` `[N]`,
        sorted) starts from its group's first draw. `sample` starts here; so can an experiment that steps the
        velocity itself (bench/side_decision.py)."""
        channels = self.transformer.config.in_channels // 4
        noise = [torch.randn((1, channels, h, w), generator=g, dtype=self.dtype) for g in generators]
        x0 = pack_latents(torch.cat(noise)).float()  # [N, S, 64]
        if shared:
            first = np.searchsorted(group_index, group_index)  # index of each group's first image
            x0 = x0[torch.as_tensor(first)]
        return x0

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        *,
        prompt_ids: list | None = None,
        seed: int | None = None,
        group_size: int | None = None,
        noise_level: float | None = None,
        decode: bool = True,
        shared_noise: bool | None = None,
    ) -> Trajectory:
        """`group_size` images for each prompt, in batches of `cfg.batch_size`; returns their Trajectory.
        `noise_level` and `shared_noise` override the config's `noise_level` and `shared_noise_per_group`."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty strings")
        if prompt_ids is not None and len(prompt_ids) != len(prompts):
            raise ValueError(f"{len(prompt_ids)} prompt_ids for {len(prompts)} prompts")
        g = group_size or self.cfg.group_size
        a = self.cfg.noise_level if noise_level is None else float(noise_level)
        if a < 0:
            raise ValueError(f"noise_level must be >= 0; got {a}")
        base_seed = self.cfg.seed if seed is None else int(seed)
        n, bs, res = len(prompts) * g, self.cfg.batch_size, self.cfg.resolution
        group_index = np.repeat(np.arange(len(prompts)), g)  # [N]
        seeds = base_seed + np.arange(n, dtype=np.int64)  # [N]
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]

        embeds, pooled, text_ids = self.encode(prompts)  # [P, L, D], [P, Dp], [L, 3]
        h, w = self.latent_size(res)
        img_ids = latent_image_ids(h // 2, w // 2, device=self.device, dtype=embeds.dtype)  # [S, 3]
        sigmas = self.schedule(res).to(self.device)  # [T + 1]
        timesteps = sigmas[:-1] * 1000  # [T]
        steps = len(timesteps)
        window = sde_window(steps, self.cfg.sde_steps, a, self.cfg.sde_type)  # leading SDE steps
        nb = self.cfg.noise_block
        try:
            check_block(nb, h, w)
        except ValueError as e:
            raise ConfigError(f"sampler.noise_block={nb}: {e} (resolution {res})") from None
        shared = self.cfg.shared_noise_per_group if shared_noise is None else bool(shared_noise)
        x0 = self.initial_noise(generators, group_index, h, w, shared)  # [N, S, 64]
        latents = torch.empty((n, steps + 1, *x0.shape[1:]), dtype=torch.float32)  # [N, T + 1, S, 64]
        latents[:, 0] = x0
        log_probs = torch.full((n, steps), float("nan"))  # [N, T]
        images = []
        for start in range(0, n, bs):
            idx = slice(start, min(start + bs, n))
            rows = torch.as_tensor(group_index[idx], device=self.device)
            emb, pool = embeds[rows], pooled[rows]
            x = x0[idx].to(self.device)  # [B, S, 64] float32
            for i in range(steps):
                v = self.velocity(x, timesteps[i], emb, pool, text_ids, img_ids)
                if i < window:
                    if nb == 1:
                        eps = torch.cat([torch.randn((1, *x.shape[1:]), generator=gen) for gen in generators[idx]])
                    else:
                        eps = torch.cat([block_noise(x.shape[-1] // 4, h, w, nb, gen) for gen in generators[idx]])
                    x, lp, _, _ = sde_step(x, v, sigmas[i], sigmas[i + 1], a, noise=eps, kind=self.cfg.sde_type,
                                           block=nb, latent_size=(h, w))
                    log_probs[idx, i] = lp.cpu()
                else:
                    x = ode_step(x, v, sigmas[i], sigmas[i + 1])
                latents[idx, i + 1] = x.cpu()
            if decode:
                images.append(self.decode(x, res))
        return Trajectory(
            images=np.concatenate(images) if decode else None,
            latents=latents,
            log_probs=log_probs,
            sigmas=sigmas.cpu(),
            timesteps=timesteps.cpu(),
            prompts=list(prompts),
            prompt_ids=list(prompt_ids) if prompt_ids is not None else list(range(len(prompts))),
            group_index=group_index,
            seeds=seeds,
            noise_level=a,
            policy_version=self.policy_version,
            resolution=res,
            batch_size=bs,
            guidance=self.cfg.guidance,
            true_cfg_scale=self.cfg.true_cfg_scale,
            negative_prompt=self.cfg.negative_prompt,
            sde_steps=self.cfg.sde_steps if a > 0 else 0,
            sde_type=self.cfg.sde_type,
            noise_block=nb,
        )

    def check_made_here(self, tr: Trajectory) -> None:
        """Raise unless `tr` was sampled with this sampler's resolution and guidance: its velocities, and so its
        transitions' log-probs, depend on them."""
        made = (tr.resolution, tr.guidance, tr.true_cfg_scale, tr.negative_prompt)
        ours = (self.cfg.resolution, self.cfg.guidance, self.cfg.true_cfg_scale, self.cfg.negative_prompt)
        if made != ours:
            raise ValueError(
                f"trajectory sampled with (resolution, guidance, true_cfg_scale, negative_prompt) = {made}; this "
                f"sampler uses {ours}: score it with the sampler config that made it"
            )

    @torch.no_grad()
    def recompute_log_probs(self, trajectory: Trajectory, step_indices: list[int] | None = None) -> torch.Tensor:
        """Log-probs `[N, K]` of the stored transitions at `step_indices` (default: every SDE step) under the current weights.

        Runs the transformer on the stored latents in the batches the trajectory was sampled in, and scores
        the stored next latents with the same `sde_step`: unchanged weights give exactly the stored log-probs.
        """
        tr = trajectory
        if tr.noise_level <= 0:
            raise ValueError("this trajectory was sampled with noise_level 0 (ODE): its transitions have no log-prob")
        steps = list(range(tr.num_steps)) if step_indices is None else [int(j) for j in step_indices]
        bad = [j for j in steps if not 0 <= j < tr.num_steps]
        if bad:
            raise ValueError(f"step_indices {bad} out of range for a {tr.num_steps}-step trajectory")
        ode = [j for j in steps if j >= tr.sde_window]
        if ode and step_indices is not None:
            raise ValueError(f"step_indices {ode} are deterministic (sde_steps={tr.sde_steps}): they have no log-prob")
        steps = [j for j in steps if j < tr.sde_window]
        self.check_made_here(tr)
        embeds, pooled, text_ids = self.encode(tr.prompts)
        h, w = self.latent_size(tr.resolution)
        img_ids = latent_image_ids(h // 2, w // 2, device=self.device, dtype=embeds.dtype)
        out = torch.empty((tr.num_images, len(steps)), dtype=torch.float32)  # [N, K]
        cond = (embeds, pooled, text_ids, img_ids)
        for start in range(0, tr.num_images, tr.batch_size):
            idx = slice(start, min(start + tr.batch_size, tr.num_images))
            for k, j in enumerate(steps):
                out[idx, k] = self.transition_log_prob(tr, idx, j, cond)[0].detach().cpu()
        return out

    def transition_log_prob(self, tr: Trajectory, idx, j: int, cond) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-prob `[B]` of images `idx`'s stored transition from step j to j + 1 under the current weights, with
        its SDE mean and the input latents `[B, S, 64]`: what `recompute_log_probs` and the learner's loss share.
        `cond` = (embeds, pooled, text_ids, img_ids) of the trajectory's prompts (`encode` + `latent_image_ids`)."""
        embeds, pooled, text_ids, img_ids = cond
        dev = self.device
        rows = torch.as_tensor(tr.group_index[idx], device=dev)
        x = tr.latents[idx, j].to(dev)  # [B, S, 64]
        v = self.velocity(x, tr.timesteps[j].to(dev), embeds[rows], pooled[rows], text_ids, img_ids)
        _, logp, mean, _ = sde_step(x, v, tr.sigmas[j].to(dev), tr.sigmas[j + 1].to(dev), tr.noise_level,
                                    prev_sample=tr.latents[idx, j + 1].to(dev), kind=tr.sde_type,
                                    block=tr.noise_block, latent_size=self.latent_size(tr.resolution))
        return logp, mean, x

    # --------------------------------------------------------------------------------------------- LoRA

    def set_lora(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        """Swap in LoRA weights (peft keys, as `get_peft_model_state_dict(transformer)` gives them); in place.

        The first call adds a peft adapter (`flux_lora_config(cfg.lora_rank, cfg.lora_alpha)`) to the
        transformer; later calls only copy weights. Every adapter key must be given: a partial update would
        silently mix two policy versions. Returns the new policy version.
        """
        from peft.utils import set_peft_model_state_dict

        ranks = {int(t.shape[0]) for k, t in state_dict.items() if ".lora_A." in k}
        if ranks and ranks != {self.cfg.lora_rank}:
            raise ValueError(
                f"LoRA state dict has rank {sorted(ranks)} but the sampler builds rank {self.cfg.lora_rank}: set "
                f"sampler lora_rank / lora_alpha to the learner's"
            )
        if self._adapter == "loaded":
            self._unload()
        if self._adapter is None:
            self.init_lora()
        given = set(state_dict)
        if given != self._lora_keys:
            missing, extra = sorted(self._lora_keys - given), sorted(given - self._lora_keys)
            raise ValueError(
                f"LoRA state dict does not match the sampler's adapter: {len(missing)} missing (e.g. {missing[:3]}), "
                f"{len(extra)} unexpected (e.g. {extra[:3]}). Targets: {list(self.cfg.lora_targets)}"
            )
        set_peft_model_state_dict(self.transformer, state_dict, adapter_name=ADAPTER)
        self.policy_version = int(version)
        return self.policy_version

    def init_lora(self, seed: int | None = None) -> None:
        """Add the peft adapter `flux_lora_config(cfg.lora_rank, cfg.lora_alpha)` (Gaussian A drawn from `seed`
        when given, zero B: the outputs do not change). The GRPO learner trains it; set_lora fills it."""
        from peft.utils import get_peft_model_state_dict

        if self._adapter is not None:
            raise RuntimeError("this sampler already has a LoRA adapter; use set_lora to change its weights")
        if seed is not None:
            torch.manual_seed(int(seed))
        add_flux_lora(self.transformer, self.cfg.lora_rank, self.cfg.lora_alpha, self.cfg.lora_targets)
        self._lora_keys = set(get_peft_model_state_dict(self.transformer, adapter_name=ADAPTER))
        self._adapter = "set"

    def rollout(
        self, prompts: list[str], *, prompt_ids: list, seed: int, lora_state: dict[str, torch.Tensor], version: int,
        noise_level: float | None = None, group_size: int | None = None, shared_noise: bool | None = None,
    ) -> tuple[np.ndarray, Trajectory]:
        """GRPO's sampling call: make sure the policy is `version` (a restarted actor has lost its LoRA), sample,
        and return (images, trajectory without images) so the two can go to different actors."""
        if self._adapter != "set" or self.policy_version != int(version):
            self.set_lora(lora_state, version)
        traj = self.sample(prompts, prompt_ids=prompt_ids, seed=seed, noise_level=noise_level, group_size=group_size,
                           shared_noise=shared_noise)
        images, traj.images = traj.images, None
        return images, traj

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        """The current adapter's weights (CPU copies, peft keys); empty without an adapter."""
        from peft.utils import get_peft_model_state_dict

        if self._adapter is None:
            return {}
        name = ADAPTER if self._adapter == "set" else next(iter(self.transformer.peft_config))
        state = get_peft_model_state_dict(self.transformer, adapter_name=name)
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    def load_lora(self, path: str, version: int | None = None) -> int:
        """Load a diffusers-format LoRA folder (`FluxPipeline.load_lora_weights`), replacing any adapter."""
        if self._adapter is not None:
            self._unload()
        from spatialrl.models.loader import check_safe_weights, pickle_allowed

        check_safe_weights(path)  # a LoRA saved as .bin would be unpickled
        self.pipe.load_lora_weights(str(path), use_safetensors=None if pickle_allowed() else True)
        self._adapter = "loaded"
        if version is not None:
            self.policy_version = int(version)
        return self.policy_version

    def _unload(self) -> None:
        self.pipe.unload_lora_weights()
        # unload removes the layers; forget peft's bookkeeping too, so set_lora can add "default" again.
        getattr(self.transformer, "peft_config", {}).clear()
        self.transformer._hf_peft_config_loaded = False
        self._adapter, self._lora_keys = None, None
