"""The informer's rules (``kubestep._informer``) over a scripted transport: every failure in every
position, with a clock that only the informer's own sleeps move. No cluster; the same rules are
tried against a real apiserver through a fault-injecting proxy in ``tests/test_informer_faults.py``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kubestep._errors import ApiError, ForbiddenError, TransportError
from kubestep._informer import Backoff, Change, Informer


class Finished(BaseException):
    """The script ran out: ends the informer's endless loop (a BaseException, so it is not caught)."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def obj(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": rv}}


def event(kind: str, name: str, rv: str) -> dict[str, Any]:
    return {"type": kind, "object": obj(name, rv)}


def bookmark(rv: str) -> dict[str, Any]:
    return {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": rv}}}


def gone_event() -> dict[str, Any]:
    return {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old resource version"}}


class Script:
    """A scripted apiserver. Each step answers one call, in order:

    * ``("list", [names], rv)`` or ``("list", [names], rv, "token")`` (a page with a continue token),
      or ``("list", exc)``;
    * ``("watch", [event | seconds, ...])`` ends as the server ends a watch; ``("watch", [...], exc)``
      raises ``exc`` after the events; a float among the events moves the clock (time passes).
    """

    def __init__(self, clock: Clock, steps: list[tuple[Any, ...]]) -> None:
        self.clock = clock
        self.steps = list(steps)
        # ("list", continue token) or ("watch", rv): the calls the script answered (not the last one,
        # which ends the play)
        self.calls: list[tuple[str, str | None]] = []

    def _next(self, what: str) -> tuple[Any, ...]:
        if not self.steps:
            raise Finished()
        step = self.steps.pop(0)
        assert step[0] == what, f"the informer asked to {what}, the script expected {step[0]} ({step})"
        return step

    async def get_sized(self, path: str, params: dict[str, Any] | None = None) -> tuple[Any, int]:
        step = self._next("list")
        self.calls.append(("list", (params or {}).get("continue")))
        if isinstance(step[1], BaseException):
            raise step[1]
        names, rv = step[1], step[2]
        meta: dict[str, Any] = {"resourceVersion": rv}
        if len(step) > 3:
            meta["continue"] = step[3]
        return {"metadata": meta, "items": [obj(n, rv) for n in names]}, 100

    def watch(
        self,
        path: str,
        resource_version: str,
        params: dict[str, Any] | None = None,
        timeout_seconds: int = 300,
        idle_seconds: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        assert 300 <= timeout_seconds <= 600
        step = self._next("watch")
        self.calls.append(("watch", resource_version))
        return self._stream(step)

    async def _stream(self, step: tuple[Any, ...]) -> AsyncIterator[dict[str, Any]]:
        for item in step[1]:
            if isinstance(item, float):
                self.clock.now += item
            else:
                yield item
        if len(step) > 2:
            raise step[2]

    @property
    def lists(self) -> int:
        return sum(1 for kind, token in self.calls if kind == "list" and token is None)

    def watched_from(self) -> list[str | None]:
        return [rv for kind, rv in self.calls if kind == "watch"]


async def play(steps: list[tuple[Any, ...]], **kw: Any) -> tuple[Informer, Script, Clock, list[Change]]:
    clock = Clock()
    script = Script(clock, steps)
    seen: list[Change] = []
    informer = Informer(
        script,
        "/apis/x/v1/namespaces/ns/things",
        seen.append,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(7),
        backoff=Backoff(clock=clock, rng=random.Random(7)),
        **kw,
    )
    with pytest.raises(Finished):
        await informer.run()
    return informer, script, clock, seen


CUT = TransportError("connection reset by peer")


async def test_a_watch_the_server_ends_is_resumed_from_its_last_resource_version() -> None:
    informer, script, clock, seen = await play(
        [
            ("list", ["a"], "10"),
            ("watch", [event("MODIFIED", "a", "11"), 300.0]),
            ("watch", [bookmark("15"), 300.0]),
            ("watch", [300.0]),
        ]
    )
    assert script.watched_from() == ["10", "11", "15"]
    assert script.lists == 1 and informer.lists == 1
    assert clock.sleeps == []  # healthy watches are resumed at once
    assert [(c.kind, c.key, c.listed) for c in seen] == [("ADDED", ("ns", "a"), True), ("MODIFIED", ("ns", "a"), False)]


async def test_a_connection_cut_mid_watch_resumes_at_once_without_a_list() -> None:
    _informer, script, clock, _ = await play(
        [
            ("list", ["a"], "10"),
            ("watch", [event("MODIFIED", "a", "12")], CUT),
            ("watch", [5.0], CUT),  # open for a while with nothing in it: healthy too
            ("watch", [event("DELETED", "a", "13")]),
        ]
    )
    assert script.watched_from() == ["10", "12", "12"]
    assert script.lists == 1
    assert clock.sleeps == []


@pytest.mark.parametrize(
    "failure",
    [
        CUT,
        ForbiddenError(403, "watch is forbidden", None),
        ApiError(429, "too many requests", None),
        ApiError(500, "etcd leader changed", None),
    ],
    ids=["transport", "403", "429", "500"],
)
async def test_a_watch_that_cannot_be_opened_backs_off_and_never_lists_again(failure: Exception) -> None:
    """RBAC that allows list but not watch, an APF-rejected watch, a proxy that drops long requests:
    the old operator informer re-listed every object twice a second for ever."""
    _informer, script, clock, _ = await play([("list", ["a", "b"], "10")] + [("watch", [], failure)] * 12)
    assert script.lists == 1
    assert set(script.watched_from()) == {"10"}
    assert len(clock.sleeps) == 12
    assert all(later >= earlier for earlier, later in zip(clock.sleeps, clock.sleeps[1:], strict=False))
    assert clock.sleeps[0] < 2 and 15 <= clock.sleeps[-1] <= 30


async def test_an_error_event_other_than_410_backs_off_and_resumes() -> None:
    error = {"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "internal error"}}
    _, script, clock, _ = await play(
        [("list", ["a"], "10"), ("watch", [event("MODIFIED", "a", "11"), error]), ("watch", [60.0])]
    )
    assert script.watched_from() == ["10", "11"]
    assert script.lists == 1 and len(clock.sleeps) == 1


async def test_a_watch_that_ends_at_once_with_nothing_in_it_backs_off() -> None:
    _, script, clock, _ = await play([("list", [], "10")] + [("watch", [])] * 5)
    assert script.lists == 1
    assert len(clock.sleeps) == 5 and clock.sleeps[-1] > clock.sleeps[0]


@pytest.mark.parametrize("how", ["event", "http"])
async def test_410_lists_again_at_once_after_a_quiet_spell(how: str) -> None:
    gone: tuple[Any, ...] = (
        ("watch", [event("MODIFIED", "a", "11"), 200.0, gone_event()])
        if how == "event"
        else ("watch", [], ApiError(410, "too old resource version", None))
    )
    informer, script, clock, seen = await play([("list", ["a"], "10"), gone, ("list", ["b"], "50"), ("watch", [60.0])])
    assert script.lists == 2 and informer.lists == 2
    assert clock.sleeps == []
    assert script.watched_from() == ["10", "50"]
    assert [c.key[1] for c in seen if c.listed] == ["a", "b"]


async def test_410_right_after_every_list_backs_off_more_each_time() -> None:
    steps: list[tuple[Any, ...]] = []
    for i in range(8):
        steps += [("list", ["a"], str(10 + i)), ("watch", [gone_event()])]
    _, script, clock, _ = await play(steps)
    assert script.lists == 8
    assert clock.sleeps[0] > 0.5 and clock.sleeps[-1] >= 15  # the first re-list was at once; then growing
    assert len(clock.sleeps) == 7


async def test_a_failure_right_after_each_list_does_not_reset_the_backoff() -> None:
    """The old informer reset its failure count after every successful list."""
    steps: list[tuple[Any, ...]] = []
    for i in range(8):
        steps += [("list", ["a"], str(10 + i)), ("watch", [], ApiError(410, "gone", None))]
    _, _, clock, _ = await play(steps)
    assert clock.sleeps[-1] >= 15


async def test_the_backoff_starts_again_only_after_two_quiet_minutes() -> None:
    _, _, clock, _ = await play(
        [("list", [], "10")]
        + [("watch", [], CUT)] * 4
        + [("watch", [event("ADDED", "a", "11"), 100.0], CUT)]  # healthy for 100 s: not long enough
        + [("watch", [], CUT)]
        + [("watch", [event("ADDED", "b", "12"), 130.0], CUT)]  # 130 s without a failure
        + [("watch", [], CUT)]
    )
    first, fifth, after_quiet = clock.sleeps[0], clock.sleeps[4], clock.sleeps[5]
    assert fifth > first * 8
    assert after_quiet < 1.6  # 0.8 s, jittered by up to itself


async def test_backoff_is_capped_and_jittered() -> None:
    clock = Clock()
    backoff = Backoff(clock=clock, rng=random.Random(1))
    delays = [backoff.next() for _ in range(20)]
    assert max(delays) == 30.0
    assert 0.8 <= delays[0] <= 1.6
    assert len(set(delays[:5])) == 5


@pytest.mark.parametrize(
    "failure",
    [CUT, ApiError(500, "internal", None), ApiError(429, "slow down", None), KeyError("metadata")],
    ids=["transport", "500", "429", "garbled"],
)
@pytest.mark.parametrize("page", ["first", "continue"])
async def test_a_failed_list_page_lists_again_from_the_start_after_a_backoff(failure: Exception, page: str) -> None:
    steps: list[tuple[Any, ...]] = (
        [("list", failure)] if page == "first" else [("list", ["a"], "10", "tok"), ("list", failure)]
    )
    informer, script, clock, _seen = await play(
        [*steps, ("list", ["a"], "10", "tok2"), ("list", ["b"], "10"), ("watch", [60.0])], page=1
    )
    assert len(clock.sleeps) == 1
    assert script.calls[-3:] == [("list", None), ("list", "tok2"), ("watch", "10")]
    assert informer.lists == 1 and informer.listed.is_set()


async def test_an_expired_continue_token_lists_again() -> None:
    _informer, script, _, _ = await play(
        [
            ("list", ["a"], "10", "tok"),
            ("list", ApiError(410, "continue token expired", None)),
            ("list", ["a"], "20", "tok2"),
            ("list", ["b"], "20"),
            ("watch", [60.0]),
        ],
        page=1,
    )
    assert [c for c in script.calls if c[0] == "list"] == [
        ("list", None),
        ("list", "tok"),
        ("list", None),
        ("list", "tok2"),
    ]
    assert script.watched_from() == ["20"]


async def test_a_garbled_event_resumes_from_the_last_good_resource_version() -> None:
    garbled = {"type": "MODIFIED", "object": {"kind": "Status"}}  # no metadata
    _, script, clock, _ = await play(
        [("list", ["a"], "10"), ("watch", [event("MODIFIED", "a", "11"), garbled]), ("watch", [60.0])]
    )
    assert script.watched_from() == ["10", "11"] and script.lists == 1 and len(clock.sleeps) == 1


async def test_what_a_handler_raises_concerns_that_object_alone() -> None:
    clock = Clock()
    script = Script(clock, [("list", ["bad", "good"], "10"), ("watch", [event("MODIFIED", "bad", "11")])])
    delivered: list[str] = []
    failed: list[str] = []

    def handle(change: Change) -> None:
        if change.key[1] == "bad":
            raise RuntimeError("boom")
        delivered.append(change.key[1])

    informer = Informer(
        script,
        "/things",
        handle,
        on_error=lambda change, e: failed.append(change.key[1]),
        sleep=clock.sleep,
        clock=clock,
        backoff=Backoff(clock=clock),
    )
    with pytest.raises(Finished):
        await informer.run()
    assert delivered == ["good"] and failed == ["bad", "bad"]
    assert script.watched_from() == ["10"] and informer.resource_version == "11"


async def test_every_list_reports_the_keys_it_held() -> None:
    listed: list[set[tuple[str, str]]] = []
    informer, _, _, _ = await play(
        [("list", ["a", "b"], "10"), ("watch", [gone_event()]), ("list", ["b"], "20"), ("watch", [60.0])],
        on_listed=listed.append,
    )
    assert listed == [{("ns", "a"), ("ns", "b")}, {("ns", "b")}]
    assert informer.listed.is_set()


async def test_it_stops_when_cancelled() -> None:
    clock = Clock()

    class Forever(Script):
        async def _stream(self, step: tuple[Any, ...]) -> AsyncIterator[dict[str, Any]]:
            await asyncio.Event().wait()
            yield {}

    script = Forever(clock, [("list", [], "1"), ("watch", [])])
    informer = Informer(script, "/things", lambda c: None, sleep=clock.sleep, clock=clock)
    task = asyncio.create_task(informer.run())
    await informer.listed.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_it_says_it_is_blind_from_a_failure_until_something_comes_again() -> None:
    """The worker reads its held runs itself while its watch is blind (``Worker._read_while_blind``)."""
    blind_at: list[bool] = []
    informer: Informer | None = None

    def note(change: Change) -> None:
        assert informer is not None
        blind_at.append(informer.blind)

    clock = Clock()
    script = Script(
        clock,
        [
            ("list", ["a"], "10"),
            ("watch", [], ApiError(500, "etcd leader changed", None)),  # failed: blind...
            ("watch", [event("MODIFIED", "a", "11")]),  # ... until this event
        ],
    )

    async def sleep(seconds: float) -> None:  # the backoff after the failed watch
        assert informer is not None
        blind_at.append(informer.blind)
        await clock.sleep(seconds)

    informer = Informer(
        script, "/apis/x/v1/namespaces/ns/things", note, sleep=sleep, clock=clock,
        rng=random.Random(7), backoff=Backoff(clock=clock, rng=random.Random(7)),
    )  # fmt: skip
    assert not informer.blind
    with pytest.raises(Finished):
        await informer.run()
    assert blind_at == [False, True, False], "blind from the failure until the event came"
    assert informer.last_failure >= 0 and not informer.blind
    informer.last_failure = clock() + 1  # a failure after the last contact
    assert informer.blind
