"""The chaos tier (slow; `make chaos-test`): real faults on a real local Ray with the tiny models.

- a reward actor killed mid-step, and a sampler hung (SIGSTOP) until cluster.actor_timeout_s: the actor is
  killed / restarted and its groups redone, and the run's numbers equal an undisturbed run's;
- a learner rank killed, and one hung past cluster.learner_timeout_s: the job stops with one message (exit 1)
  and `--resume` finishes it;
- the GRPO driver SIGKILLed five times at random points (during start-up, between steps, inside checkpoint
  writing) and resumed until done: its metrics and final LoRA equal the uninterrupted run's (same seed), and
  no metrics row is duplicated or torn.

The GRPO runs use reward.source=verifier (no reward model to load) so that each start-up costs seconds; the
killed drivers are separate processes joined to the session's Ray. About 5-6 minutes on 2 cores.

Run: .venv/bin/python -m pytest tests/test_chaos.py -m slow -q
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import jobs.grpo as grpo_job
from spatialrl.config import REPO_ROOT
from spatialrl.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.ray]
STEPS = 6


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    from data_pipeline.pairs import make_pair
    from jobs.build_dataset import BuildDatasetConfig
    from spatialrl.config import load_config

    world = load_config(BuildDatasetConfig, REPO_ROOT / "configs/dataset_easy.yaml").world
    path = tmp_path_factory.mktemp("chaos") / "prompts_train.jsonl"
    with open(path, "w") as f:
        for i in range(12):
            pair = make_pair(i, 0, "train", world)
            info = json.loads(pair["relations"])
            f.write(json.dumps({"prompt": pair["prompt"], **info}) + "\n")
    return path


def args_for(prompts: Path, out: Path, *sets: str) -> list[str]:
    args = ["--out", str(out), "--set", f"data.prompts={prompts}", "--set", "reward.source=verifier",
            "--set", "grpo.top_k=1", "--set", f"grpo.steps={STEPS}", "--set", "grpo.save_every=1",
            "--set", "grpo.eval_prompts=0"]
    for s in sets:
        args += ["--set", s]
    return args


def same_numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(("time/", "perf/", "faults/"))}


def lora(run: Path) -> dict:
    from safetensors.torch import load_file

    (f,) = (run / "final").glob("*.safetensors")
    return load_file(f)


def assert_same_run(run: Path, ref: Path) -> None:
    import torch

    lines = (run / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line whole: none torn
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1)), "a metrics row is missing or duplicated"
    for got, want in zip(rows, read_metrics(ref / "metrics.jsonl")):
        assert same_numbers(got) == same_numbers(want), f"step {got['step']} differs"
    a, b = lora(run), lora(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(ray_local, prompts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chaos_ref") / "run"
    assert grpo_job.main(args_for(prompts, out)) == 0
    return out


def actor_pid(ray, name: str) -> int:
    """The process of one of this test's named actors (asked through the actor itself: never a process found by
    its name on a machine where other Ray runs live)."""
    return ray.get(ray.get_actor(name).__ray_call__.remote(lambda self: os.getpid()), timeout=120)


def when_logged(out: Path, n_rows: int, action, stop: threading.Event) -> None:
    metrics = out / "metrics.jsonl"
    while not stop.is_set():
        if metrics.exists() and metrics.read_text().count("\n") >= n_rows:
            action()
            return
        time.sleep(0.005)


def run_with(action_after_row, n_rows: int, job_args: list[str], out: Path) -> int:
    stop = threading.Event()
    thread = threading.Thread(target=when_logged, args=(out, n_rows, action_after_row, stop), daemon=True)
    thread.start()
    try:
        return grpo_job.main(job_args)
    finally:
        stop.set()
        thread.join(timeout=10)


def test_killed_reward_actor_is_restarted_and_its_groups_redone(ray_local, prompts, reference, tmp_path):
    out = tmp_path / "run"
    killed = []

    def kill():
        ray_local.kill(ray_local.get_actor("spatialrl/reward-0"), no_restart=False)
        killed.append(1)

    assert run_with(kill, 1, args_for(prompts, out), out) == 0
    assert killed
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[-1]["faults/redispatched_groups"] >= 1
    assert_same_run(out, reference)


def test_hung_sampler_is_killed_restarted_and_its_work_redone(ray_local, prompts, reference, tmp_path, capsys):
    out = tmp_path / "run"
    stopped = []

    def hang():
        pid = actor_pid(ray_local, "spatialrl/sampler-0")
        os.kill(pid, signal.SIGSTOP)  # alive but silent: only the timeout can notice
        stopped.append(pid)

    assert run_with(hang, 1, args_for(prompts, out, "cluster.actor_timeout_s=30"), out) == 0
    assert stopped
    assert "finished none of its groups within 30 s" in capsys.readouterr().out
    assert read_metrics(out / "metrics.jsonl")[-1]["faults/redispatched_groups"] >= 1
    assert_same_run(out, reference)


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_lost_learner_rank_stops_the_job_with_a_message_and_resume_finishes(
        fault, ray_local, prompts, reference, tmp_path, capsys):
    out = tmp_path / "run"
    pids = []

    def hurt():
        pid = actor_pid(ray_local, "spatialrl/learner-0")
        pids.append(pid)
        if fault == "killed":
            os.kill(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGSTOP)

    assert run_with(hurt, 2, args_for(prompts, out, "cluster.learner_timeout_s=30"), out) == 1
    err = capsys.readouterr().err
    assert pids, f"the job stopped before the fault was injected:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    # the fault lands in a train step or in a checkpoint save (save_every=1): either call stops the job
    assert ("a learner rank died during" if fault == "killed" else "did not finish") in err
    assert fault == "killed" or "within 30 s (cluster.learner_timeout_s)" in err
    assert "--resume" in err
    if fault == "hung":
        try:
            os.kill(pids[0], signal.SIGKILL)  # the job killed its actors; make sure the stopped process goes too
        except ProcessLookupError:
            pass
    assert grpo_job.main(args_for(prompts, out) + ["--resume"]) == 0
    assert_same_run(out, reference)


@pytest.mark.timeout(2400)  # six driver start-ups; each took 30 s to 5 min on a loaded 2-core machine
def test_driver_sigkilled_five_times_then_resumed_equals_the_uninterrupted_run(ray_local, prompts, reference,
                                                                               tmp_path):
    """Each attempt is `python -m jobs.grpo` joined to the session's Ray, SIGKILLed at a point drawn from a seeded
    generator: a random moment of start-up or of the loop, or the moment a checkpoint is being written (its
    staging folder exists). Then `--resume` (or a fresh start while no config.yaml was written) until done."""
    out = tmp_path / "run"
    rng = random.Random(17)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    base = [sys.executable, "-m", "jobs.grpo", *args_for(prompts, out),
            "--set", f"cluster.address={ray_local.get_runtime_context().gcs_address}"]
    kinds, logs = ["checkpoint", "loop", "startup", "checkpoint", "loop"], []
    def killed_job_released():  # the killed driver's placement groups go when Ray notices it died
        deadline = time.time() + 180
        while time.time() < deadline and ray_local.available_resources().get("CPU", 0) < 1.5:
            time.sleep(0.5)

    for attempt, kind in enumerate(kinds):
        killed_job_released()
        resume = ["--resume"] if (out / "config.yaml").exists() else []
        before = len(read_metrics(out / "metrics.jsonl"))
        log = open(tmp_path / f"attempt{attempt}.log", "w")
        proc = subprocess.Popen(base + resume, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        t0, killed_at = time.time(), None
        delay = rng.uniform(1.0, 8.0)
        while proc.poll() is None and time.time() - t0 < 900:
            rows = len(read_metrics(out / "metrics.jsonl")) if (out / "metrics.jsonl").exists() else 0
            staging = list((out / "checkpoints").glob(".staging-*")) if (out / "checkpoints").exists() else []
            if (kind == "startup" and time.time() - t0 > delay) or \
                    (kind == "loop" and rows > before and time.time() - t0 > delay) or \
                    (kind == "checkpoint" and staging and rows > before):
                proc.send_signal(signal.SIGKILL)
                killed_at = f"{kind} at {time.time() - t0:.1f} s, {rows} rows, staging {bool(staging)}"
                break
            time.sleep(0.01)
        proc.wait(timeout=60)
        log.close()
        logs.append(killed_at or f"{kind}: exited {proc.returncode} before the kill: "
                    + (tmp_path / f"attempt{attempt}.log").read_text()[-1500:])
    assert sum(entry.split(" ")[0] in kinds for entry in logs) == 5, logs
    assert any(entry.startswith("checkpoint") and "staging True" in entry for entry in logs), logs
    killed_job_released()
    final = subprocess.run(base + ["--resume"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr[-3000:]
    assert_same_run(out, reference)
    assert not list(out.rglob(".staging-*")) and not list(out.rglob(".old-*"))
