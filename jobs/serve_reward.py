"""SpatialScore as an HTTP service (Ray Serve): batching, replicas with their own resources, autoscaling.

    python -m jobs.serve_reward --checkpoint runs/demo/reward/final                  # http://127.0.0.1:8000
    python -m jobs.serve_reward --checkpoint DIR --set port=8123 --set replicas.max_replicas=4
    SPATIALSCORE_TOKEN=secret python -m jobs.serve_reward --checkpoint DIR --set auth_token_env=SPATIALSCORE_TOKEN
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python -m jobs.serve_reward --checkpoint /shared/rm/final --detach

Starts (or joins, under `ray job submit` / `--address`) Ray, starts Serve's HTTP proxy on `host:port`
(127.0.0.1 unless told), deploys the application `app_name` and prints the URL; then serves until Ctrl-C, which
removes the application (and Ray, if this job started it). `--detach` returns after deploying and leaves the
application running on the cluster (`serve shutdown` or `serve.delete(app_name)` removes it). The HTTP API
and its limits: spatialrl/reward/api.py; the deployment: actors/reward_service.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from spatialrl.config import add_config_args, job_config
from spatialrl.reward.api import ServeRewardConfig, token_digest


def deploy(cfg: ServeRewardConfig):
    """Start Serve on cfg.host:cfg.port and run the application; returns its DeploymentHandle."""
    from ray import serve

    from actors.reward_service import build_app

    token = os.environ[cfg.auth_token_env] if cfg.auth_token_env else None
    serve.start(proxy_location=cfg.proxy_location, http_options={"host": cfg.host, "port": cfg.port})
    return serve.run(build_app(cfg, token_digest(token) if token else None), name=cfg.app_name, route_prefix="/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, default_config="configs/serve_reward.yaml")
    parser.add_argument("--checkpoint", help="SpatialScore checkpoint folder (jobs.train_reward's OUT/final)")
    parser.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS, else start a local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray started by this job")
    parser.add_argument("--detach", action="store_true", help="return after deploying; the service keeps running")
    args = parser.parse_args(argv)
    cfg = job_config(ServeRewardConfig, args, {"checkpoint": args.checkpoint})
    if isinstance(cfg, int):
        return cfg
    from pathlib import Path

    from spatialrl.reward.model import CONFIG_FILE

    if not (Path(cfg.checkpoint) / CONFIG_FILE).is_file():
        print(f"config error: checkpoint={cfg.checkpoint!r} has no {CONFIG_FILE}: point --checkpoint at a "
              f"SpatialScore folder written by jobs.train_reward (OUT/final)", file=sys.stderr)
        return 2
    import ray
    from ray import serve

    from cluster.runtime import init_ray

    started = init_ray(args.address, args.num_cpus, dashboard=None)
    deploy(cfg)
    url = f"http://{cfg.host}:{cfg.port}"
    auth = f", bearer token from ${cfg.auth_token_env}" if cfg.auth_token_env else ", no token (loopback use)"
    print(f"SpatialScore is serving at {url}/v1/score (health: {url}/healthz){auth}", flush=True)
    if args.detach:
        print(f"detached: the application {cfg.app_name!r} keeps running; remove it with "
              f"`serve shutdown` or serve.delete({cfg.app_name!r})")
        return 0
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping the service")
    finally:
        serve.delete(cfg.app_name)
        if started:
            serve.shutdown()
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
