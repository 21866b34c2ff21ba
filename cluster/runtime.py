"""Start or join Ray, the same way for every job.

`python -m jobs.X` on a laptop starts a local Ray (sized by `--num-cpus` or the machine); under
`ray job submit` (RAY_ADDRESS is set) or with `--address auto|HOST:PORT` it joins that cluster instead.
The driver only shuts Ray down if it started it.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import ray

# Keep Ray's own logs readable in a terminal; jobs print their own progress.
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
# Ray Data's Parquet listing starts 32 footer-reading actors by default and packs row groups into 128 MiB
# read units. Our shards are small (a few MB), so that costs a process storm and a long wait for the first
# batch: measured on a 2-core node, 24 s to the first batch of a bare read_parquet, 4.5 s with these values
# (bench/RESULTS.md). Override either through the environment.
RAY_DATA_ENV = {
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "2",
    "RAY_DATA_PARQUET_BIN_PACKING_BYTES": str(16 * 2**20),
}


# Driver variables that every worker needs too: offline Hugging Face, where models and fixtures live.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
FORWARDED_ENV = ("SPATIALRL_MODELS", "SPATIALRL_CACHE", "HF_HOME")
# Set by `ray job submit` for the job's driver: the job's own runtime_env, which ray.init merges with ours.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def driver_runtime_env(environ: dict[str, str] | None = None) -> dict:
    """The runtime_env this driver adds for its workers: the offline flags, the Ray Data settings and the
    project's variables that are set here. Keys the submitted job's own runtime_env already sets are left out,
    so Ray merges the two instead of refusing a conflict (the user's values win). {} when nothing is left."""
    environ = os.environ if environ is None else environ
    wanted = {**OFFLINE_ENV, **{k: environ[k] for k in RAY_DATA_ENV if k in environ},
              **{k: environ[k] for k in FORWARDED_ENV if environ.get(k)}}
    if environ.get(JOB_CONFIG_ENV):
        try:
            job_env = (json.loads(environ[JOB_CONFIG_ENV]).get("runtime_env") or {}).get("env_vars") or {}
        except (json.JSONDecodeError, AttributeError):
            job_env = {}
        wanted = {k: v for k, v in wanted.items() if k not in job_env}
    return {"env_vars": wanted} if wanted else {}


def init_ray(
    address: str | None = None, num_cpus: int | None = None, dashboard: bool | None = None, log_to_driver: bool = True
) -> bool:
    """Connect to Ray; returns True if this call started a new local instance (so the caller owns it)."""
    if ray.is_initialized():
        return False
    for key, value in RAY_DATA_ENV.items():
        os.environ.setdefault(key, value)  # a local Ray's workers inherit the driver's environment
    address = address or os.environ.get("RAY_ADDRESS")
    runtime_env = driver_runtime_env() or None
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return False
    ray.init(num_cpus=num_cpus, include_dashboard=dashboard, runtime_env=runtime_env, log_to_driver=log_to_driver)
    return True


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, dashboard: bool | None = None):
    """Ray for one job. On a running cluster, the job's last gauges are kept up until they were exported once
    (a job's final numbers would otherwise never reach the metrics endpoint); a local Ray ends with the job."""
    connects = not ray.is_initialized()  # False inside a process (a test, the demo) that already holds Ray
    started = init_ray(address, num_cpus, dashboard)
    try:
        yield started
        if connects and not started:
            from spatialrl.metrics import linger_for_dashboard

            linger_for_dashboard()
    finally:
        if started:
            ray.shutdown()


def cpu_bound_data_context(progress_bars: bool = True):
    """Ray Data settings for CPU-bound pipelines whose source is trivial (ids, Parquet metadata).

    By default Ray Data reserves part of the CPUs for every operator; on a small machine that leaves one
    task running for the heavy operator while the cheap source sits on its reservation. Returns the context.
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress_bars
    ctx.op_resource_reservation_enabled = False
    return ctx
