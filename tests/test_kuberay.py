"""cluster/kuberay manifests: parsed, and checked for the fields the KubeRay v1 CRDs require and for ours
(token auth in every container, the custom resources the GPU preset requests, jobs and configs that exist)."""

import json
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "cluster/kuberay"


def containers(template):
    spec = template["spec"]
    assert spec["containers"], "a pod template needs at least one container"
    return spec["containers"]


def check_string_map(params, where):
    # RayStartParams is map[string]string in the CRD: a bare number or bool is rejected by the API server
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()), where


def test_raycluster_has_the_crd_fields_and_a_group_per_role():
    docs = list(yaml.safe_load_all((KUBE / "raycluster.yaml").read_text()))
    assert len(docs) == 1
    rc = docs[0]
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster" and rc["metadata"]["name"]
    head = rc["spec"]["headGroupSpec"]
    check_string_map(head["rayStartParams"], "head")
    all_containers = list(containers(head["template"]))
    offered = {}
    for group in rc["spec"]["workerGroupSpecs"]:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        check_string_map(group["rayStartParams"], group["groupName"])
        if "resources" in group["rayStartParams"]:
            offered.update(json.loads(json.loads(group["rayStartParams"]["resources"])))
        all_containers += containers(group["template"])
    for c in all_containers:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "auth_token"
        assert {"name": "shared", "mountPath": "/shared"} in c["volumeMounts"]
    preset = yaml.safe_load((ROOT / "configs/grpo_flux_dev.yaml").read_text())
    for role in ("sampler", "reward", "learner"):
        assert set(preset["cluster"][role]["resources"]) <= set(offered), role


def test_rayjobs_point_at_the_cluster_and_at_real_jobs_and_configs():
    cluster_name = yaml.safe_load((KUBE / "raycluster.yaml").read_text())["metadata"]["name"]
    jobs = list(yaml.safe_load_all((KUBE / "rayjob.yaml").read_text()))
    assert {j["metadata"]["name"] for j in jobs} == {"spatialrl-train-reward", "spatialrl-grpo"}
    for job in jobs:
        assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
        spec = job["spec"]
        assert spec["clusterSelector"]["ray.io/cluster"] == cluster_name
        yaml.safe_load(spec["runtimeEnvYAML"])  # a string holding YAML, as the CRD wants
        words = shlex.split(spec["entrypoint"])
        assert words[:2] == ["python", "-m"] and (ROOT / (words[2].replace(".", "/") + ".py")).is_file()
        config = words[words.index("--config") + 1]
        assert (ROOT / config).is_file(), config
        env = {e["name"] for e in containers(spec["submitterPodTemplate"])[0]["env"]}
        assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= env
