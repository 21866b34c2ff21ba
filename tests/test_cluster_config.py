"""ray_cluster.yaml as written: Ray's own validation, the project's environment, token auth, loopback dashboard,
and a node type for every custom resource the GRPO presets request."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_ray_cluster_yaml_is_valid_and_safe():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(dict(raw)))
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    for cmd in starts:
        assert cmd.startswith("RAY_AUTH_MODE=token ~/spatialrl/.venv/bin/ray "), cmd  # the project's ray, token on
    head = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert raw["file_mounts"]["~/spatialrl"] == "." and "~/.ray/auth_token" in raw["file_mounts"]
    assert any("scripts/setup_env.sh" in c for c in raw["setup_commands"])
    assert "example.invalid" not in (ROOT / "ray_cluster.yaml").read_text() and "|| true" not in str(raw)


def test_every_custom_resource_of_the_gpu_preset_has_a_node_type():
    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    offered = {k for t in raw["available_node_types"].values() for k in t["resources"]}
    preset = yaml.safe_load((ROOT / "configs/grpo_flux_dev.yaml").read_text())
    for role in ("sampler", "reward", "learner"):
        wanted = preset["cluster"][role].get("resources", {})
        assert wanted and set(wanted) <= offered, (role, wanted, offered)
        assert preset["cluster"][role]["num_gpus"] > 0
