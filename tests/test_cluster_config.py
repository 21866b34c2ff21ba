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


def test_grafana_dashboard_queries_series_the_code_emits():
    """Every panel queries a ray_spatialrl_* series whose key the code logs (through spatialrl.metrics)."""
    import json
    import re

    from spatialrl.metrics import gauge_name

    dash = json.loads((ROOT / "cluster/grafana/spatialrl.json").read_text())
    source = "".join(p.read_text() for d in ("spatialrl", "jobs", "actors") for p in (ROOT / d).rglob("*.py"))
    logged = set(re.findall(r'"([a-z]+/[a-z_/0-9]+)"', source))
    emitted = {"ray_" + gauge_name(k) for k in logged}
    titles = [p["title"] for p in dash["panels"]]
    for want in ("reward", "Verifier", "Top-k", "ratio", "Images per second", "Reward training", "latency", "staleness"):
        assert any(want.lower() in t.lower() for t in titles), want
    for panel in dash["panels"]:
        for target in panel["targets"]:
            for series in re.findall(r"ray_spatialrl_[a-z_0-9]+", target["expr"]):
                base = re.sub(r"_(total|bucket|sum|count)$", "", series)
                assert base in emitted, (panel["title"], series)
