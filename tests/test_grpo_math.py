"""GRPO math, with expected values worked out by hand (unit tier: torch only)."""

import math
import sys

import pytest
import torch

from spatialrl.grpo.math import (clipped_policy_loss, decline_signal, group_advantages, hacking_signal, nft_loss,
                                 noised_latents, optimality, sde_kl, topk_filter, weighted_flow_matching_loss,
                                 trained_steps, trend_t)


def test_imports_torch_only():
    import spatialrl.grpo.math  # noqa: F401

    assert not {"ray", "deepspeed", "diffusers"} & {m.split(".")[0] for m in vars(spatialrl.grpo.math)}
    assert "spatialrl.grpo.math" in sys.modules


def test_group_advantages_by_hand():
    # group 0: rewards 1, 3 -> mean 2, population std 1 -> (-1, 1) / (1 + 1e-4)
    # group 1: rewards 0, 0, 6 -> mean 2, std sqrt((4 + 4 + 16) / 3) = sqrt(8)
    r = torch.tensor([1.0, 3.0, 0.0, 0.0, 6.0])
    g = torch.tensor([0, 0, 1, 1, 1])
    a = group_advantages(r, g)
    s8 = math.sqrt(8)
    want = torch.tensor([-1 / 1.0001, 1 / 1.0001, -2 / (s8 + 1e-4), -2 / (s8 + 1e-4), 4 / (s8 + 1e-4)])
    assert torch.allclose(a, want, atol=1e-6)


def test_group_advantages_global_std_and_clip():
    r = torch.tensor([1.0, 3.0, 0.0, 0.0, 6.0])
    g = torch.tensor([0, 0, 1, 1, 1])
    # batch: mean 2, population std sqrt((1 + 1 + 4 + 4 + 16) / 5) = sqrt(5.2)
    a = group_advantages(r, g, global_std=True)
    s = math.sqrt(5.2) + 1e-4
    assert torch.allclose(a, torch.tensor([-1 / s, 1 / s, -2 / s, -2 / s, 4 / s]), atol=1e-6)
    # one 1 among 99 zeros: mean 0.01, std sqrt(0.0099) ~ 0.0995 -> 0.99 / 0.0995 ~ 9.95, clipped to 5;
    # the zeros get -0.01 / 0.0995 ~ -0.1005
    r = torch.zeros(100)
    r[7] = 1.0
    a = group_advantages(r, torch.zeros(100, dtype=torch.long))
    assert a[7] == 5.0
    assert torch.allclose(a[0], torch.tensor(-0.01 / (math.sqrt(0.0099) + 1e-4)), atol=1e-6)


def test_topk_keeps_k_best_and_k_worst_and_normalises_over_kept():
    # one group of 6, k = 2: keep rewards 0, 1 (worst) and 8, 9 (best); drop 4, 5
    r = torch.tensor([4.0, 9.0, 0.0, 5.0, 1.0, 8.0])
    g = torch.zeros(6, dtype=torch.long)
    res = topk_filter(r, g, k=2)
    assert res.keep.tolist() == [False, True, True, False, True, True]
    # kept: 9, 0, 1, 8 -> mean 4.5, std sqrt((20.25 + 20.25 + 12.25 + 12.25) / 4) = sqrt(16.25)
    s = math.sqrt(16.25) + 1e-4
    want = torch.tensor([0.0, 4.5 / s, -4.5 / s, 0.0, -3.5 / s, 3.5 / s])
    assert torch.allclose(res.advantages, want, atol=1e-6)
    assert (res.kept_samples, res.kept_groups, res.dropped_groups) == (4, 1, 0)


def test_topk_normalize_over_group_then_keep():
    r = torch.tensor([4.0, 9.0, 0.0, 5.0, 1.0, 8.0])
    g = torch.zeros(6, dtype=torch.long)
    res = topk_filter(r, g, k=2, normalize="group")
    # full group: mean 4.5, std sqrt((0.25 + 20.25 + 20.25 + 0.25 + 12.25 + 12.25) / 6) = sqrt(65.5 / 6)
    s = math.sqrt(65.5 / 6) + 1e-4
    want = torch.tensor([0.0, 4.5 / s, -4.5 / s, 0.0, -3.5 / s, 3.5 / s])
    assert torch.allclose(res.advantages, want, atol=1e-6)


def test_topk_drops_constant_groups_and_keeps_all_when_off():
    r = torch.tensor([2.0, 2.0, 2.0, 1.0, 3.0, 2.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    res = topk_filter(r, g, k=0)
    assert res.keep.tolist() == [False, False, False, True, True, True]
    assert (res.kept_groups, res.dropped_groups) == (1, 1)
    assert torch.allclose(res.advantages[3:], group_advantages(r[3:], g[3:]))
    # 2k >= G also keeps the whole group
    assert topk_filter(r, g, k=3).keep.tolist() == res.keep.tolist()
    nothing = topk_filter(torch.ones(4), torch.zeros(4, dtype=torch.long), k=1)
    assert nothing.kept_samples == 0 and nothing.advantages.abs().sum() == 0


def test_topk_breaks_ties_by_seeded_random_order():
    # five tied 1.0s: which one is kept as a "best" depends only on the seed
    r = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    g = torch.zeros(6, dtype=torch.long)
    picks = {tuple(topk_filter(r, g, k=1, seed=s).keep.tolist()) for s in range(20)}
    assert len(picks) > 1
    assert all(p[0] for p in picks) and all(sum(p) == 2 for p in picks)
    assert topk_filter(r, g, k=1, seed=3).keep.tolist() == topk_filter(r, g, k=1, seed=3).keep.tolist()


def test_topk_rejects_bad_arguments():
    with pytest.raises(ValueError, match="normalize"):
        topk_filter(torch.ones(2), torch.zeros(2, dtype=torch.long), k=1, normalize="batch")
    with pytest.raises(ValueError, match="k=-1"):
        topk_filter(torch.ones(2), torch.zeros(2, dtype=torch.long), k=-1)


def test_clipped_loss_by_hand():
    eps = 0.1
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    # ratios e^0.2 ~ 1.2214 (above 1 + eps), 1, e^-0.2 ~ 0.8187 (below 1 - eps), e^0.05 ~ 1.0513
    logp_old = torch.zeros(4)
    logp_new = torch.tensor([0.2, 0.0, -0.2, 0.05], requires_grad=True)
    loss, stats = clipped_policy_loss(logp_new, logp_old, adv, eps)
    r = torch.exp(logp_new.detach())
    # sample 0: A>0, r>1+eps: max(-1.2214, -1.1) = -1.1 (clipped); 1: -1; 2: A<0, r<1-eps: max(0.8187, 0.9) = 0.9
    # (clipped); 3: A<0, r within: max(1.0513, 1.0513) = 1.0513
    want = (-1.1 - 1.0 + 0.9 + float(r[3])) / 4
    assert abs(loss.item() - want) < 1e-6
    assert stats["clipped"].tolist() == [1.0, 0.0, 1.0, 0.0]
    loss.backward()
    # clipped samples get no gradient; the others get -A * r / 4
    assert torch.allclose(logp_new.grad, torch.tensor([0.0, -0.25, 0.0, float(r[3]) / 4]), atol=1e-6)


def test_clipped_loss_on_policy_ratio_is_one():
    lp = torch.randn(8)
    loss, stats = clipped_policy_loss(lp.clone().requires_grad_(), lp, torch.randn(8), 1e-4)
    assert torch.equal(stats["ratio"], torch.ones(8))


def test_sde_kl_by_hand():
    mean = torch.zeros(2, 3, 4)
    ref = torch.zeros(2, 3, 4)
    ref[0] = 1.0  # sample 0: every element differs by 1 -> 1 / (2 * 0.5^2) = 2
    ref[1, 0, 0] = 2.0  # sample 1: one of 12 elements differs by 2 -> (4 / 12) / 0.5 = 2/3
    kl = sde_kl(mean, ref, 0.5)
    assert torch.allclose(kl, torch.tensor([2.0, 2.0 / 3]))


def test_noised_latents_by_hand():
    x0 = torch.tensor([[[2.0, 4.0]], [[1.0, 1.0]]])  # [2, 1, 2]
    eps = torch.tensor([[[0.0, -4.0]], [[3.0, 5.0]]])
    # sample 0 at t = 0.25: 0.75 x0 + 0.25 eps = [1.5, 2.0]; sample 1 at t = 1: pure noise
    x_t = noised_latents(x0, eps, torch.tensor([0.25, 1.0]))
    assert torch.allclose(x_t, torch.tensor([[[1.5, 2.0]], [[3.0, 5.0]]]))
    assert torch.equal(noised_latents(x0, eps, 0.0), x0)


def test_weighted_flow_matching_loss_by_hand():
    x0 = torch.zeros(2, 1, 2)
    eps = torch.ones(2, 1, 2)  # target eps - x0 = 1 everywhere
    v = torch.tensor([[[1.0, 3.0]], [[0.0, 1.0]]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    loss, err = weighted_flow_matching_loss(v, x0, eps, adv)
    # errors: sample 0 mean(0, 4) = 2; sample 1 mean(1, 0) = 0.5; loss = (2 * 2 - 1 * 0.5) / 2 = 1.75
    assert torch.allclose(err, torch.tensor([2.0, 0.5]))
    assert abs(loss.item() - 1.75) < 1e-6
    loss.backward()
    # d/dv of A_k (v - 1)^2 / 2 elements / 2 samples = A_k (v - 1) / 2: the good sample is pulled toward its
    # target, the bad one pushed away from it
    assert torch.allclose(v.grad, torch.tensor([[[0.0, 2.0]], [[0.5, 0.0]]]))


def test_optimality_by_hand():
    r = optimality(torch.tensor([-3.0, -0.5, 0.0, 0.4, 1.0, 2.5]))
    assert torch.allclose(r, torch.tensor([0.0, 0.25, 0.5, 0.7, 1.0, 1.0]))


def test_nft_loss_by_hand():
    x0 = torch.zeros(2, 1, 2)
    eps = torch.ones(2, 1, 2)  # target v* = 1 everywhere
    v_old = torch.tensor([[[0.0, 1.0]], [[2.0, 1.0]]])
    v = torch.tensor([[[0.5, 1.0]], [[2.0, 3.0]]], requires_grad=True)
    r = torch.tensor([1.0, 0.25])
    loss, per = nft_loss(v, v_old, x0, eps, r, beta=0.5)
    # sample 0, r = 1: v+ = 0.5 v_old + 0.5 v = (0.25, 1.0), error mean(0.5625, 0) = 0.28125
    # sample 1, r = 1/4: v+ = (2, 2) -> error mean(1, 1) = 1; v- = 1.5 v_old - 0.5 v = (2, 0) -> mean(1, 1) = 1;
    #   0.25 * 1 + 0.75 * 1 = 1
    assert torch.allclose(per, torch.tensor([0.28125, 1.0]))
    assert abs(loss.item() - (0.28125 + 1.0) / 2) < 1e-6
    loss.backward()
    # d/dv: sample 0: 2 * 0.5 * (v+ - 1) / 2 elements / 2 samples = (v+ - 1) / 4 = (-0.1875, 0)
    # sample 1: [0.25 * 0.5 * 2 (v+ - 1) - 0.75 * 0.5 * 2 (v- - 1)] / 4 = [0.25 (1, 1) - 0.75 (1, -1)] / 4
    #   = (-0.125, 0.25)
    assert torch.allclose(v.grad, torch.tensor([[[-0.1875, 0.0]], [[-0.125, 0.25]]]))
    old = v_old.clone().requires_grad_(True)  # v_old is the sampling policy's: no gradient flows into it
    nft_loss(v, old, x0, eps, r, beta=1.0)[0].backward()
    assert old.grad is None


def test_nft_gradient_at_the_old_policy_is_the_advantage_weighted_one():
    """At v = v_old the NFT gradient is 2 beta (2 r - 1) / B (v_old - v*) per element mean, fm's with A = 2 r - 1."""
    torch.manual_seed(0)
    x0, eps = torch.randn(4, 3, 2), torch.randn(4, 3, 2)
    v_old = torch.randn(4, 3, 2)
    adv = torch.tensor([0.8, -0.3, 0.1, -1.0])
    v = v_old.clone().requires_grad_(True)
    nft_loss(v, v_old, x0, eps, optimality(adv), beta=0.3)[0].backward()
    w = v_old.clone().requires_grad_(True)
    weighted_flow_matching_loss(w, x0, eps, 0.3 * adv)[0].backward()
    assert torch.allclose(v.grad, w.grad, atol=1e-6)


def test_nft_minimum_moves_by_two_r_minus_one_over_beta():
    """Per sample the loss is a quadratic in v with its minimum at v_old + (2 r - 1) / beta (v* - v_old): bounded,
    where the advantage-weighted loss of a bad sample falls without end as v leaves v*."""
    x0, eps = torch.zeros(1, 1, 1), torch.full((1, 1, 1), 2.0)  # v* = 2
    v_old = torch.zeros(1, 1, 1)
    for r, beta in ((1.0, 1.0), (0.75, 0.5), (0.0, 1.0)):
        want = (2 * r - 1) / beta * 2.0
        vs = torch.linspace(want - 1, want + 1, 201).reshape(-1, 1, 1)
        losses = torch.stack([nft_loss(v.reshape(1, 1, 1), v_old, x0, eps, torch.tensor([r]), beta)[0] for v in vs])
        assert abs(vs[losses.argmin()].item() - want) < 1e-5, (r, beta)


def test_trained_steps():
    assert trained_steps(6, 0.99) == [0, 1, 2, 3, 4]
    assert trained_steps(6, 1.0) == [0, 1, 2, 3, 4, 5]
    assert trained_steps(1, 0.99) == [0]
    assert trained_steps(10, 0.5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        trained_steps(6, 0.0)


# ------------------------------------------------------------------------------------- hacking monitor

def test_trend_t_by_hand():
    # x centred -1.5..1.5, slope 4/5 = 0.8, residuals (-0.3, 0.9, -0.9, 0.3): SS 1.8, var 0.9, se sqrt(0.9/5)
    assert trend_t([1, 3, 2, 4]) == pytest.approx(0.8 / (0.9 / 5) ** 0.5)
    assert trend_t([4, 2, 3, 1]) == pytest.approx(-0.8 / (0.9 / 5) ** 0.5)
    assert trend_t([0, 1, 2, 3]) == float("inf") and trend_t([3, 2, 1]) == float("-inf")
    assert trend_t([2, 2, 2, 2]) == 0.0 and trend_t([1, 5]) == 0.0


def test_hacking_signal_fires_only_when_reward_rises_and_check_does_not():
    rising = [0.1 * i + 0.01 * (-1) ** i for i in range(10)]
    flat = [0.5 + 0.02 * (-1) ** i for i in range(10)]
    falling = [0.6 - 0.02 * i + 0.01 * (-1) ** i for i in range(10)]
    assert hacking_signal(rising, flat, window=10).fired
    assert hacking_signal(rising, falling, window=10).fired
    assert not hacking_signal(rising, rising, window=10).fired  # the control: the check is the reward
    assert not hacking_signal(flat, falling, window=10).fired  # reward not rising: nothing to flag
    assert not hacking_signal(rising[:6], flat[:6], window=10).fired  # too few steps yet
    sig = hacking_signal(rising, flat, window=6)  # only the last 6 steps count
    assert sig.reward_t > 2 and sig.check_t <= 0.5
    with pytest.raises(ValueError, match="window"):
        hacking_signal(rising, flat, window=2)
    with pytest.raises(ValueError, match="check values"):
        hacking_signal(rising, flat[:5])


def test_decline_signal_fires_when_the_check_falls_and_the_reward_does_not():
    # by hand: [0.9, 0.8, ..., 0.0] +- 0.01 has slope -0.1 and a t far below -2; [0.5 +- 0.02] has t ~ 0
    falling = [0.9 - 0.1 * i + 0.01 * (-1) ** i for i in range(10)]
    flat = [0.5 + 0.02 * (-1) ** i for i in range(10)]
    rising = [0.1 * i + 0.01 * (-1) ** i for i in range(10)]
    assert decline_signal(flat, falling, window=10).fired  # reward flat, presence lost
    assert decline_signal(rising, falling, window=10).fired  # reward up, presence lost: the worst case
    assert not decline_signal(falling, falling, window=10).fired  # the reward fell with it: it saw the loss
    assert not decline_signal(rising, flat, window=10).fired  # presence kept: nothing to flag
    assert not decline_signal(flat[:6], falling[:6], window=10).fired  # too few steps yet
    sig = decline_signal(flat, falling, window=10)
    assert sig.check_t < -2 and sig.reward_t >= -0.5
    with pytest.raises(ValueError, match="check values"):
        decline_signal(rising, flat[:5])


def test_shape_score_by_hand():
    import numpy as np

    from spatialrl.config import ConfigError
    from spatialrl.grpo.rewards import RewardConfig, shape_score

    s = np.array([-3.0, 0.0, 0.5, 3.0], dtype=np.float32)
    assert shape_score(s, "raw").tolist() == s.tolist()
    assert shape_score(s, "binary").tolist() == [0.0, 0.0, 1.0, 1.0]  # strictly above the threshold passes
    assert shape_score(s, "binary", threshold=1.0).tolist() == [0.0, 0.0, 0.0, 1.0]
    sig = shape_score(s, "sigmoid")  # 1 / (1 + e^3) = 0.0474259, 0.5, 1 / (1 + e^-0.5) = 0.6224593
    assert np.allclose(sig, [0.0474259, 0.5, 0.6224593, 0.9525741], atol=1e-6)
    assert np.allclose(shape_score(s, "sigmoid", threshold=0.5)[2], 0.5)
    # a group the model judges all alike: raw differences survive a per-group std, binary ones vanish
    sure = np.array([2.5, 3.1, 2.8], dtype=np.float32)
    assert shape_score(sure, "binary").std() == 0 and shape_score(sure, "raw").std() > 0
    with pytest.raises(ConfigError, match="reward.transform"):
        RewardConfig(checkpoint="x", transform="clip").validate()
    with pytest.raises(ConfigError, match="reward.source=spatialscore"):
        RewardConfig(source="verifier", transform="binary").validate()
