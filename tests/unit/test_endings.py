"""How a held run ends, as its holder writes it (``_worker/endings.py``): pure."""

from __future__ import annotations

import datetime as dt
from typing import Any

from kubestep import _protocol as api
from kubestep._worker import endings

T = dt.datetime(2026, 11, 26, 2, 0, 0, tzinfo=dt.UTC)


def run(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "r", "generation": 2, "managedFields": []}, "spec": {"workflow": "w", **(spec or {})}}


def test_a_hard_stop_names_what_the_grace_period_cut_off() -> None:
    holder = endings.Holder("w1", run({"cancelRequested": True}), "a", True, ("b", "c"), 5)
    patch = endings.cancelled({}, holder, api.StopReason.REQUESTED, T, T)
    assert patch["reason"] == api.Reason.GRACE_EXPIRED
    assert "'b', 'c' did not finish within the grace period of 5 s and were interrupted" in patch["message"]
    assert patch["cancellation"]["requestedAt"] == api.fmt_time(T) and patch["cancellation"]["acknowledgedBy"] == "w1"


def test_the_operators_cancellation_is_kept_and_a_users_reason_is_said() -> None:
    canc = {"reason": "Requested", "message": "wrong input", "requestedAt": "2026-11-26T01:59:00.000000Z"}
    patch = endings.cancelled({"cancellation": canc}, endings.Holder("w1", run(), "a"), "Requested", T, T)
    assert patch["cancellation"]["requestedAt"] == canc["requestedAt"]
    assert patch["message"] == "cancellation requested (wrong input); stopped at the step boundary after step 'a'"


def test_a_run_timeout_noted_by_the_holder_is_recorded_as_of_its_deadline() -> None:
    deadline = T - dt.timedelta(seconds=1)
    status = {"deadline": api.fmt_time(deadline)}
    patch = endings.cancelled(status, endings.Holder("w1", run({"runTimeoutSeconds": 3})), "RunTimeout", T, T)
    assert patch["cancellation"]["requestedAt"] == api.fmt_time(deadline)
    assert patch["message"].startswith("run exceeded runTimeoutSeconds=3 of continuous running time; stopped before")


def test_a_hand_back_keeps_the_budget_left_or_ends_a_spent_one() -> None:
    holder = endings.Holder("w1", run({"runTimeoutSeconds": 10}))
    left = endings.handed_back({"deadline": api.fmt_time(T + dt.timedelta(seconds=4))}, holder, T)
    assert left["phase"] == api.Phase.QUEUED and left["budgetRemainingSeconds"] == 4.0
    spent = endings.handed_back({"deadline": api.fmt_time(T)}, holder, T)
    assert spent["phase"] == api.Phase.CANCELLED and spent["reason"] == api.StopReason.RUN_TIMEOUT


def test_a_wait_record_and_its_message() -> None:
    rec = endings.wait_record("approval", None, "approved", T)
    assert rec["kind"] == "Event" and rec["state"] == api.StepState.WAITING and "wakeAt" not in rec
    assert endings.waiting_message("approval", None, "approved") == "waiting on event 'approved'"
    assert endings.waiting_message("nap", T, None) == f"waiting on 'nap' until {api.fmt_time(T)}"
