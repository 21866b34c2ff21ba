"""Unit tests for spatialrl.reward.losses: Bradley-Terry, the HPSv3 uncertainty loss (quadrature), accuracy.

Expected values are worked out by hand or by an independent numerical method (scipy adaptive quadrature, a
large Monte Carlo sample). CPU, no Ray, milliseconds. Run: .venv/bin/python -m pytest tests/test_reward_losses.py -q
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from spatialrl.reward.losses import (
    bradley_terry_loss,
    gauss_hermite,
    pairwise_accuracy,
    uncertainty_bt_loss,
)

LN2 = math.log(2.0)


def t64(*values):
    return torch.tensor(values, dtype=torch.float64)


def expected_softplus_of_gaussian(m: float, s: float) -> float:
    """E[-log sigmoid(z)], z ~ N(m, s^2), by scipy's adaptive quadrature (an independent reference)."""
    from scipy import integrate, stats

    def integrand(z):
        return np.logaddexp(0.0, -z) * stats.norm.pdf(z, m, s)

    value, _ = integrate.quad(integrand, m - 40 * s, m + 40 * s, points=sorted({m, 0.0}), limit=500,
                              epsabs=1e-13, epsrel=1e-12)
    return value


# ------------------------------------------------------------------------------------------ Bradley-Terry


def test_bt_equal_rewards_is_ln2():
    r = t64(0.0, 1.5, -3.0)
    assert bradley_terry_loss(r, r).item() == pytest.approx(LN2, abs=1e-12)


def test_bt_known_margins():
    # margins 1 and -2: (ln(1 + e^-1) + ln(1 + e^2)) / 2 = (0.3132617 + 2.1269280) / 2
    loss = bradley_terry_loss(t64(1.0, 0.0), t64(0.0, 2.0))
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(2))) / 2, abs=1e-12)
    assert loss.item() == pytest.approx(1.2200948, abs=1e-6)


def test_bt_stable_for_large_margins():
    loss_wrong = bradley_terry_loss(torch.tensor([-100.0]), torch.tensor([0.0]))  # float32: exp(100) overflows
    loss_right = bradley_terry_loss(torch.tensor([100.0]), torch.tensor([0.0]))
    assert loss_wrong.item() == pytest.approx(100.0, abs=1e-4)
    assert 0.0 <= loss_right.item() < 1e-30 or loss_right.item() == 0.0


def test_bt_gradient_at_equal_rewards():
    # d/dr_c of -log sigmoid(r_c - r_r) / B at r_c = r_r is -sigmoid(0) / B = -0.5 / B
    rc = t64(0.3, 0.3, 0.3, 0.3).requires_grad_()
    rr = t64(0.3, 0.3, 0.3, 0.3).requires_grad_()
    bradley_terry_loss(rc, rr).backward()
    assert torch.allclose(rc.grad, torch.full((4,), -0.125, dtype=torch.float64))
    assert torch.allclose(rr.grad, torch.full((4,), 0.125, dtype=torch.float64))


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="differ in shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="differ in shape"):
        uncertainty_bt_loss(torch.zeros(3), torch.zeros(2), torch.zeros(3), torch.zeros(2))


# ------------------------------------------------------------------------------------- pairwise accuracy


def test_pairwise_accuracy_counts_ties_as_misses():
    assert pairwise_accuracy(t64(1.0, 2.0, 3.0), t64(0.0, 2.0, 4.0)).item() == pytest.approx(1 / 3)
    assert pairwise_accuracy(t64(5.0, 6.0), t64(1.0, 2.0)).item() == 1.0


# ------------------------------------------------------------------------------------- Gauss-Hermite rule


def test_gauss_hermite_rule_is_exact_for_low_degree_moments():
    # integral of exp(-x^2) x^(2k) = Gamma(k + 1/2): sqrt(pi), sqrt(pi)/2, 3 sqrt(pi)/4, 15 sqrt(pi)/8
    x, w = gauss_hermite(8)
    for k, expected in enumerate([1.0, 0.5, 0.75, 1.875]):
        assert (w * x ** (2 * k)).sum().item() == pytest.approx(expected * math.sqrt(math.pi), rel=1e-13)
    assert (w * x ** 3).sum().item() == pytest.approx(0.0, abs=1e-13)  # odd moments vanish


def test_gauss_hermite_matches_numpy():
    from numpy.polynomial.hermite import hermgauss

    for n in (5, 32, 64):
        x, w = gauss_hermite(n)
        xn, wn = hermgauss(n)
        np.testing.assert_allclose(x.numpy(), xn, atol=1e-13)
        np.testing.assert_allclose(w.numpy(), wn, atol=1e-14)


# ----------------------------------------------------------------------------------------- uncertainty BT


def test_uncertainty_reduces_to_bt_as_sigma_goes_to_zero():
    mu_c, mu_r = t64(0.5, -1.0, 2.0, 0.0), t64(0.0, 1.0, -1.0, 0.0)
    tiny = torch.full((4,), -20.0, dtype=torch.float64)  # sigma = 2e-9
    assert uncertainty_bt_loss(mu_c, tiny, mu_r, tiny).item() == pytest.approx(
        bradley_terry_loss(mu_c, mu_r).item(), abs=1e-12)
    assert uncertainty_bt_loss(t64(0.0), t64(-30.0), t64(0.0), t64(-30.0)).item() == pytest.approx(LN2, abs=1e-12)


@pytest.mark.parametrize("m,s", [(0.0, 0.5), (0.7, 1.0), (-1.5, 1.4142), (2.0, 2.0), (-3.0, 3.0), (1.0, 5.0)])
def test_uncertainty_matches_adaptive_quadrature(m, s):
    # split s^2 unevenly between chosen and rejected: sigma_c^2 = 0.3 s^2, sigma_r^2 = 0.7 s^2
    ls_c, ls_r = math.log(s * math.sqrt(0.3)), math.log(s * math.sqrt(0.7))
    got = uncertainty_bt_loss(t64(m + 0.25), t64(ls_c), t64(0.25), t64(ls_r)).item()
    tol = 1e-9 if s <= 3 else 1e-4  # 64 nodes: ~3e-8 absolute at s = 3, ~2e-5 at s = 5
    assert got == pytest.approx(expected_softplus_of_gaussian(m, s), abs=max(tol, 3e-8))


def test_uncertainty_matches_hpsv3_monte_carlo():
    """The quadrature computes the expectation HPSv3 estimates by sampling z = mu_c - mu_r + s * eps."""
    gen = torch.Generator().manual_seed(1234)
    mu_c, mu_r = t64(0.8, -0.4, 1.5, 0.0), t64(0.1, 0.6, -0.5, 0.0)
    ls_c, ls_r = t64(0.0, -0.5, 0.3, 0.2), t64(-0.2, 0.1, 0.0, -1.0)
    n = 200_000
    s = torch.sqrt(ls_c.exp() ** 2 + ls_r.exp() ** 2)  # [B]
    eps = torch.randn(4, n, generator=gen, dtype=torch.float64)  # [B, n]
    samples = -torch.nn.functional.logsigmoid((mu_c - mu_r)[:, None] + s[:, None] * eps)  # [B, n]
    mc_per_pair = samples.mean(1)
    stderr_per_pair = samples.std(1) / math.sqrt(n)
    for i in range(4):
        quad = uncertainty_bt_loss(mu_c[i:i + 1], ls_c[i:i + 1], mu_r[i:i + 1], ls_r[i:i + 1]).item()
        assert abs(quad - mc_per_pair[i].item()) < max(4 * stderr_per_pair[i].item(), 1e-4)
        assert abs(quad - mc_per_pair[i].item()) < 1e-2
    mc = mc_per_pair.mean().item()
    assert uncertainty_bt_loss(mu_c, ls_c, mu_r, ls_r).item() == pytest.approx(mc, abs=1e-3)


def test_uncertainty_grows_with_sigma():
    # -log sigmoid is convex, so by Jensen the expected loss rises with the margin's spread (HPSv3 behaviour)
    mu_c, mu_r = t64(0.5), t64(0.0)
    bt = bradley_terry_loss(mu_c, mu_r).item()
    values = [uncertainty_bt_loss(mu_c, t64(ls), mu_r, t64(ls)).item() for ls in (-8.0, -4.0, -1.0, 0.0, 1.0)]
    assert values[0] == pytest.approx(bt, abs=1e-7)
    # small s: E f(m + s eps) ~ f(m) + f''(m) s^2 / 2, f'' = sigmoid(m) sigmoid(-m); s^2 = 2 e^-8 at log sigma = -4
    curvature = 1 / (1 + math.exp(-0.5)) * 1 / (1 + math.exp(0.5))
    assert values[1] - bt == pytest.approx(curvature * 2 * math.exp(-8) / 2, rel=1e-3)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_uncertainty_gradients_flow_to_log_sigma():
    inputs = [t64(0.4, -0.3, 1.0), t64(0.1, -0.2, 0.5), t64(0.0, 0.2, -0.5), t64(-0.4, 0.3, 0.0)]
    inputs = [x.clone().requires_grad_() for x in inputs]
    assert torch.autograd.gradcheck(uncertainty_bt_loss, tuple(inputs), eps=1e-6, atol=1e-7)
    uncertainty_bt_loss(*inputs).backward()
    ls_c_grad, ls_r_grad = inputs[1].grad, inputs[3].grad
    assert (ls_c_grad > 0).all() and (ls_r_grad > 0).all()  # more sigma -> more loss (convexity)
    assert (inputs[0].grad < 0).all() and (inputs[2].grad > 0).all()  # push mu_c up and mu_r down


def test_uncertainty_stable_in_float32_and_bf16_extremes():
    mu = torch.tensor([50.0, -50.0, 0.0])
    for ls in (torch.tensor([40.0, 40.0, 40.0]), torch.tensor([-40.0, -40.0, -40.0])):
        loss = uncertainty_bt_loss(mu, ls, torch.zeros(3), ls)
        assert torch.isfinite(loss) and loss.dtype == torch.float32
    bf = uncertainty_bt_loss(torch.tensor([1.0], dtype=torch.bfloat16), torch.zeros(1, dtype=torch.bfloat16),
                             torch.tensor([0.0], dtype=torch.bfloat16), torch.zeros(1, dtype=torch.bfloat16))
    assert bf.dtype == torch.float32
    assert bf.item() == pytest.approx(expected_softplus_of_gaussian(1.0, math.sqrt(2)), abs=1e-6)


def test_imports_torch_only():
    """The math module is pure: importable with ray, transformers, peft, deepspeed and numpy unavailable."""
    code = (
        "import sys\n"
        "for name in ('ray', 'transformers', 'peft', 'deepspeed', 'diffusers', 'numpy', 'scipy'):\n"
        "    sys.modules[name] = None\n"
        "import spatialrl.reward.losses as m\n"
        "import torch\n"
        "print(m.bradley_terry_loss(torch.zeros(2), torch.zeros(2)).item())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) == pytest.approx(LN2, abs=1e-6)
