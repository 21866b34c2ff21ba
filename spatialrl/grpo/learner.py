"""GRPOLearner: one rank of the GRPO learner, a DeepSpeed engine over the Flux transformer's LoRA.

A plain class; `actors/learner_actor.py` makes N of them one torch process group. Each rank
holds the same FluxSampler code path the samplers use (same `velocity`, same `sde_step`, same micro-batch
size as the sampling batch), so on-policy the recomputed log-probs equal the stored ones bit for bit and the
importance ratio is exactly 1 (docs/architecture.md section 3).

One `train_step`:
  1. the kept samples (Top-k) of every trajectory are cut into micro-batches of the trajectory's sampling batch
     size; micro-batches are dealt round-robin to the ranks;
  2. for each micro-batch and each trained timestep: recompute log pi_theta(x_{j+1} | x_j) with grad, the
     clipped loss (spatialrl.grpo.math), optionally the KL to the reference (LoRA disabled), one backward;
  3. `updates_per_step` optimizer steps per call (1 = Flow-GRPO's on-policy setting). DeepSpeed runs with
     `managed_gradient_accumulation=False`: backward only accumulates, `step()` reduces over ranks (ZeRO-2
     partitions gradients and optimizer state) and applies AdamW with gradient clipping.
Weights leave as a peft state dict of the LoRA (`lora_state`), tagged with a version by the caller.

    learner = GRPOLearner(FluxSamplerConfig(model="tiny"), GRPOLearnerConfig())
    stats = learner.train_step([traj], [TrainSelection(indices, advantages)])
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch

from spatialrl.config import ConfigError
from spatialrl.flux.math import kl_std, latent_image_ids
from spatialrl.flux.sampler import ADAPTER, FluxSampler, FluxSamplerConfig, Trajectory, flux_lora_config
from spatialrl.deepspeed_config import deepspeed_config as shared_deepspeed_config, skip_cpu_shm_op
from spatialrl.grpo.math import (clipped_policy_loss, nft_loss, noised_latents, optimality, sde_kl, trained_steps,
                                 weighted_flow_matching_loss)


@dataclass
class GRPOLearnerConfig:
    """Optimisation settings of the GRPO learner (Flow-GRPO's Flux recipe by default)."""

    lr: float = 3e-4
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    clip_range: float = 1e-4  # eps of the ratio clip; tiny because log-probs are per-element means
    kl_beta: float = 0.0  # weight of the KL to the reference (LoRA disabled); Flow-GRPO Flux uses 0
    max_grad_norm: float = 1.0
    timestep_fraction: float = 0.99  # train the first int(T * fraction) steps: all but the last by default
    zero_stage: int = 2
    updates_per_step: int = 1  # optimizer steps per pass over a GRPO step's samples; >1 makes later ones off-policy
    epochs: int = 1  # passes over each GRPO step's kept samples (each pass: updates_per_step optimizer steps)
    ema_decay: float = 0.0  # 0 = off; else an EMA of the LoRA, exported instead of the raw weights
    seed: int = 0  # the LoRA's initial A (B starts at zero)
    # "grpo": Flow-GRPO's clipped likelihood ratio on the stored SDE transitions; "fm": advantage-weighted flow
    # matching on each sample's final latents, noised afresh at fm_timesteps random trained timesteps per sample
    # (spatialrl.grpo.math.weighted_flow_matching_loss; its KL term is the velocity's squared distance to the base)
    objective: str = "grpo"
    fm_timesteps: int = 2
    fm_negative_weight: float = 1.0  # fm: scale of negative advantages (0 = pull toward good samples only)
    # "nft": DiffusionNFT's negative-aware loss on the same draws as fm (spatialrl.grpo.math.nft_loss), around the
    # sampling policy's velocity v_old; nft_beta scales how far one update moves the implicit policies
    nft_beta: float = 1.0
    # fm / nft: which velocity meets the flow-matching target. False: the conditional one, as Flux is trained. True
    # (with sampler.true_cfg_scale > 1): the guided one the rollouts were sampled with, its negative-prompt branch
    # without grad, so the loss sees the velocity that made each sample and only the conditional branch learns
    fm_guided: bool = False
    # fm / nft: the noise end of each sample's flow-matching path. fresh: a new draw (plain flow matching: it moves
    # the prompt's image distribution). rollout: the sample's own starting noise (as in reflow), so a good image
    # pulls, and a bad one pushes, the velocity along the path its own start took: credit to that start's layout
    fm_noise: str = "fresh"

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"learner.lr={self.lr}: must be > 0 (Flow-GRPO Flux: 3e-4 with LoRA)")
        if not 0 < self.clip_range < 1:
            raise ConfigError(f"learner.clip_range={self.clip_range}: use a small positive value like 1e-4")
        if self.kl_beta < 0 or self.max_grad_norm <= 0:
            raise ConfigError("learner.kl_beta must be >= 0 and learner.max_grad_norm > 0")
        if not 0 < self.timestep_fraction <= 1:
            raise ConfigError(f"learner.timestep_fraction={self.timestep_fraction}: use a value in (0, 1]")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"learner.zero_stage={self.zero_stage}: DeepSpeed ZeRO stage 0-3 (2 recommended)")
        if self.updates_per_step < 1:
            raise ConfigError(f"learner.updates_per_step={self.updates_per_step}: need at least 1")
        if self.objective not in ("grpo", "fm", "nft"):
            raise ConfigError(f"learner.objective={self.objective!r}: use 'grpo' (clipped likelihood ratio), "
                              "'fm' (advantage-weighted flow matching) or 'nft' (DiffusionNFT's negative-aware loss)")
        if self.fm_noise not in ("fresh", "rollout"):
            raise ConfigError(f"learner.fm_noise={self.fm_noise!r}: use 'fresh' (a new draw) or 'rollout' (the sample's "
                              "own starting noise)")
        if self.epochs < 1:
            raise ConfigError(f"learner.epochs={self.epochs}: need at least 1 pass over each step's samples")
        if not self.nft_beta > 0:
            raise ConfigError(f"learner.nft_beta={self.nft_beta}: use a positive value (DiffusionNFT: 1 or 0.1)")
        if not 0 <= self.fm_negative_weight <= 1:
            raise ConfigError(f"learner.fm_negative_weight={self.fm_negative_weight}: use a value in [0, 1] "
                              "(1 = push away from bad samples as hard as toward good ones, 0 = not at all)")
        if self.fm_timesteps < 1:
            raise ConfigError(f"learner.fm_timesteps={self.fm_timesteps}: need at least 1 timestep per sample")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"learner.ema_decay={self.ema_decay}: 0 (off) or a value in (0, 1)")


@dataclass
class TrainSelection:
    """Which samples of one trajectory to train on, and their advantages."""

    indices: np.ndarray  # [K] int: image indices into the trajectory
    advantages: np.ndarray  # [K] float32


def deepspeed_config(cfg: GRPOLearnerConfig, micro_batch: int, world_size: int, bf16: bool) -> dict:
    # the number of (micro-batch, timestep) backward passes varies with Top-k: the caller owns the boundary
    return shared_deepspeed_config(micro_batch=micro_batch, world_size=world_size, grad_clip=cfg.max_grad_norm,
                                   zero_stage=cfg.zero_stage, bf16=bf16, managed_accumulation=False)


def init_process_group(rank: int, world_size: int, master_addr: str, master_port: int, backend: str) -> None:
    """Join the learner group (rank 0's address and port) the way DeepSpeed expects: env vars + tcp init."""
    import deepspeed

    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK="0")
    deepspeed.init_distributed(
        dist_backend=backend, auto_mpi_discovery=False, init_method=f"tcp://{master_addr}:{master_port}",
        rank=rank, world_size=world_size,
    )


class GRPOLearner:
    """One learner rank: the policy (Flux + trainable LoRA) inside a DeepSpeed engine."""

    def __init__(
        self,
        sampler_cfg: FluxSamplerConfig,
        cfg: GRPOLearnerConfig | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "127.0.0.1",
        master_port: int | None = None,
        pipe=None,
    ):
        """`pipe`: an already built FluxPipeline for the policy instead of loading `sampler_cfg.model` (benchmarks
        with random weights at real shapes)."""
        import deepspeed
        import torch.distributed as dist

        self.cfg = cfg or GRPOLearnerConfig()
        self.cfg.validate()
        self.rank, self.world_size = rank, world_size
        self.policy = FluxSampler(sampler_cfg, pipe=pipe)
        self.policy.init_lora(seed=self.cfg.seed)
        self.transformer = self.policy.transformer
        params = [p for n, p in self.transformer.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        self.transformer.train()
        if self.policy.device.type != "cuda":
            skip_cpu_shm_op()
        if not dist.is_initialized():
            port = master_port or _free_port()
            backend = "nccl" if self.policy.device.type == "cuda" else "gloo"
            init_process_group(rank, world_size, master_addr, port, backend)
        bf16 = self.policy.dtype == torch.bfloat16
        optimizer = torch.optim.AdamW(
            params, lr=self.cfg.lr, betas=(self.cfg.beta1, self.cfg.beta2), weight_decay=self.cfg.weight_decay
        )
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=self.transformer, optimizer=optimizer,
            config=deepspeed_config(self.cfg, sampler_cfg.batch_size, world_size, bf16),
        )
        self.ema = {n: p.detach().float().clone() for n, p in self._lora_params()} if self.cfg.ema_decay else None
        self.updates = 0

    def _lora_params(self):
        return [(n, p) for n, p in self.transformer.named_parameters() if "lora_" in n]

    # ------------------------------------------------------------------------------------------- weights

    def lora_state(self, ema: bool | None = None) -> dict[str, torch.Tensor]:
        """The LoRA as a peft state dict on CPU (the keys FluxSampler.set_lora takes); the EMA when enabled."""
        from peft.utils import get_peft_model_state_dict

        use_ema = self.ema is not None if ema is None else ema
        if use_ema and self.ema is None:
            raise ValueError("this learner keeps no EMA (learner.ema_decay = 0)")
        with torch.no_grad(), (self._sampling_weights() if use_ema else contextlib.nullcontext()):
            state = get_peft_model_state_dict(self.transformer, adapter_name=ADAPTER)
            return {k: v.detach().cpu().clone() for k, v in state.items()}

    def save_checkpoint(self, path: str, tag: str = "state") -> None:
        """DeepSpeed state of this rank (collective: every rank calls it) plus the EMA on rank 0."""
        self.engine.save_checkpoint(path, tag=tag, client_state={"updates": self.updates})
        if self.ema is not None and self.rank == 0:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.ema.items()}, os.path.join(path, tag, "ema.safetensors"))

    def load_checkpoint(self, path: str, tag: str = "state") -> None:
        _, client = self.engine.load_checkpoint(path, tag=tag)
        if client is None:
            raise FileNotFoundError(f"no learner checkpoint {tag!r} under {path}")
        self.updates = int(client.get("updates", 0))
        if self.ema is not None:
            from safetensors.torch import load_file

            self.ema = load_file(os.path.join(path, tag, "ema.safetensors"))

    def save_lora(self, out_dir: str) -> str:
        """The LoRA in diffusers format (`FluxPipeline.load_lora_weights(out_dir)` loads it); rank 0 only."""
        from diffusers import FluxPipeline

        sc = self.policy.cfg
        FluxPipeline.save_lora_weights(
            out_dir, transformer_lora_layers=self.lora_state(),
            transformer_lora_adapter_metadata=flux_lora_config(sc.lora_rank, sc.lora_alpha, sc.lora_targets).to_dict(),
        )
        return out_dir

    # -------------------------------------------------------------------------------------------- training

    def _micro_batches(self, batch_sizes: list[int], selections: list[TrainSelection]):
        return micro_batches(batch_sizes, selections, self.rank, self.world_size)

    def train_step(self, trajectories: list[Trajectory | None], selections: list[TrainSelection],
                   batch_sizes: list[int] | None = None) -> dict[str, float]:
        """One GRPO update on the selected samples; returns metrics reduced over all ranks.

        `trajectories` may hold None for those this rank trains nothing of (`needed_trajectories`), when
        `batch_sizes` (each trajectory's sampling batch size) is given: a rank then fetches only its share."""
        import torch.distributed as dist

        if len(trajectories) != len(selections):
            raise ValueError(f"{len(trajectories)} trajectories but {len(selections)} selections")
        if batch_sizes is None:
            batch_sizes = [traj.batch_size for traj in trajectories]
        for traj, bs in zip(trajectories, batch_sizes):
            if traj is None:
                continue
            if traj.noise_level <= 0 and self.cfg.objective == "grpo":
                raise ValueError("GRPO needs SDE trajectories (noise_level > 0); got an ODE trajectory")
            if traj.batch_size != bs:
                raise ValueError(f"a trajectory sampled in batches of {traj.batch_size}, told {bs}")
        mine, n_batches = self._micro_batches(batch_sizes, selections)
        n_samples = sum(len(s.indices) for s in selections)
        sums = torch.zeros(5, dtype=torch.float64)  # loss, ratio, clipped, kl (sums over samples), count
        ratio_max = torch.zeros(1, dtype=torch.float64)
        cache: dict[int, tuple] = {}
        chunks = np.array_split(np.arange(len(mine)), self.cfg.updates_per_step) * self.cfg.epochs
        grad_norms, n_trained = [], []
        self._step_start = self.updates  # nft: the draws stay fixed over the passes, v_old is the sampling policy's
        self._v_old = {}
        self._train_chunks(chunks, mine, trajectories, n_samples, cache, sums, ratio_max, grad_norms, n_trained)
        if dist.is_initialized() and self.world_size > 1:
            dist.all_reduce(sums)
            dist.all_reduce(ratio_max, op=dist.ReduceOp.MAX)
        count = max(1.0, float(sums[4]))
        return {
            "loss/policy": float(sums[0] / count),
            "policy/ratio_mean": float(sums[1] / count),
            "policy/ratio_max_dev": float(ratio_max[0]),
            "policy/clip_fraction": float(sums[2] / count),
            "policy/kl": float(sums[3] / count),
            "policy/grad_norm": float(np.mean(grad_norms)) if grad_norms else 0.0,
            "learner/micro_batches": float(n_batches),
            "learner/trained_steps": float(np.mean(n_trained)) if n_trained else 0.0,  # timesteps per micro-batch
            "learner/updates": float(self.updates),
        }

    def _train_chunks(self, chunks, mine, trajectories, n_samples, cache, sums, ratio_max, grad_norms, n_trained):
        """The backward passes and optimizer steps of one train_step (sums, ratio_max, grad_norms and n_trained
        are filled in place)."""
        if self.cfg.objective == "nft":  # the sampling policy's velocities at every draw, before any update
            with torch.no_grad(), self._sampling_weights():
                for i, (t, idx, _) in enumerate(mine):
                    traj, cond = self._cached_conditioning(t, trajectories, cache)
                    self._v_old[i] = [self._fm_draw(traj, cond, idx, j, t)[0] for j in range(self.cfg.fm_timesteps)]
        for chunk in chunks:
            did_backward = False
            for i in chunk:
                t, idx, adv = mine[i]
                traj, _ = self._cached_conditioning(t, trajectories, cache)
                if self.cfg.objective in ("fm", "nft"):  # fm_timesteps draws, each a random trained timestep per sample
                    steps = list(range(self.cfg.fm_timesteps))
                else:  # the first timestep_fraction of the steps, within the trajectory's SDE window
                    steps = [j for j in trained_steps(traj.num_steps, self.cfg.timestep_fraction)
                             if j < traj.sde_window]
                n_trained.append(len(steps))
                if not steps:
                    continue
                # every (micro-batch, step) term weighs len/N of the step's mean; ranks' grads are averaged
                weight = len(idx) / max(1, n_samples) / len(steps) * self.world_size
                for j in steps:
                    if self.cfg.objective == "fm":
                        loss, stats = self._fm_loss(traj, cache[t], idx, adv, j, t)
                    elif self.cfg.objective == "nft":
                        loss, stats = self._fm_loss(traj, cache[t], idx, adv, j, t, v_old=self._v_old[i][j])
                    else:
                        loss, stats = self._loss(traj, cache[t], idx, adv, j)
                    self.engine.backward(loss * weight)
                    did_backward = True
                    ratio = stats["ratio"].double()
                    sums += torch.tensor([loss.item() * len(idx), ratio.sum().item(), stats["clipped"].sum().item(),
                                          stats["kl"].sum().item(), len(idx)], dtype=torch.float64)
                    ratio_max.copy_(torch.maximum(ratio_max, (ratio - 1).abs().max().reshape(1)))
            if not did_backward:  # a rank without work still joins the collective step
                self.engine.backward(sum(p.sum() for _, p in self._lora_params()) * 0.0)
            self.engine.step()
            self.updates += 1
            grad_norms.append(float(self.engine.get_global_grad_norm() or 0.0))
            self._update_ema()

    def _cached_conditioning(self, t: int, trajectories, cache: dict):
        """Trajectory `t` and its text conditioning, encoded once per train_step (`cache`)."""
        traj = trajectories[t]
        if traj is None:
            raise ValueError(f"rank {self.rank} trains trajectory {t} but was not given it")
        if t not in cache:
            cache[t] = self._conditioning(traj)
        return traj, cache[t]

    def _conditioning(self, traj: Trajectory):
        self.policy.check_made_here(traj)  # samplers and learner must share resolution and guidance
        embeds, pooled, text_ids = self.policy.encode(traj.prompts)  # [P, L, D], [P, Dp], [L, 3]
        h, w = self.policy.latent_size(traj.resolution)
        img_ids = latent_image_ids(h // 2, w // 2, device=self.policy.device, dtype=embeds.dtype)
        return embeds, pooled, text_ids, img_ids

    def _loss(self, traj: Trajectory, cond, idx: np.ndarray, adv: np.ndarray, j: int):
        dev = self.policy.device
        logp, mean, _ = self.policy.transition_log_prob(traj, idx, j, cond)  # [B], the sampler's own scoring
        advantages = torch.as_tensor(adv, device=dev, dtype=torch.float32)
        logp_old = traj.log_probs[idx, j].to(dev)
        loss, stats = clipped_policy_loss(logp, logp_old, advantages, self.cfg.clip_range)
        kl = torch.zeros(len(idx), device=dev)
        if self.cfg.kl_beta > 0:
            sigma, sigma_next = traj.sigmas[j].to(dev), traj.sigmas[j + 1].to(dev)
            with self._reference():
                _, mean_ref, _ = self.policy.transition_log_prob(traj, idx, j, cond)  # the base model's mean
            kl = sde_kl(mean, mean_ref, kl_std(sigma.float(), sigma_next.float(), traj.noise_level, traj.sde_type))
            loss = loss + self.cfg.kl_beta * kl.mean()
        stats["kl"] = kl.detach()
        return loss, stats

    @contextlib.contextmanager
    def _sampling_weights(self):
        """The weights the samplers were given (`lora_state`): the EMA of the LoRA when one is kept, so nft's
        v_old is DiffusionNFT's slowly updated sampling policy and the trained LoRA stays within reach of it."""
        if self.ema is None:
            yield
            return
        with torch.no_grad():
            saved = {n: p.detach().clone() for n, p in self._lora_params()}
            for n, p in self._lora_params():
                p.copy_(self.ema[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self._lora_params():
                    p.copy_(saved[n])

    @contextlib.contextmanager
    def _reference(self):
        """The KL terms' reference: the base transformer (LoRA disabled), without grad."""
        with torch.no_grad():
            self.transformer.disable_adapters()
            try:
                yield
            finally:
                self.transformer.enable_adapters()

    def _fm_draw(self, traj: Trajectory, cond, idx: np.ndarray, draw: int, t_index: int):
        """Images `idx` noised for flow matching: x0 = their final latents, a seeded random trained timestep and
        fresh noise per sample (draw `draw`); returns (velocity, x0, noise, (x_t, timesteps, rows)). fm draws anew
        at every update; nft keeps one draw per GRPO step, so v_old and every pass see the same x_t."""
        dev = self.policy.device
        embeds, pooled, text_ids, img_ids = cond
        when = self._step_start if self.cfg.objective == "nft" else self.updates
        rng = np.random.default_rng([self.cfg.seed, when, t_index, int(idx[0]), draw])
        choices = np.asarray(trained_steps(traj.num_steps, self.cfg.timestep_fraction))
        js = torch.as_tensor(rng.choice(choices, size=len(idx)))  # [B] step index per sample
        x0 = traj.latents[idx, -1].to(dev)  # [B, S, 64]
        if self.cfg.fm_noise == "rollout":  # the sample's own start: credit to the start -> image map it took
            noise = traj.latents[idx, 0].to(dev)  # [B, S, 64]
        else:
            noise = torch.as_tensor(rng.standard_normal(x0.shape), dtype=x0.dtype, device=dev)
        sigma = traj.sigmas[js].to(dev)  # [B]
        x_t = noised_latents(x0, noise, sigma)
        rows = torch.as_tensor(traj.group_index[idx], device=dev)
        timesteps = traj.timesteps[js].to(dev)  # [B]
        # the conditional velocity, as Flux is trained, by default: pulling the guided one (both branches) toward
        # eps - x0 erodes the guidance (positive-only weights collapsed the toy generator in 10 steps); fm_guided
        # trains the guided velocity through its conditional branch only
        v = self.policy.velocity(x_t, timesteps, embeds[rows], pooled[rows], text_ids, img_ids,
                                 guided=self.cfg.fm_guided, detach_negative=True)
        return v, x0, noise, (x_t, timesteps, rows)

    def _fm_loss(self, traj: Trajectory, cond, idx: np.ndarray, adv: np.ndarray, draw: int, t_index: int,
                 v_old: torch.Tensor | None = None):
        """fm: advantage-weighted flow matching on images `idx`; nft (given `v_old`, the sampling policy's
        velocity at the same draw): DiffusionNFT's loss with r = optimality(advantage). Velocity with grad."""
        dev = self.policy.device
        embeds, pooled, text_ids, img_ids = cond
        v, x0, noise, (x_t, timesteps, rows) = self._fm_draw(traj, cond, idx, draw, t_index)
        advantages = torch.as_tensor(adv, device=dev, dtype=torch.float32)
        if v_old is None:
            advantages = torch.where(advantages < 0, advantages * self.cfg.fm_negative_weight, advantages)
            loss, _ = weighted_flow_matching_loss(v, x0, noise, advantages)
        else:
            loss, _ = nft_loss(v, v_old, x0, noise, optimality(advantages), self.cfg.nft_beta)
        kl = torch.zeros(len(idx), device=dev)
        if self.cfg.kl_beta > 0:
            with self._reference():
                v_ref = self.policy.velocity(x_t, timesteps, embeds[rows], pooled[rows], text_ids, img_ids,
                                             guided=self.cfg.fm_guided)
            kl = ((v.float() - v_ref.float()) ** 2).mean(dim=tuple(range(1, v.ndim)))  # [B]
            loss = loss + self.cfg.kl_beta * kl.mean()
        ones = torch.ones(len(idx), device=dev)
        return loss, {"ratio": ones, "clipped": torch.zeros_like(ones), "kl": kl.detach()}

    def _update_ema(self) -> None:
        if self.ema is None:
            return
        # Flow-GRPO's warm-up: decay min((1 + s) / (10 + s), ema_decay)
        decay = min((1 + self.updates) / (10 + self.updates), self.cfg.ema_decay)
        with torch.no_grad():
            for n, p in self._lora_params():
                self.ema[n].mul_(decay).add_(p.detach().float(), alpha=1 - decay)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def micro_batches(batch_sizes: list[int], selections: list[TrainSelection], rank: int, world_size: int):
    """Rank `rank`'s micro-batches of a step: (trajectory index, image indices, advantages), each at most the
    trajectory's sampling batch size (the learner recomputes in the sampler's batches, so the ratio is exactly 1
    on-policy), and the step's number of micro-batches. Ranks get contiguous runs of micro-batches, so a rank needs
    about 1 / world_size of the step's trajectories (`needed_trajectories`) instead of all of them."""
    batches = []
    for t, (bs, sel) in enumerate(zip(batch_sizes, selections)):
        order = np.argsort(sel.indices, kind="stable")
        idx, adv = np.asarray(sel.indices)[order], np.asarray(sel.advantages, dtype=np.float32)[order]
        for start in range(0, len(idx), bs):
            batches.append((t, idx[start:start + bs], adv[start:start + bs]))
    share = np.array_split(np.arange(len(batches)), world_size)[rank]
    return [batches[i] for i in share], len(batches)


def needed_trajectories(batch_sizes: list[int], selections: list[TrainSelection], rank: int, world_size: int) -> list[int]:
    """Indices of the trajectories rank `rank` trains on this step."""
    mine, _ = micro_batches(batch_sizes, selections, rank, world_size)
    return sorted({t for t, _, _ in mine})


def trajectory_bytes(traj: Trajectory) -> int:
    """Bytes of a trajectory's arrays (what moving it between roles costs)."""
    total = 0
    for value in vars(traj).values():
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, np.ndarray):
            total += value.nbytes
    return total

