"""The math of sampling Flux as a policy: sigma schedule, SDE / ODE steps with log-probs, latent packing.

Pure functions on tensors; imports torch only (no diffusers, no Ray), so the learner, the sampler and the tests
share one definition. docs/architecture.md section 3 states the equations (Flow-GRPO's SDE step, reused
unchanged for Flux).

- `flux_sigmas(num_steps, image_seq_len)`: the shifted schedule of diffusers' `FluxPipeline` with
  `FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)`, bit for bit, plus the terminal 0.
- `sde_step(x, v, sigma, sigma_next, noise_level)`: one Flow-GRPO SDE transition and its log-prob (the Gaussian
  log-density *averaged* over latent elements, one number per sample). With `prev_sample` it scores a stored
  transition instead of drawing one (the learner's ratio). All arithmetic in fp32, whatever the model dtype.
  `kind="cps"` is the coefficients-preserving step instead (Wang & Yu 2025, "Coefficients-Preserving Sampling
  for Reinforcement Learning with Flow Matching"): it re-noises the predicted clean latent to exactly sigma_next's
  noise level, so an SDE sample is as clean as an ODE one (Flow-GRPO's step adds more noise than the schedule
  removes at coarse step counts, and a policy can then gain reward by undoing that noise).
- `ode_step(x, v, sigma, sigma_next)`: plain Euler (noise level 0), the same float32 operations as the
  scheduler's `step`, so evaluation reproduces the stock pipeline exactly.
- `pack_latents` / `unpack_latents` / `latent_image_ids`: Flux's 2x2 patch tokens and their position ids.

Departures from the paper: none by default; the paper uses Flow-GRPO's sampler (`kind="flow_grpo"`). Notation: t = sigma_i,
Delta = sigma_{i+1} - sigma_i < 0, v = the transformer's velocity.
"""

from __future__ import annotations

import math

import torch

# FLUX.1-dev's scheduler config (scheduler/scheduler_config.json); the defaults of `calculate_shift`.
BASE_SHIFT = 0.5
MAX_SHIFT = 1.15
BASE_SEQ_LEN = 256
MAX_SEQ_LEN = 4096
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))  # the constant as torch.distributions.Normal writes it


# ------------------------------------------------------------------------------------------------- schedule


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = BASE_SEQ_LEN,
    max_seq_len: int = MAX_SEQ_LEN,
    base_shift: float = BASE_SHIFT,
    max_shift: float = MAX_SHIFT,
) -> float:
    """mu, linear in the number of image tokens: base_shift at base_seq_len, max_shift at max_seq_len."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def flux_sigmas(
    num_steps: int,
    image_seq_len: int,
    base_seq_len: int = BASE_SEQ_LEN,
    max_seq_len: int = MAX_SEQ_LEN,
    base_shift: float = BASE_SHIFT,
    max_shift: float = MAX_SHIFT,
) -> torch.Tensor:
    """The Flux sampling schedule: N shifted sigmas from 1 down, then 0. Float32 `[N + 1]`.

    sigma_i = e^mu / (e^mu + 1/s_i - 1) with s = linspace(1, 1/N, N) and mu = calculate_shift(image_seq_len).
    The operations mirror diffusers (numpy's float64 linspace, cast to float32, shift in float32), so the
    result equals `FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=s, mu=mu).sigmas` exactly.
    Timesteps, as the scheduler reports them, are `sigmas[:-1] * 1000`.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1; got {num_steps}")
    mu = calculate_shift(image_seq_len, base_seq_len, max_seq_len, base_shift, max_shift)
    start, stop = 1.0, 1.0 / num_steps
    if num_steps == 1:
        base = torch.tensor([start], dtype=torch.float64)
    else:  # numpy.linspace: i * step + start, with the endpoint written exactly
        step = (stop - start) / (num_steps - 1)
        base = torch.arange(num_steps, dtype=torch.float64) * step + start
        base[-1] = stop
    s = base.to(torch.float32)  # [N]
    # float32 throughout, as numpy does with a float32 array and Python scalars; true divisions (torch's
    # `scalar / tensor` multiplies by a reciprocal, which rounds differently).
    one = torch.ones((), dtype=torch.float32)
    e_mu = torch.tensor(math.exp(mu), dtype=torch.float32)
    shifted = e_mu / (e_mu + (one / s - one))  # [N]
    return torch.cat([shifted, torch.zeros(1, dtype=torch.float32)])


# ---------------------------------------------------------------------------------------------------- steps


def _per_sample(value: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A sigma as float32 on x's device, shaped to broadcast over x: a scalar, or one value per sample."""
    t = torch.as_tensor(value, dtype=torch.float32, device=x.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"a per-sample sigma must have shape [{x.shape[0]}]; got {tuple(t.shape)}")
    return t.view(-1, *([1] * (x.ndim - 1)))


def sde_std(sigma: torch.Tensor, sigma_next: torch.Tensor, noise_level: float) -> torch.Tensor:
    """Flow-GRPO's sigma_t = a * sqrt(t / (1 - t)); at t = 1 the denominator is 1 - sigma_1.

    sigma_1 is the next sigma of the step that starts at t = 1 (the schedule's first step), so the step's own
    sigma_next is what stands in for it.
    """
    denom = 1 - torch.where(sigma == 1, sigma_next, sigma)
    return noise_level * torch.sqrt(sigma / denom)


SDE_KINDS = ("flow_grpo", "cps")


def cps_std(sigma_next: torch.Tensor, eta: float) -> torch.Tensor:
    """The coefficients-preserving step's std: sigma_next * sin(eta * pi / 2), eta in (0, 1]."""
    return sigma_next * math.sin(eta * math.pi / 2)


def sde_window(num_steps: int, sde_steps: int, noise_level: float, kind: str = "flow_grpo") -> int:
    """How many leading transitions are stochastic: 0 for the ODE, else sde_steps (0 = all). The CPS step into
    sigma = 0 has std 0 (deterministic), so with kind="cps" the last transition is never one of them."""
    if noise_level <= 0:
        return 0
    window = sde_steps or num_steps
    return min(window, num_steps - 1) if kind == "cps" else window


def sde_step(
    x: torch.Tensor,
    v: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    noise_level: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
    kind: str = "flow_grpo",
    block: int = 1,
    latent_size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SDE transition x_t -> x_{t+Delta}: returns (x_next, log_prob, mean, std).

    x, v: latents and velocity, any float dtype, batch first (`[B, ...]`); promoted to float32 here.
    sigma, sigma_next: scalars or per-sample `[B]` (sigma_next < sigma).
    noise: the standard-normal eps to use (shape of x); else drawn with `generator` on x's device.
    prev_sample: a stored x_next to score instead of drawing one (then x_next is prev_sample, in float32).
    kind: "flow_grpo" (noise level a: sigma_t = a sqrt(t / (1 - t))) or "cps" (noise level eta in (0, 1]:
    x0 = x - t v, x1 = x + (1 - t) v, mean = (1 - t') x0 + t' cos(eta pi / 2) x1, std = t' sin(eta pi / 2)).
    block: 1 = independent noise per element (the papers' step). b > 1 = block noise: the exploration noise is one
    draw per channel and b x b block of latent pixels (x is packed tokens `[B, S, 4C]`, `latent_size` = the
    latent's (height, width)); the policy is then a Gaussian on the block means only, so log_prob is the density of
    the block means of x_next - mean (`block_means`), averaged over them. The step's per-pixel noise std is
    unchanged; what changes is that only low-frequency directions are explored and credited.
    Returns x_next and mean as float32 like x, log_prob as float32 `[B]` (mean over all non-batch elements
    of the Gaussian log-density, or over the block means), std broadcastable to x.
    """
    if noise_level <= 0:
        raise ValueError(f"sde_step needs noise_level > 0 (got {noise_level}); use ode_step for deterministic sampling")
    if kind not in SDE_KINDS:
        raise ValueError(f"kind={kind!r}: use one of {SDE_KINDS}")
    x = x.float()
    v = v.float()
    t = _per_sample(sigma, x)
    t_next = _per_sample(sigma_next, x)
    if kind == "cps":
        if noise_level > 1:
            raise ValueError(f"the CPS step's noise level is eta in (0, 1]; got {noise_level}")
        std = cps_std(t_next, noise_level)
        if bool((std <= 0).any()):
            raise ValueError("a CPS step into sigma_next = 0 is deterministic (std 0): use ode_step for it")
        x0, x1 = x - t * v, x + (1 - t) * v  # the predicted clean latent and the predicted noise
        mean = (1 - t_next) * x0 + t_next * math.cos(noise_level * math.pi / 2) * x1
    else:
        delta = t_next - t  # < 0
        sigma_t = sde_std(t, t_next, noise_level)
        mean = x + (v + sigma_t**2 / (2 * t) * (x + (1 - t) * v)) * delta  # [B, ...]
        std = sigma_t * torch.sqrt(-delta)
    if prev_sample is not None:
        x_next = prev_sample.float()
    else:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        x_next = mean + std * noise.to(device=x.device, dtype=torch.float32)
    if block == 1:
        # Written as torch.distributions.Normal(mean, std).log_prob(x_next) writes it, so the two agree bit for bit.
        log_density = -((x_next - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI  # [B, ...]
        log_prob = log_density.mean(dim=tuple(range(1, x.ndim)))  # [B]
    else:
        if latent_size is None:
            raise ValueError("block noise needs latent_size=(height, width) to find the blocks in packed tokens")
        coarse = block_means(x_next - mean, *latent_size, block)  # [B, C, H/b, W/b]
        std_c = std.reshape(-1, 1, 1, 1) if std.ndim else std
        log_density = -(coarse**2) / (2 * std_c**2) - torch.log(std_c) - _LOG_SQRT_2PI
        log_prob = log_density.mean(dim=(1, 2, 3))  # [B]
    return x_next, log_prob, mean, std


def check_block(block: int, height: int, width: int) -> None:
    """Raise unless b x b blocks tile a height x width latent (b >= 1)."""
    if int(block) != block or block < 1 or height % block or width % block:
        raise ValueError(f"noise block {block} does not tile a {height}x{width} latent: use 1 or a divisor of both")


def block_means(tokens: torch.Tensor, height: int, width: int, block: int) -> torch.Tensor:
    """Packed tokens `[B, S, 4C]` -> per channel, the mean over each b x b block of latent pixels `[B, C, H/b, W/b]`."""
    check_block(block, height, width)
    lat = unpack_latents(tokens, height, width)  # [B, C, H, W]
    b, c = lat.shape[:2]
    return lat.reshape(b, c, height // block, block, width // block, block).mean(dim=(3, 5))


def block_noise(channels: int, height: int, width: int, block: int, generator: torch.Generator) -> torch.Tensor:
    """One standard-normal draw per channel and b x b block, repeated over the block, packed: `[1, S, 4C]`."""
    check_block(block, height, width)
    eps = torch.randn((1, channels, height // block, width // block), generator=generator, dtype=torch.float32)
    return pack_latents(eps.repeat_interleave(block, dim=2).repeat_interleave(block, dim=3))


def kl_std(sigma: torch.Tensor, sigma_next: torch.Tensor, noise_level: float, kind: str = "flow_grpo") -> torch.Tensor:
    """The std the KL to the reference divides by: Flow-GRPO's sigma_t for its step (as Flow-GRPO does), the
    transition's own std for the CPS step."""
    return cps_std(sigma_next, noise_level) if kind == "cps" else sde_std(sigma, sigma_next, noise_level)


def ode_step(
    x: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor
) -> torch.Tensor:
    """Plain Euler x + (sigma_next - sigma) * v in float32: the scheduler's `step`, operation for operation."""
    x = x.float()
    dt = _per_sample(sigma_next, x) - _per_sample(sigma, x)
    return x + dt * v.float()


# -------------------------------------------------------------------------------------------------- packing


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """VAE latents `[B, C, H, W]` -> Flux tokens `[B, H/2 * W/2, 4C]` (2x2 patches, row-major, channel first)."""
    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"latent height and width must be even for 2x2 packing; got {h}x{w}")
    x = latents.view(b, c, h // 2, 2, w // 2, 2)
    x = x.permute(0, 2, 4, 1, 3, 5)  # [B, H/2, W/2, C, 2, 2]
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Flux tokens `[B, H/2 * W/2, 4C]` -> VAE latents `[B, C, H, W]`; height, width = latent (not pixel) size."""
    b, n, c4 = tokens.shape
    if n != (height // 2) * (width // 2) or height % 2 or width % 2:
        raise ValueError(f"{n} tokens do not tile a {height}x{width} latent in 2x2 patches")
    x = tokens.view(b, height // 2, width // 2, c4 // 4, 2, 2)
    x = x.permute(0, 3, 1, 4, 2, 5)  # [B, C, H/2, 2, W/2, 2]
    return x.reshape(b, c4 // 4, height, width)


def latent_image_ids(
    h: int, w: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Position ids of the image tokens, `[h * w, 3]` rows of [0, row, col]; h, w = the token grid (latent / 2)."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)
