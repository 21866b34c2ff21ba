"""Load test of the SpatialScore service: N requests at concurrency C over loopback, batched vs unbatched.

For each `max_batch_size` in --batch-sizes (same run, same requests, same replica resources) it deploys the
service on 127.0.0.1, warms it up, sends --requests POST /v1/score requests from --concurrency client threads
(each request one easy-world prompt + image as base64 PNG), and reports throughput, p50 / p99 latency and the
count of non-200 answers. The client shares the machine with the server, as a co-located caller would.

    python -m bench.serve_reward --requests 2000 --concurrency 32 --batch-sizes 1,8 --json runs/bench/serve.json
    python -m bench.serve_reward --checkpoint runs/demo/reward/final     # a trained checkpoint instead

Without --checkpoint it builds an untrained SpatialScore (LoRA B = 0, random head) on the shipped
tiny-pretrained backbone: the same compute per item as a trained one, so the same throughput.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_bodies(n_distinct: int) -> list[bytes]:
    from data_pipeline.dataset_io import decode_image
    from data_pipeline.pairs import make_pair
    from data_pipeline.world import load_world_preset
    from spatialrl.reward.api import encode_image_b64

    world = load_world_preset("configs/dataset_easy.yaml")
    out = []
    for i in range(n_distinct):
        row = make_pair(i, 12_345, "test", world)
        item = {"prompt": row["prompt"], "image": encode_image_b64(decode_image(row["chosen_image"]).convert("RGB"))}
        out.append(json.dumps({"items": [item]}).encode())
    return out


def post(url: str, body: bytes) -> tuple[int, float]:
    t0 = time.perf_counter()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError:
        status = -1  # connection-level failure
    return status, time.perf_counter() - t0


def load(url: str, bodies: list[bytes], n: int, concurrency: int) -> dict:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: post(url, bodies[i % len(bodies)]), range(n)))
    wall = time.perf_counter() - t0
    lat = np.array([r[1] for r in results]) * 1000
    statuses = [r[0] for r in results]
    return {"requests": n, "concurrency": concurrency, "wall_s": round(wall, 2),
            "requests_per_s": round(n / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "server_errors": sum(1 for s in statuses if s >= 500 or s < 0),
            "non_200": sum(1 for s in statuses if s != 200)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="SpatialScore checkpoint (default: untrained on tiny-pretrained)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--batch-sizes", default="1,8", help="max_batch_size values to compare, in this order")
    p.add_argument("--num-cpus", type=float, default=1.0, help="the replica's CPUs")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the replica")
    p.add_argument("--json", default="", help="write the results here")
    args = p.parse_args(argv)
    if not 1 <= args.requests <= 20_000 or not 1 <= args.concurrency <= 256:
        print("--requests must lie in 1..20000 and --concurrency in 1..256 (a bounded load test)", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    from cluster.runtime import init_ray
    from jobs.serve_reward import deploy
    from spatialrl.reward.api import ServeRewardConfig

    ckpt = args.checkpoint
    if not ckpt:
        from spatialrl.reward.model import RewardModelConfig, SpatialRewardModel

        ckpt = str(Path(tempfile.mkdtemp(prefix="serve-bench-")) / "rm")
        SpatialRewardModel(RewardModelConfig(backbone="tiny-pretrained", image_size=168, lora_rank=16),
                           seed=0).save_pretrained(ckpt)
    started = init_ray(num_cpus=2, dashboard=False, log_to_driver=False)
    ray.get(ray.remote(lambda: None).remote())
    bodies = request_bodies(64)
    results = {"checkpoint": ckpt if args.checkpoint else "untrained SpatialScore on tiny-pretrained (168 px)",
               "runs": []}
    try:
        for mbs in [int(b) for b in args.batch_sizes.split(",")]:
            cfg = ServeRewardConfig(checkpoint=ckpt, port=free_port(), device="cpu", scorer_batch_size=max(mbs, 1),
                                    threads=args.threads)
            cfg.replicas.num_cpus = args.num_cpus
            cfg.batching.max_batch_size = mbs
            cfg.batching.batch_wait_timeout_s = 0.005
            deploy(cfg)
            url = f"http://127.0.0.1:{cfg.port}/v1/score"
            load(url, bodies, 64, min(8, args.concurrency))  # warm-up, not reported
            row = {"max_batch_size": mbs, **load(url, bodies, args.requests, args.concurrency)}
            results["runs"].append(row)
            print(json.dumps(row), flush=True)
            serve.shutdown()
    finally:
        if started:
            ray.shutdown()
    base = results["runs"][0]["requests_per_s"]
    for row in results["runs"]:
        row["speedup_vs_first"] = round(row["requests_per_s"] / base, 2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print("| max_batch_size | requests | concurrency | req/s | p50 ms | p99 ms | server errors | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["runs"]:
        print(f"| {r['max_batch_size']} | {r['requests']} | {r['concurrency']} | {r['requests_per_s']} | "
              f"{r['p50_ms']} | {r['p99_ms']} | {r['server_errors']} | {r['speedup_vs_first']}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
