"""The wire format of Server-Sent Events (the WHATWG HTML standard, "Server-sent events"), pure.

A message is ``id:``, ``event:`` and ``data:`` lines and a blank line; a line starting with ``:``
is a comment, which the browser's ``EventSource`` ignores: the heartbeat. A field value must not
hold a line break (it would end the field and start another: a forged ``event:`` line), so ``id``
and ``event`` are refused if they do, and ``data`` is JSON on one line (``json.dumps`` escapes
every line break inside strings).
"""

from __future__ import annotations

import json
from typing import Any

#: Sent after a stretch without messages: keeps proxies from closing an idle stream, and shows the
#: server when a client has gone (the write fails).
HEARTBEAT = b": ping\n\n"

#: The media type of a stream.
CONTENT_TYPE = "text/event-stream"


def _field(name: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"an SSE {name} cannot hold a line break or NUL: {value!r}")
    return f"{name}: {value}\n"


def message(data: Any, *, event: str | None = None, id: str | None = None) -> bytes:
    """One event: ``data`` as JSON on one line, with its ``event`` name and ``id`` if given. The
    browser keeps the last ``id`` and sends it back as ``Last-Event-ID`` when it reconnects."""
    out = ""
    if id is not None:
        out += _field("id", id)
    if event is not None:
        out += _field("event", event)
    out += "data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n\n"
    return out.encode()


def raw_message(data: bytes, *, event: str | None = None, id: str | None = None) -> bytes:
    """``message`` for ``data`` already encoded as JSON on one line (the cache encodes each run once)."""
    if b"\n" in data or b"\r" in data:
        raise ValueError("an SSE data line cannot hold a line break")
    head = (_field("id", id) if id is not None else "") + (_field("event", event) if event is not None else "")
    return head.encode() + b"data: " + data + b"\n\n"


def retry(milliseconds: int) -> bytes:
    """How long a client waits before it reconnects after the stream broke off."""
    return f"retry: {int(milliseconds)}\n\n".encode()


def parse(text: str) -> list[dict[str, str]]:
    """The complete messages of a stream's text, as a client reads them (``id``, ``event``, ``data``;
    a comment as ``{"comment": ...}``): for tests and for programs without an SSE client."""
    messages: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if line == "":
            if current:
                messages.append(current)
            current = {}
            continue
        if line.startswith(":"):
            messages.append({"comment": line[1:].strip()})
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        current[name] = current[name] + "\n" + value if name == "data" and name in current else value
    return messages  # a message not ended by a blank line is not yet complete: not dispatched
