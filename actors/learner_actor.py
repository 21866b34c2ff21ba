"""The GRPO learner group: N `GRPOLearner` ranks as plain Ray actors forming one torch process group.

Not Ray Train: GRPO's loop lives in the driver (single controller), so the learner is a group of actors the
driver calls. Rank 0 publishes its node address and a free port; every rank then builds its `GRPOLearner`,
which joins the group (gloo on CPU, NCCL on GPU) and wraps the LoRA in DeepSpeed. Actors are named
`spatialrl/learner-{rank}` and live in the `learner` role's placement group. A DeepSpeed group does not survive
the loss of a rank, so learner actors are not restarted: a rank that dies or does not answer within
`timeout_s` (the GRPO job's cluster.learner_timeout_s) stops the job with `JobStopped`, whose message says to
continue with `--resume` from the last checkpoint.

    group = LearnerGroup(sampler_cfg, learner_cfg, res, pg)
    stats = group.train_step(traj_refs, selections)
    state_ref = group.lora_state_ref()   # the next policy version, in the object store once
"""

from __future__ import annotations

import ray

from cluster.resources import RoleResources, actor_options
from spatialrl.flux.sampler import FluxSamplerConfig
from spatialrl.grpo.learner import (GRPOLearner, GRPOLearnerConfig, TrainSelection, needed_trajectories,
                                    trajectory_bytes)


class JobStopped(RuntimeError):
    """The GRPO run cannot go on (a lost or hung learner rank, actors that keep failing); the message says why and
    what to do. The job prints it and exits 1."""


def learner_actor_name(rank: int) -> str:
    return f"spatialrl/learner-{rank}"


@ray.remote
class LearnerRank:
    """A thin shell: the GRPOLearner is built in `setup`, once rank 0's address is known."""

    def __init__(self):
        self.learner: GRPOLearner | None = None

    def address(self) -> tuple[str, int]:
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, sampler_cfg, cfg, rank: int, world_size: int, addr: str, port: int) -> int:
        self.learner = GRPOLearner(sampler_cfg, cfg, rank=rank, world_size=world_size, master_addr=addr,
                                   master_port=port)
        return sum(p.numel() for _, p in self.learner._lora_params())

    def train_step(self, selections: list[TrainSelection], batch_sizes: list[int], traj_refs: list) -> dict:
        """Fetch only the trajectories this rank trains on (refs inside a list are not resolved by Ray), train."""
        L = self.learner
        need = needed_trajectories(batch_sizes, selections, L.rank, L.world_size)
        trajectories = [None] * len(traj_refs)
        for t, traj in zip(need, ray.get([traj_refs[t] for t in need])):
            trajectories[t] = traj
        out = L.train_step(trajectories, selections, batch_sizes)
        out["fetched"] = {t: trajectory_bytes(trajectories[t]) for t in need}
        return out

    def lora_state(self) -> dict:
        return self.learner.lora_state()

    def save_checkpoint(self, path: str) -> None:
        self.learner.save_checkpoint(path)

    def load_checkpoint(self, path: str) -> int:
        self.learner.load_checkpoint(path)
        return self.learner.updates

    def save_lora(self, out_dir: str) -> str:
        return self.learner.save_lora(out_dir)


class LearnerGroup:
    """Driver-side handle on the learner ranks; every call goes to all ranks (the collectives need them)."""

    def __init__(self, sampler_cfg: FluxSamplerConfig, cfg: GRPOLearnerConfig, res: RoleResources, pg,
                 timeout_s: float = 600.0):
        self.timeout_s = timeout_s
        self.batch_size = sampler_cfg.batch_size
        self.actors = [
            LearnerRank.options(name=learner_actor_name(i), max_restarts=0, **actor_options(pg, i, res)).remote()
            for i in range(res.count)
        ]
        addr, port = self._get(self.actors[0].address.remote(), "start")
        counts = self._get(
            [a.setup.remote(sampler_cfg, cfg, i, res.count, addr, port) for i, a in enumerate(self.actors)], "setup")
        self.num_lora_params = int(counts[0])

    def _get(self, refs, what: str):
        """ray.get with the learner's timeout; a dead or hung rank becomes JobStopped with the way on."""
        try:
            return ray.get(refs, timeout=self.timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise JobStopped(
                f"the learner group did not finish {what} within {self.timeout_s:g} s (cluster.learner_timeout_s): "
                "a rank hangs (or waits in a collective for one that does). The run stops here; look at "
                "`ray logs` of the spatialrl/learner-* actors, then continue with --resume from the last checkpoint "
                "(raise cluster.learner_timeout_s if the step is just slow)") from None
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            raise JobStopped(
                f"a learner rank died during {what} ({type(exc).__name__}); a DeepSpeed group does not survive a "
                "lost rank, so the run stops here. Continue it with --resume from the last checkpoint") from None

    def train_step(self, traj_refs: list, selections: list[TrainSelection],
                   batch_sizes: list[int] | None = None) -> dict[str, float]:
        """One step on every rank; each rank fetches only its share of the trajectories. Adds learner/fetched_bytes
        (moved to all ranks) and learner/step_bytes (the step's trajectories once; what each rank pulled when every
        rank fetched every trajectory)."""
        batch_sizes = list(batch_sizes or [self.batch_size] * len(traj_refs))  # the samplers' (same config)
        outs = self._get([a.train_step.remote(selections, batch_sizes, list(traj_refs)) for a in self.actors],
                         "a train step")
        fetched = [o.pop("fetched") for o in outs]
        sizes = {t: b for f in fetched for t, b in f.items()}
        return {**outs[0], "learner/fetched_bytes": float(sum(sum(f.values()) for f in fetched)),
                "learner/step_bytes": float(sum(sizes.values()))}

    def lora_state_ref(self):
        return self.actors[0].lora_state.remote()

    def save_checkpoint(self, path: str) -> None:
        self._get([a.save_checkpoint.remote(path) for a in self.actors], "saving a checkpoint")

    def load_checkpoint(self, path: str) -> int:
        return self._get([a.load_checkpoint.remote(path) for a in self.actors], "loading a checkpoint")[0]

    def save_lora(self, out_dir: str) -> str:
        return self._get(self.actors[0].save_lora.remote(out_dir), "saving the LoRA")

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
