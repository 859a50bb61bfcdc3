"""``ServerSettings``: what ``kubestep server`` is told, built once by ``cli`` and passed down."""

from __future__ import annotations

import dataclasses

#: The field manager of the server's writes: ``status.cancellation.requestedBy`` of a cancel made
#: through it (the authenticated user, ``requestedByUser``, comes from the chart's cancel-audit policy).
FIELD_MANAGER = "kubestep-server"


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    #: The namespace of a request that names none (``?namespace=``).
    namespace: str
    #: Server-Sent Event streams open at once; one more is refused with 503. Each holds a watch on
    #: the apiserver (with its caller's token) and a connection.
    max_streams: int = 1000
    #: A comment line (``: ping``) after this long without a message, so that proxies keep an idle
    #: stream open and a client that went away is noticed (the write fails).
    heartbeat_seconds: float = 15.0
    #: How often a stream checks again that its caller may still read what it streams (a GET with the
    #: caller's token): a token that expired or a binding that was removed ends the stream then.
    recheck_seconds: float = 60.0
    #: Per-token apiserver clients kept (least recently used dropped first), and how long an unused
    #: one is kept.
    token_clients: int = 256
    token_idle_seconds: float = 300.0
    #: Request bodies larger than this are refused (413): the largest legitimate one, a run's input,
    #: is small; big inputs belong in storage, passed by reference.
    max_body_bytes: int = 64 * 1024
    #: A list page: ``limit`` when the request gives none, and the most it may ask for.
    default_page: int = 100
    max_page: int = 500
    field_manager: str = FIELD_MANAGER
    #: The shared cache of runs (``cache``): None, off (every list goes to the apiserver with the
    #: caller's token); ``()``, every namespace; else the namespaces named. Fed by the server's own
    #: credentials, which then need get/list/watch on runs there (the chart's ``server.cache``).
    cache_namespaces: tuple[str, ...] | None = None
    #: How long a caller's access review (``auth.Access``) is trusted for answers from the cache.
    access_ttl_seconds: float = 10.0
    #: A namespace stream fed by the cache that falls this many messages behind is ended.
    stream_queue: int = 1000
    #: The most runs one bulk cancel may name or match.
    max_bulk: int = 1000
    #: The UI's sign-in cookie is ``Secure`` always (behind a TLS-terminating proxy), not only when
    #: the request itself came over TLS.
    secure_cookies: bool = False
    #: The Postgres step store's DSN ($KUBESTEP_POSTGRES_DSN or _FILE; the chart's ``stepStore:
    #: postgres``): runs' archived records and the runs retention deleted are read from there, with
    #: the server's own connection, for a caller the apiserver lets ``get`` the run (``client_for``).
    postgres_dsn: str | None = dataclasses.field(default=None, repr=False)  # a password may be in it
