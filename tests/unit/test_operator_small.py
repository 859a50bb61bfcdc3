"""The operator's smaller defects (issue 18), each shown without a cluster: what it says once per run is
dropped with the run; a 422 is a lost race only when a JSON patch's ``test`` failed, not when the write
is invalid (the worker's step writes too); a leader that steps down stops kopf through its stop flag, not
by signalling itself; started without a kubeconfig, it exits at once and says how to get one."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import aiohttp.web
import kopf
import pytest
from prometheus_client import REGISTRY

from kubestep import _protocol as api
from kubestep._errors import ConflictError, InvalidError, NotFoundError, lost_race
from kubestep._kube import Kube
from kubestep._settings import OperatorSettings, WorkerSettings
from kubestep._worker.running import Run
from kubestep._worker.unwinding import CONTENDED, Release
from kubestep._workflow import Workflow
from kubestep_operator import handlers, measuring, running
from kubestep_operator.controller import Controller
from kubestep_operator.keys import RunKey
from kubestep_operator.watching import Scope

# What kube-apiserver 1.35 answers (captured from a plane started with `kubestep dev up`): a JSON patch
# whose "test" failed (or whose path the object lacks), and a status write that breaks the schema.
TEST_FAILED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": "the server rejected our request due to an error in our request",
    "reason": "Invalid",
    "details": {},
    "code": 422,
}
SCHEMA_REFUSED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": 'WorkflowExecution.kubestep.io "r" is invalid: [status.phase: Unsupported value: "Bogus": '
    'supported values: "Queued", "Running"]',
    "reason": "Invalid",
    "details": {
        "name": "r",
        "group": "kubestep.io",
        "kind": "WorkflowExecution",
        "causes": [
            {"reason": "FieldValueNotSupported", "message": 'Unsupported value: "Bogus"', "field": "status.phase"}
        ],
    },
    "code": 422,
}
CEL_REFUSED = {
    "kind": "Status",
    "apiVersion": "v1",
    "metadata": {},
    "status": "Failure",
    "message": 'WorkflowExecution.kubestep.io "r" is invalid: spec: Invalid value: runTimeoutSeconds cannot be '
    "added or removed after creation",
    "reason": "Invalid",
    "details": {
        "name": "r",
        "group": "kubestep.io",
        "kind": "WorkflowExecution",
        "causes": [{"reason": "FieldValueInvalid", "message": "Invalid value: ...", "field": "spec"}],
    },
    "code": 422,
}


def _invalid(body: Any) -> InvalidError:
    return InvalidError(422, str((body or {}).get("message", "")), body)


def controller(kube: Any = None) -> Controller:
    offline = cast(Kube, kube if kube is not None else object())
    return Controller(
        kube=offline, watch=offline, scopes=[Scope(None)], lease_grace=api.now() + dt.timedelta(seconds=15)
    )


def run(
    name: str, phase: str | None = None, cancel: bool = False, generation: int = 1, rv: str = "1"
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "ns",
            "name": name,
            "uid": f"u-{name}",
            "resourceVersion": rv,
            "generation": generation,
        },
        "spec": {"workflow": "wf", "cancelRequested": cancel},
        "status": {"phase": phase} if phase else {},
    }


def unreadable(name: str, generation: int = 1) -> dict[str, Any]:
    body = run(name, generation=generation)
    del body["metadata"]["resourceVersion"]  # Snapshot.from_body cannot read it
    return body


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ----- 1. what was said once of a run goes with the run ---------------------------------------


def test_what_is_said_once_of_a_run_is_forgotten_when_the_run_is_deleted() -> None:
    c = controller()
    for i in range(50):
        c.on_execution("ADDED", unreadable(f"bad{i}"))
        done = run(f"done{i}", phase=api.Phase.COMPLETED, cancel=True)
        c.on_execution("ADDED", done)
        c.on_execution("MODIFIED", {**done, "metadata": {**done["metadata"], "resourceVersion": "2"}})
    assert len(c.ignored) == 100
    assert len(c.recorder) == 100  # each said once: 50 OperatorError, 50 CancelIgnored
    for i in range(50):
        c.on_execution("DELETED", unreadable(f"bad{i}"))
        c.on_execution("DELETED", run(f"done{i}", phase=api.Phase.COMPLETED, cancel=True))
    assert c.ignored == {}


def test_a_newer_generation_replaces_what_was_said_of_the_older() -> None:
    c = controller()
    key = RunKey("ns", "r")
    c.on_execution("ADDED", unreadable("r", generation=1))
    c.on_execution("MODIFIED", unreadable("r", generation=1))
    assert len(c.recorder) == 1 and key in c.ignored
    c.on_execution("MODIFIED", run("r", generation=2, rv="3"))  # readable again, unfinished
    assert key not in c.ignored and key in c.executions
    for generation in (3, 4, 5):  # finished, then cancelled again and again: each request answered once
        body = run("r", phase=api.Phase.FAILED, cancel=True, generation=generation, rv=str(generation + 1))
        c.on_execution("MODIFIED", body)
        c.on_execution("MODIFIED", body)
    assert len(c.ignored) == 1 and c.ignored[key][:2] == ("u-r", 5)
    reasons = [reason for _, _, reason, _ in c.recorder._queue]
    assert reasons.count("CancelIgnored") == 3


def test_a_relist_forgets_what_was_said_of_runs_deleted_while_the_watch_was_down() -> None:
    c = controller()
    c.on_execution("ADDED", unreadable("gone"))
    c.on_execution("ADDED", unreadable("kept"))
    c.executions_listed(Scope(None), {("ns", "kept")})
    assert set(c.ignored) == {RunKey("ns", "kept")}


# ----- 2. a 422 is a lost race only when a test failed -----------------------------------------


def test_the_classifier_tells_a_failed_test_from_an_invalid_write() -> None:
    assert _invalid(TEST_FAILED).lost_race and lost_race(_invalid(TEST_FAILED))
    assert not _invalid(SCHEMA_REFUSED).lost_race and not lost_race(_invalid(SCHEMA_REFUSED))
    assert not _invalid(CEL_REFUSED).lost_race
    assert not _invalid(None).lost_race  # not the apiserver's Status (a proxy's text, say): not a race
    assert not _invalid({"kind": "Status", "details": "odd"}).lost_race
    assert lost_race(ConflictError(409, "conflict", {}))
    assert not lost_race(NotFoundError(404, "gone", {})) and not lost_race(ValueError())


class Refusing:
    """The operator's kube client, refusing every status write with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.writes = 0

    async def guarded_patch(self, *_: Any, **__: Any) -> Any:
        self.writes += 1
        raise self.error

    async def merge_patch(self, *_: Any, **__: Any) -> Any:
        self.writes += 1
        raise self.error


async def test_the_operator_drops_a_write_that_lost_a_race() -> None:
    kube = Refusing(_invalid(TEST_FAILED))
    c = controller(kube)
    c.on_execution("ADDED", run("r"))  # a new run: admitted by a status write
    key = RunKey("ns", "r")
    races, errors = (
        sample("kubestep_operator_lost_races_total"),
        sample("kubestep_operator_object_errors_total", stage="write"),
    )
    await c.write(key)
    assert kube.writes == 1
    assert sample("kubestep_operator_lost_races_total") == races + 1
    assert sample("kubestep_operator_object_errors_total", stage="write") == errors
    assert len(c.recorder) == 0 and key not in c.failures and c.scheduler.due(key) is None


async def test_the_operator_reports_an_invalid_write_on_the_run_and_retries_it() -> None:
    kube = Refusing(_invalid(SCHEMA_REFUSED))
    c = controller(kube)
    c.on_execution("ADDED", run("r"))
    key = RunKey("ns", "r")
    races, errors = (
        sample("kubestep_operator_lost_races_total"),
        sample("kubestep_operator_object_errors_total", stage="write"),
    )
    await c.write(key)
    await c.write(key)  # the retry, refused again: counted again, told once
    assert sample("kubestep_operator_lost_races_total") == races
    assert sample("kubestep_operator_object_errors_total", stage="write") == errors + 2
    assert [(t, reason) for _, t, reason, _ in c.recorder._queue] == [("Warning", "OperatorError")]
    assert "is invalid" in c.recorder._queue[0][3]
    assert c.failures[key] == 2 and c.scheduler.due(key) is not None  # retried with backoff


class Apiserver:
    """The worker's kube client: every step write refused with ``error``; reads give the run as held."""

    def __init__(self, error: Exception, obj: dict[str, Any]) -> None:
        self.error, self.obj = error, obj
        self.writes = self.reads = 0

    async def request(self, *_: Any, **__: Any) -> Any:
        self.writes += 1
        raise self.error

    async def get(self, *_: Any, **__: Any) -> Any:
        self.reads += 1
        return self.obj


def held() -> dict[str, Any]:
    return {
        "metadata": {"name": "r", "namespace": "ns", "resourceVersion": "5", "generation": 1},
        "spec": {"workflow": "wf"},
        "status": {"phase": api.Phase.RUNNING, "worker": "w", "attempt": 1},
    }


async def _wf(ctx: Any, _: Any) -> None:
    return None


async def test_the_worker_rereads_after_a_failed_test_but_not_after_an_invalid_write() -> None:
    raced = Apiserver(_invalid(TEST_FAILED), held())
    r = Run(raced, Workflow(_wf, "wf"), held(), "w", WorkerSettings(module="m"))  # type: ignore[arg-type]
    with pytest.raises(Release, match=CONTENDED):
        await r._append_steps_locked()
    assert raced.writes == 10 and raced.reads == 10  # a race each time: read again, write again

    refused = Apiserver(_invalid(SCHEMA_REFUSED), held())
    r = Run(refused, Workflow(_wf, "wf"), held(), "w", WorkerSettings(module="m"))  # type: ignore[arg-type]
    with pytest.raises(InvalidError):
        await r._append_steps_locked()
    assert refused.writes == 1 and refused.reads == 0  # no re-read makes it valid: let go with the error


# ----- 3. stepping down sets kopf's stop flag -------------------------------------------------


def _no_signals(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    sent: list[Any] = []
    monkeypatch.setattr(os, "kill", lambda *a: sent.append(a))
    monkeypatch.setattr(signal, "raise_signal", lambda *a: sent.append(a))
    return sent


class Closing:
    def __init__(self) -> None:
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


async def test_stepping_down_stops_acting_and_sets_the_stop_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    sent = _no_signals(monkeypatch)
    kube = Closing()
    memo = kopf.Memo(stop=asyncio.Event(), controller=controller(kube))
    measuring.LEADER.set(1)
    handlers.step_down(memo)
    assert memo.stop.is_set() and sent == []
    assert sample("kubestep_operator_leader") == 0
    await memo.stopping
    assert kube.closed == 2  # the controller's two clients: it stopped


async def _apiserver_that_knows_nothing() -> tuple[aiohttp.web.AppRunner, int]:
    """Enough of an apiserver for kopf's start (no API groups); everything else is not found, so the
    informers only fail and retry."""

    async def answer(request: aiohttp.web.Request) -> aiohttp.web.Response:
        if request.path == "/api":
            return aiohttp.web.json_response({"kind": "APIVersions", "versions": []})
        if request.path == "/apis":
            return aiohttp.web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        return aiohttp.web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def test_kopf_ends_on_the_stop_flag_and_runs_the_clean_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path in-process: kopf started as ``kubestep operator`` starts it, the Controller made by
    the start-up handler, a step-down, and kopf returning after its clean-up."""
    sent = _no_signals(monkeypatch)
    runner, port = await _apiserver_that_knows_nothing()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u, namespace: ns}}]\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # kopf logs in through the kubernetes package, which read $KUBECONFIG when it was imported.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    settings = OperatorSettings.load(namespaces=("ns",))
    memo = kopf.Memo(settings=settings, stop=asyncio.Event())

    async def step_down_once_started() -> Controller:
        while "controller" not in memo:
            await asyncio.sleep(0.05)
        handlers.step_down(memo)
        return cast(Controller, memo.controller)

    stepping = asyncio.create_task(step_down_once_started())
    try:
        await asyncio.wait_for(running.operate(settings, memo), timeout=60)  # a bound, not the assertion
    finally:
        await runner.cleanup()
        for signum in (signal.SIGINT, signal.SIGTERM):  # kopf's, on the session's loop: not for later tests
            asyncio.get_running_loop().remove_signal_handler(signum)
    c = await stepping
    assert memo.stop.is_set() and sent == []
    assert c.tasks and all(t.done() for t in c.tasks)  # the clean-up stopped every loop


# ----- 5. no kubeconfig: exit at once, saying how to get one ----------------------------------


def test_the_operator_without_a_kubeconfig_exits_at_once_with_the_fix(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}  # never in a cluster
    env.update(HOME=str(home), KUBECONFIG="/nonexistent")
    kubestep = Path(sys.executable).parent / "kubestep"
    done = subprocess.run(
        [str(kubestep), "operator", "--namespace", "x"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "KUBECONFIG=/nonexistent: no such file" in lines[0]
    assert 'eval "$(kubestep dev env)"' in lines[0] and "kubestep dev up" in lines[0]
