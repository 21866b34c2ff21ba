"""The cluster path for real (slow tier, `make cluster-test`): two Ray nodes on this machine, token auth, jobs
submitted through the job API (dataset build, GRPO with the sampler role pinned to the second node, reward training,
evaluation, the reward service deployed and scored over HTTP), the metrics endpoint scraped while they run.

The head is `ray start --head` on 127.0.0.1 with its own ports and temp dir, token authentication on
(RAY_AUTH_MODE=token, the token in a file named by RAY_AUTH_TOKEN_PATH); the second node joins it and offers
the custom resource `sampler_node`. Both are stopped at the end (only what this test started: `ray stop` would
stop every Ray on the machine, so the test kills its own process groups).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster")
    token_file = tmp / "token"
    token_file.write_text(secrets.token_hex(16))
    token_file.chmod(0o600)
    gcs, dash, m1, m2, client = free_ports(5)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = str(Path(sys.executable).parent / "ray")
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
    procs = []
    # Ray's own sockets live under the temp dir and a unix socket path has at most 107 bytes: pytest's
    # /tmp/pytest-of-USER/pytest-NN/cluster0/ray/session_<date>_<pid>/sockets/dash_MetricsHead passed it once NN
    # had two digits (the dashboard's MetricsHead then fails to start), so Ray gets a short folder of its own
    ray_tmp = tempfile.mkdtemp(prefix="srl-", dir="/tmp")
    # and the second node a folder of its own, as a second machine would have: sharing one session folder, its
    # runtime-env agent re-extracted a job's working_dir that the head's agent had already unpacked (remove, then
    # unpack), pulling the folder from under the running driver (its cwd vanished: os.getcwd() failed)
    worker_tmp = tempfile.mkdtemp(prefix="srl-w-", dir="/tmp")

    def start(args, log):
        p = subprocess.Popen([ray_bin, "start", *args, *common], env=env, stdout=open(tmp / log, "w"),
                             stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    start(["--head", "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--include-dashboard", "true", "--num-cpus", "2", "--metrics-export-port", str(m1),
           "--ray-client-server-port", str(client), "--temp-dir", ray_tmp], "head.log")
    dashboard = f"http://127.0.0.1:{dash}"
    _wait_for(lambda: _get(f"{dashboard}/api/version", token_file.read_text()), 120, "the head's dashboard")
    start(["--address", f"127.0.0.1:{gcs}", "--num-cpus", "1", "--resources", json.dumps({"sampler_node": 1}),
           "--metrics-export-port", str(m2), "--temp-dir", worker_tmp], "worker.log")
    _wait_for(lambda: _alive_nodes(dashboard, token_file.read_text()) >= 2, 120, "the second node")
    yield {"tmp": tmp, "env": env, "dashboard": dashboard, "token": token_file.read_text(),
           "metrics": [f"http://127.0.0.1:{m1}/metrics", f"http://127.0.0.1:{m2}/metrics"], "ray": ray_bin}
    for p in procs[::-1]:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    print(f"the nodes' logs: {ray_tmp}/session_latest/logs, {worker_tmp}/session_latest/logs")  # kept, as pytest keeps its own tmp folders


def _get(url: str, token: str | None = None, timeout: float = 10) -> str:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def _alive_nodes(dashboard: str, token: str) -> int:
    data = json.loads(_get(f"{dashboard}/api/v0/nodes?limit=10", token))
    return sum(1 for n in data["data"]["result"]["result"] if n["state"] == "ALIVE")


def _wait_for(check, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(1)
    raise AssertionError(f"{what} did not come up within {timeout_s:g} s (last: {last!r})")


def submit(cluster, *entrypoint: str, runtime_env: dict | None = None, timeout_s: float = 900) -> str:
    """`ray job submit` as a user runs it: the job API with the token, the repo as working dir."""
    cmd = [cluster["ray"], "job", "submit", "--address", cluster["dashboard"], "--working-dir", str(ROOT)]
    if runtime_env:
        cmd += ["--runtime-env-json", json.dumps(runtime_env)]
    for _ in range(24):  # a head that just started may not have its job agent yet: Ray says to try again later
        out = subprocess.run([*cmd, "--", *entrypoint], env=cluster["env"], capture_output=True, text=True,
                             timeout=timeout_s, cwd=ROOT)
        if out.returncode == 0 or "No available agent to submit job" not in out.stdout + out.stderr:
            break
        time.sleep(5)
    assert out.returncode == 0, f"job failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return out.stdout


def test_unauthenticated_job_api_is_refused(cluster):
    with pytest.raises(urllib.error.HTTPError) as err:
        _get(f"{cluster['dashboard']}/api/jobs/")
    assert err.value.code in (401, 403)


class Scraper(threading.Thread):
    """Scrapes the nodes' metrics endpoints every `every_s` while the jobs run, as Prometheus would: a gauge is
    on an endpoint only while its process lives and a little after."""

    def __init__(self, urls: list[str], every_s: float = 2.0):
        super().__init__(daemon=True)
        self.urls, self.every_s, self.seen, self.scrapes = urls, every_s, set(), 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            for url in self.urls:
                try:
                    self.seen |= set(re.findall(r"^(ray_spatialrl_\w+)(?:\{| )", _get(url), re.M))
                    self.scrapes += 1
                except OSError:
                    pass
            self._halt.wait(self.every_s)

    def stop(self):
        self._halt.set()
        self.join(timeout=30)


def test_jobs_run_on_two_nodes_with_the_sampler_pinned_and_metrics_scraped(cluster):
    scraper = Scraper(cluster["metrics"])
    scraper.start()
    shared = cluster["tmp"] / "shared"
    data = shared / "dataset"
    # the user's own runtime_env sets a key the project sets too: merged, not refused
    out = submit(cluster, "python", "-m", "jobs.build_dataset", "--pairs", "60", "--seed", "3", "--out", str(data),
                 "--config", "configs/dataset_easy.yaml", runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    assert (data / "manifest.json").is_file(), out
    assert [r["dataset/pairs"] for r in map(json.loads, (data / "metrics.jsonl").read_text().splitlines())] == [60]
    run = shared / "grpo"
    sets = ["reward.source=verifier", "grpo.steps=2", "grpo.prompts_per_step=2", "grpo.eval_prompts=0",
            f"data.prompts={data / 'prompts_train.jsonl'}",
            "cluster.sampler.resources={sampler_node: 1}", "cluster.sampler.num_cpus=0.5",
            "cluster.reward.num_cpus=0.5", "cluster.learner.num_cpus=0.5"]
    out = submit(cluster, "python", "-m", "jobs.grpo", "--out", str(run), *[a for s in sets for a in ("--set", s)])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2], out
    # which node ran which role: the actor table (dead actors keep their node)
    actors = json.loads(_get(f"{cluster['dashboard']}/api/v0/actors?limit=1000&detail=1", cluster["token"]))
    nodes = {a["name"]: a["node_id"] for a in actors["data"]["result"]["result"]
             if (a.get("name") or "").startswith("spatialrl/")}
    node_list = json.loads(_get(f"{cluster['dashboard']}/api/v0/nodes?limit=10", cluster["token"]))
    worker = [n["node_id"] for n in node_list["data"]["result"]["result"] if n["resources_total"].get("sampler_node")]
    assert len(worker) == 1
    assert nodes["spatialrl/sampler-0"] == worker[0], nodes
    assert nodes["spatialrl/reward-0"] != worker[0] and nodes["spatialrl/learner-0"] != worker[0], nodes
    # reward training (Ray Train + DeepSpeed workers) and an evaluation, submitted the same way
    rm = shared / "reward"
    submit(cluster, "python", "-m", "jobs.train_reward", "--config", "configs/reward_tiny.yaml", "--data", str(data),
           "--out", str(rm), "--set", "epochs=1", "--set", "max_steps_per_epoch=3", "--set", "log_every=1")
    assert (rm / "final").is_dir()
    ev = shared / "eval"
    submit(cluster, "python", "-m", "jobs.evaluate", "--benchmark", "spatialworld", "--prompts",
           str(data / "prompts_test.jsonl"), "--model", "tiny-pretrained", "--limit", "2", "--images-per-prompt",
           "1", "--set", "generation.steps=3", "--set", "chunk_prompts=1", "--out", str(ev))
    assert (ev / "report.html").is_file()
    # the reward service (Ray Serve) from that checkpoint, deployed by a submitted job that returns (--detach), with
    # a bearer token passed in the job's runtime_env; then scored over HTTP as a client would
    port, = free_ports(1)
    service_token = secrets.token_hex(8)
    out = submit(cluster, "python", "-m", "jobs.serve_reward", "--checkpoint", str(rm / "final"), "--detach",
                 "--set", f"port={port}", "--set", "auth_token_env=SPATIALSCORE_TOKEN", "--set", "threads=1",
                 "--set", "replicas.num_cpus=0.5", runtime_env={"env_vars": {"SPATIALSCORE_TOKEN": service_token}})
    assert "detached" in out, out
    from PIL import Image

    from spatialrl.reward.api import encode_image_b64

    prompts = [json.loads(line)["prompt"] for line in (data / "prompts_test.jsonl").read_text().splitlines()[:2]]
    request = json.dumps({"items": [{"prompt": p, "image": encode_image_b64(Image.new("RGB", (64, 64), (i * 90, 40, 200)))}
                                    for i, p in enumerate(prompts)]}).encode()

    def score(token):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/score", data=request, method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    for _ in range(3):
        scores = score(service_token)["scores"]
        assert len(scores) == 2 and all(isinstance(x, float) for x in scores), scores
    with pytest.raises(urllib.error.HTTPError) as err:
        score("wrong-token")
    assert err.value.code == 401
    deadline = time.time() + 45  # the replica's counters reach its node's endpoint at the next export
    while time.time() < deadline and not any(n.startswith("ray_spatialrl_serve_latency_ms") for n in scraper.seen):
        time.sleep(1)
    # the jobs' gauges reached a metrics endpoint as ray_spatialrl_* series while they ran (as Prometheus sees them)
    scraper.stop()
    wanted = {f"ray_spatialrl_{n}" for n in ("reward_mean", "topk_kept_fraction", "dataset_pairs", "dataset_pairs_per_s",
                                             "loss_reward", "val_accuracy", "eval_base_images_per_s",
                                             "serve_requests", "serve_items", "serve_latency_ms")}
    # counters and histograms carry a suffix on the endpoint (_total, _bucket, ...): match by prefix
    missing = sorted(w for w in wanted if not any(n == w or n.startswith(w + "_") for n in scraper.seen))
    assert not missing, f"never scraped: {missing} (scrapes: {scraper.scrapes}; seen: {sorted(scraper.seen)})"
    # every series the Grafana dashboard queries, by its exact exported name (a counter's _total, a histogram's
    # _bucket / _sum / _count), was on an endpoint; only GRPO's serve-backend retries need a run this test skips
    dashboard = set(re.findall(r"ray_spatialrl_\w+", (ROOT / "cluster" / "grafana" / "spatialrl.json").read_text()))
    not_served = sorted(dashboard - scraper.seen - {"ray_spatialrl_faults_serve_retries"})
    assert not not_served, f"the Grafana dashboard queries series no job exported: {not_served}"
