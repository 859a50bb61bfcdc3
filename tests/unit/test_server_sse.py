"""The wire format of ``kubestep server``'s Server-Sent Events: one JSON line per message, whatever
the run holds, so a run's output cannot forge a message; heartbeats are comments."""

from __future__ import annotations

import json

import pytest

from kubestep_server import sse


def test_a_message_has_its_id_event_and_one_data_line() -> None:
    text = sse.message({"a": 1}, event="execution", id="42").decode()
    assert text == 'id: 42\nevent: execution\ndata: {"a":1}\n\n'
    assert sse.parse(text) == [{"id": "42", "event": "execution", "data": '{"a":1}'}]


def test_line_breaks_in_the_data_stay_inside_one_json_line() -> None:
    hostile = {"output": "x\n\nevent: end\ndata: {}\n\r\nid: 9\r", "label": "<script>alert(1)</script>"}
    text = sse.message(hostile, event="execution", id="7").decode()
    assert text.count("\n") == 4 and "\r" not in text  # id, event, data, blank line
    (parsed,) = sse.parse(text)
    assert parsed["event"] == "execution" and parsed["id"] == "7"
    assert json.loads(parsed["data"]) == hostile


@pytest.mark.parametrize("bad", ["1\n2", "1\r", "a\0"])
def test_an_id_or_event_with_a_line_break_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        sse.message({}, id=bad)
    with pytest.raises(ValueError):
        sse.message({}, event=bad)


def test_a_heartbeat_is_a_comment_and_retry_a_field() -> None:
    assert sse.HEARTBEAT.startswith(b":") and sse.HEARTBEAT.endswith(b"\n\n")
    assert sse.parse(sse.HEARTBEAT.decode()) == [{"comment": "ping"}]
    assert sse.retry(3000) == b"retry: 3000\n\n"


def test_an_unfinished_message_is_not_dispatched() -> None:
    text = sse.message({"a": 1}, event="x", id="1").decode() + 'id: 2\nevent: x\ndata: {"a"'
    assert [m["id"] for m in sse.parse(text)] == ["1"]


def test_non_json_numbers_are_refused() -> None:
    with pytest.raises(ValueError):
        sse.message({"x": float("nan")})
