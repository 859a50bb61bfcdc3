"""Retention of finished runs (``spec.ttlSecondsAfterFinished``, else ``KUBESTEP_RUN_TTL_SECONDS``), without a
cluster: the pure rule (``reconciling.expires_at``, ``due_for_deletion``) with an injected clock, the controller's
plans (one scheduler, the write backlog at the lowest urgency) fed by hand, and the DELETE it makes on a fake
apiserver: its uid precondition and Background propagation, a 404 taken as done, a 409 (another run holds
the name) and a 403 never retried, anything else retried with backoff."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from kubestep import KubestepClient
from kubestep import _protocol as api
from kubestep._errors import ApiError, ConflictError, ForbiddenError, NotFoundError, TransportError
from kubestep._kube import Kube
from kubestep._models import Execution
from kubestep._settings import OperatorSettings
from kubestep_operator.controller import Controller, Expiry
from kubestep_operator.keys import ExpiryKey, RunKey
from kubestep_operator.reconciling import Snapshot, Urgency, due_for_deletion, expires_at
from kubestep_operator.watching import Scope

T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


def body(
    name: str = "r",
    *,
    phase: str | None = api.Phase.COMPLETED,
    finished: dt.datetime | None = T0,
    ttl: int | None = None,
    uid: str | None = None,
    ns: str = "ns",
    rv: str = "1",
    deleting: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "namespace": ns,
        "name": name,
        "uid": uid or f"u-{name}",
        "resourceVersion": rv,
        "generation": 1,
        "creationTimestamp": api.fmt_time(T0 - dt.timedelta(minutes=5)),
    }
    if deleting:
        meta["deletionTimestamp"] = api.fmt_time(T0)
    spec: dict[str, Any] = {"workflow": "wf"}
    if ttl is not None:
        spec["ttlSecondsAfterFinished"] = ttl
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if finished is not None and phase in api.TERMINAL_PHASES:
        status["finishedAt"] = api.fmt_time(finished)
    return {"metadata": meta, "spec": spec, "status": status}


def snap(**kw: Any) -> Snapshot:
    return Snapshot.from_body(body(**kw))


# ----- the rule ----------------------------------------------------------------------------------


def test_the_snapshot_reads_the_ttl_finished_at_and_a_deletion_in_progress() -> None:
    s = snap(ttl=30)
    assert (s.ttl_seconds_after_finished, s.finished_at, s.deleting) == (30, T0, False)
    s = snap(deleting=True)
    assert (s.ttl_seconds_after_finished, s.deleting) == (None, True)


@pytest.mark.parametrize("phase", sorted(api.TERMINAL_PHASES))
def test_a_finished_run_goes_its_ttl_after_it_finished(phase: str) -> None:
    s = snap(phase=phase, ttl=60)
    assert expires_at(s, None) == T0 + dt.timedelta(seconds=60)
    assert not due_for_deletion(s, T0 + dt.timedelta(seconds=59.999), None)
    assert due_for_deletion(s, T0 + dt.timedelta(seconds=60), None)
    assert due_for_deletion(s, T0 + dt.timedelta(days=400), None)


@pytest.mark.parametrize("phase", [None, *sorted(set(api.Phase) - api.TERMINAL_PHASES)])
def test_an_unfinished_run_is_never_due_whatever_its_ttl(phase: str | None) -> None:
    s = snap(phase=phase, ttl=0, finished=T0)
    later = T0 + dt.timedelta(days=3650)
    assert expires_at(s, 0) is None and not due_for_deletion(s, later, 0)


def test_the_spec_overrides_the_default_either_way_and_zero_means_at_once() -> None:
    assert expires_at(snap(), 3600) == T0 + dt.timedelta(hours=1)  # no spec TTL: the default
    assert expires_at(snap(ttl=10), 3600) == T0 + dt.timedelta(seconds=10)  # shorter than the default
    assert expires_at(snap(ttl=86400), 3600) == T0 + dt.timedelta(days=1)  # longer than the default
    assert expires_at(snap(ttl=0), 3600) == T0
    assert due_for_deletion(snap(ttl=0), T0, None)


def test_without_a_ttl_or_a_default_a_finished_run_is_kept() -> None:
    s = snap()
    assert expires_at(s, None) is None
    assert not due_for_deletion(s, T0 + dt.timedelta(days=3650), None)


def test_a_run_without_finished_at_or_already_being_deleted_is_never_due() -> None:
    far = T0 + dt.timedelta(days=3650)
    assert not due_for_deletion(snap(finished=None, ttl=0), far, 0)
    assert not due_for_deletion(snap(deleting=True, ttl=0), far, 0)


def test_the_longest_ttl_near_the_end_of_time_is_clamped_not_an_error() -> None:
    s = Snapshot.from_body(body(ttl=315_360_000, finished=dt.datetime(9999, 12, 1, tzinfo=dt.UTC)))
    at = expires_at(s, None)
    assert at is not None and at <= api.END_OF_TIME
    assert not due_for_deletion(s, T0, None)


def test_the_expire_level_comes_after_every_write_that_moves_a_run() -> None:
    assert max(Urgency) is Urgency.EXPIRE
    assert all(level < Urgency.EXPIRE for level in Urgency if level is not Urgency.EXPIRE)


# ----- settings, the SDK -------------------------------------------------------------------------


def test_the_operators_default_ttl_comes_from_the_environment() -> None:
    assert OperatorSettings.load(env={}).run_ttl_seconds is None
    assert OperatorSettings.load(env={"KUBESTEP_RUN_TTL_SECONDS": ""}).run_ttl_seconds is None
    assert OperatorSettings.load(env={"KUBESTEP_RUN_TTL_SECONDS": "86400"}).run_ttl_seconds == 86400
    assert OperatorSettings.load(env={"KUBESTEP_RUN_TTL_SECONDS": "0"}).run_ttl_seconds == 0
    for bad in ("-1", "315360001", "a day"):
        with pytest.raises(SystemExit, match="KUBESTEP_RUN_TTL_SECONDS"):
            OperatorSettings.load(env={"KUBESTEP_RUN_TTL_SECONDS": bad})


class Creating:
    """The client's kube: records what ``create`` was given, answers with it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def create(self, _path: str, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
        self.bodies.append(obj)
        return {**obj, "metadata": {**obj["metadata"], "name": obj["metadata"].get("name", "r-x")}}


async def test_start_sets_the_ttl_in_the_spec_only_when_given_and_the_model_shows_it() -> None:
    kube = Creating()
    client = KubestepClient.from_kube(cast(Kube, kube), "ns")
    await client.start("wf", {}, name="with", ttl_seconds_after_finished=120)
    await client.start("wf", {}, name="zero", ttl_seconds_after_finished=0)
    await client.start("wf", {}, name="without")
    assert [b["spec"].get("ttlSecondsAfterFinished") for b in kube.bodies] == [120, 0, None]
    assert "ttlSecondsAfterFinished" not in kube.bodies[2]["spec"]
    assert Execution.from_object(body(ttl=120)).ttl_seconds_after_finished == 120
    assert Execution.from_object(body()).ttl_seconds_after_finished is None


# ----- the controller's plans --------------------------------------------------------------------


class Apiserver:
    """The operator's kube: answers every DELETE with ``error`` (or the deleted object), recording it."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.requests: list[tuple[str, str, Any]] = []

    async def request(self, method: str, path: str, *, json_body: Any = None, **_: Any) -> Any:
        self.requests.append((method, path, json_body))
        if self.error is not None:
            raise self.error
        return {"kind": "WorkflowExecution"}


def controller(kube: Any = None, ttl: int | None = None) -> Controller:
    offline = cast(Kube, kube if kube is not None else object())
    return Controller(
        kube=offline,
        watch=cast(Kube, object()),
        scopes=[Scope(None)],
        lease_grace=api.now() + dt.timedelta(seconds=15),
        run_ttl_seconds=ttl,
    )


def ago(seconds: float) -> dt.datetime:
    return api.now() - dt.timedelta(seconds=seconds)


KEY, EKEY = RunKey("ns", "r"), ExpiryKey("ns", "r")


def test_a_finished_run_with_a_ttl_is_planned_under_a_key_of_its_own() -> None:
    c = controller()
    c.on_execution("ADDED", body(phase=api.Phase.RUNNING, ttl=60))
    assert c.expiring == {} and c.scheduler.due(EKEY) is None  # unfinished: nothing to plan
    c.on_execution("MODIFIED", body(ttl=60, rv="2"))
    assert c.expiring == {KEY: Expiry("u-r", T0 + dt.timedelta(seconds=60), "2")}
    assert c.scheduler.due(EKEY) == T0 + dt.timedelta(seconds=60) and c.scheduler.due(KEY) is None
    assert KEY not in c.executions  # the decision store still holds only unfinished runs


def test_without_a_ttl_nothing_is_planned_and_the_default_applies_to_runs_without_one() -> None:
    c = controller()
    c.on_execution("ADDED", body())
    assert c.expiring == {} and len(c.scheduler) == 0
    c = controller(ttl=3600)
    c.on_execution("ADDED", body())
    c.on_execution("ADDED", body("own", ttl=5))
    assert c.expiring[KEY].at == T0 + dt.timedelta(hours=1)
    assert c.expiring[RunKey("ns", "own")].at == T0 + dt.timedelta(seconds=5)


def test_the_ttl_may_be_changed_or_removed_after_the_run_finished() -> None:
    c = controller()
    c.on_execution("ADDED", body(ttl=60))
    c.on_execution("MODIFIED", body(ttl=600, rv="2"))  # lengthened
    assert c.scheduler.due(EKEY) == T0 + dt.timedelta(seconds=600)
    c.on_execution("MODIFIED", body(ttl=6, rv="3"))  # shortened
    assert c.scheduler.due(EKEY) == T0 + dt.timedelta(seconds=6)
    c.on_execution("MODIFIED", body(rv="4"))  # removed, and no default: kept
    assert c.expiring == {} and c.scheduler.due(EKEY) is None


def test_the_plan_goes_when_the_run_is_deleted_relisted_away_re_created_or_being_deleted() -> None:
    c = controller()
    c.on_execution("ADDED", body(ttl=0))
    c.on_execution("DELETED", body(ttl=0, rv="2"))
    assert c.expiring == {} and c.scheduler.due(EKEY) is None

    c.on_execution("ADDED", body(ttl=0))
    c.executions_listed(Scope(None), set())  # deleted while the watch was down
    assert c.expiring == {} and c.scheduler.due(EKEY) is None

    c.on_execution("ADDED", body(ttl=0))
    c.on_execution("ADDED", body(phase=None, uid="u-new", ttl=0, rv="3"))  # a new run under that name
    assert c.expiring == {} and c.scheduler.due(EKEY) is None and KEY in c.executions

    c = controller()
    c.on_execution("ADDED", body(ttl=0))
    c.on_execution("MODIFIED", body(ttl=0, deleting=True, rv="2"))  # a finalizer holds it: asked already
    assert c.expiring == {} and c.scheduler.due(EKEY) is None


def test_a_due_run_is_offered_last_and_one_not_yet_due_is_planned_again() -> None:
    c = controller()
    c.on_execution("ADDED", body(ttl=3600, finished=ago(10)))
    c.fire(EKEY)  # early (a clock that moved): planned again, nothing offered
    assert len(c.backlog) == 0 and c.scheduler.due(EKEY) == c.expiring[KEY].at
    c.on_execution("ADDED", body(ttl=5, finished=ago(10), rv="2"))
    c.fire(EKEY)
    assert c.backlog.count(Urgency.EXPIRE) == 1 and len(c.backlog) == 1


async def test_the_backlog_hands_out_admissions_before_deletions() -> None:
    c = controller()
    c.on_execution("ADDED", body(ttl=0, finished=ago(1)))
    c.fire(EKEY)
    c.on_execution("ADDED", body("new", phase=None))
    assert await c.backlog.take() == RunKey("ns", "new")
    assert await c.backlog.take() == EKEY


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_the_delete_names_the_uid_and_version_judged_in_background_and_is_counted_and_forgotten() -> None:
    kube = Apiserver()
    c = controller(kube)
    c.on_execution("ADDED", body(ttl=1, finished=ago(5), uid="u-1"))
    before = sample("kubestep_operator_runs_deleted_total")
    await c.expire(EKEY)
    assert kube.requests == [
        (
            "DELETE",
            api.execution_path("ns", "r"),
            {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "propagationPolicy": "Background",
                "preconditions": {"uid": "u-1", "resourceVersion": "1"},
            },
        )
    ]
    assert sample("kubestep_operator_runs_deleted_total") == before + 1
    assert c.expiring == {} and EKEY not in c.failures
    await c.expire(EKEY)  # a second offer (the DELETED event still on its way): nothing more
    assert len(kube.requests) == 1


async def test_a_plan_superseded_before_the_write_is_not_acted_on() -> None:
    kube = Apiserver()
    c = controller(kube)
    c.on_execution("ADDED", body(ttl=1, finished=ago(5)))
    c.fire(EKEY)
    c.on_execution("MODIFIED", body(ttl=3600, finished=ago(5), rv="2"))  # lengthened meanwhile
    await c.expire(EKEY)
    assert kube.requests == [] and c.scheduler.due(EKEY) == c.expiring[KEY].at
    c.on_execution("ADDED", body(phase=None, uid="u-new", rv="3"))  # and then re-created under its name
    await c.expire(EKEY)
    assert kube.requests == [] and c.expiring == {}


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError(404, "gone"),  # deleted by someone else (or by this operator, the answer lost): done
        ConflictError(409, "Precondition failed: UID in precondition: u-1, UID in object meta: u-2"),  # or changed
        ForbiddenError(403, "cannot delete"),  # RBAC: said once, not retried for every run
    ],
    ids=["404", "409-another-run", "403"],
)
async def test_answers_that_a_retry_would_not_change_end_the_plan(error: ApiError) -> None:
    kube = Apiserver(error)
    c = controller(kube)
    c.on_execution("ADDED", body(ttl=0, finished=ago(1), uid="u-1"))
    before = sample("kubestep_operator_runs_deleted_total")
    await c.expire(EKEY)
    assert len(kube.requests) == 1 and c.expiring == {} and c.scheduler.due(EKEY) is None
    assert EKEY not in c.failures and sample("kubestep_operator_runs_deleted_total") == before


@pytest.mark.parametrize("error", [ApiError(503, "unavailable"), TransportError("connection reset")])
async def test_a_failed_delete_is_retried_with_backoff(error: Exception) -> None:
    kube = Apiserver(error)
    c = controller(kube)
    c.on_execution("ADDED", body(ttl=0, finished=ago(1)))
    await c.expire(EKEY)
    await c.expire(EKEY)
    assert c.failures[EKEY] == 2 and KEY in c.expiring
    due = c.scheduler.due(EKEY)
    assert due is not None and due > api.now()
    kube.error = None
    await c.expire(EKEY)
    assert c.expiring == {} and EKEY not in c.failures


async def test_a_run_changed_while_its_delete_was_refused_is_planned_again_on_that_change() -> None:
    c: Controller

    class Changing(Apiserver):
        """The run changes (its event arrives) while the DELETE is on its way: refused on the old version."""

        async def request(self, method: str, path: str, *, json_body: Any = None, **kw: Any) -> Any:
            if json_body["preconditions"].get("resourceVersion") == "1":
                c.on_execution("MODIFIED", body(ttl=0, finished=ago(1), rv="2"))
                self.error = ConflictError(409, "Precondition failed: ResourceVersion in precondition: 1")
            else:
                self.error = None
            return await super().request(method, path, json_body=json_body, **kw)

    kube = Changing()
    c = controller(kube)
    c.on_execution("ADDED", body(ttl=0, finished=ago(1)))
    c.fire(EKEY)
    assert await c.backlog.take() == EKEY
    await c.expire(EKEY)
    c.backlog.done(EKEY)
    assert c.expiring[KEY].resource_version == "2" and c.scheduler.due(EKEY) is not None  # planned again
    c.fire(EKEY)
    assert await c.backlog.take() == EKEY
    await c.expire(EKEY)
    assert [r[2]["preconditions"] for r in kube.requests] == [
        {"uid": "u-r", "resourceVersion": "1"},
        {"uid": "u-r", "resourceVersion": "2"},
    ]
    assert c.expiring == {}
