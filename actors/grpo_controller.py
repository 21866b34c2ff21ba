"""GRPOController: the driver side of jobs.grpo (docs/architecture.md section 1), one object per run.

It reserves the three roles in placement groups (after `cluster.resources.check_available`), starts the named
actors, and runs the loop: dispatch every prompt group of a step (sample -> reward, chained in the object store,
so rewards start as soon as each group's images exist), collect with re-dispatch of groups whose actor died,
Top-k + advantages on the driver, one learner step, publish the next LoRA version. Checkpoints hold the learner's
DeepSpeed state plus the loop state (step, version, the LoRA of steps already sampled ahead), so `--resume`
continues exactly where an interrupted run stopped.

Crash safety: a checkpoint folder and `final/` are written under a hidden staging name and renamed into place
when complete, then `checkpoints/latest.json` is replaced atomically (spatialrl/atomic.py), so a driver killed
at any point resumes from the last whole checkpoint. Every wait on actors has a timeout (cluster.actor_timeout_s,
cluster.learner_timeout_s): a hung sampler or reward actor is killed, restarted by Ray and its groups redone; a
hung or dead learner rank stops the job with `JobStopped`.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import torch

from actors.learner_actor import JobStopped, LearnerGroup
from actors.reward_actor import RewardActor, reward_actor_name
from actors.sampler_actor import make_sampler_actor, sampler_actor_name
from cluster.resources import actor_options, check_available, reserve
from spatialrl.flux.evaluation import image_grid, ranking_agreement, read_prompts
from spatialrl.grpo.config import GRPOJobConfig
from spatialrl.grpo.learner import TrainSelection
from spatialrl.grpo.math import decline_signal, hacking_signal, topk_filter
import spatialrl.atomic as atomic
from spatialrl.metrics import MetricsLogger, plot_metrics, read_metrics

# errors that mean "the actor (or the object it made) is gone": redo the group; anything else is a bug -> raise
RETRYABLE = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.WorkerCrashedError,
             ray.exceptions.GetTimeoutError)


@dataclass
class Group:
    """One prompt group of one step, in flight or done."""

    step: int
    index: int  # position in the step
    row: dict  # prompt (+ objects / relations)
    prompt_id: int
    version: int
    seed: int
    attempts: int = 0
    refs: tuple = ()  # (images, trajectory, reward) object refs
    actors: tuple = ()  # (sampler, reward actor) the refs are waiting on
    result: dict = field(default_factory=dict)


def step_seed(seed: int, step: int, index: int) -> int:
    """Per (step, group) sampling seed; leaves room for group_size images per seed."""
    return int((seed * 1_000_003 + step) * 10_007 + index) * 1_000


def step_prompt_ids(n_rows: int, per_step: int, step: int, seed: int) -> list[int]:
    """Prompt ids for `step` (1-based): consecutive slices of a per-epoch seeded permutation."""
    ids = []
    for pos in range((step - 1) * per_step, step * per_step):
        epoch, i = divmod(pos, n_rows)
        perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
        ids.append(int(perm[i]))
    return ids


class GRPOController:
    def __init__(self, cfg: GRPOJobConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.rows = read_prompts(cfg.data.prompts)
        self.eval_rows = read_prompts(cfg.data.eval_prompts)[: cfg.grpo.eval_prompts] if (
            cfg.data.eval_prompts and cfg.grpo.eval_prompts) else []
        roles = {"sampler": cfg.cluster.sampler, "reward": cfg.cluster.reward, "learner": cfg.cluster.learner}
        check_available(roles)
        t0 = time.time()
        self.pgs = {name: reserve(name, res, timeout_s=cfg.cluster.placement_timeout_s) for name, res in roles.items()}
        restarts = cfg.cluster.actor_max_restarts
        # "" (nothing deployed), "app" (our application on a running Serve) or "serve" (Serve started here)
        self.deployed_service = deploy_reward_service(cfg.reward) if cfg.reward.backend == "serve" else ""
        self.samplers = [
            make_sampler_actor(cfg.sampler, name=sampler_actor_name(i), max_restarts=restarts,
                               **actor_options(self.pgs["sampler"], i, cfg.cluster.sampler))
            for i in range(cfg.cluster.sampler.count)
        ]
        self.rewarders = [
            RewardActor.options(name=reward_actor_name(i), max_restarts=restarts,
                                **actor_options(self.pgs["reward"], i, cfg.cluster.reward)).remote(cfg.reward)
            for i in range(cfg.cluster.reward.count)
        ]
        self.learner = LearnerGroup(cfg.sampler, cfg.learner, cfg.cluster.learner, self.pgs["learner"],
                                    timeout_s=cfg.cluster.learner_timeout_s)
        ray.get([s.latent_size.remote(cfg.sampler.resolution) for s in self.samplers],
                timeout=cfg.cluster.actor_start_timeout_s)  # models loaded
        self.startup_s = time.time() - t0
        self.metrics = MetricsLogger(self.run_dir / "metrics.jsonl", run=self.run_dir.name)
        self.version = 0
        self.state_ref = self.learner.lora_state_ref()
        self.redispatched = 0
        self.rr = 0  # round-robin cursor over actors
        self._state_for: dict[int, ray.ObjectRef] = {}  # policy version -> its LoRA in the object store
        self.history: list[dict] = []  # every step's metrics row, for the reward-hacking monitor
        self.hack_steps: list[int] = []
        self.presence_steps: list[int] = []  # steps where presence fell while the reward did not

    # ------------------------------------------------------------------------------------------- the loop

    def run(self, resume: bool = False) -> dict:
        g = self.cfg.grpo
        start, ahead = 1, {}
        if resume:
            start, ahead = self._restore()
        else:
            print(f"actors up in {self.startup_s:.1f} s: {len(self.samplers)} sampler(s), "
                  f"{len(self.rewarders)} reward worker(s), {len(self.learner.actors)} learner rank(s), "
                  f"{self.learner.num_lora_params} LoRA parameters", flush=True)
        evals = self._read_json("eval.json")
        if self.eval_rows and "base" not in evals:
            evals["base"] = self.evaluate(version=0, state_ref=self.state_ref)
            self._write_json("eval.json", evals)
            shown = {k: v for k, v in evals["base"].items() if not k.endswith("_per_image")}
            print(f"base generator on {len(self.eval_rows)} held-out prompts: {shown}", flush=True)
        # groups dispatched ahead of training: {step: (version, state_ref)} decides which weights sample a step
        queue: deque = deque()
        for step in range(start, min(g.steps, start + g.max_staleness) + 1):
            version, ref = ahead.get(step, (self.version, self.state_ref))
            queue.append(self._dispatch_step(step, version, ref))
        for step in range(start, g.steps + 1):
            t0 = time.time()
            groups = queue.popleft()
            self._collect(groups)
            t_wait = time.time() - t0
            row = self._train(step, groups)
            if self.eval_rows and g.eval_every and step % g.eval_every == 0 and step < g.steps:
                ev = evals[f"step_{step}"] = self.evaluate(version=self.version, state_ref=self.state_ref)
                self._write_json("eval.json", evals)
                row.update({f"eval/{k}": ev[k] for k in ("relation_accuracy", "object_presence") if k in ev})
            # the next step to sample uses the new weights; steps already in flight (max_staleness > 0) keep
            # sampling with older ones while the learner trained: that overlap is what staleness buys
            nxt = step + g.max_staleness + 1
            if nxt <= g.steps:
                queue.append(self._dispatch_step(nxt, self.version, self.state_ref))
            row["time/wait_for_rewards_s"] = t_wait
            row["time/step_s"] = time.time() - t0
            row["perf/images_per_s"] = len(groups) * self.cfg.sampler.group_size / max(row["time/step_s"], 1e-9)
            self._monitor(step, row)
            self.metrics.log(step, row)
            print(_progress(step, g.steps, row, self.cfg.learner.objective), flush=True)
            if step % g.grid_every == 0 or step == g.steps:
                self._grid(step, groups)
            if step % g.save_every == 0 or step == g.steps:
                self._checkpoint(step, [grp for q in queue for grp in q])
            live = {grp.version for q in queue for grp in q} | {self.version}
            self._state_for = {v: r for v, r in self._state_for.items() if v in live}  # free old LoRA versions
        final = self.run_dir / "final"
        atomic.remove_stale(self.run_dir, "final")
        staging = atomic.staging_dir(final)
        self.learner.save_lora(str(staging))
        atomic.publish_dir(staging, final)
        if self.eval_rows:
            evals["final"] = self.evaluate(version=self.version, state_ref=self.state_ref)
            self._write_json("eval.json", evals)
        plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png", reward_name=self.cfg.reward.source,
                    objective=self.cfg.learner.objective, evals=evals, steps=g.steps)
        summary = {"steps": g.steps, "policy_version": self.version, "final_lora": str(final), **evals,
                   "reward_hacking": self._hacking_summary()}
        if self.hack_steps or self.presence_steps:
            print(f"WARNING: {summary['reward_hacking']['verdict']}", flush=True)
        self._write_json("summary.json", summary)
        return summary

    def _monitor(self, step: int, row: dict) -> None:
        """The reward-hacking monitor (grpo.hack_*) on the same rollouts: the reward's trend against the verifier's
        relation accuracy (reward up, relations not), and against object presence (presence down, reward not)."""
        g = self.cfg.grpo
        self.history.append(row)
        if any(r.get("verifier/relation_accuracy") is None for r in self.history):
            return  # prompts without relations: no independent check
        reward = [r["reward/mean"] for r in self.history]
        sig = hacking_signal(reward, [r["verifier/relation_accuracy"] for r in self.history],
                             window=g.hack_window, z=g.hack_z)
        row.update({"monitor/reward_trend_t": _finite(sig.reward_t), "monitor/verifier_trend_t": _finite(sig.check_t),
                    "monitor/hacking": float(sig.fired)})
        if sig.fired:
            if not self.hack_steps or self.hack_steps[-1] != step - 1:
                print(f"WARNING: possible reward hacking at step {step}: over the last {g.hack_window} steps the "
                      f"reward rose (trend t {sig.reward_t:+.1f}) while the verifier's relation accuracy did not "
                      f"(t {sig.check_t:+.1f}); look at the grids before trusting this reward", flush=True)
            self.hack_steps.append(step)
        if all(r.get("verifier/object_presence") is not None for r in self.history):
            dec = decline_signal(reward, [r["verifier/object_presence"] for r in self.history],
                                 window=g.hack_window, z=g.hack_z)
            row.update({"monitor/presence_trend_t": _finite(dec.check_t), "monitor/presence_drop": float(dec.fired)})
            if dec.fired:
                if not self.presence_steps or self.presence_steps[-1] != step - 1:
                    print(f"WARNING: possible reward hacking at step {step}: over the last {g.hack_window} steps "
                          f"object presence fell (trend t {dec.check_t:+.1f}) while the reward did not "
                          f"(t {dec.reward_t:+.1f}): the reward may pay for layouts with objects missing or "
                          f"misshapen; look at the grids", flush=True)
                self.presence_steps.append(step)

    def _hacking_summary(self) -> dict:
        g = self.cfg.grpo
        out = {"check": "verifier/relation_accuracy", "window": g.hack_window, "z": g.hack_z,
               "fired_steps": list(self.hack_steps), "presence_check": "verifier/object_presence",
               "presence_fired_steps": list(self.presence_steps)}
        if not self.history or self.history[-1].get("verifier/relation_accuracy") is None:
            out["verdict"] = "not monitored: the prompts carry no relations for the verifier to check"
            return out
        found = []
        if self.hack_steps:
            found.append(f"the reward rose while the verifier did not at {len(self.hack_steps)} step(s), first at "
                         f"step {self.hack_steps[0]}")
        if self.presence_steps:
            found.append(f"object presence fell while the reward did not at {len(self.presence_steps)} step(s), "
                         f"first at step {self.presence_steps[0]}")
        out["verdict"] = ("possible reward hacking: " + "; ".join(found) if found else
                          "no sign of reward hacking (the reward and the verifier did not diverge)")
        return out

    def _dispatch_step(self, step: int, version: int, state_ref) -> list[Group]:
        ids = step_prompt_ids(len(self.rows), self.cfg.grpo.prompts_per_step, step, self.cfg.grpo.seed)
        groups = [Group(step, i, self.rows[pid], pid, version, step_seed(self.cfg.grpo.seed, step, i))
                  for i, pid in enumerate(ids)]
        self._state_for[version] = state_ref
        for grp in groups:
            self._submit(grp)
        return groups

    def _submit(self, grp: Group, noise_level: float | None = None, group_size: int | None = None,
                shared_noise: bool | None = None) -> None:
        sampler = self.samplers[self.rr % len(self.samplers)]
        rewarder = self.rewarders[self.rr % len(self.rewarders)]
        self.rr += 1
        k = group_size or self.cfg.sampler.group_size
        images, traj = sampler.rollout.options(num_returns=2).remote(
            [grp.row["prompt"]], prompt_ids=[grp.prompt_id], seed=grp.seed, lora_state=self._state_for[grp.version],
            version=grp.version, noise_level=noise_level, group_size=group_size, shared_noise=shared_noise,
        )
        grp.refs = (images, traj, rewarder.score.remote(images, [grp.row] * k))
        grp.actors = (sampler, rewarder)
        grp.attempts += 1

    def _collect(self, groups: list[Group], **submit_kw) -> None:
        """Wait for every group's rewards; re-dispatch groups whose sampler or reward actor died."""
        todo = list(groups)
        while todo:
            self._wait_while_progressing(todo)
            failed = []
            for grp in todo:
                try:
                    grp.result = ray.get(grp.refs[2], timeout=self.cfg.cluster.actor_timeout_s)
                except RETRYABLE as e:
                    if grp.attempts > self.cfg.grpo.max_retries:
                        raise JobStopped(
                            f"step {grp.step} group {grp.index}: actors failed {grp.attempts} times "
                            f"(last: {type(e).__name__}); raise grpo.max_retries or check the actors' logs"
                        ) from e
                    print(f"step {grp.step} group {grp.index}: {type(e).__name__}, re-dispatching", flush=True)
                    self.redispatched += 1
                    failed.append(grp)
            if failed:
                self._await_actors()
            for grp in failed:
                self._submit(grp, **submit_kw)
            todo = failed

    def _wait_while_progressing(self, todo: list[Group]) -> None:
        """Wait until every group in `todo` has its rewards, for as long as groups keep finishing: a queue of many
        groups (a big evaluation, a slow machine) may take far longer than cluster.actor_timeout_s in all. Only
        when no group has finished for actor_timeout_s are the actors the rest wait on taken as hung and killed."""
        timeout = self.cfg.cluster.actor_timeout_s
        pending, last_progress = {grp.refs[2]: grp for grp in todo}, time.time()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, last_progress + timeout - time.time()))
            if ready:
                last_progress = time.time()
                for ref in ray.wait(list(pending), num_returns=len(pending), timeout=0)[0]:
                    pending.pop(ref)
                continue
            self._kill_hung(list(pending.values()))
            return

    def _kill_hung(self, late: list[Group]) -> None:
        """Groups still pending after cluster.actor_timeout_s: kill the actor each waits on (the sampler while its
        images are not made, else the reward actor); Ray restarts it and the group fails over to a re-dispatch."""
        hung = {}
        for grp in late:
            images_done = bool(ray.wait([grp.refs[0]], timeout=0)[0])
            actor = grp.actors[1] if images_done else grp.actors[0]
            hung[actor._actor_id] = (actor, "reward actor" if images_done else "sampler")
        for actor, role in hung.values():
            print(f"a {role} finished none of its groups within {self.cfg.cluster.actor_timeout_s:g} s "
                  "(cluster.actor_timeout_s): killing it; Ray restarts it and its groups are redone", flush=True)
            ray.kill(actor, no_restart=False)

    def _await_actors(self, timeout_s: float | None = None) -> None:
        """Block until every sampler and reward actor answers again. While Ray restarts an actor, tasks sent to
        it fail at once with ActorUnavailableError (actors run with max_task_retries=0), so re-dispatching
        straight away would spend all of grpo.max_retries in milliseconds, long before the model is reloaded."""
        timeout_s = timeout_s or self.cfg.cluster.actor_start_timeout_s
        deadline = time.time() + timeout_s
        for actor in self.samplers + self.rewarders:
            while True:
                try:
                    ray.get(actor.__ray_ready__.remote(), timeout=30)
                    break
                except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                    if time.time() > deadline:
                        raise JobStopped(
                            f"an actor was still restarting after {timeout_s:g} s (cluster.actor_start_timeout_s); "
                            "check its logs (ray logs)"
                        ) from None
                    time.sleep(0.2)

    def _train(self, step: int, groups: list[Group]) -> dict:
        G = self.cfg.sampler.group_size
        rewards = torch.as_tensor(np.concatenate([grp.result["reward"] for grp in groups]), dtype=torch.float32)
        group_index = torch.arange(len(groups)).repeat_interleave(G)
        g = self.cfg.grpo
        sel = topk_filter(rewards, group_index, g.top_k, normalize=g.topk_normalize, global_std=g.global_std,
                          seed=groups[0].seed)
        refs, selections = [], []
        for i, grp in enumerate(groups):
            keep = sel.keep[i * G:(i + 1) * G].numpy()
            if keep.any():
                refs.append(grp.refs[1])
                selections.append(TrainSelection(np.nonzero(keep)[0], sel.advantages[i * G:(i + 1) * G].numpy()[keep]))
        row = self._reward_metrics(groups)
        row.update({"topk/kept_fraction": sel.kept_samples / len(rewards), "topk/kept_groups": sel.kept_groups,
                    "topk/dropped_groups": sel.dropped_groups,
                    "policy/staleness": float(np.mean([self.version - grp.version for grp in groups])),
                    "faults/redispatched_groups": self.redispatched})
        t0 = time.time()
        if refs:
            row.update(self.learner.train_step(refs, selections))
            self.version += 1
            self.state_ref = self.learner.lora_state_ref()
        row["time/train_s"] = time.time() - t0
        row["policy/version"] = self.version
        return row

    @staticmethod
    def _reward_metrics(groups: list[Group]) -> dict:
        out = {}
        if "serve_retries" in groups[0].result:
            out["faults/serve_retries"] = float(sum(grp.result["serve_retries"].sum() for grp in groups))
        for key in ("reward", "spatialscore", "relation_accuracy", "object_presence"):
            v = np.concatenate([grp.result[key] for grp in groups]).astype(np.float64)
            if np.isnan(v).all():
                continue
            name = {"reward": "reward", "spatialscore": "reward/spatialscore",
                    "relation_accuracy": "verifier/relation_accuracy", "object_presence": "verifier/object_presence"}[key]
            if key == "reward":
                out["reward/mean"], out["reward/std"] = float(np.nanmean(v)), float(np.nanstd(v))
            elif key != "spatialscore":
                out[name] = float(np.nanmean(v))
        return out

    # ------------------------------------------------------------------------------------------ evaluation

    def evaluate(self, version: int, state_ref) -> dict:
        """ODE samples of the held-out prompts with fixed seeds (the same for every version): mean SpatialScore
        and verifier accuracy."""
        k = self.cfg.grpo.eval_images_per_prompt
        self._state_for[version] = state_ref
        groups = [Group(0, i, row, i, version, step_seed(self.cfg.grpo.seed + 7_919, 0, i))
                  for i, row in enumerate(self.eval_rows)]
        # independent starts whatever the training sampler shares: ODE images from one start would be copies
        for grp in groups:
            self._submit(grp, noise_level=0.0, group_size=k, shared_noise=False)
        self._collect(groups, noise_level=0.0, group_size=k, shared_noise=False)
        cat = {key: np.concatenate([grp.result[key] for grp in groups]).astype(np.float64)
               for key in ("spatialscore", "relation_accuracy", "object_presence")}
        images = np.concatenate(ray.get([grp.refs[0] for grp in groups]))
        image_grid(images, rows=len(groups)).save(self.run_dir / f"eval_v{version:04d}.png")
        out = {"policy_version": version, "prompts": len(groups), "images": int(len(images))}
        for key, v in cat.items():
            if not np.isnan(v).all():
                out[key] = round(float(np.nanmean(v)), 4)
                # per image, in a fixed order (same prompts and seeds for every version): paired comparisons
                out[f"{key}_per_image"] = [None if np.isnan(x) else round(float(x), 4) for x in v]
        # does SpatialScore still order this policy's images of one prompt the way the verifier does? (no pairs
        # where either was not scored: ranking_agreement leaves NaNs out)
        share, pairs = ranking_agreement(cat["spatialscore"].tolist(), cat["relation_accuracy"].tolist(), k)
        if pairs:
            out["spatialscore_agreement"], out["spatialscore_agreement_pairs"] = round(share, 4), pairs
        return out

    # ----------------------------------------------------------------------------------- files and resume

    def _grid(self, step: int, groups: list[Group]) -> None:
        shown = groups[:4]
        images = np.concatenate(ray.get([grp.refs[0] for grp in shown]))
        (self.run_dir / "grids").mkdir(exist_ok=True)
        image_grid(images, rows=len(shown)).save(self.run_dir / "grids" / f"step_{step:05d}.png")
        with open(self.run_dir / "grids" / f"step_{step:05d}.jsonl", "w") as f:
            for grp in shown:
                f.write(json.dumps({"prompt": grp.row["prompt"], "reward": grp.result["reward"].round(4).tolist(),
                                    "relation_accuracy": grp.result["relation_accuracy"].round(3).tolist()}) + "\n")

    def _checkpoint(self, step: int, in_flight: list[Group]) -> None:
        from safetensors.torch import save_file

        final = self.run_dir / "checkpoints" / f"step_{step:05d}"
        atomic.remove_stale(final.parent, final.name)
        ckpt = atomic.staging_dir(final)  # renamed to `final` once whole; latest.json moves after that
        self.learner.save_checkpoint(str(ckpt / "learner"))
        ahead = {}
        for grp in in_flight:  # steps already sampled ahead used these weights: keep them for an exact resume
            if grp.step not in ahead:
                save_file(ray.get(self._state_for[grp.version]), ckpt / f"ahead_v{grp.version}.safetensors")
                ahead[grp.step] = grp.version
        state = {"step": step, "version": self.version, "redispatched": self.redispatched, "ahead": ahead}
        (ckpt / "state.json").write_text(json.dumps(state))
        atomic.publish_dir(ckpt, final)
        atomic.write_json(self.run_dir / "checkpoints" / "latest.json", {"path": final.name, "step": step}, indent=None)
        for old in sorted((self.run_dir / "checkpoints").glob("step_*"))[:-2]:  # keep the last two
            import shutil

            shutil.rmtree(old, ignore_errors=True)

    def _restore(self) -> tuple[int, dict]:
        from safetensors.torch import load_file

        latest = json.loads((self.run_dir / "checkpoints" / "latest.json").read_text())
        ckpt = self.run_dir / "checkpoints" / latest["path"]
        atomic.recover_dir(ckpt)  # a crash between publish_dir's two renames
        state = json.loads((ckpt / "state.json").read_text())
        self.learner.load_checkpoint(str(ckpt / "learner"))
        self.version, self.redispatched = state["version"], state["redispatched"]
        self.state_ref = self.learner.lora_state_ref()
        self.metrics.truncate_after(state["step"])
        self.history = read_metrics(self.run_dir / "metrics.jsonl")
        self.hack_steps = [int(r["step"]) for r in self.history if r.get("monitor/hacking")]
        self.presence_steps = [int(r["step"]) for r in self.history if r.get("monitor/presence_drop")]
        self._state_for = {}
        ahead = {}
        for step, version in state["ahead"].items():
            ref = ray.put(load_file(ckpt / f"ahead_v{version}.safetensors"))
            ahead[int(step)] = (version, ref)
            self._state_for[version] = ref
        print(f"resumed {self.run_dir} at step {state['step']} (policy version {self.version})", flush=True)
        return state["step"] + 1, ahead

    def _read_json(self, name: str) -> dict:
        p = self.run_dir / name
        return json.loads(p.read_text()) if p.exists() else {}

    def _write_json(self, name: str, data: dict) -> None:
        atomic.write_json(self.run_dir / name, data)

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for actor in self.samplers + self.rewarders:
            ray.kill(actor)
        self.learner.shutdown()
        if self.deployed_service:
            from ray import serve

            # Serve started here (without an HTTP proxy) goes away with the run, so that a later
            # jobs.serve_reward on this cluster starts its own with the proxy it asks for
            serve.shutdown() if self.deployed_service == "serve" else serve.delete(self.cfg.reward.serve_app)
        for pg in self.pgs.values():
            remove_placement_group(pg)


def deploy_reward_service(reward) -> str:
    """Deploy the SpatialScore Serve application `reward.serve_app` from `reward.checkpoint` unless an application
    of that name is already running (e.g. started by jobs.serve_reward). Starts Serve without an HTTP proxy when
    it is not running. Returns "" (used a running application), "app" (deployed on a running Serve) or "serve"."""
    from ray import serve

    from actors.reward_service import build_app
    from spatialrl.reward.api import ServeRewardConfig

    try:
        running = reward.serve_app in serve.status().applications
    except Exception:  # Serve not started on this cluster yet
        running = False
    if running:
        print(f"reward: using the running Serve application {reward.serve_app!r}", flush=True)
        return ""
    cfg = ServeRewardConfig(checkpoint=reward.checkpoint, app_name=reward.serve_app, device=reward.device,
                            scorer_batch_size=reward.batch_size)
    cfg.replicas.min_replicas = cfg.replicas.max_replicas = reward.serve_replicas
    cfg.replicas.num_cpus, cfg.replicas.num_gpus = reward.serve_num_cpus, reward.serve_num_gpus
    cfg.batching.max_batch_size = reward.serve_max_batch_size
    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
        started = "app"
    except ValueError:
        started = "serve"
        serve.start(proxy_location="Disabled")
    serve.run(build_app(cfg), name=reward.serve_app, route_prefix=None)
    print(f"reward: deployed the Serve application {reward.serve_app!r} ({reward.serve_replicas} replica(s))", flush=True)
    return started


def _finite(x: float, cap: float = 1e6) -> float:
    """JSON has no inf: a perfectly straight trend is logged as +-cap."""
    return max(-cap, min(cap, float(x)))


def _progress(step: int, steps: int, row: dict, objective: str = "grpo") -> str:
    """One console line per step. The likelihood ratio and its clip only mean something for `objective` grpo (fm and
    nft train on final latents, where the ratio is 1 by construction): for those, rollout object presence instead."""
    ratio = [("policy/ratio_mean", "ratio {:.5f}"), ("policy/clip_fraction", "clip {:.2f}")] if objective == "grpo" \
        else [("verifier/object_presence", "presence {:.3f}")]
    parts = [f"step {step}/{steps}"]
    for key, fmt in (("reward/mean", "reward {:.3f}"), ("verifier/relation_accuracy", "verifier {:.3f}"),
                     ("topk/kept_fraction", "kept {:.2f}"), *ratio, ("perf/images_per_s", "{:.1f} img/s"),
                     ("time/step_s", "{:.1f} s")):
        if row.get(key) is not None:
            parts.append(fmt.format(row[key]))
    return " | ".join(parts)


def plot_curves(metrics_path: Path, out_png: Path, reward_name: str = "spatialscore", objective: str = "grpo",
                evals: dict | None = None, steps: int = 0) -> None:
    """Per step: the reward (`reward_name` = what it is); the verifier's relation accuracy on the rollouts and on the
    held-out prompts (`evals`, eval.json's dict: base at step 0, final at `steps`, `grpo.eval_every` between); the clip
    fraction for `objective` grpo, else (fm / nft: the ratio is 1 by construction) the rollouts' object presence, the
    shapes a reward can trade away, and the held-out one."""
    held_out = [{"step": 0 if name == "base" else steps, **{f"eval/{k}": ev[k] for k in
                 ("relation_accuracy", "object_presence") if isinstance(ev.get(k), (int, float))}}
                for name, ev in (evals or {}).items() if name in ("base", "final")]
    third = ("clip fraction", [("policy/clip_fraction", "clip")]) if objective == "grpo" else \
        ("object presence", [("verifier/object_presence", "rollouts"), ("eval/object_presence", "held-out (ODE)")])
    plot_metrics(metrics_path, out_png, [(f"reward ({reward_name}) mean", [("reward/mean", "reward")]),
                                         ("verifier relation accuracy", [("verifier/relation_accuracy", "rollouts"),
                                                                         ("eval/relation_accuracy", "held-out (ODE)")]),
                                         third],
                 xlabel="GRPO step", extra_rows=held_out)
