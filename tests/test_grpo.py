"""Ray tier: the GRPO learner on a local CPU Ray, and jobs.grpo end to end (tiny Flux, untrained tiny SpatialScore).

Every test shares the session's 2-CPU local Ray (`ray_local`); the job joins it and leaves it running. The
learner always lives in Ray actors, so this process never initialises torch.distributed.

Eight job runs (about 20 s each, mostly actor start-up; the hacking run on the shipped toy generator ~90 s) and
one learner group: ~4-5 min on 2 cores.

Run: .venv/bin/python -m pytest tests/test_grpo.py -q
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import jobs.grpo as grpo_job
from cluster.resources import RoleResources, reserve
from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig
from spatialrl.grpo.learner import GRPOLearnerConfig, TrainSelection
from spatialrl.metrics import read_metrics

pytestmark = pytest.mark.ray

P, G = 2, 4  # the job's defaults: prompt groups per step, images per group
ROW_KEYS = ("reward/mean", "verifier/relation_accuracy", "topk/kept_fraction", "policy/ratio_mean", "loss/policy",
            "perf/images_per_s", "policy/version")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Structured prompts (the spatial world, as jobs.build_dataset writes them) and an untrained tiny SpatialScore."""
    from data_pipeline.pairs import make_pair
    from jobs.build_dataset import BuildDatasetConfig
    from spatialrl.config import load_config
    from spatialrl.reward.scorer import SpatialScorer

    root = tmp_path_factory.mktemp("grpo_data")
    world = load_config(BuildDatasetConfig, "configs/dataset_easy.yaml").world
    for split, n in (("train", 12), ("test", 4)):
        with open(root / f"prompts_{split}.jsonl", "w") as f:
            for i in range(n):
                pair = make_pair(i, 0, split, world)
                info = json.loads(pair["relations"])
                f.write(json.dumps({"pair_id": pair["pair_id"], "prompt": pair["prompt"],
                                    "relations": info["relations"], "objects": info["objects"]}) + "\n")
    SpatialScorer.untrained("tiny", seed=0).model.save_pretrained(root / "rm")
    return root


def job_args(data: Path, out: Path, *sets: str) -> list[str]:
    args = ["--out", str(out), "--set", f"data.prompts={data / 'prompts_train.jsonl'}",
            "--set", f"reward.checkpoint={data / 'rm'}"]
    for s in sets:
        args += ["--set", s]
    return args


def rows_of(run: Path) -> list[dict]:
    return read_metrics(run / "metrics.jsonl")


def training_keys(row: dict) -> dict:
    """A metrics row without wall-clock numbers and held-out evaluations (`grpo.eval_every`: the reference run has one)."""
    return {k: v for k, v in row.items() if not k.startswith(("time/", "perf/", "eval/"))}


# ------------------------------------------------------------------------------------------------ the learner


def sample_groups(sampler: FluxSampler, rows: list[dict], seed: int):
    import ray

    return [ray.put(sampler.sample([r["prompt"]], prompt_ids=[i], seed=seed + 1000 * i)) for i, r in enumerate(rows)]


def all_samples(n_groups: int) -> list[TrainSelection]:
    adv = np.array([1.0, -1.0, 0.5, -0.5], dtype=np.float32)  # any non-zero advantages
    return [TrainSelection(np.arange(G), adv * (i + 1)) for i in range(n_groups)]


def lora_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def learner_group(count: int, cfg: GRPOLearnerConfig, scfg: FluxSamplerConfig):
    from actors.learner_actor import LearnerGroup

    res = RoleResources(count=count, num_cpus=0.5)
    pg = reserve("learner-test", res, timeout_s=60)
    return LearnerGroup(scfg, cfg, res, pg), pg


def close(group, pg) -> None:
    from ray.util.placement_group import remove_placement_group

    group.shutdown()
    remove_placement_group(pg)


# one tiny update moves these per-element-mean ratios by ~1e-4 (the default clip range): clip well inside that
CLIP = 1e-6
SCFG = FluxSamplerConfig(model="tiny", resolution=32, num_steps=4, group_size=G, batch_size=2, lora_rank=4,
                         lora_alpha=8)


def test_learner_on_policy_ratio_is_one_and_two_ranks_stay_identical(ray_local, data, one_torch_thread):
    from spatialrl.flux.evaluation import read_prompts

    rows = read_prompts(str(data / "prompts_train.jsonl"))[:2]
    group, pg = learner_group(2, GRPOLearnerConfig(clip_range=CLIP), SCFG)  # two ranks, one gloo process group
    try:
        state0 = ray_local.get(group.lora_state_ref())
        assert any(".lora_B." in k for k in state0) and all(float(v.abs().max()) == 0 for k, v in state0.items()
                                                             if ".lora_B." in k)
        sampler = FluxSampler(SCFG)  # one thread, like the 0.5-CPU learner ranks: the same numerics
        sampler.set_lora(state0, version=0)
        trajs = sample_groups(sampler, rows, seed=11)
        stats = group.train_step(trajs, all_samples(len(rows)))
        # on-policy: the learner recomputes the sampler's log-probs bit for bit
        assert stats["policy/ratio_mean"] == 1.0
        assert stats["policy/ratio_max_dev"] == 0.0
        assert stats["policy/clip_fraction"] == 0.0
        assert stats["learner/micro_batches"] == len(rows) * G / SCFG.batch_size
        assert stats["learner/updates"] == 1.0
        # each rank fetched only the group it trains (contiguous micro-batches): every trajectory moved once,
        # not once per rank
        assert stats["learner/step_bytes"] > 0 and stats["learner/fetched_bytes"] == stats["learner/step_bytes"]
        rank0, rank1 = ray_local.get([a.lora_state.remote() for a in group.actors])
        assert lora_diff(rank0, state0) > 0, "one step left the LoRA unchanged"
        assert lora_diff(rank0, rank1) == 0.0, "the two ranks' LoRA weights diverged"
        # the same trajectories are now one update old: ratios move away from 1 and some get clipped
        stale = group.train_step(trajs, all_samples(len(rows)))
        assert stale["policy/ratio_max_dev"] > 0
        assert 0 < stale["policy/clip_fraction"] < 1
        rank0b, rank1b = ray_local.get([a.lora_state.remote() for a in group.actors])
        assert lora_diff(rank0b, rank1b) == 0.0
    finally:
        close(group, pg)


def test_learner_ratio_is_one_with_true_cfg(ray_local, data, one_torch_thread):
    """With classifier-free guidance the learner's loss runs two forwards per step, as the sampler does."""
    import dataclasses

    from spatialrl.flux.evaluation import read_prompts

    scfg = dataclasses.replace(SCFG, true_cfg_scale=3.0)
    rows = read_prompts(str(data / "prompts_train.jsonl"))[:1]
    group, pg = learner_group(1, GRPOLearnerConfig(clip_range=CLIP), scfg)
    try:
        sampler = FluxSampler(scfg)
        sampler.set_lora(ray_local.get(group.lora_state_ref()), version=0)
        stats = group.train_step(sample_groups(sampler, rows, seed=3), all_samples(len(rows)))
        assert stats["policy/ratio_mean"] == 1.0 and stats["policy/ratio_max_dev"] == 0.0
        unguided = FluxSampler(SCFG)  # trajectories of another guidance would give wrong ratios: refused
        unguided.set_lora(ray_local.get(group.lora_state_ref()), version=1)
        with pytest.raises(ValueError, match="true_cfg_scale"):
            group.train_step(sample_groups(unguided, rows, seed=3), all_samples(len(rows)))
        # an SDE window of 2 of 4 steps: only those two are trained, still exactly on-policy
        windowed = FluxSampler(dataclasses.replace(scfg, sde_steps=2))
        windowed.set_lora(ray_local.get(group.lora_state_ref()), version=1)
        stats = group.train_step(sample_groups(windowed, rows, seed=4), all_samples(len(rows)))
        assert stats["learner/trained_steps"] == 2.0
        assert stats["policy/ratio_mean"] == 1.0 and stats["policy/ratio_max_dev"] == 0.0
    finally:
        close(group, pg)


@pytest.mark.parametrize("objective,epochs,ema,fm_noise", [("fm", 1, 0.0, "fresh"), ("nft", 2, 0.0, "fresh"),
                                                           ("nft", 2, 0.5, "fresh"), ("fm", 1, 0.0, "rollout")])
def test_learner_fm_objective_pulls_toward_good_samples_and_away_from_bad(ray_local, data, one_torch_thread, objective,
                                                                         epochs, ema, fm_noise):
    """learner.objective=fm (one update) and nft (two passes, DiffusionNFT's loss): training lowers the flow-matching
    error of the positive-advantage image and raises the negative one's, measured at noise and timesteps the update
    never drew. With an EMA the samplers get the EMA and nft's v_old is its velocity. With fm_noise=rollout the
    paths start at each sample's own starting noise, and the errors are measured along them."""
    from spatialrl.flux.evaluation import read_prompts
    from spatialrl.flux.math import latent_image_ids
    from spatialrl.grpo.math import noised_latents, weighted_flow_matching_loss

    rows = read_prompts(str(data / "prompts_train.jsonl"))[:1]
    cfg = GRPOLearnerConfig(objective=objective, fm_timesteps=4, lr=3e-3, timestep_fraction=1.0, epochs=epochs,
                            ema_decay=ema, fm_noise=fm_noise)
    group, pg = learner_group(1, cfg, SCFG)
    try:
        sampler = FluxSampler(SCFG)
        sampler.set_lora(ray_local.get(group.lora_state_ref()), version=0)
        traj_ref = sample_groups(sampler, rows, seed=5)[0]
        traj = ray_local.get(traj_ref)
        embeds, pooled, text_ids = sampler.encode(traj.prompts)
        h, w = sampler.latent_size(traj.resolution)
        img_ids = latent_image_ids(h // 2, w // 2, device=sampler.device, dtype=embeds.dtype)
        x0 = traj.latents[:2, -1]
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(99))
        if fm_noise == "rollout":
            noise = traj.latents[:2, 0]

        def errors() -> list[float]:
            out = []
            for j in range(traj.num_steps):
                x_t = noised_latents(x0, noise, traj.sigmas[j])
                with torch.no_grad():
                    v = sampler.velocity(x_t, traj.timesteps[j], embeds.expand(2, -1, -1), pooled.expand(2, -1),
                                         text_ids, img_ids)
                out.append(weighted_flow_matching_loss(v, x0, noise, torch.ones(2))[1])
            return torch.stack(out).mean(0).tolist()  # [2] mean over every timestep

        before = errors()
        stats = group.train_step([traj_ref], [TrainSelection(np.array([0, 1]), np.array([1.0, -1.0], np.float32))])
        assert stats["learner/trained_steps"] == 4.0 and stats["policy/ratio_mean"] == 1.0
        assert stats["learner/updates"] == epochs  # one optimizer step per pass over the step's samples
        sampler.set_lora(ray_local.get(group.lora_state_ref()), version=1)
        after = errors()
        assert after[0] < before[0], (before, after)
        assert after[1] > before[1], (before, after)
    finally:
        close(group, pg)


def test_learner_objective_is_checked():
    from spatialrl.config import ConfigError

    with pytest.raises(ConfigError, match="objective"):
        GRPOLearnerConfig(objective="ppo").validate()
    with pytest.raises(ConfigError, match="fm_timesteps"):
        GRPOLearnerConfig(objective="fm", fm_timesteps=0).validate()
    with pytest.raises(ConfigError, match="epochs"):
        GRPOLearnerConfig(objective="nft", epochs=0).validate()
    from spatialrl.grpo.config import GRPOJobConfig

    ode = GRPOJobConfig()
    ode.data.prompts, ode.sampler.noise_level = "prompts.jsonl", 0.0
    with pytest.raises(ConfigError, match="noise_level must be > 0 for learner.objective=grpo"):
        ode.validate()
    for objective in ("fm", "nft"):  # they train on final latents: ODE rollouts are allowed
        ode.learner.objective = objective
        ode.validate()
    with pytest.raises(ConfigError, match="fm_noise"):
        GRPOLearnerConfig(objective="fm", fm_noise="mine").validate()
    with pytest.raises(ConfigError, match="nft_beta"):
        GRPOLearnerConfig(objective="nft", nft_beta=0.0).validate()


# ------------------------------------------------------------------------------------------------ the job


@pytest.fixture(scope="module")
def full_run(ray_local, data, tmp_path_factory):
    """4 steps with held-out evaluation: the reference run of the module."""
    out = tmp_path_factory.mktemp("grpo_full") / "run"
    assert grpo_job.main(job_args(data, out, f"data.eval_prompts={data / 'prompts_test.jsonl'}",
                                  "grpo.eval_prompts=2", "grpo.eval_every=3")) == 0
    return out


def test_full_run_writes_metrics_lora_and_reports(full_run, one_torch_thread):
    rows = rows_of(full_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        missing = [k for k in ROW_KEYS if k not in r]
        assert not missing, f"step {r['step']} lacks {missing}"
    assert [r["policy/version"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["policy/ratio_mean"] == 1.0 and rows[0]["policy/ratio_max_dev"] == 0.0  # on-policy
    assert all(r["topk/kept_fraction"] == 1.0 for r in rows)  # top_k=6 >= group 4: whole groups
    for name in ("curves.png", "eval.json", "summary.json", "config.yaml"):
        assert (full_run / name).is_file(), name
    assert sorted(p.name for p in (full_run / "grids").glob("*.png")) == ["step_00002.png", "step_00004.png"]
    evals = json.loads((full_run / "eval.json").read_text())
    assert evals["base"]["policy_version"] == 0 and evals["final"]["policy_version"] == 4
    assert evals["base"]["images"] == 4
    from spatialrl.flux.evaluation import ranking_agreement

    for e in evals.values():  # SpatialScore's agreement with the verifier on the run's own images, when both scored
        if "spatialscore_per_image" in e and "relation_accuracy_per_image" in e:
            share, pairs = ranking_agreement(e["spatialscore_per_image"], e["relation_accuracy_per_image"], 2)
            assert e.get("spatialscore_agreement_pairs", 0) == pairs
            assert pairs == 0 or e["spatialscore_agreement"] == round(share, 4)
    assert list(evals) == ["base", "step_3", "final"] and evals["step_3"]["policy_version"] == 3  # grpo.eval_every=3
    assert rows[2]["eval/relation_accuracy"] == evals["step_3"]["relation_accuracy"]
    assert all("eval/relation_accuracy" not in r for r in rows if r["step"] != 3)
    summary = json.loads((full_run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["policy_version"] == 4

    # final/ is a stock diffusers LoRA: FluxPipeline.load_lora_weights takes every key and changes the output
    from safetensors.torch import load_file

    from spatialrl.models.loader import load_flux_pipeline

    saved = load_file(full_run / "final" / "pytorch_lora_weights.safetensors")
    assert saved and all(k.startswith("transformer.") for k in saved)
    pipe = load_flux_pipeline("tiny")
    tr = pipe.transformer
    gen = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 4, tr.config.in_channels, generator=gen),
        encoder_hidden_states=torch.randn(1, 3, tr.config.joint_attention_dim, generator=gen),
        pooled_projections=torch.randn(1, tr.config.pooled_projection_dim, generator=gen),
        timestep=torch.tensor([0.5]), img_ids=torch.zeros(4, 3), txt_ids=torch.zeros(3, 3),
        guidance=torch.tensor([3.5]) if tr.config.guidance_embeds else None, return_dict=False,
    )
    with torch.no_grad():
        before = tr(**inputs)[0]
        pipe.load_lora_weights(str(full_run / "final"))
        after = tr(**inputs)[0]
    from peft.utils import get_peft_model_state_dict

    loaded = get_peft_model_state_dict(tr, adapter_name=next(iter(tr.peft_config)))
    assert len(loaded) == len(saved), f"{len(saved)} LoRA tensors saved, {len(loaded)} loaded"
    assert not torch.equal(before, after), "the trained LoRA does not change the transformer"


@pytest.fixture(scope="module")
def topk_run(ray_local, data, tmp_path_factory):
    """Everything off the default path at once: group 6 with top_k 1, 2 optimizer updates per step, sampling one
    step ahead (max_staleness 1), a clip range below one update's drift of the ratios."""
    out = tmp_path_factory.mktemp("grpo_topk") / "run"
    assert grpo_job.main(job_args(data, out, "sampler.group_size=6", "grpo.top_k=1", "grpo.max_staleness=1",
                                  "learner.updates_per_step=2", f"learner.clip_range={CLIP}")) == 0
    return out


def test_topk_trains_the_best_and_worst_of_each_group(topk_run):
    rows = rows_of(topk_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["topk/kept_groups"] + r["topk/dropped_groups"] == P
        # a group is dropped only when its rewards are all equal (zero std): not with SpatialScore's floats
        assert r["topk/kept_groups"] == P
        assert r["topk/kept_fraction"] == 2 / 6
        assert r["learner/micro_batches"] == P  # 2 kept images per group, sampling batch 2
        # update 2 of every step sees the weights update 1 moved: its ratios leave 1, some beyond the clip
        assert r["policy/ratio_max_dev"] > 0
        assert r["policy/clip_fraction"] > 0
    assert [r["learner/updates"] for r in rows] == [2, 4, 6, 8]
    # one step ahead: step 1 samples with v0 like step 2, so from step 2 on the batch is one version old
    assert [r["policy/staleness"] for r in rows] == [0, 1, 1, 1]


def test_resume_with_steps_sampled_ahead(ray_local, data, topk_run, tmp_path):
    """The top-k run, interrupted after step 3 was logged (its step-4 checkpoint never written), resumes from
    step 2: the LoRA versions that sampled steps 3 and 4 ahead come back from the checkpoint, so steps 3-4
    are redone exactly."""
    out = tmp_path / "run"
    shutil.copytree(topk_run, out)
    shutil.rmtree(out / "checkpoints" / "step_00004")
    shutil.rmtree(out / "final")
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"path": "step_00002", "step": 2}))
    rows = rows_of(out)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    state = json.loads((out / "checkpoints" / "step_00002" / "state.json").read_text())
    assert state["ahead"] == {"3": 1, "4": 2}
    assert grpo_job.main(job_args(data, out, "sampler.group_size=6", "grpo.top_k=1", "grpo.max_staleness=1",
                                  "learner.updates_per_step=2", f"learner.clip_range={CLIP}") + ["--resume"]) == 0
    resumed = rows_of(out)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for got, want in zip(resumed, rows):
        assert training_keys(got) == training_keys(want), f"step {got['step']} differs after resume"
    assert (out / "final" / "pytorch_lora_weights.safetensors").is_file()


def test_killed_sampler_is_restarted_and_its_groups_redone(ray_local, data, full_run, tmp_path):
    """Kill the named sampler right after step 1 is logged: step 2's groups were dispatched just before the row
    was written, so the kill lands while they are being sampled. Ray restarts the actor, the driver re-dispatches
    the lost groups with the same seeds and policy version, and every step trains on whole groups: the run's
    metrics equal the undisturbed run's."""
    out = tmp_path / "run"
    killed: list[float] = []
    stop = threading.Event()

    def killer():
        metrics = out / "metrics.jsonl"
        while not stop.is_set():
            if metrics.exists() and metrics.read_text().count("\n") >= 1:
                ray_local.kill(ray_local.get_actor("spatialrl/sampler-0"), no_restart=False)
                killed.append(time.time())
                return
            time.sleep(0.002)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        assert grpo_job.main(job_args(data, out)) == 0
    finally:
        stop.set()
        thread.join(timeout=10)
    assert killed, "the sampler was never killed"
    rows = rows_of(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["faults/redispatched_groups"] >= 1
    for r in rows:
        assert r["topk/kept_groups"] == P and r["topk/kept_fraction"] == 1.0
        assert r["learner/micro_batches"] == P * G / 2
    for got, want in zip(rows, rows_of(full_run)):  # same seeds, same versions: the same numbers
        assert {k: v for k, v in training_keys(got).items() if not k.startswith("faults/")} == \
            {k: v for k, v in training_keys(want).items() if not k.startswith("faults/")}, f"step {got['step']}"


def test_serve_backend_gives_the_reward_actors_numbers(ray_local, data, full_run, tmp_path):
    """reward.backend=serve: the reward workers score through the SpatialScore Serve application's handle (one
    request per prompt group, unbatched here so the forward passes are the actors' own): the same run."""
    out = tmp_path / "run"
    assert grpo_job.main(job_args(data, out, "reward.backend=serve", "reward.serve_max_batch_size=1")) == 0
    with pytest.raises(ValueError):  # the job started Serve, so it shut it down again
        ray_local.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    for got, want in zip(rows_of(out), rows_of(full_run), strict=True):
        assert got.pop("faults/serve_retries") == 0
        assert training_keys(got) == training_keys(want), f"step {got['step']}"


def test_killed_serve_replica_does_not_stop_the_run(ray_local, data, tmp_path):
    """Kill the Serve replica once step 1 is logged: Serve replaces it, the lost request is sent again and
    counted, and the run finishes every step on whole groups."""
    out = tmp_path / "run"
    killed: list[str] = []
    stop = threading.Event()

    def killer():
        metrics = out / "metrics.jsonl"
        while not stop.is_set():
            if metrics.exists() and metrics.read_text().count("\n") >= 1:
                for a in ray_local.util.list_named_actors(all_namespaces=True):
                    if "SERVE_REPLICA" in a["name"] and "SpatialScore" in a["name"]:
                        ray_local.kill(ray_local.get_actor(a["name"], namespace=a["namespace"]), no_restart=True)
                        killed.append(a["name"])
                return
            time.sleep(0.002)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        assert grpo_job.main(job_args(data, out, "reward.backend=serve", "grpo.steps=4")) == 0
    finally:
        stop.set()
        thread.join(timeout=30)
    assert killed, "no replica was killed"
    rows = rows_of(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["topk/kept_groups"] == P for r in rows)
    assert all("faults/serve_retries" in r for r in rows)


def test_resume_continues_exactly(ray_local, data, full_run, tmp_path, capsys):
    """Stop after 2 steps (a checkpoint), resume to 4: steps 3-4 equal the straight 4-step run's."""
    out = tmp_path / "run"
    sets = (f"data.eval_prompts={data / 'prompts_test.jsonl'}", "grpo.eval_prompts=2")
    assert grpo_job.main(job_args(data, out, *sets, "grpo.steps=2")) == 0
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert grpo_job.main(job_args(data, out, *sets, "grpo.steps=4") + ["--resume"]) == 0
    assert "resumed" in capsys.readouterr().out
    rows, reference = rows_of(out), rows_of(full_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for got, want in zip(rows, reference):
        assert training_keys(got) == training_keys(want), f"step {got['step']} differs after resume"
    assert json.loads((out / "summary.json").read_text())["policy_version"] == 4


# -------------------------------------------------------------------------------- configs and resources


def test_reward_hacking_monitor_fires_on_a_colour_reward(ray_local, data, tmp_path):
    """A run built to hack: on the shipped toy generator, a reward that pays for red paint, not layout. The
    reward climbs (the images turn red) while the verifier's relation accuracy on the same rollouts does not and
    object presence falls, and the monitor says so for both: the metrics, the warnings and the summary."""
    out = tmp_path / "hack"
    args = ["--config", "configs/grpo_demo.yaml", "--out", str(out)]
    for s in ("sampler.model=tiny-pretrained", "sampler.true_cfg_scale=1", "sampler.group_size=6",
              "sampler.batch_size=6", f"data.prompts={data / 'prompts_train.jsonl'}", "reward.source=colour",
              "reward.colour=red", "grpo.steps=12", "grpo.prompts_per_step=4", "grpo.top_k=0", "grpo.eval_prompts=0",
              "grpo.hack_window=6", "learner.lr=1e-2", "grpo.save_every=100", "grpo.grid_every=100",
              "cluster.sampler.count=1", "sampler.sde_steps=0", "learner.kl_beta=0",  # every step SDE, no KL
              "learner.objective=grpo", "learner.timestep_fraction=0.99",  # the likelihood ratio on all but the last
              "learner.ema_decay=0"):
        args += ["--set", s]
    assert grpo_job.main(args) == 0
    rows = rows_of(out)
    assert rows[-1]["reward/mean"] > rows[0]["reward/mean"] + 0.2  # redder images
    assert all("monitor/hacking" in r for r in rows)
    hack = json.loads((out / "summary.json").read_text())["reward_hacking"]
    assert hack["fired_steps"] and hack["fired_steps"][0] >= 6, hack
    assert [r["step"] for r in rows if r["monitor/hacking"]] == hack["fired_steps"]
    assert "possible reward hacking" in hack["verdict"]
    # the red paint covers the other colours' objects: presence falls while the reward climbs, the second arm
    assert hack["presence_fired_steps"] and hack["presence_fired_steps"][0] >= 6, hack
    assert [r["step"] for r in rows if r["monitor/presence_drop"]] == hack["presence_fired_steps"]
    assert "object presence fell" in hack["verdict"]


def test_reward_hacking_monitor_is_quiet_when_the_reward_is_the_verifier(ray_local, data, tmp_path):
    out = tmp_path / "control"
    assert grpo_job.main(job_args(data, out, "reward.source=verifier", "grpo.steps=6", "grpo.hack_window=3",
                                  "grpo.save_every=100", "grpo.grid_every=100")) == 0
    rows = rows_of(out)
    assert all(r["monitor/hacking"] == 0.0 for r in rows)
    assert all(r["monitor/reward_trend_t"] == r["monitor/verifier_trend_t"] for r in rows)
    hack = json.loads((out / "summary.json").read_text())["reward_hacking"]
    assert hack["fired_steps"] == [] and hack["verdict"].startswith("no sign")
    assert all(r["monitor/presence_drop"] == 0.0 for r in rows) and hack["presence_fired_steps"] == []


def test_too_big_a_cluster_request_fails_fast(ray_local, data, tmp_path, capsys):
    groups_before = len(ray_local.util.placement_group_table())
    t0 = time.time()
    # one message and exit 1, no traceback: 64 samplers x 0.5 + reward 0.5 + learner 0.5
    assert grpo_job.main(job_args(data, tmp_path / "run", "cluster.sampler.count=64")) == 1
    err = capsys.readouterr().err
    assert "CPU: need 33" in err and "fix: lower the counts" in err and "Traceback" not in err
    assert time.time() - t0 < 10
    assert len(ray_local.util.placement_group_table()) == groups_before  # refused before reserving anything


def test_dry_run_prints_the_config_and_touches_nothing(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # an earlier run: --overwrite must not delete it on a dry run
    assert grpo_job.main(job_args(data, out, "grpo.top_k=2") + ["--dry-run", "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "top_k: 2" in printed and "group_size: 4" in printed and str(data / "prompts_train.jsonl") in printed
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_missing_prompts_and_missing_checkpoint_exit_2(data, tmp_path, capsys):
    assert grpo_job.main(["--out", str(tmp_path / "a"), "--set", f"reward.checkpoint={data / 'rm'}"]) == 2
    assert "data.prompts" in capsys.readouterr().err
    assert grpo_job.main(job_args(data, tmp_path / "b") + ["--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_actor_timeout_counts_time_without_progress_not_a_whole_queue(ray_local):
    """Six groups queued on one actor at 0.5 s each take 3 s in all, past an actor_timeout_s of 1.5 s: nothing is
    killed while groups keep finishing. A group that makes no progress for 1.5 s is taken as hung."""
    from types import SimpleNamespace

    from actors.grpo_controller import GRPOController, Group

    @ray_local.remote(num_cpus=0)
    class Worker:
        def work(self, seconds):
            time.sleep(seconds)
            return {"reward": np.zeros(1)}

    worker = Worker.remote()
    ray_local.get(worker.__ray_ready__.remote())
    killed = []
    stub = SimpleNamespace(cfg=SimpleNamespace(cluster=SimpleNamespace(actor_timeout_s=1.5)),
                           _kill_hung=lambda late: killed.append(sorted(g.index for g in late)))

    def groups(seconds):
        return [Group(0, i, {}, i, 0, i, refs=(None, None, worker.work.remote(s))) for i, s in enumerate(seconds)]

    t0 = time.time()
    queue = groups([0.5] * 6)
    GRPOController._wait_while_progressing(stub, queue)
    assert time.time() - t0 >= 2.9 and killed == []
    assert all(ray_local.wait([g.refs[2]], timeout=0)[0] for g in queue)
    hung = groups([0.2, 30.0, 30.0])  # the second one hangs; the third waits behind it
    t0 = time.time()
    GRPOController._wait_while_progressing(stub, hung)
    assert killed == [[1, 2]] and time.time() - t0 < 5
    ray_local.kill(worker)
