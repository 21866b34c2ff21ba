"""Every preset in configs/ resolves and validates through its job's `--dry-run` (which writes nothing)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from spatialrl.config import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))
JOB_OF = {"backbone": "pretrain_backbone", "dataset": "build_dataset", "generator": "pretrain_generator",
          "grpo": "grpo", "reward": "train_reward", "serve": "serve_reward"}


def test_every_preset_has_a_job():
    assert CONFIGS, "no presets found"
    for path in CONFIGS:
        assert path.stem.split("_")[0] in JOB_OF, f"{path.name}: which job reads it? add it to JOB_OF"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_preset_dry_runs(path: Path, tmp_path, capsys):
    job = importlib.import_module(f"jobs.{JOB_OF[path.stem.split('_')[0]]}")
    argv = ["--config", str(path), "--dry-run"]
    if job.__name__ == "jobs.grpo":  # the presets leave the prompt file and the reward checkpoint to the user
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text('{"prompt": "a red circle left of a blue square"}\n')
        argv += ["--out", str(tmp_path / "run"), "--set", f"data.prompts={prompts}",
                 "--set", f"reward.checkpoint={tmp_path / 'rm'}"]
    if job.__name__ == "jobs.serve_reward":
        argv += ["--checkpoint", str(tmp_path / "rm")]
    if path.stem == "backbone_curriculum":  # a stage plan, read by the job's curriculum recipe
        argv = ["--recipe", "curriculum", "--plan", str(path), "--dry-run"]
    assert job.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.strip(), "--dry-run printed no resolved config"
    assert not any(tmp_path.iterdir()) or job.__name__ == "jobs.grpo" and not (tmp_path / "run").exists()


JOBS = sorted(p.stem for p in (REPO_ROOT / "jobs").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", JOBS)
def test_every_job_has_the_common_surface(name, capsys):
    """--config, --set and --dry-run on every job (one job surface, spatialrl.config.add_config_args)."""
    job = importlib.import_module(f"jobs.{name}")
    with pytest.raises(SystemExit) as exc:
        job.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config", "--set", "--dry-run"):
        assert flag in text, f"jobs.{name} --help lacks {flag}"
