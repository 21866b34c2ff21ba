"""The capacity planner: the closed form and the discrete-event simulation against hand-worked cases, the
planner against brute force, the jobs.plan CLI, and the simulation against the real GRPO loop on this machine."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cluster.capacity import (GRPOShape, PlanError, RoleCosts, SimConfig, Split, plan, predict,
                              sample_and_score_time, simulate)
from jobs import plan as plan_job

# 4 groups of 2 images, 2 denoising steps, half the images kept, 1 trained step each
SHAPE = GRPOShape(prompts_per_step=4, group_size=2, num_steps=2, trained_steps=1, kept_fraction=0.5)
# a group: 2 images x 2 steps x 1 s = 4 s to sample, 2 x 0.5 s = 1 s to score; learning 8 x 0.5 x 1 x 0.25 s = 1 s
# of work plus 1 s overhead per step; taking up new weights 0.5 s
COSTS = RoleCosts(sampler_s_per_image_step=1.0, reward_s_per_image=0.5, learner_s_per_sample_step=0.25,
                  learner_step_overhead_s=1.0, sync_s=0.5, learner_efficiency_per_doubling=1.0)


def test_closed_form_by_hand():
    split = Split(sampler=2, reward=1, learner=1)
    # samplers finish groups at 4, 4 (first round) and 8, 8; the one reward worker scores 4-5, 5-6, 8-9, 9-10
    assert sample_and_score_time(SHAPE, COSTS, split) == 10.0
    p = predict(SHAPE, COSTS, split)
    assert p.learn_s == 2.0
    assert p.step_s == 0.5 + 10.0 + 2.0  # on-policy: sync, sample + score, learn
    assert p.images_per_s == pytest.approx(8 / 12.5)
    # busy: each sampler 2 groups x 4 s + one sync; the reward worker 4 x 1 s; the learner 2 s
    assert p.utilisation == pytest.approx({"sampler": 8.5 / 12.5, "reward": 4 / 12.5, "learner": 2 / 12.5})
    assert p.bottleneck == "sampler"
    # staleness 1: (12.5) / 2 = 6.25 per step from the chain, but each sampler needs 2 x 4 + 0.5 = 8.5 s a step
    assert predict(replace(SHAPE, max_staleness=1), COSTS, split).step_s == 8.5
    # two learner ranks at full efficiency halve the work, not the overhead
    assert predict(SHAPE, COSTS, Split(2, 1, 2)).learn_s == 1.5


def test_simulation_without_randomness_equals_the_closed_form():
    split = Split(2, 1, 1)
    res = simulate(SHAPE, COSTS, split, SimConfig(steps=8))
    assert res.step_s[0] == 12.0  # the first step samples with the weights the samplers start with: no sync
    assert res.step_s[1:] == pytest.approx([12.5] * 7)
    assert res.wait_s[1:] == pytest.approx([10.5] * 7) and res.train_s == pytest.approx([2.0] * 8)
    stale = simulate(replace(SHAPE, max_staleness=1), COSTS, split, SimConfig(steps=12))
    assert stale.mean_step_s(4) == pytest.approx(8.5)
    ckpt = replace(SHAPE, checkpoint_every=2, checkpoint_s=3.0)
    assert simulate(ckpt, COSTS, split, SimConfig(steps=8)).mean_step_s(1) == pytest.approx(
        predict(ckpt, COSTS, split).step_s, rel=0.1)


def test_simulated_stragglers_and_failures_cost_time():
    split = Split(2, 1, 1)
    base = simulate(SHAPE, COSTS, split, SimConfig(steps=40)).mean_step_s(1)
    slow = simulate(SHAPE, COSTS, split, SimConfig(steps=40, straggler_sigma=0.5, seed=1))
    faulty = simulate(SHAPE, COSTS, split, SimConfig(steps=40, failure_rate=0.1, restart_s=5.0, seed=1))
    assert slow.mean_step_s(1) > base  # a step waits for its slowest group
    assert faulty.failures > 0 and faulty.mean_step_s(1) > base + 0.5 * faulty.failures * 5.0 / 40


def test_plan_is_the_brute_force_optimum():
    for gpus in (3, 5, 9):
        for staleness in (0, 1):
            shape = replace(SHAPE, max_staleness=staleness)
            got = plan(shape, COSTS, gpus)
            every = [predict(shape, COSTS, Split(s, r, l)) for s in range(1, gpus) for r in range(1, gpus)
                     for l in range(1, gpus) if s + r + l <= gpus]
            fastest = min(p.step_s for p in every)
            assert got.step_s <= fastest * 1.01
            assert got.split.gpus == min(p.split.gpus for p in every if p.step_s <= fastest * 1.01)
    with pytest.raises(PlanError, match="at least 3 GPUs"):
        plan(SHAPE, COSTS, 2)
    with pytest.raises(PlanError, match="must be > 0"):
        RoleCosts(0.0, 1.0, 1.0).validate()


def test_plan_job_for_flux_dev_at_8_64_512(tmp_path, capsys):
    out = tmp_path / "plans.json"
    assert plan_job.main(["--config", "configs/grpo_flux_dev.yaml", "--gpus", "8", "64", "512", "--simulate",
                          "--sim-steps", "6", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "48 prompts x 24 images per step" in text and "H200 anchors" in text
    plans = json.loads(out.read_text())["plans"]
    assert [p["gpus_offered"] for p in plans] == [8, 64, 512]
    assert all(p["gpus"] <= p["gpus_offered"] for p in plans)
    steps = [p["step_s"] for p in plans]
    assert steps[0] > steps[1] > steps[2]  # more GPUs, shorter steps
    assert plans[2]["split"]["sampler"] <= 48  # never more samplers than groups per step
    assert all("simulated" in p for p in plans)


def test_plan_job_errors(tmp_path, capsys):
    assert plan_job.main(["--measured", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert plan_job.main(["--measured", str(bad)]) == 2
    assert "is not JSON" in capsys.readouterr().err
    bad.write_text(json.dumps({"sampler_s_per_image_step": 1.0}))
    assert plan_job.main(["--measured", str(bad)]) == 2
    assert "lack" in capsys.readouterr().err
    assert plan_job.main(["--gpus", "2"]) == 2
    assert "must be >= 3" in capsys.readouterr().err
    assert plan_job.main(["--set", "grpo.top_k=-1"]) == 2


SIM_VS_REAL_TOLERANCE = 0.5  # the simulated step within 50% of the real loop's, on a shared 2-core machine


@pytest.mark.slow
@pytest.mark.ray
def test_simulation_matches_the_real_grpo_loop(ray_local, tmp_path):
    """Unit costs measured on the role actors alone (bench.plan_calibrate), then the simulation of the same config
    against the real loop's phase times (jobs.grpo's metrics): waiting for rewards, training, the whole step."""
    from bench.plan_calibrate import calibrate
    from jobs import grpo as grpo_job
    from spatialrl.config import load_config
    from spatialrl.grpo.config import GRPOJobConfig

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle left of a blue square\na green triangle above a yellow circle\n"
                       "a blue square right of a red triangle\na yellow square below a green circle\n")
    sets = ["sampler.model=tiny", "sampler.resolution=64", "sampler.num_steps=6", "sampler.group_size=4",
            "sampler.batch_size=4", "sampler.true_cfg_scale=1", "sampler.max_sequence_length=32",
            "grpo.prompts_per_step=2", "grpo.top_k=0", "reward.source=colour", f"data.prompts={prompts}",
            "data.eval_prompts=", "grpo.save_every=100", "grpo.grid_every=100", "cluster.sampler.count=1",
            "grpo.steps=5", "learner.objective=grpo", "learner.timestep_fraction=0.99",  # the planner models the ratio
            "learner.ema_decay=0"]
    cfg = load_config(GRPOJobConfig, "configs/grpo_demo.yaml", sets)
    costs = RoleCosts.from_dict(calibrate(cfg, reps=2))
    run = tmp_path / "run"
    args = ["--config", "configs/grpo_demo.yaml", "--out", str(run)]
    assert grpo_job.main(args + [x for s in sets for x in ("--set", s)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]  # skip warm-up
    real = {k: sum(r[f"time/{k}"] for r in rows) / len(rows) for k in ("step_s", "wait_for_rewards_s", "train_s")}
    shape = plan_job.shape_of(cfg)
    res = simulate(shape, costs, Split(1, 1, 1), SimConfig(steps=5))
    sim = {"step_s": res.mean_step_s(1), "wait_for_rewards_s": sum(res.wait_s[1:]) / 4,
           "train_s": sum(res.train_s[1:]) / 4}
    print("real", real, "simulated", sim)
    assert sim["step_s"] == pytest.approx(real["step_s"], rel=SIM_VS_REAL_TOLERANCE), (real, sim)
    assert sim["wait_for_rewards_s"] == pytest.approx(real["wait_for_rewards_s"], rel=SIM_VS_REAL_TOLERANCE)
    assert sim["train_s"] == pytest.approx(real["train_s"], rel=SIM_VS_REAL_TOLERANCE)
