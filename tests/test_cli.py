"""The ``kubestep`` CLI for people, run as a process against the real control plane, and the raw HTTP
cancel that the docs show (a merge patch with a bearer token)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest
import yaml

from kubestep import _protocol as api
from kubestep._kube import load_configuration

from .harness import E2E

pytestmark = pytest.mark.skipif(E2E, reason="starts worker processes: local control plane only, not kind")


def kubestep(control_plane: Any, namespace: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    return subprocess.run(
        [sys.executable, "-m", "kubestep._cli", *args, "-n", namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_and_wait_exit_with_the_runs_outcome(control_plane: Any, run_namespace: str, workers: Any) -> None:
    workers()
    done = kubestep(
        control_plane,
        run_namespace,
        "run",
        "steps",
        "--input",
        '{"count": 2, "seconds": 0.01}',
        "--wait",
        "-o",
        "json",
        "--timeout",
        "60",
        "-l",
        "team=data",
    )
    assert done.returncode == 0, done.stderr
    obj = json.loads(done.stdout)
    assert obj["status"]["phase"] == api.Phase.COMPLETED and obj["spec"]["runTimeoutSeconds"] == 60
    assert obj["metadata"]["labels"]["team"] == "data"
    failed = kubestep(control_plane, run_namespace, "run", "fails", "--wait")
    assert failed.returncode == 1 and "Failed" in failed.stdout
    bad = kubestep(control_plane, run_namespace, "run", "steps", "--input", "{not json")
    assert bad.returncode == 1 and "--input is not valid JSON" in bad.stderr


def test_cancel_by_name_selector_and_all_with_per_run_results(
    control_plane: Any, run_namespace: str, workers: Any
) -> None:
    workers()
    names = []
    for _ in range(3):
        out = kubestep(
            control_plane, run_namespace, "run", "until-cancelled", "--input", '{"seconds": 0.05}', "-o", "name"
        )
        names.append(out.stdout.strip().rsplit("/", 1)[1])
    queued = kubestep(control_plane, run_namespace, "run", "nobody-serves-this", "-o", "name").stdout.strip()
    one = kubestep(control_plane, run_namespace, "cancel", names[0], "missing-run", "--reason", "by name")
    assert one.returncode == 1  # one of them does not exist
    assert one.stdout.splitlines() == [
        f"workflowexecution.kubestep.io/{names[0]}: cancel requested",
        "workflowexecution.kubestep.io/missing-run: not found",
    ]
    by_label = kubestep(
        control_plane,
        run_namespace,
        "cancel",
        "-l",
        "kubestep.io/workflow=until-cancelled",
        "--reason",
        "by label",
        "-o",
        "json",
    )
    results = {r["name"]: r for r in json.loads(by_label.stdout)}
    assert by_label.returncode == 0 and set(names[1:]) <= set(results), results  # names[0] may be ending too
    assert all(results[n]["cancelled"] and results[n]["result"] == "cancel requested" for n in names[1:])
    rest = kubestep(control_plane, run_namespace, "cancel", "--all", "--reason", "everything")
    assert rest.returncode == 0 and queued.rsplit("/", 1)[1] in rest.stdout
    again = kubestep(control_plane, run_namespace, "cancel", names[1])
    watch = kubestep(control_plane, run_namespace, "watch", names[1], "--timeout", "30")
    assert watch.returncode == 2, watch.stdout + watch.stderr  # Cancelled
    assert "Cancelled" in watch.stdout
    assert "already" in again.stdout or "cancel requested" in again.stdout
    described = kubestep(control_plane, run_namespace, "describe", names[1]).stdout
    assert "Requested by:       kubestep-cli" in described and "by label" in described, described


def test_get_describe_steps_and_send_event(control_plane: Any, run_namespace: str, workers: Any) -> None:
    workers(env={"KUBESTEP_STATUS_STEPS": "2"})  # a short status window: most records go to the journal
    name = f"cli-{uuid.uuid4().hex[:5]}"
    started = kubestep(control_plane, run_namespace, "run", "approval", "--name", name, "--input", '{"count": 1}')
    assert started.returncode == 0 and name in started.stdout
    sent = kubestep(control_plane, run_namespace, "send-event", name, "approved", "--data", '{"ok": true}')
    assert sent.returncode == 0, sent.stderr
    watch = kubestep(control_plane, run_namespace, "watch", name, "--timeout", "30")
    assert watch.returncode == 0, watch.stdout + watch.stderr
    listing = json.loads(kubestep(control_plane, run_namespace, "get", "-o", "json").stdout)
    assert listing["kind"] == "List" and name in {i["metadata"]["name"] for i in listing["items"]}
    one = yaml.safe_load(kubestep(control_plane, run_namespace, "get", name, "-o", "yaml").stdout)
    assert one["status"]["result"]["events"] == [{"ok": True}]
    table = kubestep(control_plane, run_namespace, "get", name).stdout.splitlines()
    assert table[0].split() == ["NAME", "WORKFLOW", "PHASE", "REASON", "STEPS", "WORKER", "AGE"]
    steps = json.loads(kubestep(control_plane, run_namespace, "steps", name, "-o", "json").stdout)
    assert [s["key"] for s in steps] == ["before", "approval-0", "after"]
    assert steps[1]["kind"] == "Event" and steps[1]["output"] == {"ok": True}
    described = kubestep(control_plane, run_namespace, "describe", name).stdout
    assert "Completed" in described and "topic approved" in described and "Events:" in described


def test_shell_completion_script(control_plane: Any, run_namespace: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kubestep._cli", "completion", "bash"], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and "kubestep" in out.stdout and "cancel" in out.stdout


def test_the_raw_http_cancel_is_a_merge_patch_with_a_bearer_token(control_plane: Any, run_namespace: str) -> None:
    """What docs/cli.md shows: 200 when the cancel is accepted, 404 when there is no such run."""
    control_plane.kubectl("-n", run_namespace, "create", "serviceaccount", "ci-bot")
    control_plane.kubectl(
        "-n", run_namespace, "create", "role", "ci-bot", "--verb=get,patch", "--resource=workflowexecutions.kubestep.io"
    )
    control_plane.kubectl(
        "-n",
        run_namespace,
        "create",
        "rolebinding",
        "ci-bot",
        "--role=ci-bot",
        f"--serviceaccount={run_namespace}:ci-bot",
    )
    token = control_plane.kubectl("-n", run_namespace, "create", "token", "ci-bot").stdout.strip()
    name = kubestep(control_plane, run_namespace, "run", "nobody-serves-this", "-o", "name").stdout.strip()
    name = name.rsplit("/", 1)[1]
    configuration, _ = load_configuration(str(control_plane.kubeconfig))
    base = f"{configuration.host}/apis/kubestep.io/v1alpha1/namespaces/{run_namespace}/workflowexecutions"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"}
    body = {"spec": {"cancelRequested": True, "cancelReason": "from CI"}}
    with httpx.Client(verify=ssl.create_default_context(cafile=configuration.ssl_ca_cert)) as http:
        ok = http.patch(f"{base}/{name}", headers=headers, content=json.dumps(body))
        missing = http.patch(f"{base}/no-such-run", headers=headers, content=json.dumps(body))
    assert ok.status_code == 200 and ok.json()["spec"]["cancelRequested"] is True
    assert missing.status_code == 404
