"""Pairwise reward-model losses: Bradley-Terry and the HPSv3 uncertainty-aware Bradley-Terry loss.

Pure functions on tensors; this module imports torch alone (docs/architecture.md section 3). Inputs are the
rewards of the chosen and rejected member of each pair, shape [B]; every loss is a mean over pairs.

- `bradley_terry_loss`: -log sigmoid(r_chosen - r_rejected), the plain BT objective.
- `uncertainty_bt_loss`: the reward of an image is a Gaussian N(mu, sigma^2) (HPSv3, Ma et al. ICCV 2025), so
  the margin z = r_c - r_r is N(mu_c - mu_r, sigma_c^2 + sigma_r^2) and the loss is E_z[-log sigmoid(z)].
  Departure from HPSv3: HPSv3 estimates this expectation with 1000 fp16 Monte Carlo samples per pair; we compute
  the *same expectation* with Gauss-Hermite quadrature, which is deterministic (no generator, identical on every
  rank and rerun), has a smooth gradient, and is far more accurate for the same cost (64 nodes: error < 1e-9 for
  a margin std s <= 1.5, about 3e-8 at s = 3, 2e-5 at s = 5, 2e-3 at s = 10; 1000 MC samples have a standard
  error of ~0.02 at s = 1.4).
- `pairwise_accuracy`: fraction of pairs with r_chosen > r_rejected (ties count as wrong).

Run the tests: .venv/bin/python -m pytest tests/test_reward_losses.py -q
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_NODES = 64


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(r_chosen - r_rejected); ln 2 when the rewards are equal."""
    _check_pair(r_chosen, r_rejected)
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def uncertainty_bt_loss(
    mu_chosen: torch.Tensor,
    log_sigma_chosen: torch.Tensor,
    mu_rejected: torch.Tensor,
    log_sigma_rejected: torch.Tensor,
    num_nodes: int = DEFAULT_NODES,
) -> torch.Tensor:
    """Mean over pairs of E[-log sigmoid(z)], z ~ N(mu_c - mu_r, sigma_c^2 + sigma_r^2), sigma = exp(log_sigma).

    The expectation is the HPSv3 uncertainty loss, computed by `num_nodes`-point Gauss-Hermite quadrature
    instead of HPSv3's Monte Carlo sampling:  E[f(z)] = pi^-1/2 * sum_i w_i f(m + sqrt(2) s x_i).
    As sigma -> 0 it reduces exactly to `bradley_terry_loss(mu_c, mu_r)` (the weights sum to sqrt(pi)).
    Computed in at least float32 whatever the input dtype (bf16 models pass bf16 heads at most).
    """
    _check_pair(mu_chosen, mu_rejected)
    _check_pair(log_sigma_chosen, log_sigma_rejected)
    if mu_chosen.shape != log_sigma_chosen.shape:
        raise ValueError(f"mu {tuple(mu_chosen.shape)} and log_sigma {tuple(log_sigma_chosen.shape)} differ in shape")
    dtype = torch.promote_types(mu_chosen.dtype, torch.float32)
    margin = (mu_chosen - mu_rejected).to(dtype)  # [B]
    # log s = 0.5 * log(sigma_c^2 + sigma_r^2), without overflow for large log_sigma
    log_std = 0.5 * torch.logaddexp(2 * log_sigma_chosen.to(dtype), 2 * log_sigma_rejected.to(dtype))  # [B]
    nodes, weights = gauss_hermite(num_nodes, dtype=dtype, device=margin.device)  # [K], [K]
    z = margin[..., None] + math.sqrt(2.0) * log_std.exp()[..., None] * nodes  # [B, K]
    expected = (-F.logsigmoid(z) * weights).sum(-1) / math.sqrt(math.pi)  # [B]
    return expected.mean()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs where the chosen reward is strictly higher (a tie counts as a miss)."""
    _check_pair(r_chosen, r_rejected)
    return (r_chosen > r_rejected).float().mean()


_GH_CACHE: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def gauss_hermite(num_nodes: int, dtype: torch.dtype = torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes x_i and weights w_i with sum_i w_i f(x_i) ~ integral exp(-x^2) f(x) dx (physicists' Hermite).

    Computed once per size in float64 with the Golub-Welsch eigenvalue method (torch only, no numpy): the
    nodes are the eigenvalues of the symmetric tridiagonal Jacobi matrix with off-diagonal sqrt(k/2), and
    w_i = sqrt(pi) * v_i[0]^2 for the normalised eigenvectors v_i.
    """
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1; got {num_nodes}")
    if num_nodes not in _GH_CACHE:
        k = torch.arange(1, num_nodes, dtype=torch.float64)
        off = torch.sqrt(k / 2)
        jacobi = torch.diag(off, 1) + torch.diag(off, -1)  # [K, K]
        nodes, vecs = torch.linalg.eigh(jacobi)
        weights = math.sqrt(math.pi) * vecs[0] ** 2
        _GH_CACHE[num_nodes] = (nodes, weights)
    nodes, weights = _GH_CACHE[num_nodes]
    return nodes.to(dtype=dtype, device=device), weights.to(dtype=dtype, device=device)


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"chosen {tuple(a.shape)} and rejected {tuple(b.shape)} differ in shape; pass one value per pair to each"
        )
