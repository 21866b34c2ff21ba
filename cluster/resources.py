"""Resource requests for every Ray role, in one place: what each role asks for, whether the cluster has it,
and the placement groups that reserve it.

A role (samplers, reward workers, learner ranks) is `count` actors with the same per-actor request. Before any
placement group is created the totals are checked against `ray.available_resources()`, so a config that asks
for more than the cluster has fails at once with a table of what is missing and how to fix it, instead of
hanging while Ray waits for nodes that never come. `pg.ready()` is waited on with a timeout for the same
reason (autoscaling clusters may need minutes: raise `timeout_s`).

    roles = {"sampler": RoleResources(count=2, num_gpus=0.5), "learner": RoleResources(count=1, num_gpus=1)}
    check_available(roles)
    pg = reserve("sampler", roles["sampler"])
    actor = SamplerActor.options(**actor_options(pg, 0, roles["sampler"])).remote(cfg)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spatialrl.config import ConfigError


class ResourceError(RuntimeError):
    """The cluster cannot host the requested actors."""


@dataclass
class RoleResources:
    """`count` actors of one role, each with this request (fractional GPUs let roles share one GPU)."""

    count: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = field(default_factory=dict)  # custom node resources, e.g. {"sampler": 1}

    def validate(self, role: str = "cluster.<role>") -> None:
        if self.count < 1:
            raise ConfigError(f"{role}.count={self.count}: need at least one actor")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ConfigError(f"{role}: num_cpus and num_gpus must be >= 0")
        if self.num_gpus > 1 and self.num_gpus != int(self.num_gpus):
            raise ConfigError(f"{role}.num_gpus={self.num_gpus}: fractions are allowed below 1 only (0.25, 0.5, ...)")
        if self.num_cpus == 0 and self.num_gpus == 0 and not self.resources:
            raise ConfigError(f"{role}: request some CPU or GPU (a placement group bundle cannot be empty)")

    def bundle(self) -> dict[str, float]:
        b = {"CPU": float(self.num_cpus), "GPU": float(self.num_gpus), **{k: float(v) for k, v in self.resources.items()}}
        return {k: v for k, v in b.items() if v > 0}


def totals(roles: dict[str, RoleResources]) -> dict[str, float]:
    need: dict[str, float] = {}
    for role in roles.values():
        for k, v in role.bundle().items():
            need[k] = need.get(k, 0.0) + v * role.count
    return need


def _short(need: dict[str, float], have: dict[str, float]) -> dict[str, tuple[float, float]]:
    return {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}


def check_available(
    roles: dict[str, RoleResources], available: dict[str, float] | None = None, wait_s: float = 15.0
) -> None:
    """Raise ResourceError, naming each short resource and each role's share, if the cluster is too small.

    A request larger than the whole cluster fails at once. One that fits the cluster but not what is free right
    now waits up to `wait_s` (actors of a previous job may still be releasing theirs), then fails.
    """
    import time

    import ray

    for name, role in roles.items():
        role.validate(name)
    need = totals(roles)
    have = ray.available_resources() if available is None else available
    short = _short(need, have)
    if short and available is None and not _short(need, ray.cluster_resources()):
        deadline = time.time() + wait_s
        while short and time.time() < deadline:
            time.sleep(0.5)
            have = ray.available_resources()
            short = _short(need, have)
    if short:
        lines = [f"  {k}: need {v:g}, available {h:g}" for k, (v, h) in short.items()]
        shares = [f"  {n}: {r.count} x {r.bundle()}" for n, r in roles.items()]
        raise ResourceError(
            "the cluster cannot host this job's actors:\n" + "\n".join(lines) + "\nrequested per role:\n"
            + "\n".join(shares) + "\nfix: lower the counts or per-actor num_cpus/num_gpus in the config "
            "(--set cluster.<role>.count=... / num_gpus=0.5), or add nodes (ray_cluster.yaml)."
        )


def reserve(role: str, res: RoleResources, strategy: str = "PACK", timeout_s: float = 120.0):
    """A placement group with one bundle per actor of `role`; waits until it is placed or raises."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group([res.bundle()] * res.count, strategy=strategy, name=f"spatialrl-{role}")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise ResourceError(
            f"placement group for {res.count} x {role} {res.bundle()} was not placed within {timeout_s:g} s: the "
            f"cluster has the resources in total but not on nodes that fit the bundles (or is still scaling up); "
            f"use smaller per-actor requests, strategy SPREAD, or a longer timeout"
        ) from None
    return pg


def actor_options(pg, bundle_index: int, res: RoleResources) -> dict:
    """`.options(...)` for the actor in bundle `bundle_index` of `pg`."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "num_cpus": res.num_cpus,
        "num_gpus": res.num_gpus,
        "resources": dict(res.resources),
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=bundle_index
        ),
    }
