"""Bad input, tried systematically (issue 10): property-based tests against the real apiserver.

Every spec the API accepts ends in a clear phase; every spec it rejects is rejected with a message
that names the field; the SDK refuses, before sending, input the apiserver could not store (not JSON,
NaN and infinities, integers it would round, too large); a step that returns such a value fails
with an error that says so.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubestep import InvalidInputError, KubestepClient
from kubestep import _protocol as api
from kubestep._client import MAX_PAYLOAD_BYTES
from kubestep._errors import InvalidError
from kubestep._kube import Kube

from .harness import E2E, until_phase

pytestmark = pytest.mark.skipif(E2E, reason="hundreds of runs in throwaway namespaces: local control plane")

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
YEAR = 31_536_000  # the maximum of runTimeoutSeconds and queueTimeoutSeconds
NON_INTEGRAL = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer())
WRONG_TYPE = st.one_of(st.text(max_size=5), NON_INTEGRAL, st.booleans(), st.lists(st.integers(), max_size=2))
MISSING = object()


def _int_field(lo: int, hi: int | None) -> st.SearchStrategy[Any]:
    ok = st.integers(min_value=lo, max_value=hi if hi is not None else 2**63 - 1)
    bad = st.one_of(st.integers(max_value=lo - 1, min_value=-(2**63)), WRONG_TYPE)
    if hi is not None:
        bad = st.one_of(bad, st.integers(min_value=hi + 1, max_value=2**63 - 1))
    return st.one_of(st.just(MISSING), ok, bad)


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "workflow": st.one_of(
        st.text(min_size=1, max_size=253), st.just(""), st.text(min_size=254, max_size=300), st.integers()
    ),
    "runTimeoutSeconds": _int_field(1, YEAR),
    "queueTimeoutSeconds": _int_field(1, YEAR),
    "cancelGracePeriodSeconds": _int_field(0, 86400),
    "cancelRequested": st.one_of(st.just(MISSING), st.booleans(), st.text(max_size=3), st.integers()),
    "cancelReason": st.one_of(st.just(MISSING), st.text(max_size=1024), st.text(min_size=1025, max_size=1100)),
}


def _valid(field: str, value: Any) -> bool:
    """The CRD's schema, restated independently: the oracle."""
    if value is MISSING:
        return field != "workflow"
    if field == "workflow":
        return isinstance(value, str) and 1 <= len(value) <= 253
    if field == "cancelRequested":
        return isinstance(value, bool)
    if field == "cancelReason":  # no control characters (Unicode category Cc)
        return (
            isinstance(value, str)
            and len(value) <= 1024
            and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)
        )
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    lo, hi = {"runTimeoutSeconds": (1, YEAR), "queueTimeoutSeconds": (1, YEAR), "cancelGracePeriodSeconds": (0, 86400)}[
        field
    ]
    return lo <= value <= hi


class Plane:
    """A persistent event loop and client for synchronous hypothesis tests."""

    def __init__(self, namespace: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.namespace = namespace
        self.kube = Kube()
        self.accepted: list[tuple[str, dict[str, Any]]] = []

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.kube.aclose())
        self.loop.close()


@pytest.fixture
def plane(namespace: str) -> Iterator[Plane]:
    p = Plane(namespace)
    yield p
    p.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries(FIELDS), st.booleans())
def test_every_spec_is_accepted_or_rejected_naming_the_field(plane: Plane, fields: dict[str, Any], extra: bool) -> None:
    spec = {k: v for k, v in fields.items() if v is not MISSING}
    if extra:
        spec["notAField"] = 1  # unknown fields are pruned, never an error
    invalid = [f for f, v in fields.items() if not _valid(f, v)]
    if fields["cancelReason"] is not MISSING and fields["cancelRequested"] is not True and not invalid:
        invalid = ["cancelReason"]  # the CEL rule: a reason only with the cancel
    name = f"p-{uuid.uuid4().hex[:10]}"
    body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}
    try:
        obj = plane.run(plane.kube.create(api.execution_path(plane.namespace), body))
    except InvalidError as e:
        assert invalid, f"rejected a valid spec {spec}: {e}"
        assert any(f in str(e) for f in invalid), f"the message names none of {invalid}: {e}"
        return
    assert not invalid, f"accepted an invalid spec ({invalid}): {spec}"
    assert "notAField" not in obj["spec"]
    plane.accepted.append((name, spec))


async def test_every_accepted_spec_ends_in_a_clear_phase(namespace: str, client: KubestepClient) -> None:
    # The same generator, then each accepted run watched to a clear state: nobody serves these
    # workflows, so Queued/NoWorker, or Cancelled (Requested, or QueueTimeout).
    examples = []

    @settings(max_examples=40, deadline=None)
    @given(st.fixed_dictionaries(FIELDS))
    def collect(fields: dict[str, Any]) -> None:
        if all(_valid(f, v) for f, v in fields.items()) and (
            fields["cancelReason"] is MISSING or fields["cancelRequested"] is True
        ):
            examples.append({k: v for k, v in fields.items() if v is not MISSING})

    collect()
    assert examples
    names = []
    for spec in examples[:25]:
        spec = {**spec, "workflow": f"nobody-{uuid.uuid4().hex[:6]}"}
        if spec.get("queueTimeoutSeconds", 0) > 2:
            spec["queueTimeoutSeconds"] = 2
        name = f"q-{uuid.uuid4().hex[:10]}"
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": name}, "spec": spec}
        await client._kube.create(api.execution_path(namespace), body)
        names.append((name, spec))
    for name, spec in names:
        if spec.get("cancelRequested"):
            e = await until_phase(client, name, "Cancelled", timeout=30)
            assert e.status.reason == api.StopReason.REQUESTED
        elif spec.get("queueTimeoutSeconds"):
            e = await until_phase(client, name, "Cancelled", timeout=30)
            assert e.status.reason == api.StopReason.QUEUE_TIMEOUT and "queueTimeoutSeconds" in e.status.message
        else:
            e = await until_phase(client, name, "Queued", timeout=30)
            for _ in range(50):
                if e.status.reason == api.Reason.NO_WORKER:
                    break
                await asyncio.sleep(0.1)
                e = await client.get_execution(name)
            assert e.status.reason == api.Reason.NO_WORKER and "no live worker serves" in e.status.message


JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), st.just("x" * 600_000)
)
PAYLOADS = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=12,
)


def _storable(value: Any) -> bool:
    try:
        encoded = json.dumps(value, allow_nan=False)
    except ValueError:
        return False

    def ints_ok(v: Any) -> bool:
        if isinstance(v, bool):
            return True
        if isinstance(v, int):
            return -(2**63) <= v < 2**63
        if isinstance(v, dict):
            return all(ints_ok(x) for x in v.values())
        if isinstance(v, list):
            return all(ints_ok(x) for x in v)
        return True

    return ints_ok(value) and len(encoded) <= MAX_PAYLOAD_BYTES


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=0, abs_tol=0)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(PAYLOADS)
def test_the_sdk_refuses_before_sending_what_the_apiserver_cannot_store(plane: Plane, payload: Any) -> None:
    async def start() -> Any:
        async with KubestepClient(namespace=plane.namespace) as c:
            h = await c.start("nobody-serves-this", payload)
            return (await c.get_execution(h.id)).input

    if not _storable(payload):
        with pytest.raises(InvalidInputError) as e:
            plane.run(start())
        assert "not JSON" in str(e.value) or "limit is" in str(e.value) or "64-bit" in str(e.value)
        return
    stored = plane.run(start())
    assert _same(stored, payload), (stored, payload)  # stored exactly, nothing lost or rounded


@pytest.mark.parametrize(
    ("kind", "reason", "said"),
    [
        ("nan", "WorkflowError", "not JSON: Out of range float values are not JSON compliant"),
        ("infinity", "WorkflowError", "not JSON: Out of range float values are not JSON compliant"),
        ("a set", "WorkflowError", "not JSON: Object of type set is not JSON serializable"),
        ("huge", "WorkerError", "would outgrow what the apiserver stores"),
    ],
)
async def test_a_step_returning_what_cannot_be_stored_fails_clearly(
    client: KubestepClient, workers: Any, kind: str, reason: str, said: str
) -> None:
    workers(module="tests.workflows")
    h = await client.start("emits", {"kind": kind})
    e = await until_phase(client, h.id, "Failed", "Completed", timeout=30)
    assert e.status.phase == "Failed" and e.status.reason == reason, e.status
    assert said in e.status.message, e.status.message


async def test_deeply_nested_step_outputs_are_stored(client: KubestepClient, workers: Any) -> None:
    workers(module="tests.workflows")
    h = await client.start("emits", {"kind": "deep"})
    e = await until_phase(client, h.id, "Completed", "Failed", timeout=30)
    assert e.status.phase == "Completed", e.status
    depth, value = 0, e.status.result
    while isinstance(value, dict):
        depth, value = depth + 1, value["d"]
    assert (depth, value) == (100, "bottom")
