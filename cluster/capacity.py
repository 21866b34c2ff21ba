"""Capacity planning for the GRPO roles: how many GPUs the sampler, reward and learner roles need, and what a step
costs, from per-role unit costs and the GRPO shape. Pure Python (no Ray, no torch), so it runs anywhere.

Unit costs (`RoleCosts`), each for one role replica on one device:
  sampler  seconds per image per denoising step (VAE decode and log-probs folded in)
  reward   seconds per image scored
  learner  seconds per trained sample-step (forward + backward of one image at one trained timestep) on one rank,
           plus a fixed overhead per GRPO step (optimizer steps, the LoRA handed to the object store)
  sync     seconds for a sampler to take up new LoRA weights
They come from a bench on this machine's tiny models (`bench/plan_calibrate.py`) or from a GPU benchmark's JSON.

Two models of the driver loop (`actors/grpo_controller.py`), which agree on the mean when nothing is random:
  `predict`   closed form: groups go round-robin to samplers, each reward worker scores the groups it is handed
              while sampling goes on, the learner trains when every group of the step is scored. On-policy
              (max_staleness 0) a step costs sync, then sample+score, then learn; with staleness s the next s
              steps sample while the learner trains, so the step shrinks toward the slowest role's own work.
  `simulate`  a discrete-event simulation of the same loop with stragglers (lognormal task times), actor
              failures (a task lost with probability p, the actor restarted after restart_s, the task redone) and
              a checkpoint every few steps.
`plan` searches every split of N GPUs into the three roles and keeps the fastest by the closed form.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import asdict, dataclass, field


class PlanError(ValueError):
    """A bad capacity-planning input (the message names the field and a fix)."""


@dataclass
class RoleCosts:
    sampler_s_per_image_step: float
    reward_s_per_image: float
    learner_s_per_sample_step: float
    learner_step_overhead_s: float = 0.0
    sync_s: float = 0.0
    # a data-parallel learner of n ranks runs at n * efficiency**log2(n) ranks' speed (gradient all-reduce)
    learner_efficiency_per_doubling: float = 0.95
    source: str = ""  # where the numbers come from (a bench, a GPU suite run, a paper)

    def validate(self) -> None:
        for key in ("sampler_s_per_image_step", "reward_s_per_image", "learner_s_per_sample_step"):
            if not getattr(self, key) > 0:
                raise PlanError(f"{key}={getattr(self, key)}: a unit cost must be > 0 seconds")
        if self.learner_step_overhead_s < 0 or self.sync_s < 0:
            raise PlanError("learner_step_overhead_s and sync_s must be >= 0")
        if not 0 < self.learner_efficiency_per_doubling <= 1:
            raise PlanError(f"learner_efficiency_per_doubling={self.learner_efficiency_per_doubling}: use (0, 1]")

    @classmethod
    def from_dict(cls, d: dict) -> "RoleCosts":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known - {"shape", "measured", "command", "checkpoint_s"})
        if unknown:
            raise PlanError(f"unknown keys in the measured costs: {unknown}; expected {sorted(known)}")
        missing = [k for k in ("sampler_s_per_image_step", "reward_s_per_image", "learner_s_per_sample_step")
                   if k not in d]
        if missing:
            raise PlanError(f"the measured costs lack {missing}; bench/plan_calibrate.py writes all of them")
        costs = cls(**{k: v for k, v in d.items() if k in known})
        costs.validate()
        return costs


@dataclass
class GRPOShape:
    prompts_per_step: int  # groups per step
    group_size: int  # images per group
    num_steps: int  # denoising steps per image (sampling)
    trained_steps: int  # timesteps trained per kept image (the SDE window x timestep_fraction)
    kept_fraction: float  # share of the images the learner trains on (Top-k: 2k / G; plain GRPO: 1)
    max_staleness: int = 0
    checkpoint_every: int = 0  # steps; 0 = never
    checkpoint_s: float = 0.0

    def validate(self) -> None:
        if self.prompts_per_step < 1 or self.group_size < 1 or self.num_steps < 1 or self.trained_steps < 1:
            raise PlanError("prompts_per_step, group_size, num_steps and trained_steps must be >= 1")
        if not 0 < self.kept_fraction <= 1:
            raise PlanError(f"kept_fraction={self.kept_fraction}: use a share in (0, 1]")
        if self.max_staleness < 0:
            raise PlanError(f"max_staleness={self.max_staleness}: 0 (on-policy) or more")

    @property
    def images_per_step(self) -> int:
        return self.prompts_per_step * self.group_size


@dataclass
class Split:
    sampler: int
    reward: int
    learner: int

    @property
    def gpus(self) -> int:
        return self.sampler + self.reward + self.learner


@dataclass
class Prediction:
    split: Split
    step_s: float
    sample_s: float  # from dispatch until the last group is scored (the wait for rewards, on-policy)
    learn_s: float
    sync_s: float
    images_per_s: float
    utilisation: dict[str, float] = field(default_factory=dict)  # busy share of each role's GPUs
    bottleneck: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        out["split"] = asdict(self.split)
        out["gpus"] = self.split.gpus
        return out


def learner_speed(costs: RoleCosts, ranks: int) -> float:
    """Ranks' worth of speed of a data-parallel learner of `ranks` ranks."""
    return ranks * costs.learner_efficiency_per_doubling ** math.log2(ranks) if ranks > 1 else 1.0


def group_times(shape: GRPOShape, costs: RoleCosts) -> tuple[float, float]:
    """Seconds one group takes on one sampler, and on one reward worker."""
    return (shape.group_size * shape.num_steps * costs.sampler_s_per_image_step,
            shape.group_size * costs.reward_s_per_image)


def learn_time(shape: GRPOShape, costs: RoleCosts, ranks: int) -> float:
    work = shape.images_per_step * shape.kept_fraction * shape.trained_steps * costs.learner_s_per_sample_step
    return costs.learner_step_overhead_s + work / learner_speed(costs, ranks)


def sample_and_score_time(shape: GRPOShape, costs: RoleCosts, split: Split) -> float:
    """Makespan of one step's groups: round-robin over samplers and reward workers (the driver's dispatch), each
    reward worker scoring its groups in arrival order while sampling goes on."""
    gs, gr = group_times(shape, costs)
    free = [0.0] * split.reward
    done = 0.0
    for i in range(shape.prompts_per_step):
        sampled = (i // split.sampler + 1) * gs  # sampler i % S finishes its k-th group at k * gs
        w = i % split.reward
        free[w] = max(free[w], sampled) + gr
        done = max(done, free[w])
    return done


def _step_time(shape: GRPOShape, costs: RoleCosts, split: Split, t_sr: float, t_learn: float) -> float:
    gs, gr = group_times(shape, costs)
    ckpt = shape.checkpoint_s / shape.checkpoint_every if shape.checkpoint_every else 0.0
    # step t + s + 1 is dispatched when step t has trained and is scored S = sync + t_sr later; the learner takes
    # L = t_learn + ckpt per step. Steady state: (s + 1) * period = max(s * period, S) + L, and no role can
    # do more than its own work per period
    s = shape.max_staleness
    chain = (costs.sync_s + t_sr + t_learn + ckpt) / (s + 1)
    if not s:
        return chain
    per_sampler = math.ceil(shape.prompts_per_step / split.sampler) * gs + costs.sync_s
    per_reward = math.ceil(shape.prompts_per_step / split.reward) * gr
    return max(chain, t_learn + ckpt, per_sampler, per_reward)


def predict(shape: GRPOShape, costs: RoleCosts, split: Split) -> Prediction:
    """Steady-state seconds per step, images/s and each role's utilisation (closed form, no randomness)."""
    shape.validate()
    costs.validate()
    if min(split.sampler, split.reward, split.learner) < 1:
        raise PlanError(f"{split}: every role needs at least 1 replica")
    t_sr = sample_and_score_time(shape, costs, split)
    t_learn = learn_time(shape, costs, split.learner)
    step = _step_time(shape, costs, split, t_sr, t_learn)
    gs, gr = group_times(shape, costs)
    used = min(split.sampler, shape.prompts_per_step)  # samplers beyond one per group get no work
    busy = {"sampler": (shape.prompts_per_step * gs + used * costs.sync_s) / split.sampler,
            "reward": shape.prompts_per_step * gr / split.reward,
            "learner": t_learn}
    util = {k: min(1.0, v / step) for k, v in busy.items()}
    bottleneck = max(util, key=util.get)
    return Prediction(split, step, t_sr, t_learn, costs.sync_s, shape.images_per_step / step, util, bottleneck)


def plan(shape: GRPOShape, costs: RoleCosts, gpus: int, tolerance: float = 0.01) -> Prediction:
    """The split of at most `gpus` GPUs into sampler / reward / learner replicas with the shortest predicted step.

    Among splits within `tolerance` of the fastest, the one with the fewest GPUs wins (then fewer learner ranks):
    replicas past one per group, or learner ranks past the point of no return, are left out of the plan, and the
    caller sees that the GRPO shape, not the cluster, limits the step."""
    shape.validate()
    costs.validate()
    if gpus < 3:
        raise PlanError(f"--gpus {gpus}: the three roles need at least 3 GPUs (or share GPUs with fractional "
                        f"num_gpus in the config, e.g. cluster.reward.num_gpus=0.5)")
    P = shape.prompts_per_step
    t_learn = {}

    def step_at(sampler: int, reward: int, learner: int, t_sr: float) -> float:
        if learner not in t_learn:
            t_learn[learner] = learn_time(shape, costs, learner)
        return _step_time(shape, costs, Split(sampler, reward, learner), t_sr, t_learn[learner])

    # the step depends on a role's count only through how many groups each replica gets (ceil(P / n)): the
    # smallest count for each such share is enough; more learner ranks never make a step slower
    pairs = []
    for sampler in _counts(P, gpus - 2):
        for reward in _counts(P, gpus - 1 - sampler):
            t_sr = sample_and_score_time(shape, costs, Split(sampler, reward, 1))
            pairs.append((sampler, reward, t_sr, step_at(sampler, reward, gpus - sampler - reward, t_sr)))
    fastest = min(p[3] for p in pairs)
    limit = fastest * (1 + tolerance)
    best = None
    for sampler, reward, t_sr, at_max in pairs:
        if at_max > limit:
            continue
        lo, hi = 1, gpus - sampler - reward  # the fewest learner ranks that stay within the limit
        while lo < hi:
            mid = (lo + hi) // 2
            if step_at(sampler, reward, mid, t_sr) <= limit:
                hi = mid
            else:
                lo = mid + 1
        key = (sampler + reward + lo, lo, reward)
        if best is None or key < best[0]:
            best = (key, Split(sampler, reward, lo))
    return predict(shape, costs, best[1])


def _counts(groups: int, most: int) -> list[int]:
    """Replica counts 1..most that give each replica a different number of groups (the smallest of each)."""
    out, seen = [], set()
    for n in range(1, min(groups, most) + 1):
        share = -(-groups // n)
        if share not in seen:
            seen.add(share)
            out.append(n)
    return out


# ---------------------------------------------------------------------------------------- discrete events


@dataclass
class SimConfig:
    steps: int = 20
    straggler_sigma: float = 0.0  # lognormal sigma of every task's time (0 = exact unit costs)
    failure_rate: float = 0.0  # chance that a sampling or scoring task is lost with its actor
    restart_s: float = 0.0  # seconds until a lost actor is back (the model reloaded)
    seed: int = 0


@dataclass
class SimResult:
    step_s: list[float]  # per step, from the end of the previous step's training (as the driver times it)
    wait_s: list[float]  # per step, waiting for rewards
    train_s: list[float]
    busy_s: dict[str, float]  # summed busy seconds per role
    wall_s: float
    failures: int

    def mean_step_s(self, skip: int = 0) -> float:
        xs = self.step_s[skip:]
        return sum(xs) / len(xs)

    def utilisation(self, split: Split) -> dict[str, float]:
        counts = {"sampler": split.sampler, "reward": split.reward, "learner": 1}
        return {k: v / (self.wall_s * counts[k]) for k, v in self.busy_s.items()}


def simulate(shape: GRPOShape, costs: RoleCosts, split: Split, sim: SimConfig | None = None) -> SimResult:
    """Play the driver loop: dispatch every group of a step round-robin (sampler i % S, reward worker i % R), keep
    max_staleness steps in flight, train when a step's groups are all scored, then the samplers take up the new
    weights (sync) before sampling with them. Sampler and reward replicas each run one task at a time, in order."""
    sim = sim or SimConfig()
    shape.validate()
    costs.validate()
    rng = random.Random(sim.seed)
    gs, gr = group_times(shape, costs)

    def jitter(t: float) -> float:
        return t * math.exp(rng.gauss(0.0, sim.straggler_sigma) - sim.straggler_sigma ** 2 / 2) if sim.straggler_sigma else t

    sampler_free = [0.0] * split.sampler
    sampler_version = [0] * split.sampler  # the LoRA version each sampler holds
    reward_free = [0.0] * split.reward
    busy = {"sampler": 0.0, "reward": 0.0, "learner": 0.0}
    failures = 0
    rr = 0

    def run_task(free: list[float], i: int, ready: float, base: float, role: str) -> float:
        nonlocal failures
        start = max(free[i], ready)
        while True:
            t = jitter(base)
            if sim.failure_rate and rng.random() < sim.failure_rate:
                failures += 1
                lost = t * rng.random()  # the actor dies part way through
                busy[role] += lost
                start += lost + sim.restart_s  # restarted, then the driver re-dispatches the group
                continue
            busy[role] += t
            free[i] = start + t
            return free[i]

    def dispatch(at: float, version: int) -> float:
        """Submit one step's groups at time `at` with weights `version`; returns when the last one is scored."""
        nonlocal rr
        events = []
        for _ in range(shape.prompts_per_step):
            s, w = rr % split.sampler, rr % split.reward
            rr += 1
            cost = gs
            if version > sampler_version[s]:  # the sampler takes up the new LoRA before this group
                cost += costs.sync_s
                sampler_version[s] = version
            heapq.heappush(events, (run_task(sampler_free, s, at, cost, "sampler"), w))
        done = at
        while events:  # reward workers take groups as they arrive
            sampled, w = heapq.heappop(events)
            done = max(done, run_task(reward_free, w, sampled, gr, "reward"))
        return done

    in_flight = {}
    clock = 0.0
    for step in range(1, min(sim.steps, 1 + shape.max_staleness) + 1):
        in_flight[step] = dispatch(0.0, 0)
    step_s, wait_s, train_s = [], [], []
    for step in range(1, sim.steps + 1):
        t0 = clock
        clock = max(clock, in_flight.pop(step))
        wait_s.append(clock - t0)
        t_learn = jitter(learn_time(shape, costs, split.learner))
        busy["learner"] += t_learn
        clock += t_learn
        train_s.append(t_learn)
        nxt = step + shape.max_staleness + 1
        if nxt <= sim.steps:
            in_flight[nxt] = dispatch(clock, step)
        if shape.checkpoint_every and step % shape.checkpoint_every == 0:
            clock += shape.checkpoint_s
        step_s.append(clock - t0)
    return SimResult(step_s, wait_s, train_s, busy, clock, failures)
