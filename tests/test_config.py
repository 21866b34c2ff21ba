"""Unit tier: typed configs, YAML presets, dotted overrides, clear errors, --dry-run."""

import re
from pathlib import Path

import pytest

from jobs.build_dataset import BuildDatasetConfig, main
from spatialrl.config import ConfigError, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]


def test_defaults_yaml_and_overrides_stack():
    cfg = load_config(BuildDatasetConfig, "configs/dataset_easy.yaml", ["world.max_objects=3", "pairs=10", "splits=[0.8, 0.1, 0.1]"])
    assert cfg.world.canvas == 64 and cfg.world.max_objects == 3 and cfg.pairs == 10
    assert cfg.splits == [0.8, 0.1, 0.1]
    assert cfg.world.position_margin == 0.08  # from the YAML
    assert cfg.world.size_ratio == 1.4  # a dataclass default the YAML leaves alone


def test_a_preset_mapping_replaces_the_default_mapping():
    cfg = load_config(BuildDatasetConfig, "configs/dataset_easy.yaml")
    assert cfg.world.sizes == {"medium": 0.26, "large": 0.32}  # no "small" left over from the defaults


def test_override_values_are_yaml():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("novalue")


@pytest.mark.parametrize("override,match", [
    ("world.max_object=3", r"unknown config key\(s\) \['world.max_object'\]"),
    ("pairs=many", "pairs: expected an integer"),
    ("world.canvas=100", "multiple of 16"),
    ("world.max_objects=12", "exceeds the 10 colours"),
    ("splits=[0.5, 0.5]", "three non-negative fractions"),
    ("on_bad_row=ignore", "not one of"),
    ("world.relation_types=[left_of, inside]", "inside"),
])
def test_bad_config_names_the_key_and_the_fix(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(BuildDatasetConfig, None, [override])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(BuildDatasetConfig, "configs/nope.yaml")


def test_dry_run_prints_the_resolved_config(capsys):
    assert main(["--config", "configs/dataset_easy.yaml", "--pairs", "12", "--set", "world.gap=0.06", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pairs: 12" in out and "gap: 0.06" in out and "canvas: 64" in out


def test_bad_override_exits_2(capsys):
    assert main(["--set", "world.canvas=7", "--dry-run"]) == 2
    assert "world.canvas=7" in capsys.readouterr().err


@pytest.mark.parametrize("override, match", [
    ("lr=-1", r"lr=-1\.0: use a learning rate in \(0, 1\)"),
    ("reader.image_size=140", "reader.image_size=140"),
    ("workers=0", "workers, batch_size and epochs must be >= 1"),
])
def test_train_reward_rejects_bad_values_before_starting_ray(override, match, capsys):
    from jobs.train_reward import main as train_reward

    assert train_reward(["--config", "configs/reward_tiny.yaml", "--data", "/nowhere", "--out", "/tmp/never",
                         "--set", override]) == 2
    assert re.search(match, capsys.readouterr().err)


def test_driver_runtime_env_merges_with_a_submitted_jobs_env():
    """Under `ray job submit --runtime-env-json ...` the job's own env_vars win: keys it sets are left out of
    the driver's runtime_env (Ray refuses a conflict otherwise); the project's variables are forwarded."""
    import json

    from cluster.runtime import JOB_CONFIG_ENV, driver_runtime_env

    base = {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "2", "SPATIALRL_MODELS": "/models", "HF_HOME": ""}
    env = driver_runtime_env(base)["env_vars"]
    assert env == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "2",
                   "SPATIALRL_MODELS": "/models"}  # an empty HF_HOME is not forwarded
    job = {"runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1", "SPATIALRL_MODELS": "/other"}}}
    env = driver_runtime_env({**base, JOB_CONFIG_ENV: json.dumps(job)})["env_vars"]
    assert "HF_HUB_OFFLINE" not in env and "SPATIALRL_MODELS" not in env and env["TRANSFORMERS_OFFLINE"] == "1"
    everything = {"runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}}}
    assert driver_runtime_env({JOB_CONFIG_ENV: json.dumps(everything)}) == {}


def test_train_reward_makes_a_relative_backbone_folder_absolute(tmp_path, monkeypatch):
    # Ray Train's workers start in their own trial folder, where a folder named relative to the user's shell is
    # not found (a run failed that way); the driver resolves it before anything is sent to them.
    from spatialrl.reward.training import TrainRewardConfig

    (tmp_path / "my_backbone").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TrainRewardConfig, str(REPO / "configs" / "reward_tiny.yaml"),
                      ["model.backbone=my_backbone", "reader.processor=my_backbone"])
    cfg.validate()
    assert cfg.model.backbone == cfg.reader.processor == str(tmp_path / "my_backbone")
    cfg = load_config(TrainRewardConfig, str(REPO / "configs" / "reward_tiny.yaml"), [])
    preset = cfg.model.backbone
    cfg.validate()
    assert cfg.model.backbone == preset  # a preset name is not a folder here: left as it is
