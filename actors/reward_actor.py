"""RewardActor: `spatialrl.grpo.rewards.RewardWorker` as a Ray actor, named `spatialrl/reward-{i}`.

Resources come from the GRPO config (`cluster.reward`), placed in that role's placement group by the job. A
crashed actor is restarted (`max_restarts`) and reloads SpatialScore in its constructor; the driver re-sends
the lost batch.
"""

from __future__ import annotations

import ray

from spatialrl.grpo.rewards import RewardWorker

RewardActor = ray.remote(RewardWorker)


def reward_actor_name(index: int) -> str:
    return f"spatialrl/reward-{index}"
