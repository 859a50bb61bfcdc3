"""The chart's defaults a security review asked for (issue 17, finding 10), rendered with helm: every
container without a user site (HOME=/tmp is writable), bounded /tmp and resources for workers,
NetworkPolicies that admit only the probe and metrics ports, the worker admission policy on. And the
HTTP server (issue 20): off by default; when on, the same restricted pod, a policy admitting only its
API port with egress only to the apiserver and DNS, and a ServiceAccount that no binding names."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from kubestep_dev.locations import find_binary

CHART = Path(__file__).resolve().parents[2] / "charts" / "kubestep"
WORKERS = ["--set", "workers[0].name=ex", "--set", "workers[0].module=m", "--set", "workers[1].name=big"]
WORKERS += ["--set", "workers[1].module=m", "--set", "workers[1].tmpSizeLimit=2Gi"]
WORKERS += ["--set", "workers[1].resources.limits.memory=4Gi"]


def render(*values: str) -> list[dict[str, Any]]:
    args = [str(find_binary("helm")), "template", "r", str(CHART), "--namespace", "ks", *WORKERS, *values]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"}


def test_no_container_loads_a_user_site() -> None:
    pods = deployments(render("--set", "server.enabled=true"))
    assert "r-kubestep-server" in pods
    for name, pod in pods.items():
        for c in pod["containers"]:
            assert {"name": "PYTHONNOUSERSITE", "value": "1"} in c["env"], name
    assert "PYTHONNOUSERSITE=1" in (CHART.parents[1] / "Dockerfile").read_text()


def test_workers_get_bounded_tmp_and_resources_unless_they_say_otherwise() -> None:
    pods = deployments(render())
    ex, big = pods["r-kubestep-worker-ex"], pods["r-kubestep-worker-big"]
    assert ex["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    assert ex["containers"][0]["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": "1Gi"},
    }
    assert big["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}]
    assert big["containers"][0]["resources"] == {"limits": {"memory": "4Gi"}}


def test_network_policies_admit_only_the_probe_and_metrics_ports() -> None:
    for values, ports in (([], {8080}), (["--set", "metrics.enabled=true"], {8080, 9090})):
        policies = [d for d in render(*values) if d["kind"] == "NetworkPolicy"]
        assert {p["metadata"]["name"] for p in policies} == {"r-kubestep-operator", "r-kubestep-workers"}
        for p in policies:
            assert p["spec"]["policyTypes"] == ["Ingress"]
            (rule,) = p["spec"]["ingress"]
            assert {port["port"] for port in rule["ports"]} == ports, p
    assert not [d for d in render("--set", "networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"]


def test_the_worker_admission_policy_is_on_by_default_and_names_only_the_workers() -> None:
    (policy,) = [d for d in render() if d["kind"] == "ValidatingAdmissionPolicy"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    (match,) = policy["spec"]["matchConditions"]
    assert match["expression"] == 'request.userInfo.username in ["system:serviceaccount:ks:r-kubestep-worker"]'
    assert not [d for d in render("--set", "workerAdmission.enabled=false") if d["kind"] == "ValidatingAdmissionPolicy"]


def test_every_pod_is_restricted_the_server_too() -> None:
    pods = deployments(render("--set", "server.enabled=true"))
    assert sorted(pods) == ["r-kubestep-operator", "r-kubestep-server", "r-kubestep-worker-big", "r-kubestep-worker-ex"]
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert "privileged" not in sc and not c.get("volumeDevices"), name
            assert c["resources"].get("limits", {}).get("memory"), name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        assert all(set(v) <= {"name", "emptyDir"} for v in pod["volumes"]), name  # no hostPath


def test_the_server_is_off_by_default_and_its_policy_admits_only_its_port_and_reaches_only_the_apiserver() -> None:
    assert not [d for d in render() if "server" in d["metadata"]["name"]]
    docs = render("--set", "server.enabled=true")
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "r-kubestep-server"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    ports = [{(p["port"], p["protocol"]) for p in r["ports"]} for r in policy["spec"]["egress"]]
    assert ports == [{(443, "TCP"), (6443, "TCP")}, {(53, "UDP"), (53, "TCP")}]
    # Its ServiceAccount is bound only to read runs, for its cache: it writes with each caller's token.
    bound = [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for s in d.get("subjects") or []
        if s.get("name") == "r-kubestep-server"
    ]
    assert bound == ["r-kubestep-server-cache"]
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole") and "server" in d["metadata"]["name"]]
    assert [r["rules"] for r in roles] == [
        [{"apiGroups": ["kubestep.io"], "resources": ["workflowexecutions"], "verbs": ["get", "list", "watch"]}]
    ]
