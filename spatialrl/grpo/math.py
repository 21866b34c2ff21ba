"""GRPO math for Flux: group advantages, Top-k filtering, the per-timestep clipped policy loss, the KL term.

Pure functions on tensors; they import torch alone, so the driver, the learner and the tests share
them. The formulas (docs/architecture.md section 3):

- advantages  A_k = clip((r_k - mean_group) / (std + 1e-4), -5, 5), std over the group or the whole batch
  (`global_std`, Flow-GRPO's Flux default);
- Top-k filtering (the paper, k = 6): per prompt group keep the k highest and k lowest rewards and normalise
  over the kept set; `normalize="group"` normalises over the full group first, then keeps. Groups whose rewards
  are all equal are dropped (they carry no signal). Ties are broken in a seeded random order.
- policy loss per trained timestep: mean over samples of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)),
  ratio = exp(logp_new - logp_old) of per-element-mean log-probs (hence eps ~ 1e-4);
- KL to the reference (the transformer with LoRA disabled): mean (mu - mu_ref)^2 / (2 sigma_t^2), Flow-GRPO's
  form (sigma_t, not the step std);
- the advantage-weighted flow-matching objective (`learner.objective: fm`, a denser-credit alternative to the
  likelihood ratio): noise the sample's final latents x0 to x_t = (1 - t) x0 + t eps with fresh eps at a random
  trained timestep, and weigh each sample's flow-matching error |v(x_t) - (eps - x0)|^2 by its advantage:
  good samples pull the velocity toward themselves, bad ones push it away (DiffusionNFT's gradient at its
  on-policy point);
- DiffusionNFT's negative-aware loss (`learner.objective: nft`): the same noised x_t, the velocity split into an
  implicit positive policy (1 - beta) v_old + beta v and a negative one (1 + beta) v_old - beta v around the
  sampling policy's v_old, each pulled toward eps - x0 with weight r (optimality, from the advantage) and 1 - r;
  its first gradient is fm's, but it stays bounded over several passes on one batch (`learner.epochs`);
- the reward-hacking monitor: over the last W steps, the least-squares slope of the reward and of an
  independent check (the verifier), each as a t statistic (slope / its standard error); it fires when the
  reward rises clearly (t_reward >= z) while the check does not rise (t_check <= quiet); its second arm,
  `decline_signal`, fires when a check the reward should keep (object presence) falls clearly (t_check <= -z)
  while the reward does not fall (t_reward >= -quiet): the reward buys its score with what it does not see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ADV_EPS = 1e-4
ADV_CLIP = 5.0


def _groups(group_index: torch.Tensor) -> list[torch.Tensor]:
    """Indices of each group, in order of first appearance."""
    groups = []
    for g in torch.unique(group_index, sorted=True):
        groups.append(torch.nonzero(group_index == g, as_tuple=False).flatten())
    return groups


def _population_std(x: torch.Tensor) -> torch.Tensor:
    return x.std(unbiased=False) if x.numel() > 1 else torch.zeros((), dtype=x.dtype)


def group_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    *,
    global_std: bool = False,
    eps: float = ADV_EPS,
    clip: float = ADV_CLIP,
) -> torch.Tensor:
    """Advantages `[N]`: reward minus its group mean, over the group's std (or the batch's), clipped.

    rewards: `[N]` float; group_index: `[N]` int, which prompt group each sample belongs to.
    Population std (as numpy's and Flow-GRPO's stat tracker compute it).
    """
    rewards = rewards.double()
    adv = torch.zeros_like(rewards)  # [N]
    batch_std = _population_std(rewards)
    for idx in _groups(group_index):
        r = rewards[idx]
        std = batch_std if global_std else _population_std(r)
        adv[idx] = (r - r.mean()) / (std + eps)
    return adv.clamp(-clip, clip).float()


@dataclass
class TopKResult:
    keep: torch.Tensor  # [N] bool: samples that are trained on
    advantages: torch.Tensor  # [N] float32: 0 where not kept
    kept_groups: int
    dropped_groups: int  # groups whose rewards were all equal

    @property
    def kept_samples(self) -> int:
        return int(self.keep.sum())


def topk_filter(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    k: int,
    *,
    normalize: str = "kept",
    global_std: bool = False,
    seed: int = 0,
    eps: float = ADV_EPS,
    clip: float = ADV_CLIP,
) -> TopKResult:
    """Keep the k best and k worst samples of every group and give them advantages.

    k = 0 (or 2k >= group size) keeps every sample: plain GRPO. normalize="kept" (default, the paper's figure:
    select, then normalise over the kept set) or "group" (normalise over the full group, then select).
    With global_std the std is taken over every kept reward ("kept") or every reward ("group") of the batch.
    """
    if normalize not in ("kept", "group"):
        raise ValueError(f"normalize={normalize!r}: use 'kept' or 'group'")
    if k < 0:
        raise ValueError(f"k={k} must be >= 0 (0 = keep every sample)")
    rewards = rewards.double()
    n = rewards.shape[0]
    gen = torch.Generator().manual_seed(int(seed))
    tiebreak = torch.rand(n, generator=gen, dtype=torch.float64)  # [N]
    keep = torch.zeros(n, dtype=torch.bool)
    dropped = 0
    for idx in _groups(group_index):
        r = rewards[idx]
        if bool((r == r[0]).all()):
            dropped += 1
            continue
        if k == 0 or 2 * k >= len(idx):
            keep[idx] = True
            continue
        # sort by reward, ties in a seeded random order: a stable sort of the tiebreak order by reward
        order = torch.argsort(tiebreak[idx])
        order = order[torch.argsort(r[order], stable=True)]
        keep[idx[order[:k]]] = True
        keep[idx[order[-k:]]] = True
    adv = torch.zeros(n, dtype=torch.float64)
    if normalize == "group":
        full = group_advantages(rewards, group_index, global_std=global_std, eps=eps, clip=clip).double()
        adv[keep] = full[keep]
    elif keep.any():
        kept_idx = torch.nonzero(keep, as_tuple=False).flatten()
        sub = group_advantages(
            rewards[kept_idx], group_index[kept_idx], global_std=global_std, eps=eps, clip=clip
        ).double()
        adv[kept_idx] = sub
    n_groups = len(torch.unique(group_index))
    return TopKResult(keep=keep, advantages=adv.float(), kept_groups=n_groups - dropped, dropped_groups=dropped)


def clipped_policy_loss(
    logp_new: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Flow-GRPO's per-timestep PPO-clip loss: mean_k max(-A r, -A clip(r, 1 - eps, 1 + eps)).

    logp_new: `[B]` (with grad), logp_old: `[B]`, advantages: `[B]`. Returns the loss and detached stats:
    ratio `[B]` and clipped `[B]` (1.0 where the clipped branch was taken, i.e. its gradient is zero).
    """
    ratio = torch.exp(logp_new - logp_old.detach())  # [B]
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    stats = {"ratio": ratio.detach(), "clipped": (clipped > unclipped).float().detach()}
    return loss, stats


def sde_kl(mean: torch.Tensor, mean_ref: torch.Tensor, sigma_t: torch.Tensor | float) -> torch.Tensor:
    """KL term per sample `[B]`: mean over non-batch elements of (mu - mu_ref)^2 / (2 sigma_t^2)."""
    diff2 = (mean.float() - mean_ref.float()) ** 2  # [B, ...]
    sigma_t = torch.as_tensor(sigma_t, dtype=torch.float32, device=mean.device)
    return diff2.mean(dim=tuple(range(1, mean.ndim))) / (2 * sigma_t.reshape(-1) ** 2)


def noised_latents(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, the rectified-flow interpolation Flux is trained on; sigma `[B]` (or scalar)."""
    t = torch.as_tensor(sigma, dtype=x0.dtype, device=x0.device).reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * noise


def weighted_flow_matching_loss(
    velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, advantages: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """mean_k A_k * mean_elements (v_k - (eps_k - x0_k))^2 and the per-sample error `[B]` (detached).

    velocity, x0, noise: `[B, ...]`; advantages: `[B]`. A positive advantage lowers the sample's flow-matching
    error (the model moves toward it), a negative one raises it; zero-sum advantages cancel the shared part.
    """
    target = noise.float() - x0.float()
    err = ((velocity.float() - target) ** 2).mean(dim=tuple(range(1, velocity.ndim)))  # [B]
    return (advantages.float() * err).mean(), err.detach()


def optimality(advantages: torch.Tensor) -> torch.Tensor:
    """DiffusionNFT's optimality probability r = 1/2 + clip(A, -1, 1) / 2 of each sample `[B]`: 1 for a sample a
    group standard deviation or more above its group's mean, 0 as far below, 1/2 at the mean."""
    return 0.5 + 0.5 * advantages.float().clamp(-1.0, 1.0)


def nft_loss(
    velocity: torch.Tensor, velocity_old: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, r: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffusionNFT's negative-aware flow-matching loss and the per-sample loss `[B]` (detached).

    With v* = eps - x0, the implicit positive policy v+ = (1 - beta) v_old + beta v and the negative one
    v- = (1 + beta) v_old - beta v: loss_k = r_k |v+ - v*|^2 + (1 - r_k) |v- - v*|^2 (element means), averaged.
    At v = v_old its gradient is 2 beta (2 r - 1) (v_old - v*), the advantage-weighted flow-matching gradient; unlike
    that loss it is a quadratic in v with curvature beta^2 whatever r is, so repeated updates on one batch stay
    bounded: per sample its minimum moves v_old toward v* by (2 r - 1) / beta of the way (away from it for r < 1/2).
    velocity, velocity_old, x0, noise: `[B, ...]`; r: `[B]` in [0, 1].
    """
    dims = tuple(range(1, velocity.ndim))
    target = noise.float() - x0.float()
    v, v_old = velocity.float(), velocity_old.float().detach()
    positive = (1 - beta) * v_old + beta * v
    negative = (1 + beta) * v_old - beta * v
    r = r.float()
    per = r * ((positive - target) ** 2).mean(dim=dims) + (1 - r) * ((negative - target) ** 2).mean(dim=dims)  # [B]
    return per.mean(), per.detach()


def trained_steps(num_steps: int, fraction: float) -> list[int]:
    """The timesteps trained, in order: the first int(num_steps * fraction) (default fraction: all but the last)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"timestep_fraction={fraction}: use a value in (0, 1]")
    n = max(1, int(num_steps * fraction))
    return list(range(min(n, num_steps)))


def trend_t(values: list[float]) -> float:
    """t statistic of the least-squares slope of `values` against 0, 1, ...: slope / its standard error.

    0.0 for fewer than 3 points or a constant series; +-inf when the points lie exactly on a sloped line.
    """
    n = len(values)
    if n < 3:
        return 0.0
    y = torch.as_tensor(values, dtype=torch.float64)
    x = torch.arange(n, dtype=torch.float64)
    x = x - x.mean()
    slope = float((x * (y - y.mean())).sum() / (x * x).sum())
    resid = y - y.mean() - slope * x
    var = float((resid * resid).sum()) / (n - 2)
    if slope == 0.0:
        return 0.0
    se = (var / float((x * x).sum())) ** 0.5
    return slope / se if se > 0 else float("inf") * (1 if slope > 0 else -1)


@dataclass
class HackingSignal:
    reward_t: float  # trend t statistic of the reward over the window
    check_t: float  # the same for the independent check
    fired: bool  # reward rising clearly while the check does not rise


def _window_trends(reward: list[float], check: list[float], window: int) -> tuple[float, float]:
    if len(reward) != len(check):
        raise ValueError(f"{len(reward)} reward values but {len(check)} check values")
    if window < 3:
        raise ValueError(f"window={window}: need at least 3 steps for a trend")
    return trend_t(list(reward[-window:])), trend_t(list(check[-window:]))


def hacking_signal(reward: list[float], check: list[float], window: int = 10, z: float = 2.0,
                   quiet: float = 0.5) -> HackingSignal:
    """Compare the trends of the last `window` values of the reward and of the check (aligned per step).

    Fires when the reward's trend t >= z and the check's t <= quiet; never on fewer than `window` steps.
    """
    r, c = _window_trends(reward, check, window)
    fired = len(reward) >= window and r >= z and c <= quiet
    return HackingSignal(reward_t=r, check_t=c, fired=fired)


def decline_signal(reward: list[float], check: list[float], window: int = 10, z: float = 2.0,
                   quiet: float = 0.5) -> HackingSignal:
    """The trends of the last `window` values of the reward and of a check the reward should not trade away.

    Fires when the check's trend t <= -z and the reward's t >= -quiet (the reward did not fall with it); never on
    fewer than `window` steps.
    """
    r, c = _window_trends(reward, check, window)
    fired = len(reward) >= window and c <= -z and r >= -quiet
    return HackingSignal(reward_t=r, check_t=c, fired=fired)
