"""Collecting StepBatches (``kubestep_operator.collecting``): which batches go, in which requests, and
what the operator's view of runs says of each run in them. No cluster: pure functions, the
controller's stores fed by hand, and sweeps over a scripted apiserver."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any, cast

import pytest

from kubestep import _protocol as api
from kubestep._errors import ApiError, ForbiddenError, NotFoundError
from kubestep._informer import Informer
from kubestep._kube import Kube
from kubestep._protocol import batches as b
from kubestep_operator import collecting as c
from kubestep_operator.controller import Controller
from kubestep_operator.watching import Scope

NOW = 1_000_000.0  # unix s
OLD = int(NOW // b.EPOCH_SECONDS) - 10  # an epoch that ended 90 s ago
RECENT = int(NOW // b.EPOCH_SECONDS) - 3  # ended 20 s ago


def seen(
    name: str,
    garbage: bool | None,
    *,
    worker: str | None = "w1",
    epoch: int | str | None = OLD,
    ns: str = "ns",
    created: float | None = None,
) -> c.Seen:
    return c.Seen(ns, name, f"uid-{name}", worker, None if epoch is None else str(epoch), created, garbage)


# ----- the plan: grouped deletes, stragglers --------------------------------------------------


def test_a_group_all_garbage_and_settled_goes_in_one_request() -> None:
    p = c.plan([seen("a", True), seen("b", True), seen("c", True, worker="w2")], NOW)
    assert sorted((g.worker, g.names) for g in p.groups) == [("w1", ("a", "b")), ("w2", ("c",))]
    assert p.singles == [] and len(p) == 3
    g = next(g for g in p.groups if g.worker == "w1")
    assert g.selector == f"{b.LABEL_BATCH_WORKER}=w1,{b.LABEL_EPOCH}={OLD}"
    assert g.namespace == "ns"


def test_a_group_waits_until_its_epoch_ended_a_minute_ago() -> None:
    assert len(c.plan([seen("a", True, epoch=RECENT)], NOW)) == 0
    # (epoch + 1) * EPOCH_SECONDS < now - 60, strictly
    edge = int((NOW - 60) // b.EPOCH_SECONDS) - 1
    assert (edge + 1) * b.EPOCH_SECONDS == NOW - 60
    assert len(c.plan([seen("a", True, epoch=edge)], NOW)) == 0
    assert len(c.plan([seen("a", True, epoch=edge - 1)], NOW)) == 1


def test_one_needed_or_unknown_batch_holds_its_group_back_and_the_others_go_alone_after_ten_minutes() -> None:
    for holder in (False, None):
        group = [seen("a", True), seen("b", holder), seen("c", True)]
        assert len(c.plan(group, NOW)) == 0  # 90 s old: neither as a group nor as stragglers
        stale = int((NOW - 601) // b.EPOCH_SECONDS)
        p = c.plan([seen("a", True, epoch=stale), seen("b", holder, epoch=stale), seen("c", True, epoch=stale)], NOW)
        assert p.groups == [] and sorted(s.name for s in p.singles) == ["a", "c"]


def test_groups_are_per_namespace_worker_and_epoch() -> None:
    p = c.plan(
        [seen("a", True), seen("b", True, ns="other"), seen("c", True, epoch=OLD - 1), seen("d", False, epoch=OLD - 1)],
        NOW,
    )
    assert sorted((g.namespace, g.epoch, g.names) for g in p.groups) == [
        ("ns", str(OLD), ("a",)),
        ("other", str(OLD), ("b",)),
    ]


def test_a_batch_without_worker_or_epoch_label_is_never_grouped_and_goes_alone_by_its_age() -> None:
    young, old = NOW - 100, NOW - 700
    batches = [
        seen("no-worker", True, worker=None, epoch=int(old // b.EPOCH_SECONDS)),
        seen("no-epoch", True, epoch=None, created=old),
        seen("bad-epoch", True, epoch="soon", created=old),
        seen("young", True, epoch=None, created=young),
        seen("unknown-age", True, epoch=None, created=None),
        seen("needed", False, epoch=None, created=old),
    ]
    p = c.plan(batches, NOW)
    assert p.groups == [] and sorted(s.name for s in p.singles) == ["bad-epoch", "no-epoch", "no-worker"]


# ----- the verdict on one batch -----------------------------------------------------------


def labels(*members: tuple[str, str], worker: str = "w1", epoch: int = OLD) -> dict[str, str]:
    out = {b.LABEL_BATCH_WORKER: worker, b.LABEL_EPOCH: str(epoch), "app": "x"}
    out.update({b.member_label(uid): value for uid, value in members})
    return out


def lookup(statuses: dict[str, Any]) -> c.Lookup:
    return lambda uid: statuses.get(uid, c.UNKNOWN)


def test_verdict_follows_the_rule_for_every_member() -> None:
    statuses = {
        "done": {"journalLsn": 7, "attempt": 1},  # checkpointed past it
        "gone": None,
        "later": {"journalLsn": 2, "attempt": 3},  # a later attempt holds it, no fence
        "open": {"journalLsn": 2, "attempt": 1},  # its attempt still open, status behind
        "fenced": {"journalLsn": 2, "attempt": 2, "journalFences": [{"attempt": 1, "lsn": 5}]},
    }
    see = lookup(statuses)
    assert c.verdict(labels(("done", "1.7"), ("gone", "1.3"), ("later", "2.9")), see) is True
    assert c.verdict(labels(("done", "1.7"), ("open", "1.3")), see) is False
    assert c.verdict(labels(("fenced", "1.5")), see) is False
    assert c.verdict(labels(("done", "1.8")), see) is False  # one record past the checkpoint


def test_an_unknown_run_leaves_the_batch_undecided_unless_another_needs_it() -> None:
    see = lookup({"done": {"journalLsn": 7, "attempt": 1}, "open": {"journalLsn": 0, "attempt": 1}})
    assert c.verdict(labels(("done", "1.7"), ("new", "1.1")), see) is None
    assert c.verdict(labels(("open", "1.3"), ("new", "1.1")), see) is False


def test_a_member_label_the_rule_cannot_read_keeps_the_batch() -> None:
    see = lookup({"done": {"journalLsn": 7, "attempt": 1}})
    assert c.verdict(labels(("done", "1.7"), ("odd", "x")), see) is False
    assert c.verdict({b.LABEL_BATCH_WORKER: "w1"}, see) is True  # no member at all: nothing anyone reads


# ----- the view of runs -------------------------------------------------------------------


def run(ns: str, name: str, uid: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "uid": uid, "resourceVersion": "1", "generation": 1},
        "spec": {"workflow": "wf"},
        "status": status or {},
    }


def test_journals_know_each_runs_journal_fields_and_remember_deletions() -> None:
    clock = [100.0]
    j = c.Journals(clock=lambda: clock[0])
    j.seen("ADDED", run("ns", "a", "ua", {"journalLsn": 3, "attempt": 1, "phase": "Running", "steps": [1]}))
    assert j.known == {"ua": {"journalLsn": 3, "attempt": 1}}
    j.seen("DELETED", run("ns", "a", "ua"))
    assert j.known == {} and j.gone == {"ua": 100.0}
    # a new run under an old name: the old one is gone
    j.seen("ADDED", run("ns", "b", "ub1"))
    j.seen("ADDED", run("ns", "b", "ub2"))
    assert set(j.known) == {"ub2"} and "ub1" in j.gone
    # a re-list that no longer holds a run: deleted while the watch was down; other scopes untouched
    j.seen("ADDED", run("ns", "c", "uc"))
    j.seen("ADDED", run("elsewhere", "d", "ud"))
    j.listed(lambda ns: ns == "ns", {("ns", "b")})
    assert set(j.known) == {"ub2", "ud"} and "uc" in j.gone
    clock[0] += c.TOMBSTONE + 1
    j.seen("DELETED", run("ns", "b", "ub2"))
    j.prune()
    assert set(j.gone) == {"ub2"}


def test_an_unknown_run_is_gone_only_once_the_informer_heard_well_after_the_batch() -> None:
    j = c.Journals()
    j.seen("ADDED", run("ns", "a", "ua", {"journalLsn": 1}))
    j.seen("DELETED", run("ns", "d", "ud"))
    created = NOW - 1000
    fresh = j.lookup(created, heard=created + c.HEARD_AFTER - 1)
    assert fresh("ua") == {"journalLsn": 1} and fresh("ud") is None and fresh("new") is c.UNKNOWN
    assert j.lookup(created, heard=created + c.HEARD_AFTER)("new") is None
    assert j.lookup(None, heard=NOW)("new") is c.UNKNOWN  # no creation time: cannot tell


def controller(*scope: Scope) -> Controller:
    offline = cast(Kube, object())
    return Controller(
        kube=offline,
        watch=offline,
        scopes=list(scope) or [Scope(None)],
        lease_grace=api.now() + dt.timedelta(seconds=15),
    )


def test_the_controller_keeps_finished_runs_for_the_collector_and_forgets_deleted_ones() -> None:
    ctl = controller(Scope("ns"))
    ctl.on_execution("ADDED", run("ns", "done", "u1", {"phase": "Completed", "journalLsn": 9, "attempt": 1}))
    ctl.on_execution("ADDED", run("ns", "live", "u2", {"phase": "Queued"}))
    assert set(ctl.executions) == {next(k for k in ctl.executions if k.name == "live")}  # only the unfinished
    assert ctl.journals.known["u1"] == {"journalLsn": 9, "attempt": 1} and "u2" in ctl.journals.known
    ctl.on_execution("DELETED", run("ns", "done", "u1"))
    ctl.executions_listed(Scope("ns"), set())
    assert ctl.journals.known == {} and set(ctl.journals.gone) == {"u1", "u2"}


# ----- a sweep over a scripted apiserver ---------------------------------------------------


class FakeKube:
    """Answers the collector's requests from a list of batches' metadata; records every request."""

    def __init__(self, items: list[dict[str, Any]], rv: str = "42", page: int = 2) -> None:
        self.items, self.rv, self.page = items, rv, page
        self.calls: list[tuple[str, str, dict[str, Any], Any, str | None]] = []
        self.fail: ApiError | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        accept: str | None = None,
    ) -> Any:
        params = dict(params or {})
        self.calls.append((method, path, params, json_body, accept))
        if self.fail is not None:
            raise self.fail
        if method == "GET":
            start = int(params.get("continue") or 0)
            chunk = self.items[start : start + self.page]
            more = start + self.page < len(self.items)
            meta = {"resourceVersion": self.rv, **({"continue": str(start + self.page)} if more else {})}
            return {"kind": "PartialObjectMetadataList", "metadata": meta, "items": chunk}
        if method == "DELETE" and "labelSelector" in params:
            sel = dict(kv.split("=") for kv in params["labelSelector"].split(","))
            ns = path.split("/namespaces/")[1].split("/")[0]
            gone = [
                i
                for i in self.items
                if i["metadata"]["namespace"] == ns and all(i["metadata"]["labels"].get(k) == v for k, v in sel.items())
            ]
            return {"kind": "PartialObjectMetadataList", "items": gone}
        return {"kind": "PartialObjectMetadata"}


def meta(name: str, ns: str, members: dict[str, str], *, epoch: int = OLD, worker: str = "w1") -> dict[str, Any]:
    created = dt.datetime.fromtimestamp(NOW - 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"batch-{name}",
            "creationTimestamp": created,
            "labels": labels(*members.items(), worker=worker, epoch=epoch),
        }
    }


def collector(kube: FakeKube, scope: Scope, journals: c.Journals) -> c.Collector:
    informer = Informer(cast(Any, None), "/runs", lambda change: None)
    informer.listed.set()
    return c.Collector(cast(Kube, kube), [scope], journals, {scope: informer}, 15.0, clock=lambda: NOW)


async def test_a_sweep_deletes_settled_groups_by_label_at_its_lists_version_and_stragglers_by_uid() -> None:
    j = c.Journals()
    j.seen("ADDED", run("ns", "done", "done", {"journalLsn": 9, "attempt": 1}))
    j.seen("ADDED", run("ns", "open", "open", {"journalLsn": 1, "attempt": 1}))
    stale = int((NOW - 700) // b.EPOCH_SECONDS)
    kube = FakeKube(
        [
            meta("g1", "ns", {"done": "1.5"}),
            meta("g2", "ns", {"done": "1.9"}),
            meta("held", "ns", {"open": "1.4"}, epoch=stale),
            meta("straggler", "ns", {"done": "1.9"}, epoch=stale),
            meta("young", "ns", {"done": "1.9"}, epoch=RECENT),
            meta("theirs", "not-ours", {"done": "1.9"}),
        ]
    )
    before = c.measuring.BATCHES_COLLECTED._value.get()
    assert await collector(kube, Scope(None, ("ns",)), j).sweep() == 3
    assert c.measuring.BATCHES_COLLECTED._value.get() - before == 3
    gets = [call for call in kube.calls if call[0] == "GET"]
    assert gets[0][1] == f"/apis/{api.GROUP}/{api.VERSION}/stepbatches" and len(gets) == 3  # paged, cluster-wide
    assert all(call[4] == c.ACCEPT_LIST for call in gets) and gets[1][2]["continue"] == "2"
    deletes = [call for call in kube.calls if call[0] == "DELETE"]
    assert [(d[1], d[2], d[4]) for d in deletes] == [
        (
            b.batch_path("ns"),
            {
                "labelSelector": f"{b.LABEL_BATCH_WORKER}=w1,{b.LABEL_EPOCH}={OLD}",
                "resourceVersion": "42",
                "resourceVersionMatch": "Exact",
            },
            c.ACCEPT_LIST,
        ),
        (b.batch_path("ns", "straggler"), {}, c.ACCEPT_ONE),
    ]
    assert deletes[1][3]["preconditions"] == {"uid": "batch-straggler"}


async def test_a_scope_whose_runs_are_not_listed_yet_is_not_swept() -> None:
    kube = FakeKube([meta("g1", "ns", {"gone": "1.5"})])
    col = collector(kube, Scope("ns"), c.Journals())
    col.informers[Scope("ns")].listed.clear()
    assert await col.sweep() == 0 and kube.calls == []


@pytest.mark.parametrize("error", [NotFoundError(404, "not found"), ForbiddenError(403, "forbidden")])
async def test_a_missing_crd_or_rbac_is_said_once_and_the_sweeps_go_on(
    error: ApiError, caplog: pytest.LogCaptureFixture
) -> None:
    kube = FakeKube([meta("g1", "ns", {"gone": "1.5"})])
    kube.fail = error
    j = c.Journals()
    j.seen("DELETED", run("ns", "gone", "gone"))
    col = collector(kube, Scope("ns"), j)
    with caplog.at_level(logging.DEBUG, logger="kubestep.operator"):
        for _ in range(3):
            assert await col.sweep() == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(error.status_code) in warnings[0].getMessage()
    kube.fail = None
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kubestep.operator"):
        assert await col.sweep() == 1
    assert [r.getMessage() for r in caplog.records] == ["collected 1 StepBatches no run needs any more"]


async def test_the_loop_outlives_a_failing_sweep() -> None:
    kube = FakeKube([])
    col = collector(kube, Scope("ns"), c.Journals())
    col.interval = 0.01
    calls = [0]

    async def broken() -> int:
        calls[0] += 1
        raise RuntimeError("a bug")

    col.sweep = broken  # type: ignore[method-assign]
    task = asyncio.create_task(col.run())
    while calls[0] < 3:
        await asyncio.sleep(0.01)
    assert not task.done()
    task.cancel()
