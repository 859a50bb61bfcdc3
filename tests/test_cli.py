"""The ``kubestep`` CLI for people, run as a process against the real control plane, and the raw HTTP
cancel that the docs show (a merge patch with a bearer token). What a new user meets: the exit codes
(docs/cli.md), the ``-o name`` round trip, a cancel that matches nothing, an event for a finished run,
a closed pipe, Ctrl-C during ``watch``, a run in a namespace no operator watches, a failed run's
traceback. The same decisions without a cluster: ``tests/unit/test_cli_*.py``."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from kubestep import _protocol as api
from kubestep._kube import load_configuration

from .harness import E2E, wait_until

pytestmark = pytest.mark.skipif(E2E, reason="starts worker processes: local control plane only, not kind")


def kubestep(control_plane: Any, namespace: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _argv(namespace, *args), env=_env(control_plane), capture_output=True, text=True, timeout=timeout
    )


def _argv(namespace: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "kubestep._cli", *args, "-n", namespace]


def _env(control_plane: Any) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}


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
    failed = kubestep(control_plane, run_namespace, "run", "fails", "--wait", "-o", "name")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    # describe shows the failed run's error and its traceback (behind a bar, line by line)
    described = kubestep(control_plane, run_namespace, "describe", failed.stdout.strip()).stdout.splitlines()
    assert "Error:                ValueError: boom (step boom)" in described, described
    traceback = described[described.index("Traceback:") + 1 :]
    assert traceback[0] == "  | Traceback (most recent call last):" and "  | ValueError: boom" in traceback, described
    bad = kubestep(control_plane, run_namespace, "run", "steps", "--input", "{not json")
    assert bad.returncode == 2 and bad.stderr.startswith("kubestep run: error: --input is not valid JSON"), bad


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
    queued = kubestep(
        control_plane, run_namespace, "run", "nobody-serves-this", "--ttl", "7200", "-o", "name"
    ).stdout.strip()
    shown = json.loads(kubestep(control_plane, run_namespace, "get", queued, "-o", "json").stdout)
    assert shown["spec"]["ttlSecondsAfterFinished"] == 7200, shown
    one = kubestep(control_plane, run_namespace, "cancel", names[0], "missing-run", "--reason", "by name")
    assert one.returncode == 4  # one of them does not exist
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
    assert watch.returncode == 3, watch.stdout + watch.stderr  # Cancelled
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


# ----- what a new user meets ------------------------------------------------------------------------


def test_o_name_round_trips_through_every_command(control_plane: Any, run_namespace: str, workers: Any) -> None:
    workers()
    name = kubestep(control_plane, run_namespace, "run", "approval", "--input", '{"count": 1}', "-o", "name")
    assert name.returncode == 0 and name.stdout.startswith("workflowexecution.kubestep.io/"), name
    listed = kubestep(control_plane, run_namespace, "get", "-o", "name").stdout.split()
    assert listed == [name.stdout.strip()]
    (ref,) = listed
    short = "wfx/" + ref.rsplit("/", 1)[1]
    for form in (ref, short):
        assert kubestep(control_plane, run_namespace, "describe", form).returncode == 0, form
        assert kubestep(control_plane, run_namespace, "steps", form).returncode == 0, form
        assert kubestep(control_plane, run_namespace, "get", form, "-o", "name").stdout.strip() == ref
    sent = kubestep(control_plane, run_namespace, "send-event", ref, "approved", "--data", '{"ok": true}')
    assert sent.returncode == 0, sent.stderr
    watched = kubestep(control_plane, run_namespace, "watch", ref, "--timeout", "30")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    cancel = kubestep(control_plane, run_namespace, "cancel", "workflowexecutions.kubestep.io/" + ref.rsplit("/", 1)[1])
    assert cancel.returncode == 0 and cancel.stdout == f"{ref}: already Completed\n", cancel


def test_missing_runs_exit_4_and_a_cancel_matching_nothing_exits_1(
    control_plane: Any, run_namespace: str, workers: Any
) -> None:
    watch = kubestep(control_plane, run_namespace, "watch", "no-such-run", "--timeout", "30")
    assert watch.returncode == 4, watch  # not 1, which is a Failed run
    assert watch.stderr == f"error: execution 'no-such-run' does not exist in namespace {run_namespace}\n" or (
        "no-such-run" in watch.stderr and len(watch.stderr.splitlines()) == 1
    ), watch.stderr
    for argv in (["describe", "no-such-run"], ["get", "no-such-run"], ["send-event", "no-such-run", "t"]):
        assert kubestep(control_plane, run_namespace, *argv).returncode == 4, argv
    for how in (["-l", "team=nobody"], ["--all"]):
        nothing = kubestep(control_plane, run_namespace, "cancel", *how)
        assert nothing.returncode == 1 and nothing.stdout == "", nothing
        assert nothing.stderr.startswith(f"No runs matched {' '.join(how)} in namespace {run_namespace}"), nothing


def test_an_event_for_a_finished_run_is_refused(control_plane: Any, run_namespace: str, workers: Any) -> None:
    workers()
    done = kubestep(control_plane, run_namespace, "run", "steps", "--input", '{"count": 1}', "--wait", "-o", "name")
    assert done.returncode == 0, done.stderr
    name = done.stdout.strip().rsplit("/", 1)[1]
    sent = kubestep(control_plane, run_namespace, "send-event", name, "approved")
    assert sent.returncode == 1 and sent.stdout == "", sent
    assert f"{name} is Completed: no step will ever wait for this event; not sent" in sent.stderr
    obj = json.loads(kubestep(control_plane, run_namespace, "get", name, "-o", "json").stdout)
    assert not obj["spec"].get("events"), obj["spec"]


def test_a_reader_that_goes_away_ends_get_quietly(control_plane: Any, run_namespace: str) -> None:
    for _ in range(2):
        assert kubestep(control_plane, run_namespace, "run", "nobody-serves-this").returncode == 0
    read, write = os.pipe()
    os.close(read)  # `kubestep get | head`, with head gone before get writes
    try:
        proc = subprocess.run(
            _argv(run_namespace, "get"),
            env=_env(control_plane),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_ctrl_c_during_watch_without_a_terminal_is_quiet(control_plane: Any, run_namespace: str) -> None:
    started = kubestep(control_plane, run_namespace, "run", "nobody-serves-this", "-o", "name")
    watch = subprocess.Popen(
        _argv(run_namespace, "watch", started.stdout.strip()),
        env=_env(control_plane),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        first = watch.stdout.readline()  # the watch is under way: it has shown the run
        assert first.startswith("run "), first
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
        watch.wait()
    assert watch.returncode == 130, (first + out, err)
    assert err == "", err


@pytest.fixture
def unwatched_namespace(control_plane: Any) -> Iterator[str]:
    """A namespace the session's operator does not watch (it watches `t-*`)."""
    name = f"u-{uuid.uuid4().hex[:10]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def test_a_run_no_operator_has_seen_is_named_so(control_plane: Any, unwatched_namespace: str, operator: Any) -> None:
    ns = unwatched_namespace
    started = kubestep(control_plane, ns, "run", "steps", "-o", "name")
    assert started.returncode == 0, started.stderr
    name = started.stdout.strip().rsplit("/", 1)[1]
    said = f"no operator has seen this run (is one watching namespace {ns}?)"
    # It says so once the run has stayed without a phase a while (the operator would have queued it at once).

    def description() -> str | None:
        out = kubestep(control_plane, ns, "describe", name).stdout
        return out if said in out else None

    described = wait_until(
        description,
        60,
        interval=1,
        what="describe to say no operator has seen the run",
    )
    assert "Phase:                -  (-)" in described, described
    got = kubestep(control_plane, ns, "get")
    assert got.returncode == 0 and got.stderr == f"no operator has seen {name} (is one watching namespace {ns}?)\n"
    watch = kubestep(control_plane, ns, "watch", name, "--timeout", "5")
    assert watch.returncode == 5 and said in watch.stderr, watch  # still going at --timeout
    cancel = kubestep(control_plane, ns, "cancel", name)
    assert cancel.returncode == 0, cancel
    assert cancel.stdout == f"workflowexecution.kubestep.io/{name}: cancel requested, but {said}\n", cancel
