"""The Helm chart (charts/kubestep) against the real API server.

* ``helm lint`` is clean; the chart's CRD is the top-level CRD, byte for byte.
* The rendered chart passes ``kubectl apply --dry-run=server``.
* Every pod the chart creates passes Pod Security "restricted" admission, in
  a namespace that enforces it (and that namespace really rejects a
  non-compliant pod).
* ``helm install`` creates what it should, and the RBAC it creates gives the
  operator and the workers exactly the access the code needs (a matrix of
  ``kubectl auth can-i`` by impersonation).
* The operator and a worker, as processes authenticated with the chart's
  service accounts' own tokens (not as admin), run a workflow to completion
  and cancel one.
* The HTTP server (``server.enabled``, off by default): a Deployment, a
  ClusterIP Service, a NetworkPolicy and a ServiceAccount that no binding
  names (it acts with each caller's token), under restricted Pod Security.

Namespaces here are ``chart-*``: the session operator of test_lifecycle.py
watches ``t-*`` and must not touch the runs of these tests.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

import kubestep
from kubestep import _protocol as api
from kubestep_dev.locations import find_binary

from .harness import start_operator, start_worker, wait_until
from .security import tokens

if TYPE_CHECKING:
    from .conftest import Cluster

pytestmark = pytest.mark.cluster

REPO_ROOT = Path(__file__).resolve().parents[1]
CHART = REPO_ROOT / "charts" / "kubestep"
KIND_VALUES = CHART / "ci" / "kind-values.yaml"
RELEASE = "kubestep"
_DENIED = re.compile(r"(?<![\d,.])403(?!\d)")  # an HTTP status in a log line
OPERATOR_SA = "kubestep-operator"
WORKER_SA = "kubestep-worker"
SERVER_SA = "kubestep-server"
# The kind values (a worker serving kubestep.examples, 2 s leases) with an
# image that is never pulled: here no kubelet runs pods anyway, and on a real
# cluster (KUBESTEP_TEST_KUBECONFIG) these test releases must not start a
# second operator next to the one under test. With the HTTP server, so that
# its pod is judged by restricted Pod Security and its ServiceAccount by the
# RBAC matrix like the others'.
INSTALL_VALUES = [
    "-f",
    str(KIND_VALUES),
    "--set",
    "image.repository=kubestep-chart-test-never-pulled",
    "--set",
    "image.pullPolicy=Never",
    "--set",
    "podDisruptionBudget.enabled=true",
    "--set",
    "server.enabled=true",
]
# The server with every networkPolicy knob turned, in a namespace of its own.
# The Postgres step store, its DSN in a Secret of the user's (docs/install.md).
POSTGRES_VALUES = ["--set", "stepStore=postgres,postgres.existingSecret=kubestep-pg,postgres.secretKey=url"]
SERVER_VALUES = [
    *("--set", "server.enabled=true", "--set", "server.namespace=runs", "--set", "server.verbose=true"),
    *("--set", "server.serviceAccount.annotations.team=ops", "--set", "server.service.annotations.team=ops"),
    "--set-json",
    'server.networkPolicy.from=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"ingress"}}},'
    '{"podSelector":{"matchLabels":{"app":"ui-proxy"}}}]',
    "--set-json",
    'server.networkPolicy.apiServer={"ports":[6443],"cidrs":["10.77.0.1/32"]}',
]
# flowControl.extraSubjects naming one of each kind, as docs/install.md shows.
EXTRA_SUBJECTS = [
    {"kind": "ServiceAccount", "serviceAccount": {"name": "ci-bot", "namespace": "ci"}},
    {"kind": "Group", "group": {"name": "oncall"}},
    {"kind": "User", "user": {"name": "alice@example.com"}},
]
EXTRA_SUBJECTS_VALUES = ["--set-json", f"flowControl.extraSubjects={json.dumps(EXTRA_SUBJECTS)}"]


# ----- helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> Path:
    """The helm binary (`make tools` builds the pinned one); missing is a failure, not a skip."""
    return find_binary("helm")


def run(args: list[str | Path], *, input: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run([str(a) for a in args], input=input, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def render(helm: Path, namespace: str, *values: str, include_crds: bool = False) -> list[dict[str, Any]]:
    args: list[str | Path] = [helm, "template", RELEASE, CHART, "--namespace", namespace, *values]
    if include_crds:
        args.append("--include-crds")
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def create_namespace(cluster: Cluster, prefix: str = "chart", labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    if labels:
        cluster.kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in labels.items()))
    return name


def delete_namespace(cluster: Cluster, name: str) -> None:
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture(scope="module")
def release(control_plane: Cluster, helm: Path) -> Iterator[str]:
    """The chart installed (namespaced mode) into a fresh namespace enforcing Pod Security "restricted"."""
    ns = create_namespace(control_plane, "chart", RESTRICTED)
    try:
        run(
            [
                helm,
                "install",
                RELEASE,
                CHART,
                "--kubeconfig",
                control_plane.kubeconfig,
                "--namespace",
                ns,
                *INSTALL_VALUES,
            ]
        )
        yield ns
    finally:
        subprocess.run(
            [str(helm), "uninstall", RELEASE, "--kubeconfig", str(control_plane.kubeconfig), "--namespace", ns],
            capture_output=True,
            timeout=120,
        )
        delete_namespace(control_plane, ns)


@pytest.fixture(scope="module")
def clusterwide_release(control_plane: Cluster, helm: Path) -> Iterator[str]:
    """The chart installed with watchAllNamespaces=true (ClusterRole + ClusterRoleBinding)."""
    ns = create_namespace(control_plane, "chart-cw", RESTRICTED)
    try:
        run(
            [
                helm,
                "install",
                RELEASE,
                CHART,
                "--kubeconfig",
                control_plane.kubeconfig,
                "--namespace",
                ns,
                *INSTALL_VALUES,
                "--set",
                "watchAllNamespaces=true",
            ]
        )
        yield ns
    finally:
        subprocess.run(
            [str(helm), "uninstall", RELEASE, "--kubeconfig", str(control_plane.kubeconfig), "--namespace", ns],
            capture_output=True,
            timeout=120,
        )
        delete_namespace(control_plane, ns)


# ----- lint, CRD copy, server-side dry run ---------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        pytest.param([], id="defaults"),
        pytest.param(["-f", str(KIND_VALUES)], id="kind-values"),
        pytest.param(["-f", str(CHART / "ci" / "node-values.yaml")], id="node-values"),
        pytest.param(["--set", "watchAllNamespaces=true"], id="all-namespaces"),
        pytest.param(
            [
                "-f",
                str(KIND_VALUES),
                "--set",
                "watchNamespaces={a,b}",
                "--set",
                "workers[0].name=examples,workers[0].module=kubestep.examples,workers[0].namespace=b",
                "--set",
                "podDisruptionBudget.enabled=true",
                "--set",
                "metrics.enabled=true",
            ],
            id="watch-namespaces",
        ),
        pytest.param(["--set", "cancelAudit.enabled=true", "--set", "cancelGracePeriodSeconds=0"], id="cancel-audit"),
        pytest.param([*EXTRA_SUBJECTS_VALUES, "--set", "flowControl.controlShares=20"], id="flow-extra-subjects"),
        pytest.param(["--set", "flowControl.enabled=false"], id="no-flow-control"),
        pytest.param(["--set", "server.enabled=true"], id="server"),
        pytest.param(SERVER_VALUES, id="server-network-policy"),
        pytest.param(["--set", "server.enabled=true", "--set", "networkPolicy.enabled=false"], id="server-no-policy"),
        pytest.param(["-f", str(KIND_VALUES), *POSTGRES_VALUES], id="postgres-store"),
        pytest.param(["-f", str(KIND_VALUES), *POSTGRES_VALUES, "--set", "server.enabled=true"], id="postgres-server"),
    ],
)
def test_helm_lint_is_clean(helm: Path, values: list[str]) -> None:
    out = run([helm, "lint", "--strict", CHART, *values])
    assert "[WARNING]" not in out and "[ERROR]" not in out, out
    assert "0 chart(s) failed" in out, out


def test_chart_refuses_a_worker_in_an_unwatched_namespace(helm: Path) -> None:
    proc = subprocess.run(
        [
            str(helm),
            "template",
            RELEASE,
            str(CHART),
            "--namespace",
            "ns",
            "--set",
            "workers[0].name=w,workers[0].module=m,workers[0].namespace=elsewhere",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "does not watch" in proc.stderr, proc.stderr


def _worker_env(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-worker-examples")
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: list[dict[str, Any]] = container["env"]
    return env


def test_the_postgres_store_gives_workers_the_dsn_from_the_secret_and_batch_gives_nothing(helm: Path) -> None:
    env = {e["name"]: e for e in _worker_env(render(helm, "ns", "-f", str(KIND_VALUES), *POSTGRES_VALUES))}
    assert env["KUBESTEP_STEP_STORE"]["value"] == "postgres"
    dsn = env["KUBESTEP_POSTGRES_DSN"]
    assert dsn["valueFrom"] == {"secretKeyRef": {"name": "kubestep-pg", "key": "url"}} and "value" not in dsn
    assert env["KUBESTEP_POSTGRES_RETENTION_DAYS"]["value"] == "30"
    kept = {
        e["name"]
        for e in _worker_env(
            render(helm, "ns", "-f", str(KIND_VALUES), *POSTGRES_VALUES, "--set", "postgres.retentionDays=null")
        )
    }
    assert "KUBESTEP_POSTGRES_RETENTION_DAYS" not in kept
    default = {e["name"] for e in _worker_env(render(helm, "ns", "-f", str(KIND_VALUES)))}
    assert not default & {"KUBESTEP_STEP_STORE", "KUBESTEP_POSTGRES_DSN", "KUBESTEP_POSTGRES_RETENTION_DAYS"}


def test_the_postgres_store_gives_the_server_the_dsn_and_its_network_policy_the_database(helm: Path) -> None:
    def server(*values: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        docs = render(helm, "ns", "-f", str(KIND_VALUES), "--set", "server.enabled=true", *values)
        (deployment,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-server")]
        (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-server")]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e for e in container["env"]}, policy["spec"]["egress"]

    env, egress = server(
        *POSTGRES_VALUES, "--set-json", 'postgres.networkPolicy={"ports":[6432],"cidrs":["10.9.0.7/32"]}'
    )
    assert env["KUBESTEP_POSTGRES_DSN"]["valueFrom"] == {"secretKeyRef": {"name": "kubestep-pg", "key": "url"}}
    assert {"ports": [{"port": 6432, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.9.0.7/32"}}]} in egress
    env, egress = server()
    assert "KUBESTEP_POSTGRES_DSN" not in env
    assert not any(p["port"] in (5432, 6432) for rule in egress for p in rule["ports"]), egress


@pytest.mark.parametrize(
    ("values", "says"),
    [
        (["--set", "stepStore=postgres"], "needs postgres.existingSecret"),
        (["--set", "stepStore=etcd"], "must be one of"),
        ([*POSTGRES_VALUES, "--set", "postgres.retentionDays=0"], "retentionDays"),
    ],
)
def test_chart_refuses_a_step_store_it_cannot_run(helm: Path, values: list[str], says: str) -> None:
    proc = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "-f", str(KIND_VALUES), *values],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and says in proc.stderr, proc.stderr


def test_chart_refuses_one_port_for_a_workers_probes_and_metrics(helm: Path) -> None:
    proc = subprocess.run(
        [
            *(str(helm), "template", RELEASE, str(CHART)),
            *("--set", "workers[0].name=w,workers[0].module=m,metrics.enabled=true,metrics.port=8080"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "both 8080" in proc.stderr, proc.stderr


# ----- API Priority and Fairness: who the FlowSchemas match -----------------------------------------

# Subjects that take in clients who need no RBAC at all: APF classifies before it authorizes.
BROAD_GROUPS = {"*", "system:authenticated", "system:unauthenticated", "system:serviceaccounts"}


def _flow_objects(docs: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    levels = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PriorityLevelConfiguration"}
    return levels, [d for d in docs if d["kind"] == "FlowSchema"]


@pytest.mark.parametrize(
    ("values", "service_accounts", "worker_namespaces", "served", "extra"),
    [
        pytest.param([], (OPERATOR_SA, WORKER_SA), ["ns"], ["ns"], [], id="defaults"),
        pytest.param(["-f", str(KIND_VALUES)], (OPERATOR_SA, WORKER_SA), ["ns"], ["ns"], [], id="kind-values"),
        pytest.param(
            ["-f", str(KIND_VALUES), "--set", "watchAllNamespaces=true", *EXTRA_SUBJECTS_VALUES],
            (OPERATOR_SA, WORKER_SA),
            ["ns"],
            ["*"],
            EXTRA_SUBJECTS,
            id="all-namespaces-extra-subjects",
        ),
        pytest.param(
            [
                *("-f", str(KIND_VALUES), "--set", "watchNamespaces={ns,b}"),
                *("--set", "workers[1].name=other,workers[1].module=kubestep.examples,workers[1].namespace=b"),
                *("--set", "operator.serviceAccount.name=op,workerServiceAccount.name=wk"),
                *EXTRA_SUBJECTS_VALUES,
            ],
            ("op", "wk"),
            ["ns", "b"],
            ["ns", "b"],
            EXTRA_SUBJECTS,
            id="watch-namespaces-extra-subjects",
        ),
    ],
)
def test_flow_schemas_name_only_the_charts_subjects(
    helm: Path,
    values: list[str],
    service_accounts: tuple[str, str],
    worker_namespaces: list[str],
    served: list[str],
    extra: list[dict[str, Any]],
) -> None:
    """Every rendered FlowSchema names exact subjects (the chart's ServiceAccounts and extraSubjects),
    tells flows apart by user and sends them to a priority level the chart creates: never to a built-in
    level such as workload-high, and never for system:authenticated or a wildcard."""
    levels, schemas = _flow_objects(render(helm, "ns", *values))
    operator_sa, worker_sa = service_accounts
    allowed = [
        {"kind": "ServiceAccount", "serviceAccount": {"name": operator_sa, "namespace": "ns"}},
        *({"kind": "ServiceAccount", "serviceAccount": {"name": worker_sa, "namespace": n}} for n in worker_namespaces),
        *extra,
    ]
    assert sorted(levels) == ["ns-kubestep-control", "ns-kubestep-steps"]
    assert sorted(fs["metadata"]["name"] for fs in schemas) == ["ns-kubestep-control", "ns-kubestep-steps"]
    for level in levels.values():
        limited = level["spec"]["limited"]
        assert level["spec"]["type"] == "Limited" and limited["limitResponse"]["type"] == "Queue", level
        assert 1 <= limited["nominalConcurrencyShares"] <= 10 and limited["lendablePercent"] == 0, level
    seen = []
    for fs in schemas:
        spec = fs["spec"]
        assert spec["priorityLevelConfiguration"]["name"] == fs["metadata"]["name"] and fs["metadata"]["name"] in levels
        assert spec["distinguisherMethod"] == {"type": "ByUser"}, fs
        for rule in spec["rules"]:
            for subject in rule["subjects"]:
                assert subject in allowed, (fs["metadata"]["name"], subject)
                kind = subject["kind"]
                name = subject[{"User": "user", "Group": "group", "ServiceAccount": "serviceAccount"}[kind]]["name"]
                assert "*" not in name and not (kind == "Group" and name in BROAD_GROUPS), subject
                assert not name.startswith("system:serviceaccounts"), subject
                seen.append(subject)
    assert all(s in seen for s in allowed), (allowed, seen)
    # extraSubjects only write runs (cancels, events), and only in the namespaces the operator serves.
    control = next(fs for fs in schemas if fs["metadata"]["name"].endswith("-control"))
    extra_rules = [r for r in control["spec"]["rules"] if any(s in extra for s in r["subjects"])]
    if extra:
        assert extra_rules == [
            {
                "subjects": extra,
                "resourceRules": [
                    {
                        "verbs": ["patch", "update"],
                        "apiGroups": ["kubestep.io"],
                        "resources": ["workflowexecutions"],
                        "namespaces": served,
                    }
                ],
            }
        ]
    else:
        assert extra_rules == []


def test_flow_control_can_be_turned_off(helm: Path) -> None:
    levels, schemas = _flow_objects(render(helm, "ns", "--set", "flowControl.enabled=false"))
    assert levels == {} and schemas == []


@pytest.mark.parametrize(
    "subject",
    [
        {"kind": "Group", "group": {"name": "system:authenticated"}},
        {"kind": "Group", "group": {"name": "system:unauthenticated"}},
        {"kind": "Group", "group": {"name": "system:serviceaccounts"}},
        {"kind": "Group", "group": {"name": "system:serviceaccounts:team-a"}},
        {"kind": "Group", "group": {"name": "*"}},
        {"kind": "User", "user": {"name": "*"}},
        {"kind": "ServiceAccount", "serviceAccount": {"name": "*", "namespace": "ci"}},
        {"kind": "User", "user": {"name": ""}},
        {"kind": "Robot", "robot": {"name": "r2"}},
    ],
    ids=lambda s: json.dumps(s),
)
@pytest.mark.parametrize("schema", [True, False], ids=["schema", "template"])
def test_chart_refuses_broad_flow_subjects(helm: Path, subject: dict[str, Any], schema: bool) -> None:
    """The values schema refuses them, and so does the template when the schema is skipped."""
    args = [str(helm), "template", RELEASE, str(CHART), "--namespace", "ns"]
    args += ["--set-json", f"flowControl.extraSubjects={json.dumps([subject])}"]
    if not schema:
        args.append("--skip-schema-validation")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0, proc.stdout
    expected = "values don't meet the specifications of the schema" if schema else "flowControl.extraSubjects[0]"
    assert expected in proc.stderr, proc.stderr


def test_chart_crds_are_the_top_level_crds() -> None:
    for path in sorted((REPO_ROOT / "crds").iterdir()):
        copy = (CHART / "crds" / path.name).read_bytes()
        assert copy == path.read_bytes(), (
            f"charts/kubestep/crds/{path.name} drifted from crds/{path.name}: copy it again"
        )
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(p.name for p in (REPO_ROOT / "crds").iterdir())


@pytest.mark.parametrize("variant", ["defaults", "kind-values", "all-namespaces", "watch-namespaces", "server"])
def test_rendered_chart_passes_server_side_dry_run(control_plane: Cluster, helm: Path, variant: str) -> None:
    ns = create_namespace(control_plane, "chart-dry")
    other = create_namespace(control_plane, "chart-dry") if variant == "watch-namespaces" else None
    try:
        values = {
            "defaults": [],
            "kind-values": ["-f", str(KIND_VALUES), "--set", "podDisruptionBudget.enabled=true"],
            "all-namespaces": ["-f", str(KIND_VALUES), "--set", "watchAllNamespaces=true"],
            "watch-namespaces": [
                "-f",
                str(KIND_VALUES),
                "--set",
                f"watchNamespaces={{{ns},{other}}}",
                "--set",
                f"workers[1].name=other,workers[1].module=kubestep.examples,workers[1].namespace={other}",
                "--set",
                "metrics.enabled=true",
                *EXTRA_SUBJECTS_VALUES,
            ],
            "server": ["-f", str(KIND_VALUES), *SERVER_VALUES],
        }[variant]
        docs = render(helm, ns, *values, include_crds=True)
        kinds = sorted({d["kind"] for d in docs})
        assert {"CustomResourceDefinition", "Deployment", "ServiceAccount"} <= set(kinds), kinds
        # Every object names its namespace; server-side apply also handles the CRD the plane installed.
        out = control_plane.kubectl(
            "apply", "--server-side", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs)
        ).stdout
        assert out.count("(server dry run)") == len(docs), out
        server = {d["kind"] for d in docs if d["metadata"]["name"] == "kubestep-server"}
        assert server == (
            {"Deployment", "Service", "NetworkPolicy", "ServiceAccount"} if variant == "server" else set()
        )
        if variant == "server":
            cache = {(d["kind"], d["metadata"]["namespace"]) for d in docs if d["metadata"]["name"] == CACHE}
            assert {kind for kind, _ in cache} == {"Role", "RoleBinding"}, cache
        if variant == "watch-namespaces":
            roles = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "Role"}
            assert roles == {
                (ns, "kubestep-operator"),
                (ns, "kubestep-operator-leader-election"),
                (other, "kubestep-operator"),
                (ns, "kubestep-worker"),
                (other, "kubestep-worker"),
            }, roles
            # metrics.enabled: a Service per Deployment, in its namespace, aimed at a named port it has.
            services = {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs if d["kind"] == "Service"}
            assert set(services) == {
                (ns, "kubestep-operator-metrics"),
                (ns, "kubestep-worker-examples"),
                (other, "kubestep-worker-other"),
            }, set(services)
            for d in docs:
                if d["kind"] == "Deployment":
                    c = d["spec"]["template"]["spec"]["containers"][0]
                    assert "--metrics-port=9090" in c["args"]
                    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in c["ports"]
                    svc = services[
                        (
                            d["metadata"]["namespace"],
                            d["metadata"]["name"]
                            + ("-metrics" if d["metadata"]["name"] == "kubestep-operator" else ""),
                        )
                    ]
                    assert svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    finally:
        delete_namespace(control_plane, ns)
        if other:
            delete_namespace(control_plane, other)


# ----- Pod Security "restricted" --------------------------------------------------------------


def _bare_pod(deployment: dict[str, Any]) -> dict[str, Any]:
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"bare-{deployment['metadata']['name']}", "labels": {"chart-test": "bare"}},
        "spec": template["spec"],
    }


def test_every_pod_passes_restricted_pod_security(control_plane: Cluster, helm: Path, release: str) -> None:
    labels = json.loads(control_plane.kubectl("get", "namespace", release, "-o", "json").stdout)["metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted", labels

    deployments = [d for d in render(helm, release, *INSTALL_VALUES) if d["kind"] == "Deployment"]
    assert sorted(d["metadata"]["name"] for d in deployments) == [
        "kubestep-operator",
        "kubestep-server",
        "kubestep-worker-examples",
    ]
    for d in deployments:
        pod = _bare_pod(d)
        for c in pod["spec"]["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        assert pod["spec"]["securityContext"]["runAsUser"] == 10001
        assert pod["spec"]["automountServiceAccountToken"] is True
        # Admission judges the bare pod exactly as it would the ReplicaSet's.
        proc = control_plane.kubectl(
            "apply", "--dry-run=server", "-n", release, "-f", "-", input=json.dumps(pod), check=False
        )
        assert proc.returncode == 0 and "Warning" not in proc.stderr, (d["metadata"]["name"], proc.stderr)

    # And for real: the installed Deployments' ReplicaSets could create their pods
    # (the pods stay Pending here: no kubelet, no scheduler).
    def pods_created() -> dict[str, int]:
        counts: dict[str, int] = {}
        for d in deployments:
            selector = ",".join(f"{k}={v}" for k, v in d["spec"]["selector"]["matchLabels"].items())
            items = json.loads(
                control_plane.kubectl("get", "pods", "-n", release, "-l", selector, "-o", "json").stdout
            )["items"]
            counts[d["metadata"]["name"]] = len(items)
        return counts

    expected = {d["metadata"]["name"]: d["spec"]["replicas"] for d in deployments}
    deadline = time.monotonic() + 30
    while (counts := pods_created()) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    rs = control_plane.kubectl(
        "get", "rs", "-n", release, "-o", 'jsonpath={range .items[*]}{.metadata.name}: {.status.conditions}{"\\n"}{end}'
    ).stdout
    assert counts == expected, f"pods created {counts}, expected {expected}; ReplicaSets:\n{rs}"


@pytest.mark.parametrize("change", ["privileged", "root", "no-seccomp", "writable-escalation"])
def test_restricted_namespace_rejects_a_noncompliant_pod(
    control_plane: Cluster, helm: Path, release: str, change: str
) -> None:
    """Guard: admission in that namespace really judges (otherwise the test above proves nothing)."""
    worker = next(
        d
        for d in render(helm, release, *INSTALL_VALUES)
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "kubestep-worker-examples"
    )
    pod = _bare_pod(worker)
    pod["metadata"]["name"] = f"bad-{change}"
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    if change == "privileged":
        container["securityContext"].update(privileged=True, allowPrivilegeEscalation=True)
    elif change == "root":
        for sc in (spec["securityContext"], container["securityContext"]):
            sc.pop("runAsNonRoot", None)
            sc["runAsUser"] = 0
    elif change == "no-seccomp":
        spec["securityContext"].pop("seccompProfile")
        container["securityContext"].pop("seccompProfile")
    else:
        container["securityContext"]["allowPrivilegeEscalation"] = True
    proc = control_plane.kubectl(
        "apply", "--dry-run=server", "-n", release, "-f", "-", input=json.dumps(pod), check=False
    )
    assert proc.returncode != 0, proc.stdout
    assert "violates PodSecurity" in proc.stderr and '"restricted:latest"' in proc.stderr, proc.stderr


# ----- helm install ---------------------------------------------------------------------------


def _names(cluster: Cluster, kind: str, namespace: str | None = None) -> set[str]:
    args = ["get", kind, "-o", "json", "-l", f"app.kubernetes.io/instance={RELEASE}"]
    args += ["-n", namespace] if namespace else []
    return {i["metadata"]["name"] for i in json.loads(cluster.kubectl(*args).stdout)["items"]}


def test_helm_install_creates_the_release_objects(control_plane: Cluster, helm: Path, release: str) -> None:
    assert _names(control_plane, "deployments", release) == {
        "kubestep-operator",
        "kubestep-server",
        "kubestep-worker-examples",
    }
    assert _names(control_plane, "serviceaccounts", release) == {OPERATOR_SA, WORKER_SA, SERVER_SA}
    leader_role = f"{OPERATOR_SA}-leader-election"
    # The server's only one is its cache's (read runs); it writes with each caller's token.
    assert _names(control_plane, "roles", release) == {OPERATOR_SA, WORKER_SA, leader_role, CACHE}
    assert _names(control_plane, "rolebindings", release) == {OPERATOR_SA, WORKER_SA, leader_role, CACHE}
    assert _names(control_plane, "poddisruptionbudgets", release) == {"kubestep-worker-examples", "kubestep-operator"}
    assert _names(control_plane, "clusterroles") == set()  # least privilege: nothing cluster-scoped
    assert _names(control_plane, "clusterrolebindings") == set()

    op = json.loads(control_plane.kubectl("get", "deploy", "kubestep-operator", "-n", release, "-o", "json").stdout)
    # Two replicas with leader election: a rollout never takes the last one away.
    assert op["spec"]["replicas"] == 2 and op["spec"]["strategy"]["type"] == "RollingUpdate"
    assert op["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    c = op["spec"]["template"]["spec"]["containers"][0]
    assert c["args"] == [
        "operator",
        f"--namespace={release}",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--leader-elect",
        "--leader-election-id=kubestep-operator",
    ]
    op_env = {
        e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") or e.get("value") for e in c["env"]
    }
    assert op_env["POD_NAME"] == "metadata.name" and op_env["POD_NAMESPACE"] == "metadata.namespace"
    assert (op_env["KUBESTEP_LEADER_LEASE_SECONDS"], op_env["KUBESTEP_LEADER_RENEW_DEADLINE"]) == ("15", "10")
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health", "scheme": "HTTP"}, c[probe]
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    assert {"name": "KUBESTEP_LEASE_SECONDS", "value": "2"} in c["env"]
    assert {"name": "KUBESTEP_CANCEL_GRACE_SECONDS", "value": "30"} in c["env"]
    assert {"name": "KUBESTEP_CANCEL_AUDIT", "value": "false"} in c["env"]

    wk = json.loads(
        control_plane.kubectl("get", "deploy", "kubestep-worker-examples", "-n", release, "-o", "json").stdout
    )
    spec = wk["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == WORKER_SA
    c = spec["containers"][0]
    assert c["args"] == ["worker", "kubestep.examples", "--concurrency=10", "--health-port=8080"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health", "scheme": "HTTP"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health", "scheme": "HTTP"}
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") or e.get("value") for e in c["env"]}
    assert env == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "POD_UID": "metadata.uid",
        "KUBESTEP_LEASE_SECONDS": "2",
        "KUBESTEP_CANCEL_GRACE_SECONDS": "30",
        "KUBESTEP_CANCEL_AUDIT": "false",
        "PYTHONNOUSERSITE": "1",
    }, env

    notes = run([helm, "get", "notes", RELEASE, "--kubeconfig", control_plane.kubeconfig, "--namespace", release])
    assert f'kubectl -n {release} patch wfx my-run --type merge -p \'{{"spec":{{"cancelRequested":true}}}}\'' in notes
    assert f"kubectl -n {release} apply -f -" in notes


# ----- the HTTP server (server.enabled) --------------------------------------------------------

SERVER_KINDS = {"Deployment", "Service", "NetworkPolicy", "ServiceAccount", "Role", "RoleBinding"}
CACHE = "kubestep-server-cache"  # the Role and RoleBinding of its cache: read runs, nothing else
RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _is_server(doc: dict[str, Any]) -> bool:
    return (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/component") == "server"


@pytest.mark.parametrize("values", [[], ["-f", str(KIND_VALUES)]], ids=["defaults", "kind-values"])
def test_the_server_is_off_by_default(helm: Path, values: list[str]) -> None:
    """An HTTP surface is opt-in: without server.enabled nothing of it renders."""
    docs = render(helm, "ns", *values)
    assert not [d for d in docs if _is_server(d) or "server" in d["metadata"]["name"]]


def _server_objects(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    objects = {d["kind"]: d for d in docs if _is_server(d)}
    assert set(objects) == SERVER_KINDS and len([d for d in docs if _is_server(d)]) == len(SERVER_KINDS)
    assert {d["metadata"]["name"] for d in objects.values()} == {"kubestep-server", CACHE}
    assert {d["metadata"]["namespace"] for d in objects.values()} == {"ns"}
    return objects


def test_the_server_renders_a_restricted_pod_a_service_a_policy_and_a_service_account_that_only_reads_runs(
    helm: Path,
) -> None:
    docs = render(helm, "ns", "--set", "server.enabled=true")
    objects = _server_objects(docs)
    deployment, service, policy, sa = (objects[k] for k in ("Deployment", "Service", "NetworkPolicy", "ServiceAccount"))

    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SERVER_SA
    # Mounted only for the in-cluster configuration (address, CA; the loader wants the token file);
    # the ServiceAccount itself does not hand its token to other pods.
    assert pod["automountServiceAccountToken"] is True and sa["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (c,) = pod["containers"]
    assert c["image"] == "kubestep:0.1.0"  # the chart's image: the server ships in it
    assert c["args"] == [
        "server",
        "--namespace=ns",
        "--host=0.0.0.0",
        "--port=8080",
        "--max-streams=1000",
        "--cache=ns",  # the namespaces the operator watches
    ]
    assert c["securityContext"] == RESTRICTED_CONTAINER
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert {"name": "PYTHONNOUSERSITE", "value": "1"} in c["env"]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]

    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]

    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == service["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"from": [{"namespaceSelector": {}}], "ports": [{"port": 8080, "protocol": "TCP"}]}]
    assert spec["egress"] == [
        {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]},
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
    ]

    # Only its cache's binding names the server's ServiceAccount, to read runs; no FlowSchema does
    # (its other requests carry its callers' tokens).
    assert objects["Role"]["rules"] == [
        {"apiGroups": ["kubestep.io"], "resources": ["workflowexecutions"], "verbs": ["get", "list", "watch"]}
    ]
    assert objects["RoleBinding"]["roleRef"]["name"] == CACHE
    for d in docs:
        if d is objects["RoleBinding"]:
            continue
        for subject in d.get("subjects", []) + [
            s for r in d.get("spec", {}).get("rules", []) if isinstance(r, dict) for s in r.get("subjects", [])
        ]:
            assert subject.get("name") != SERVER_SA, d
            assert (subject.get("serviceAccount") or {}).get("name") != SERVER_SA, d
    off = render(helm, "ns", "--set", "server.enabled=true", "--set", "server.cache.enabled=false")
    assert not [d for d in off if d["kind"] in ("Role", "RoleBinding", "ClusterRole") and _is_server(d)]


def test_the_servers_values(helm: Path) -> None:
    objects = _server_objects(render(helm, "ns", *SERVER_VALUES))
    (c,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert c["args"] == [
        "server",
        "--namespace=runs",
        "--host=0.0.0.0",
        "--port=8080",
        "--max-streams=1000",
        "--cache=ns",
        "--verbose",
    ]
    assert objects["ServiceAccount"]["metadata"]["annotations"] == {"team": "ops"}
    assert objects["Service"]["metadata"]["annotations"] == {"team": "ops"}
    spec = objects["NetworkPolicy"]["spec"]
    assert spec["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}},
        {"podSelector": {"matchLabels": {"app": "ui-proxy"}}},
    ]
    assert spec["egress"][0] == {
        "ports": [{"port": 6443, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "10.77.0.1/32"}}],
    }
    custom = render(
        helm,
        "ns",
        *("--set", "server.enabled=true,server.port=9000,server.service.port=8443,server.replicas=2"),
        *("--set", "server.serviceAccount.create=false,server.serviceAccount.name=api"),
        *("--set", "server.image.repository=reg/ks,server.image.tag=1.2,networkPolicy.enabled=false"),
    )
    kinds = {d["kind"]: d for d in custom if _is_server(d)}
    # No policy, and the ServiceAccount is the user's (the chart still binds it to read runs).
    assert set(kinds) == {"Deployment", "Service", "Role", "RoleBinding"}
    assert kinds["RoleBinding"]["subjects"][0]["name"] == "api"
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert kinds["Deployment"]["spec"]["replicas"] == 2 and pod["serviceAccountName"] == "api"
    assert pod["containers"][0]["image"] == "reg/ks:1.2" and "--port=9000" in pod["containers"][0]["args"]
    assert kinds["Service"]["spec"]["ports"][0]["port"] == 8443


def test_the_servers_service_account_is_bound_only_to_read_runs(control_plane: Cluster, release: str) -> None:
    """Installed, the server's ServiceAccount exists and only its cache's RoleBinding names it (the
    RBAC matrix below asks the apiserver what it may do: read runs, nothing else)."""
    sa = json.loads(control_plane.kubectl("-n", release, "get", "serviceaccount", SERVER_SA, "-o", "json").stdout)
    assert sa["automountServiceAccountToken"] is False
    bindings = json.loads(control_plane.kubectl("get", "rolebindings", "-A", "-o", "json").stdout)["items"]
    bindings += json.loads(control_plane.kubectl("get", "clusterrolebindings", "-o", "json").stdout)["items"]
    named = [
        b["metadata"]["name"]
        for b in bindings
        for s in b.get("subjects") or []
        if s.get("kind") == "ServiceAccount" and s.get("name") == SERVER_SA and s.get("namespace") == release
    ]
    assert named == [CACHE], named
    svc = json.loads(control_plane.kubectl("-n", release, "get", "service", "kubestep-server", "-o", "json").stdout)
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["clusterIP"] not in ("", "None")
    policy = json.loads(
        control_plane.kubectl("-n", release, "get", "networkpolicy", "kubestep-server", "-o", "json").stdout
    )
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


# ----- the RBAC matrix ------------------------------------------------------------------------

OWN, OTHER, CLUSTER = "own namespace", "other namespace", "cluster scope"
WFX, STATUS = "workflowexecutions.kubestep.io", "workflowexecutions.kubestep.io/status"
LEASES, EVENTS = "leases.coordination.k8s.io", "events"
TOKENREVIEWS = "tokenreviews.authentication.k8s.io"
BATCHES = "stepbatches.kubestep.io"
SUBJECTACCESSREVIEWS = "subjectaccessreviews.authorization.k8s.io"

#   install       who         verb      resource                    where     allowed
RBAC_MATRIX = [
    ("namespaced", "operator", "get", WFX, OWN, True),
    ("namespaced", "operator", "list", WFX, OWN, True),
    ("namespaced", "operator", "watch", WFX, OWN, True),
    ("namespaced", "operator", "get", STATUS, OWN, True),
    ("namespaced", "operator", "patch", STATUS, OWN, True),
    ("namespaced", "operator", "get", LEASES, OWN, True),
    ("namespaced", "operator", "list", LEASES, OWN, True),
    ("namespaced", "operator", "watch", LEASES, OWN, True),
    ("namespaced", "operator", "create", EVENTS, OWN, True),
    ("namespaced", "operator", "list", "namespaces", CLUSTER, False),  # nothing cluster-wide
    ("namespaced", "operator", "watch", "customresourcedefinitions", CLUSTER, False),
    ("namespaced", "operator", "patch", WFX, OWN, False),  # never the spec
    ("namespaced", "operator", "update", WFX, OWN, False),
    ("namespaced", "operator", "create", WFX, OWN, False),
    # Retention: a finished run past its ttlSecondsAfterFinished (a DELETE with its uid as precondition);
    # still never create, patch or update (the spec is the user's).
    ("namespaced", "operator", "delete", WFX, OWN, True),
    ("namespaced", "operator", "delete", WFX, OTHER, False),
    ("namespaced", "operator", "deletecollection", WFX, OWN, False),
    ("namespaced", "operator", "update", STATUS, OWN, False),
    ("namespaced", "operator", "create", LEASES, OWN, True),  # its leader Lease (create takes no name)
    ("namespaced", "operator", "update", LEASES + "#kubestep-operator", OWN, True),
    ("namespaced", "operator", "update", LEASES + "#kubestep-worker-x", OWN, False),  # never a worker's
    ("namespaced", "operator", "delete", LEASES + "#kubestep-operator", OWN, False),
    ("namespaced", "operator", "create", LEASES, OTHER, False),
    ("namespaced", "operator", "patch", LEASES, OWN, False),
    ("namespaced", "operator", "get", "secrets", OWN, False),
    ("namespaced", "operator", "list", "pods", OWN, False),
    ("namespaced", "operator", "get", "namespaces", CLUSTER, False),
    ("namespaced", "operator", "delete", "namespaces", CLUSTER, False),
    ("namespaced", "operator", "list", WFX, OTHER, False),
    ("namespaced", "operator", "patch", STATUS, OTHER, False),
    ("namespaced", "operator", "list", LEASES, OTHER, False),
    ("namespaced", "operator", "create", EVENTS, OTHER, False),
    ("namespaced", "worker", "get", WFX, OWN, True),
    ("namespaced", "worker", "list", WFX, OWN, True),
    ("namespaced", "worker", "watch", WFX, OWN, True),
    ("namespaced", "worker", "get", STATUS, OWN, True),
    ("namespaced", "worker", "patch", STATUS, OWN, True),
    ("namespaced", "worker", "create", LEASES, OWN, True),
    ("namespaced", "worker", "get", LEASES, OWN, True),
    ("namespaced", "worker", "patch", LEASES, OWN, True),
    ("namespaced", "worker", "update", LEASES, OWN, True),
    ("namespaced", "worker", "delete", LEASES, OWN, True),
    ("namespaced", "worker", "create", EVENTS, OWN, True),
    ("namespaced", "worker", "create", "configmaps", OWN, True),  # the step journal
    ("namespaced", "worker", "get", "configmaps", OWN, True),
    ("namespaced", "worker", "delete", "configmaps", OWN, False),  # ... is immutable
    ("namespaced", "worker", "list", "configmaps", OWN, False),
    ("namespaced", "worker", "create", "configmaps", OTHER, False),
    ("namespaced", "worker", "create", BATCHES, OWN, True),  # the step journal's group commit
    ("namespaced", "worker", "list", BATCHES, OWN, True),  # a claim reads a run's batches back
    ("namespaced", "worker", "update", BATCHES, OWN, False),  # ... never changed
    ("namespaced", "worker", "delete", BATCHES, OWN, False),  # ... nor deleted: the operator collects them
    ("namespaced", "worker", "create", BATCHES, OTHER, False),
    ("namespaced", "operator", "list", BATCHES, OWN, True),
    ("namespaced", "operator", "deletecollection", BATCHES, OWN, True),
    ("namespaced", "operator", "create", BATCHES, OWN, False),
    ("namespaced", "operator", "update", BATCHES, OWN, False),
    ("namespaced", "operator", "list", BATCHES, OTHER, False),
    ("namespaced", "worker", "patch", WFX, OWN, False),  # never the spec
    ("namespaced", "worker", "update", WFX, OWN, False),
    ("namespaced", "worker", "create", WFX, OWN, True),  # child runs (the admission policy: owned ones)
    ("namespaced", "worker", "delete", WFX, OWN, False),
    ("namespaced", "worker", "update", STATUS, OWN, True),  # claims, endings
    ("namespaced", "worker", "list", LEASES, OWN, True),  # at start: which workers serve its workflow ids
    ("namespaced", "worker", "get", "secrets", OWN, False),
    ("namespaced", "worker", "get", "pods", OWN, False),
    ("namespaced", "worker", "list", "namespaces", CLUSTER, False),
    ("namespaced", "worker", "list", WFX, OTHER, False),
    ("namespaced", "worker", "patch", STATUS, OTHER, False),
    ("namespaced", "worker", "create", LEASES, OTHER, False),
    ("namespaced", "worker", "create", EVENTS, OTHER, False),
    ("cluster-wide", "operator", "list", WFX, OTHER, True),
    ("cluster-wide", "operator", "watch", WFX, CLUSTER, True),  # kubectl -A
    ("cluster-wide", "operator", "patch", STATUS, OTHER, True),
    ("cluster-wide", "operator", "watch", LEASES, CLUSTER, True),
    ("cluster-wide", "operator", "create", EVENTS, OTHER, True),
    ("cluster-wide", "operator", "watch", "customresourcedefinitions", CLUSTER, False),
    ("cluster-wide", "operator", "patch", WFX, OTHER, False),  # never the spec
    ("cluster-wide", "operator", "create", WFX, OTHER, False),
    ("cluster-wide", "operator", "delete", WFX, OTHER, True),  # retention, as namespaced
    ("cluster-wide", "operator", "list", "namespaces", CLUSTER, False),  # not needed with -A
    ("cluster-wide", "operator", "get", "secrets", OTHER, False),
    ("cluster-wide", "worker", "patch", STATUS, OWN, True),
    ("cluster-wide", "worker", "list", WFX, OTHER, False),  # workers stay namespaced
    ("cluster-wide", "worker", "watch", WFX, CLUSTER, False),
    # The server writes with each caller's token: its own may only read runs (its cache), and review nothing.
    ("namespaced", "server", "get", WFX, OWN, True),
    ("namespaced", "server", "list", WFX, OWN, True),
    ("namespaced", "server", "watch", WFX, OWN, True),
    ("namespaced", "server", "patch", WFX, OWN, False),
    ("namespaced", "server", "create", WFX, OWN, False),
    ("namespaced", "server", "patch", STATUS, OWN, False),
    ("namespaced", "server", "list", EVENTS, OWN, False),
    ("namespaced", "server", "get", "secrets", OWN, False),
    ("namespaced", "server", "list", WFX, CLUSTER, False),
    ("namespaced", "server", "create", TOKENREVIEWS, CLUSTER, False),
    ("namespaced", "server", "create", SUBJECTACCESSREVIEWS, CLUSTER, False),
    ("cluster-wide", "server", "list", WFX, OTHER, True),  # its cache, with watchAllNamespaces
    ("cluster-wide", "server", "patch", STATUS, OTHER, False),
    ("cluster-wide", "server", "patch", WFX, OWN, False),
]


@pytest.mark.parametrize(
    "install,who,verb,resource,where,allowed",
    [
        pytest.param(
            *row,
            id=f"{row[0]}-{row[1]}-{'can' if row[5] else 'cannot'}-{row[2]}-"
            f"{row[3].split('.')[0]}{'/status' if row[3].endswith('/status') else ''}"
            f"{'-' + row[3].split('#')[1] if '#' in row[3] else ''}-"
            f"{row[4].split()[0]}",
        )
        for row in RBAC_MATRIX
    ],
)
def test_rbac_matrix(
    request: pytest.FixtureRequest,
    control_plane: Cluster,
    install: str,
    who: str,
    verb: str,
    resource: str,
    where: str,
    allowed: bool,
) -> None:
    ns = request.getfixturevalue("release" if install == "namespaced" else "clusterwide_release")
    sa = {"operator": OPERATOR_SA, "worker": WORKER_SA, "server": SERVER_SA}[who]
    resource, _, subresource = resource.partition("/")
    resource = resource.replace("#", "/")  # TYPE#NAME: one object by name
    args = ["auth", "can-i", verb, resource, f"--as=system:serviceaccount:{ns}:{sa}"]
    args += [f"--subresource={subresource}"] if subresource else []
    if where == OWN:
        args += ["-n", ns]
    elif where == OTHER:
        args += ["-n", f"chart-other-{uuid.uuid4().hex[:6]}"]
    elif resource not in ("namespaces", "customresourcedefinitions", TOKENREVIEWS, SUBJECTACCESSREVIEWS):
        args += ["--all-namespaces"]
    proc = control_plane.kubectl(*args, check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), (args, proc.stdout, proc.stderr)
    assert (answer == "yes") == allowed, f"{who} {verb} {resource} {where}: {answer}"


# ----- the operator and a worker with the chart's service accounts -----------------------------


async def test_lifecycle_with_the_charts_service_account_tokens(
    control_plane: Cluster, release: str, logs: Path
) -> None:
    op_kubeconfig = control_plane.kubeconfig_for_service_account(release, OPERATOR_SA)
    # A worker's token is bound to its pod, as a pod's projected token is: the chart's admission
    # policy (templates/worker-admission.yaml) lets a worker write only what its pod may.
    worker_pod = tokens.pod(control_plane, release, "chart-worker", WORKER_SA)
    worker_kubeconfig = tokens.kubeconfig(control_plane, release, WORKER_SA, worker_pod)
    # The tokens really are the service accounts', not admin.
    whoami = control_plane.kubectl(
        "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=op_kubeconfig
    ).stdout
    assert whoami == f"system:serviceaccount:{release}:{OPERATOR_SA}"

    # With leader election, as the chart runs it: the token must also be allowed its Lease.
    operator = start_operator(
        op_kubeconfig,
        logs,
        namespaces=[release],
        env={"POD_NAME": "chart-operator", "POD_NAMESPACE": release},
        extra_args=["--leader-elect", "--leader-election-id=kubestep-operator"],
    )
    # A tiny status window, so the run below also archives step records (journal
    # ConfigMaps) with the worker's own token.
    worker = start_worker(worker_kubeconfig, logs, release, name="chart-worker", env={"KUBESTEP_STATUS_STEPS": "2"})
    try:
        async with kubestep.KubestepClient(namespace=release, kubeconfig=str(control_plane.kubeconfig)) as client:
            done = await client.start("steps", {"count": 4, "seconds": 0.05})
            e = await done.wait(timeout=30)
            assert e.status.phase == api.Phase.COMPLETED, (e.status, operator.tail(), worker.tail())
            assert e.status.journal and len(e.status.steps) < 4, e.status
            assert [s.output["worker"] for s in await done.steps()] == ["chart-worker"] * 4
            lease = json.loads(
                control_plane.kubectl("-n", release, "get", "lease", "kubestep-operator", "-o", "json").stdout
            )
            assert lease["spec"]["holderIdentity"] == "chart-operator"  # it leads, with the chart's RBAC

            h = await client.start("until-cancelled", {"seconds": 0.05})
            loop = asyncio.get_running_loop()
            end = loop.time() + 30
            while (await client.get_execution(h.id)).status.phase != api.Phase.RUNNING:
                assert loop.time() < end, (operator.tail(), worker.tail())
                await asyncio.sleep(0.05)
            assert await client.cancel_execution(h.id) is True
            e = await h.wait(timeout=30)
            assert e.status.phase == api.Phase.CANCELLED and e.status.reason == api.StopReason.REQUESTED, e.status
            assert e.status.cancellation and e.status.cancellation.acknowledged_by == "chart-worker"
    finally:
        operator_exit = operator.stop()
        worker_exit = worker.stop()
    op_log, worker_log = operator.log.read_text(), worker.log.read_text()
    for name, log in (("operator", op_log), ("worker", worker_log)):
        # A 403, not the milliseconds of a log line's timestamp ("05:33:36,403 INFO ...").
        bad = [line for line in log.splitlines() if _DENIED.search(line) or "forbidden" in line.lower()]
        assert not bad, f"{name} was denied access:\n" + "\n".join(bad)
    assert worker_exit == 0, worker_log[-3000:]
    assert operator_exit == 0, op_log[-3000:]


# ----- who cancelled: the optional admission policies ----------------------------------------------
# tests/security/test_cancel_audit.py applies the chart's cancel-audit policies (mutating and
# validating) with an operator that trusts them, and tries every forgery against them.


# ----- API Priority and Fairness: a cancel does not queue behind step data ------------------------


def test_flow_schemas_put_step_data_and_control_writes_on_different_priority_levels(
    control_plane: Cluster, release: str
) -> None:
    """The apiserver says which FlowSchema classified a request (``X-Kubernetes-PF-FlowSchema-UID``):
    a worker's step records (PATCH …/status) go to the release's steps level; its claims and endings
    (PUT …/status) and the operator's requests go to the release's control level. A person's cancel,
    and a client with no RBAC at all, are classified by the cluster's default FlowSchemas: APF
    classifies before it authorizes, so the chart's schemas must not match them."""
    import ssl

    import httpx

    from kubestep._kube import load_configuration

    items = json.loads(control_plane.kubectl("get", "flowschemas", "-o", "json").stdout)["items"]
    schemas = {fs["metadata"]["uid"]: fs["metadata"]["name"] for fs in items}
    steps, control = f"{release}-{RELEASE}-steps", f"{release}-{RELEASE}-control"
    assert {steps, control} <= set(schemas.values())
    levels = {fs["metadata"]["name"]: fs["spec"]["priorityLevelConfiguration"]["name"] for fs in items}
    assert (levels[steps], levels[control]) == (steps, control)  # the chart's own levels, not workload-high
    for level in (steps, control):
        plc = json.loads(control_plane.kubectl("get", "prioritylevelconfiguration", level, "-o", "json").stdout)
        assert plc["spec"]["type"] == "Limited", plc
    name = f"apf-{uuid.uuid4().hex[:5]}"
    control_plane.kubectl(
        "-n",
        release,
        "create",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "metadata": {"name": name},
                "spec": {"workflow": "nobody-serves-this"},
            }
        ),
    )
    configuration, _ = load_configuration(str(control_plane.kubeconfig))
    base = f"{configuration.host}/apis/{api.API_VERSION}/namespaces/{release}/workflowexecutions/{name}"
    tls = ssl.create_default_context(cafile=configuration.ssl_ca_cert)

    # The worker's requests carry its pod's token (the chart's admission policy wants the pod) and
    # write a run it holds.
    worker_pod = tokens.pod(control_plane, release, f"apf-worker-{uuid.uuid4().hex[:5]}", WORKER_SA)
    held = {"status": {"phase": "Running", "worker": worker_pod["metadata"]["name"]}}
    control_plane.kubectl(
        "-n", release, "patch", "wfx", name, "--subresource=status", "--type=merge", "-p", json.dumps(held)
    )

    def classified(
        who: str, method: str, path: str, content_type: str, body: Any, *, url: str | None = None, status: int = 200
    ) -> str:
        if who == WORKER_SA:
            token = tokens.token(control_plane, release, WORKER_SA, worker_pod)
        else:
            token = control_plane.kubectl("-n", release, "create", "token", who).stdout.strip()
        with httpx.Client(verify=tls) as http:
            r = http.request(
                method,
                (url or base) + path,
                headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
                content=json.dumps(body),
            )
        assert r.status_code == status, r.text
        return schemas[r.headers["X-Kubernetes-PF-FlowSchema-UID"]]

    step = classified(
        WORKER_SA,
        "PATCH",
        "/status",
        "application/json-patch+json",
        [{"op": "add", "path": "/status/message", "value": "a step record"}],
    )
    current = json.loads(control_plane.kubectl("-n", release, "get", "wfx", name, "-o", "json").stdout)
    ending = classified(
        WORKER_SA,
        "PUT",
        "/status",
        "application/json",
        {**current, "status": {**current.get("status", {}), "message": "an ending"}},
    )
    operator = classified(
        OPERATOR_SA, "PATCH", "/status", "application/merge-patch+json", {"status": {"reason": "Pending"}}
    )
    assert (step, ending, operator) == (steps, control, control)

    # A person's cancel (a ServiceAccount allowed to patch runs, as in docs/cli.md), and a client
    # with a token and no RBAC, whatever namespace it names: both left to the default schemas.
    cancel = {"spec": {"cancelRequested": True, "cancelReason": "apf"}}
    try:
        for who in ("apf-canceller", "apf-stranger"):
            control_plane.kubectl("-n", release, "create", "serviceaccount", who)
        control_plane.kubectl(
            "-n", release, "create", "role", "apf-canceller", "--verb=get,patch", "--resource=workflowexecutions"
        )
        control_plane.kubectl(
            "-n",
            release,
            "create",
            "rolebinding",
            "apf-canceller",
            "--role=apf-canceller",
            f"--serviceaccount={release}:apf-canceller",
        )

        def cancelled_by_a_person() -> str | None:
            try:
                return classified("apf-canceller", "PATCH", "", "application/merge-patch+json", cancel)
            except AssertionError:
                return None  # the new RoleBinding is not in the authorizer's cache yet

        person = wait_until(cancelled_by_a_person, 30, interval=0.2, what="the canceller's RoleBinding to apply")
        assert person not in (steps, control), person
        for namespace in (release, "kube-system", f"nowhere-{uuid.uuid4().hex[:5]}"):
            url = f"{configuration.host}/apis/{api.API_VERSION}/namespaces/{namespace}/workflowexecutions/{name}"
            stranger = classified(
                "apf-stranger", "PATCH", "", "application/merge-patch+json", cancel, url=url, status=403
            )
            assert stranger not in (steps, control), (namespace, stranger)
    finally:
        for kind, who in (
            ("rolebinding", "apf-canceller"),
            ("role", "apf-canceller"),
            ("serviceaccount", "apf-canceller"),
            ("serviceaccount", "apf-stranger"),
        ):
            control_plane.kubectl("-n", release, "delete", kind, who, "--ignore-not-found", check=False)
