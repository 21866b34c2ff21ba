"""jobs.train_reward on a real local Ray: Ray Train + DeepSpeed ZeRO-2 over gloo with 2 CPU workers (ray tier).

One run (slow: `make chaos-test`) trains two epochs while the test SIGKILLs a training worker in the second epoch,
after the first checkpoint (FailureConfig restarts the group from it, and the steps it redoes are logged once);
another stops after one epoch and is continued with --resume, and the same one-epoch command run twice trains the
same adapter.
"""

import json
import os
import signal
import threading
import time

import psutil
import pytest
import torch

from jobs.build_dataset import main as build
from jobs.train_reward import main as train
from spatialrl.metrics import read_metrics as metrics_rows  # drops a line rank 0 is still writing

pytestmark = pytest.mark.ray
COMMON = ["--config", "configs/reward_tiny.yaml", "--set", "max_steps_per_epoch=6", "--set", "log_every=1"]


@pytest.fixture(scope="module")
def data(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("rw") / "ds"
    assert build(["--pairs", "120", "--out", str(out), "--set", "pairs_per_block=30", "--set", "splits=[0.8, 0.2, 0.0]"]) == 0
    return out


def read_metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def train_workers():
    return [p for p in psutil.process_iter(["cmdline"]) if any("RayTrainWorker" in c for c in (p.info["cmdline"] or []))]


@pytest.mark.slow  # the chaos tier (make chaos-test): two epochs and a restarted worker group, ~130 s on 2 cores
def test_killed_worker_resumes_from_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", train(
        COMMON + ["--data", str(data), "--out", str(run), "--set", "epochs=2"])))
    t.start()
    ckpts = run / "ray_results" / "train_reward"
    deadline = time.time() + 400

    def in_epoch_1():  # a checkpoint, and rank 0 has logged steps after it: the restart must not log them twice
        return list(ckpts.glob("checkpoint_*")) and (run / "metrics.jsonl").exists() and any(
            r["step"] > 7 for r in metrics_rows(run / "metrics.jsonl") if "loss/reward" in r)

    while time.time() < deadline and not in_epoch_1():
        time.sleep(0.2)
    assert list(ckpts.glob("checkpoint_*")), "no checkpoint after epoch 0"
    victims = train_workers()
    assert victims, "no training worker process to kill"
    os.kill(victims[0].pid, signal.SIGKILL)
    killed_at = time.time()
    t.join(timeout=600)
    assert result.get("rc") == 0
    vals = [r for r in read_metrics(run) if "val/accuracy" in r]
    assert [r["epoch"] for r in vals][-1] == 1  # the second epoch ran after the kill
    steps = [r["step"] for r in read_metrics(run) if "loss/reward" in r]
    assert steps == list(range(1, 13)), steps  # every step logged once: the redone ones replaced, not duplicated
    assert (run / "final" / "adapter_model.safetensors").exists()
    assert killed_at < (run / "final").stat().st_mtime


def test_resume_continues_and_adapter_loads_in_stock_peft(data, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import Qwen2_5_VLModel

    from spatialrl.models.loader import resolve_model_path

    run = tmp_path / "run"
    assert train(COMMON + ["--data", str(data), "--out", str(run), "--set", "epochs=1"]) == 0
    first = read_metrics(run)
    first_adapter = load_file(run / "final" / "adapter_model.safetensors")
    # the same command again gives the same adapter to the bit: every rank gets the same pairs in the same order
    # (the ingest keeps the preprocessing actors' order; without it which actor finished first decided)
    again = tmp_path / "again"
    assert train(COMMON + ["--data", str(data), "--out", str(again), "--set", "epochs=1"]) == 0
    second_adapter = load_file(again / "final" / "adapter_model.safetensors")
    assert first_adapter.keys() == second_adapter.keys()
    assert all(torch.equal(first_adapter[k], second_adapter[k]) for k in first_adapter)
    assert any(v.abs().sum() > 0 for k, v in first_adapter.items() if "lora_B" in k)  # it trained
    assert train(COMMON + ["--data", str(data), "--out", str(run), "--set", "epochs=2"]) == 2  # refuses to clobber
    assert train(COMMON + ["--data", str(data), "--out", str(run), "--set", "epochs=2", "--resume"]) == 0
    rows = read_metrics(run)
    vals = [r for r in rows if "val/accuracy" in r]
    assert [r["epoch"] for r in vals] == [0, 1]  # epoch 0 was not redone
    steps = [r["step"] for r in rows if "loss/reward" in r]
    assert steps == sorted(steps) and steps[-1] == 12  # the step count continued from the checkpoint
    losses = [r["loss/reward"] for r in rows if "loss/reward" in r]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # the loss falls
    assert len(first) < len(rows)
    final = run / "final"
    base = Qwen2_5_VLModel.from_pretrained(resolve_model_path("tiny", "qwen"))
    peft_model = PeftModel.from_pretrained(base, str(final))
    saved = load_file(final / "adapter_model.safetensors")
    lora = {k: v for k, v in peft_model.state_dict().items() if "lora_" in k}
    assert len(lora) == len(saved) > 0
    for k, v in saved.items():
        match = [name for name in lora if name.replace(".default", "").endswith(k.split("base_model.model.", 1)[-1])]
        assert match and torch.equal(lora[match[0]], v), k
    assert (run / "training_curves.png").stat().st_size > 1000
