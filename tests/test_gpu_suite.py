"""bench/gpu_suite.sh in its CPU dry mode: the code path the first GPU run takes, at tiny shapes (default tier:
the gpu test tier, sampler, reward and learner parts, about 40 s on 2 loaded cores; the GRPO-on-one-device part
and the compiled paths in the slow test). Plus the rules that make it fail loudly instead of skipping.
Run: .venv/bin/python -m pytest tests/test_gpu_suite.py -q
"""

from __future__ import annotations

import json
import subprocess

import pytest

from bench import gpu_suite
from spatialrl.config import REPO_ROOT


def run_suite(out, *extra) -> tuple[int, dict, str, str]:
    proc = subprocess.run(["bash", "bench/gpu_suite.sh", "--cpu-dry-run", "--out", str(out), *extra], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=900)
    result = json.loads((out / "gpu_suite.json").read_text()) if (out / "gpu_suite.json").is_file() else {}
    md = (out / "gpu_suite.md").read_text() if (out / "gpu_suite.md").is_file() else ""
    return proc.returncode, result, md, proc.stderr[-3000:]


def test_dry_run_measures_every_role_against_the_plain_stack(tmp_path):
    before = (REPO_ROOT / "bench" / "RESULTS.md").read_text()
    rc, result, md, err = run_suite(tmp_path, "--only", "tests,sampler,reward,learner", "--no-compile")
    assert rc == 0, err
    parts = result["parts"]
    assert result["dry_run"] and set(parts) == {"tests", "sampler", "reward", "learner"}
    assert all(p["ok"] for p in parts.values())
    assert parts["tests"]["tests"] == parts["tests"]["skipped"] >= 3  # no CUDA here: the gpu tier skips
    paths = {r["path"] for p in parts.values() for r in p.get("rows", [])}
    assert {"stock FluxPipeline.__call__", "FluxSampler ODE", "FluxSampler SDE + log-probs"} <= paths
    for part in ("sampler", "reward", "learner"):
        rows = parts[part]["rows"]
        assert len(rows) >= 2 and all(r["value"] > 0 for r in rows)
        assert [r["vs_plain"] for r in rows][0] == 1.0  # the plain path is the reference of its role
    assert all(0 < r["mfu"] < 1 for r in parts["sampler"]["rows"])
    assert "max dev 0," in parts["sampler"]["check"]  # fp32: the ODE path is the stock pipeline exactly
    assert "ratio max |r - 1| = 0" in parts["learner"]["check"]
    assert "| sampler | FluxSampler SDE + log-probs |" in md and "CPU dry run" in md
    assert (REPO_ROOT / "bench" / "RESULTS.md").read_text() == before  # only a GPU run appends


@pytest.mark.slow
def test_dry_run_with_the_grpo_step_and_the_compiled_paths(tmp_path):
    rc, result, md, err = run_suite(tmp_path, "--only", "sampler,learner,grpo", "--compile-learner")
    assert rc == 0, err
    parts = result["parts"]
    assert any("compiled" in r["path"] for r in parts["sampler"]["rows"])
    assert "ratio max |r - 1| = 0" in parts["learner"]["check"]  # compiled learner, compiled sampler path
    (grpo,) = parts["grpo"]["rows"]
    assert grpo["unit"] == "s/step" and grpo["value"] > 0 and grpo["busy"] is None  # no GPU to sample


def test_a_failing_part_fails_the_run_and_says_so(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_suite, "part_reward", broken)
    assert gpu_suite.main(["--cpu-dry-run", "--only", "reward", "--out", str(tmp_path)]) == 1
    md = (tmp_path / "gpu_suite.md").read_text()
    assert "| reward | FAILED: RuntimeError: CUDA error: an illegal memory access" in md
    assert "FAILED parts: ['reward']" in capsys.readouterr().err


def test_gpu_tier_counts_a_skip_as_a_failure_when_cuda_is_present():
    ran = {"tests": 3, "failures": 0, "errors": 0, "skipped": 0}
    skipped = {**ran, "skipped": 3}
    assert gpu_suite.tier_ok(0, ran, cuda=True) and gpu_suite.tier_ok(0, skipped, cuda=False)
    assert not gpu_suite.tier_ok(0, skipped, cuda=True)
    assert not gpu_suite.tier_ok(1, {**ran, "failures": 1}, cuda=True)
    assert not gpu_suite.tier_ok(5, {**ran, "tests": 0}, cuda=False)  # nothing collected is not a pass


def test_without_cuda_the_gpu_mode_refuses_and_names_the_dry_run(tmp_path, capsys):
    assert gpu_suite.main(["--out", str(tmp_path)]) == 2
    assert "--cpu-dry-run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_suite.main(["--cpu-dry-run", "--only", "sampler,bogus", "--out", str(tmp_path)])


def test_gpu_tier_runs_without_pytest_on_a_bare_image(tmp_path):
    """GPU images may lack pytest: the suite then calls the tier's test functions itself (here: all skipped)."""
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'pytest':\n"
            "            raise ImportError('blocked: ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from bench import gpu_suite\n"
            f"res = gpu_suite.part_tests(True, __import__('pathlib').Path({str(tmp_path)!r}))\n"
            "print(res['ok'], res['tests'], res['skipped'], res['check'])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[:3] == ["True", "3", "3"] and "without pytest" in out.stdout
